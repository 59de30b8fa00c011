"""Multi-shot text-to-video generation: prompt → UMT5 → guided flow-matching sampling → VAE → mp4.

``Generator(config)`` loads what the trainer loads (the DiT through :mod:`model.checkpoint`,
UMT5 and the Wan VAE through :class:`model.encoders.FrozenEncoders`), once; then per
:class:`~generate.shots.Request`

    prompt, negative prompt → UMT5 states [L, 4096]            text encoder on the GPU, then off
    prompt → caption windows (TextSpans), cuts → ShotLayout     host, once per sample
    seed → ε [1, C, F_lat, H/s, W/s] float32                   drawn on the CPU: any device, same ε
    ε → latents                                                 :func:`model.sampling.sample`
    latents · std + mean → VAE decode (tiled) → [F, H, W, 3] uint8
    → <name>.mp4 (16 fps, x264 via PyAV) + <name>.json          :func:`write_outputs`
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from multishot.dataset.record import num_latent_frames
from multishot.generate.config import GenerateConfig
from multishot.generate.random_models import RANDOM_MODEL, make_random_models
from multishot.generate.shots import Request
from multishot.generate.video import write_mp4
from multishot.model.checkpoint import load_dit
from multishot.model.config import get_config
from multishot.model.context_parallel import apply_context_parallel, join_torchrun
from multishot.model.encoders import FrozenEncoders
from multishot.model.layout import latent_shot_starts
from multishot.generate.vae_tiling import decode as decode_tiled_or_not
from multishot.model.sampling import (NUM_TRAIN_TIMESTEPS, Conditioning, Expert, SampleTrace,
                                      initial_noise, make_conditioning, sample)
from multishot.model.step_cache import apply_step_cache

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """``'auto'`` → ``cuda`` when available, else ``cpu``; anything else as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def file_sha256(path: str | Path) -> str:
    """sha256 of a checkpoint: of the file, or of its files' digests in name order (a folder or
    a sharded index). Hashing a 28 GB expert takes ~20 s; it is done once per load."""
    path = Path(path)
    if path.name.endswith(".index.json"):
        files = sorted(set(json.loads(path.read_text())["weight_map"].values()))
        files = [path.parent / f for f in files]
    elif path.is_dir():
        files = sorted(path.glob("*.safetensors"))
    else:
        files = [path]
    digests = []
    for f in files:
        digest = hashlib.sha256()
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 24):
                digest.update(chunk)
        digests.append(digest.hexdigest())
    return digests[0] if len(digests) == 1 else hashlib.sha256("".join(digests).encode()).hexdigest()


def peak_memory_gib(device: torch.device) -> float:
    """Peak GPU memory allocated (GiB) on CUDA, else the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**30 if sys.platform == "darwin" else 2**20)


@dataclass
class Generated:
    """One generated sample: ``video`` ``[F, H, W, 3]`` uint8, ``latents``
    ``[1, C, F_lat, H_lat, W_lat]`` float32 (CPU), and the record written beside the mp4."""

    request: Request
    video: np.ndarray
    latents: torch.Tensor
    info: dict


class Generator:
    """Loaded models and settings of one :class:`GenerateConfig`; :meth:`generate` per request.

    Raises (at construction):
        FileNotFoundError, OSError: a checkpoint or encoder folder is missing.
        ValueError: a checkpoint does not fit ``model.name``; random weights asked for another
            architecture than ``tiny``.
    """

    def __init__(self, config: GenerateConfig, lora: str | None = None, lora_scale: float = 1.0):
        """``lora``: a LoRA file (``multishot export-lora``, or ComfyUI / DiffSynth layouts)
        merged into every DiT at ``lora_scale`` (:func:`model.lora.apply_lora_file`)."""
        self.lora, self.lora_scale = lora, lora_scale
        # under `torchrun --nproc-per-node N`: all N ranks split every sample (Ulysses context
        # parallelism, model.context_parallel); the outputs are rank 0's to write
        self.cp_group, self.device = join_torchrun(resolve_device(config.runtime.device))
        self.random_weights = config.model.random_weights is not None
        if self.random_weights:
            if self.cp_group is not None and dist.get_rank() != 0:
                dist.barrier()  # rank 0 writes the random models; the others then load them
            config = self._with_random_weights(config)
            if self.cp_group is not None and dist.get_rank() == 0:
                dist.barrier()
        self.config = config
        cuda = self.device.type == "cuda"
        self.dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}.get(
            config.runtime.dtype, torch.bfloat16 if cuda else torch.float32)
        self.offload = config.runtime.offload and cuda
        self.model_config = get_config(config.model.name)
        m, s = config.model, config.sampling
        start = time.perf_counter()
        self.experts = [Expert(self._load(m.checkpoint), s.cfg_scale,
                               s.boundary * NUM_TRAIN_TIMESTEPS if m.low_noise_checkpoint else 0.0,
                               "high_noise" if m.low_noise_checkpoint else "dit")]
        if m.low_noise_checkpoint:
            self.experts.append(Expert(self._load(m.low_noise_checkpoint),
                                       s.cfg_scale_low_noise or s.cfg_scale, 0.0, "low_noise"))
        self.checkpoints = {p: file_sha256(p) for p in (m.checkpoint, m.low_noise_checkpoint, lora) if p}
        self.encoders = FrozenEncoders.load(config.encoders,
                                            "cpu" if self.offload else self.device)
        if self.encoders.vae is None or self.encoders.text_encoder is None:
            raise ValueError("generation needs encoders.vae and encoders.text_encoder")
        self.vae_stride = (self.encoders.vae.config.scale_factor_temporal,
                           self.encoders.vae.config.scale_factor_spatial)
        log.info("loaded %d DiT(s) %s (%s, %s) and encoders in %.1f s", len(self.experts),
                 m.name, self.device, self.dtype, time.perf_counter() - start)
        self._negative: torch.Tensor | None = None

    @staticmethod
    def _with_random_weights(config: GenerateConfig) -> GenerateConfig:
        if config.model.name != RANDOM_MODEL:
            raise ValueError(f"model.random_weights builds the {RANDOM_MODEL!r} model only, "
                             f"not {config.model.name!r}")
        paths = make_random_models(config.model.random_weights)
        log.warning("model.random_weights: RANDOM weights in %s; the video is noise-like, "
                    "a smoke test of the generation path, not a model's output",
                    config.model.random_weights)
        model = config.model.model_copy(update={
            "checkpoint": paths["dit"],
            "low_noise_checkpoint": paths["low_noise_dit"] if config.model.low_noise_checkpoint
            else None})
        encoders = config.encoders.model_copy(update={
            "vae": paths["vae"], "text_encoder": paths["text_encoder"], "tokenizer": None})
        return config.model_copy(update={"model": model, "encoders": encoders})

    def _load(self, checkpoint: str) -> torch.nn.Module:
        m = self.config.model
        model = load_dit(m.name, checkpoint, torch.device("cpu") if self.offload else self.device,
                         self.dtype, attention_backend=m.attention_backend,
                         sparse_self_attention=m.sparse_self_attention,
                         global_bank=m.global_bank)
        if self.lora:
            from multishot.model.lora import apply_lora_file

            changed = apply_lora_file(model, self.lora, self.lora_scale)
            log.info("merged LoRA %s at scale %g into %d weights of %s", self.lora,
                     self.lora_scale, changed, checkpoint)
        apply_context_parallel(model, self.cp_group)
        r = self.config.runtime
        if r.step_cache:
            if self.cp_group is not None:
                raise ValueError("runtime.step_cache does not work with context parallelism "
                                 "(each rank would decide on its own tokens)")
            apply_step_cache(model, r.step_cache_threshold)
        if m.compile:
            from multishot.model.compile import apply_compile

            apply_compile(model)
        if r.step_graphs and self.device.type == "cuda":
            from multishot.generate.graphs import GraphedDenoiser

            model = GraphedDenoiser(model)
        return model

    # ---- device placement ------------------------------------------------------------------
    @contextlib.contextmanager
    def _on_device(self, module: torch.nn.Module):
        """Hold ``module`` (an encoder) on the GPU for the block when offloading."""
        if not self.offload:
            yield
            return
        module.to(self.device)
        self.encoders.device = self.device
        try:
            yield
        finally:
            module.to("cpu")
            self.encoders.device = torch.device("cpu")
            torch.cuda.empty_cache()

    def _activate(self, expert: Expert) -> None:
        """With offloading, the expert about to run goes to the GPU, the others to the CPU."""
        if not self.offload:
            return
        for other in self.experts:
            if other is not expert:
                other.model.to("cpu")
        expert.model.to(self.device)

    # ---- one sample ------------------------------------------------------------------------
    def encode(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """UMT5 states of ``prompt`` and of the negative prompt, ``[L, text_dim]`` float32 on
        the DiT's device (the negative one cached)."""
        text_len = self.model_config.text_len
        with self._on_device(self.encoders.text_encoder):
            if self._negative is None:
                self._negative = self.encoders.encode_prompts(
                    [self.config.sampling.negative_prompt], text_len)[0].to(self.device)
            context = self.encoders.encode_prompts([prompt], text_len)[0].to(self.device)
        return context, self._negative

    def latent_shape(self, num_frames: int) -> tuple[int, int, int, int, int]:
        """``(1, C, F_lat, H_lat, W_lat)`` of a sample of the configured size.

        Raises:
            ValueError: the size does not divide into whole patches.
        """
        v = self.config.video
        st, ss = self.vae_stride
        _, ph, pw = self.model_config.patch_size
        if v.height % (ss * ph) or v.width % (ss * pw):
            raise ValueError(f"video {v.width}×{v.height} must be divisible by "
                             f"{ss * pw}×{ss * ph} (VAE stride × patch)")
        return (1, self.model_config.in_channels, num_latent_frames(num_frames),
                v.height // ss, v.width // ss)

    def noise(self, request: Request) -> torch.Tensor:
        """ε of the request's seed (:func:`initial_noise`)."""
        return initial_noise(self.latent_shape(request.num_frames), request.seed, self.device)

    def conditioning(self, request: Request) -> Conditioning:
        """Text states, shot layout and caption windows of ``request`` (:func:`make_conditioning`)."""
        context, negative = self.encode(request.prompt)
        _, _, _, h, w = self.latent_shape(request.num_frames)
        cond, why = make_conditioning(self.encoders, self.model_config, request.prompt,
                                      request.num_frames, request.cut_frames, context, negative,
                                      (h, w), self.config.model.window_cross_attention,
                                      self.device)
        if why is not None:
            log.warning("%s: unmasked cross-attention: %s", request.name, why)
            request.extra["unmasked_cross_attention"] = why
        return cond

    @torch.no_grad()
    def denoise(self, request: Request) -> tuple[torch.Tensor, SampleTrace]:
        """Final latents ``[1, C, F_lat, H_lat, W_lat]`` float32 of ``request`` and the trace."""
        cond = self.conditioning(request)
        return sample(self.experts, self.noise(request), cond, self.config.sampling,
                      progress=self.config.runtime.progress, on_expert=self._activate)

    def decode(self, latents: torch.Tensor) -> tuple[np.ndarray, dict]:
        """VAE decode, tiled or not as ``runtime.vae_tiling`` decides (:func:`generate.
        vae_tiling.decode`), the VAE on the GPU only meanwhile: the video ``[F, H, W, 3]``
        uint8 and what was decided."""
        with self._on_device(self.encoders.vae):
            return decode_tiled_or_not(self.encoders.vae, latents, self.device,
                                       self.encoders.dtype, self.config.runtime.vae_tiling)

    def generate(self, request: Request) -> Generated:
        """Sample, decode and describe one request (:class:`Generated`)."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        start = time.perf_counter()
        latents, trace = self.denoise(request)
        sampled = time.perf_counter()
        video, tiling = self.decode(latents)
        done = time.perf_counter()
        return Generated(request, video, latents.cpu(), self.describe(request, trace, {
            "sampling_s": sampled - start, "decode_s": done - sampled, "total_s": done - start,
            **tiling}))

    def describe(self, request: Request, trace: SampleTrace, seconds: dict) -> dict:
        """The JSON record written beside a sample's mp4."""
        s, v = self.config.sampling, self.config.video
        return {
            "name": request.name, "prompt": request.prompt, "negative_prompt": s.negative_prompt,
            "num_frames": request.num_frames, "cut_frames": request.cut_frames,
            "num_shots": len(request.cut_frames) + 1,
            "latent_shot_starts": latent_shot_starts(request.num_frames, request.cut_frames),
            "seed": request.seed, "height": v.height, "width": v.width, "fps": v.fps,
            "sampler": s.sampler, "steps": s.steps, "shift": s.shift,
            "cfg_scale": {e.name: e.cfg_scale for e in self.experts},
            "boundary": s.boundary if len(self.experts) > 1 else None,
            "cfg_batch": s.cfg_batch, "model": self.config.model.name,
            "sparse_self_attention": self.config.model.sparse_self_attention,
            "global_bank": self.config.model.global_bank,
            "window_cross_attention": self.config.model.window_cross_attention,
            "checkpoints": self.checkpoints, "random_weights": self.random_weights,
            "lora": self.lora, "lora_scale": self.lora_scale if self.lora else None,
            "context_parallel": 1 if self.cp_group is None else self.cp_group.size(),
            "device": str(self.device), "dtype": str(self.dtype).removeprefix("torch."),
            "seconds_per_step": float(np.mean(trace.step_seconds)),
            "step_seconds": trace.step_seconds, "timesteps": trace.timesteps,
            "experts": trace.experts,
            "step_cache": {"threshold": self.config.runtime.step_cache_threshold,
                           "reused_steps": sum(trace.reused), "exact": False}
            if self.config.runtime.step_cache else None, **seconds,
            "peak_memory_gib": peak_memory_gib(self.device), **request.extra,
        }


def check_output(path: str | Path, single: bool) -> Path:
    """Check ``-o`` before anything is generated; its folder is created.

    ``single``: ``path`` is the mp4 of one sample (its ``.json`` goes beside it); else the
    folder of many samples.

    Raises:
        ValueError: a single output that is a folder, a folder output that is a file, or a
            place that cannot be created or written (the message says which).
    """
    path = Path(path)
    folder = path.parent if single else path
    if single and path.is_dir():
        raise ValueError(f"-o {path} is a folder; one --prompt writes one file (e.g. -o {path / 'sample.mp4'})")
    if not single and path.exists() and not path.is_dir():
        raise ValueError(f"-o {path} is a file; several samples go into a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"-o {path}: cannot create {folder}: {err.strerror or err}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"-o {path}: {folder} is not writable")
    return path


def write_outputs(generated: Generated, mp4_path: str | Path) -> tuple[Path, Path]:
    """Write ``<stem>.mp4`` and ``<stem>.json`` (the record) beside it; returns both paths."""
    mp4_path = Path(mp4_path)
    mp4_path.parent.mkdir(parents=True, exist_ok=True)
    write_mp4(generated.video, mp4_path, generated.info["fps"])
    json_path = mp4_path.with_suffix(".json")
    json_path.write_text(json.dumps(generated.info, indent=1, ensure_ascii=False))
    return mp4_path, json_path
