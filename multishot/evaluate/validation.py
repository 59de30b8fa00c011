"""Validation during a fine-tune: sample fixed prompts with the model being trained.

Every ``validation.every`` steps (and at step 0) the trainer calls :meth:`Validator.run`:

    requests (prompt file and/or K held-out samples' captions and cuts)   fixed for the run
      → UMT5 states, ShotLayout, caption windows                          every rank
      → ε from the request's seed (CPU, identical on every rank)
      → flow-matching CFG sampling, few steps (model.sampling.sample)   every rank: the FSDP2
                                                                          all-gathers need all
      → VAE decode, mp4 + JSON (generate.generator)                       rank 0
      → SCA and consistency of each mp4 (multishot.evaluate.Evaluator)       rank 0
      → metrics.json, TensorBoard images and scalars, the cost in the log rank 0

The trainer knows nothing of this module: ``multishot train`` loads
:class:`ValidatedTrainConfig` (the trainer's config plus ``validation:``) and hands the trainer
:func:`make_validator`, which the trainer calls once its model and encoders exist
(:data:`trainer.trainer.ValidationFactory`).

Held-out samples are the first K captioned samples of ``data.shards`` in shard order; the
trainer excludes their keys from the training stream (:class:`dataset.loader.TrainLoader`).
TensorBoard's ``add_video`` needs moviepy, which the project does not install; each sample is
logged instead with ``add_images``: one grid image of evenly spaced frames, in order.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from pydantic import Field, model_validator

from multishot.config import Section
from multishot.dataset.loader import iter_tar, list_shards
from multishot.dataset.record import SampleRecord, num_latent_frames
from multishot.evaluate.config import EvalConfig
from multishot.generate.generator import Generated, write_outputs
from multishot.generate.shots import Request, read_prompts_file, request_from_record
from multishot.model.sampling import (Expert, SamplingConfig, decode_latents, initial_noise,
                                      make_conditioning, sample)
from multishot.trainer.config import TrainConfig

log = logging.getLogger(__name__)

#: frames of each validation video shown in TensorBoard
TENSORBOARD_FRAMES = 8


class ValidationConfig(Section):
    """Sampling fixed prompts during the run (:class:`Validator`); off unless ``every``."""

    every: int = Field(0, ge=0, description="steps between validations; 0 = off")
    at_start: bool = Field(True, description="with every > 0: also validate at step 0")
    prompts: str | None = Field(None, description=(
        "JSON-lines prompt file (the `multishot generate --prompts` format)"))
    held_out: int = Field(0, ge=0, description=(
        "K captioned samples of data.shards re-created from their captions and cuts; their keys "
        "are excluded from training"))
    num_frames: int | None = Field(None, description="pixel frames, 4k+1; None = data.num_frames")
    height: int | None = Field(None, gt=0, description="pixels; None = data.height")
    width: int | None = Field(None, gt=0, description="pixels; None = data.width")
    seed: int = Field(0, description="noise seed of every prompt without its own")
    fps: float = Field(16.0, gt=0, description="frame rate of the written mp4s")
    sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig(steps=10), description=(
        "sampler, steps (few by default: 10), shift, CFG scale, negative prompt"))
    metrics: bool = Field(True, description=(
        "score every video as `multishot eval` does (SCA, consistency) into metrics.json"))
    eval: EvalConfig = Field(default_factory=EvalConfig, description=(
        "the cut detector and the weights of the metrics (multishot eval's columns; those "
        "without weights are reported as skipped)"))


class ValidatedTrainConfig(TrainConfig):
    """``configs/train/*.yaml`` as ``multishot train`` reads it: the trainer's
    :class:`~trainer.config.TrainConfig` plus the ``validation:`` section."""

    validation: ValidationConfig = ValidationConfig()

    @model_validator(mode="after")
    def _validation_fits(self) -> ValidatedTrainConfig:
        if self.model.causal is not None and self.validation.every:
            raise ValueError("model.causal: validation samples with the bidirectional "
                             "sampler; set validation.every: 0 and stream the checkpoint "
                             "with `multishot generate --causal`")
        return self


def make_validator(trainer) -> Validator | None:
    """The trainer's validation hook (:data:`trainer.trainer.ValidationFactory`): a
    :class:`Validator` over ``trainer``'s model and encoders when its config is a
    :class:`ValidatedTrainConfig` with ``validation.every`` set, else None."""
    validation = getattr(trainer.config, "validation", None)
    if validation is None or not validation.every:
        return None
    return Validator(trainer.config, trainer.model, trainer.model_config, trainer.encoders,
                     trainer.rank, trainer.device, trainer.metrics.writer)

def held_out_requests(shards: list[str], count: int, num_frames: int, seed: int) -> list[Request]:
    """Requests re-creating the first ``count`` captioned samples of ``shards`` (sorted shard
    order, tar order inside) that have at least ``num_frames`` frames, cut to ``num_frames``.

    Raises:
        ValueError: fewer than ``count`` such samples exist.
    """
    found: list[Request] = []
    for url in list_shards(shards):
        for key, parts in iter_tar(url):
            if "json" not in parts:
                continue
            record = SampleRecord.from_json(parts["json"])
            if record.caption_status == "ok" and record.num_frames >= num_frames:
                try:
                    found.append(request_from_record(record, seed, num_frames))
                except ValueError as err:  # e.g. two cuts in one latent frame at this length
                    log.info("validation: not holding out %s: %s", key, err)
                    continue
            if len(found) == count:
                return found
    raise ValueError(f"validation.held_out: {count} captioned samples of >= {num_frames} frames "
                     f"wanted, {len(found)} found in data.shards")


class Validator:
    """Fixed validation requests and what sampling them needs, on one rank.

    Args:
        config: the run's :class:`ValidatedTrainConfig` (``validation``, ``data``,
            ``model``, ``encoders``, ``run.output_dir``).
        model: the DiT being trained (FSDP2-wrapped or not); called under ``no_grad``.
        model_config: its :class:`~model.config.WanConfig`.
        encoders: the trainer's frozen encoders; those it lacks (a latents run loads only the
            tokenizer) are loaded here from ``config.encoders``. The VAE only on rank 0.
        writer: rank 0's TensorBoard ``SummaryWriter`` or None.
    Raises:
        ValueError: no text encoder / VAE named, a size that is not set or does not divide into
            patches, bad prompt file lines, too few held-out samples.
    """

    def __init__(self, config, model: torch.nn.Module, model_config, encoders, rank: int,
                 device: torch.device, writer=None):
        from multishot.model.encoders import FrozenEncoders

        v = config.validation
        self.config, self.model, self.model_config = config, model, model_config
        self.rank, self.device, self.writer = rank, device, writer
        self.num_frames = v.num_frames or config.data.num_frames
        self.height = v.height or config.data.height
        self.width = v.width or config.data.width
        if None in (self.num_frames, self.height, self.width):
            raise ValueError("validation.num_frames / height / width are needed when data leaves "
                             "them to each sample")
        num_latent_frames(self.num_frames)
        self.requests = read_prompts_file(v.prompts, self.num_frames, v.seed) if v.prompts else []
        self.requests += held_out_requests(config.data.shards, v.held_out, self.num_frames,
                                           v.seed) if v.held_out else []
        if not self.requests:
            raise ValueError("validation needs validation.prompts or validation.held_out > 0")
        enc = config.encoders
        if not (enc.text_encoder and enc.vae):
            raise ValueError("validation needs encoders.text_encoder and encoders.vae")
        if encoders.text_encoder is None or (rank == 0 and encoders.vae is None):
            encoders = FrozenEncoders.load(enc.model_copy(update={
                "vae": enc.vae if rank == 0 else None}), device)
        self.encoders = encoders
        if rank == 0:
            self.encoders.vae.enable_tiling()  # long samples decode in tiles
        vae = self.encoders.vae
        self.latent_hw = self._latent_hw(vae.config.scale_factor_spatial if vae else None)
        self.negative: torch.Tensor | None = None
        self.evaluator = None
        if rank == 0 and v.metrics:
            from multishot.evaluate.video import Evaluator

            self.evaluator = Evaluator(v.eval)  # the detector and encoders load once per run

    def _latent_hw(self, stride: int | None) -> tuple[int, int]:
        # ranks without the VAE take the stride from the architecture: 16 for 48 channels
        # (Wan2.2 VAE), 8 otherwise (Wan2.1 VAE)
        stride = stride or (16 if self.model_config.in_channels == 48 else 8)
        _, ph, pw = self.model_config.patch_size
        if self.height % (stride * ph) or self.width % (stride * pw):
            raise ValueError(f"validation size {self.width}×{self.height} is not divisible by "
                             f"{stride * pw}×{stride * ph} (VAE stride × patch)")
        return self.height // stride, self.width // stride

    @property
    def held_out_keys(self) -> set[str]:
        """Keys of the held-out samples (excluded from training)."""
        return {r.name for r in self.requests if "source_cut_frames" in r.extra}

    def due(self, step: int) -> bool:
        """Whether to validate after ``step`` optimiser steps."""
        v = self.config.validation
        return (step == 0 and v.at_start) or (v.every > 0 and step > 0 and step % v.every == 0)

    @torch.no_grad()
    def run(self, step: int) -> dict:
        """Sample every request (all ranks), write and log them (rank 0); returns rank 0's
        ``metrics.json`` content (an empty dict elsewhere)."""
        v = self.config.validation
        start = time.perf_counter()
        text_len = self.model_config.text_len
        if self.negative is None:
            self.negative = self.encoders.encode_prompts([v.sampling.negative_prompt],
                                                         text_len)[0].to(self.device)
        expert = Expert(self.model, v.sampling.cfg_scale)
        out_dir = Path(self.config.run.output_dir) / "validation" / f"step_{step:06d}"
        results = []
        for request in self.requests:
            t0 = time.perf_counter()
            context = self.encoders.encode_prompts([request.prompt], text_len)[0].to(self.device)
            cond, why = make_conditioning(self.encoders, self.model_config, request.prompt,
                                          request.num_frames, request.cut_frames, context,
                                          self.negative, self.latent_hw,
                                          self.config.model.window_cross_attention, self.device)
            if why is not None:
                log.warning("%s: unmasked cross-attention: %s", request.name, why)
                request.extra["unmasked_cross_attention"] = why
            shape = (1, self.model_config.in_channels, num_latent_frames(request.num_frames),
                     *self.latent_hw)
            latents, trace = sample([expert], initial_noise(shape, request.seed, self.device),
                                    cond, v.sampling)
            if self.rank == 0:
                video = decode_latents(self.encoders.vae, latents, self.device,
                                       self.encoders.dtype)
                info = {"step": step, "name": request.name, "prompt": request.prompt,
                        "num_frames": request.num_frames, "cut_frames": request.cut_frames,
                        "seed": request.seed, "height": self.height, "width": self.width,
                        "fps": v.fps, "sampler": v.sampling.sampler, "steps": v.sampling.steps,
                        "shift": v.sampling.shift, "cfg_scale": v.sampling.cfg_scale,
                        "seconds_per_step": float(np.mean(trace.step_seconds)),
                        "seconds": time.perf_counter() - t0, **request.extra}
                mp4, _ = write_outputs(Generated(request, video, latents.cpu(), info),
                                       out_dir / f"{request.name}.mp4")
                if self.evaluator is not None:
                    scores = self.evaluator.evaluate(mp4, request.cut_frames, request.prompt)
                    info.update({k: scores[k] for k in ("detected_cuts", "sca", "metrics",
                                                        "skipped")})
                results.append((mp4, video, info))
        seconds = time.perf_counter() - start
        log.info("validation at step %d: %d samples × %d steps in %.1f s", step,
                 len(self.requests), v.sampling.steps, seconds)
        if self.rank != 0:
            return {}
        names = sorted({m for _, _, info in results for m in info.get("metrics", {})})
        means = {m: float(np.mean([info["metrics"][m] for _, _, info in results
                                   if m in info["metrics"]])) for m in names}
        report = {"step": step, "seconds": seconds, "metrics": means,
                  "samples": [info for _, _, info in results]}
        (out_dir / "metrics.json").write_text(json.dumps(report, indent=1, ensure_ascii=False))
        if self.writer is not None:
            for _, video, info in results:
                index = np.linspace(0, len(video) - 1, min(TENSORBOARD_FRAMES, len(video)))
                self.writer.add_images(f"validation/{info['name']}",
                                       video[index.round().astype(int)], step, dataformats="NHWC")
            self.writer.add_scalar("validation/seconds", seconds, step)
            for name, value in means.items():
                self.writer.add_scalar(f"validation/{name}", value, step)
            self.writer.flush()
        return report
