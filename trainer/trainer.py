"""The fine-tuning loop: latents, timesteps and the shot layout in; flow-matching loss out.

``Trainer(config).train()`` is the whole run (torchtitan's shape): set up the process group,
build the model on ``meta`` and shard it (regional compile → activation checkpointing → FSDP2
per block → root), materialise it with Wan's initialisation, read ``init_from`` into the shards,
resume from the newest checkpoint if there is one, then per step

    batch (clips or precomputed latents, cut frames, prompts)
      → latents [B, C, F_lat, H_lat, W_lat], context [B, L_text, D]   frozen encoders if needed
      → ShotLayout (host, once per batch) and prompt token spans
      → x_t, timestep, target = flow matching (one timestep per sample)
      → velocity = model(x_t, timestep, context, layout, spans) → weighted MSE
        (``model.causal``: parallel teacher forcing, the velocity of the noisy copies =
        model.forward_teacher_forcing(latents, x_t, timestep, context, causal, frame text mask))
      → backward, clip, AdamW, schedule
      → metrics every ``log_every``, DCP checkpoint every ``checkpoint_every``
      → sample the validation prompts every ``validation.every`` (and at step 0)

and at the end a checkpoint and a single safetensors export in Wan key names.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from typing import Protocol
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.fsdp import register_fsdp_forward_method
from tqdm import tqdm

from multishot.dataset.loader import Batch, TrainLoader
from multishot.model.config import get_config
from multishot.model.layout import ShotLayout
from multishot.config import dump_yaml
from multishot.errors import UsageError
from multishot.trainer import checkpoint as ckpt
from multishot.trainer.config import OptimConfig, TrainConfig
from multishot.model.encoders import FrozenEncoders
from multishot.trainer.flow_matching import FlowMatching
from multishot.model.lora import export_adapter, trainable_parameters
from multishot.trainer.metrics import (MetricsLogger, StepTimer, peak_memory_gib, progress_postfix, step_flops,
                                       teacher_forcing_step_flops)
from multishot.trainer.parallelize import build_mesh, build_model

log = logging.getLogger(__name__)

#: called after every step on every rank with (step, metrics); metrics is empty between logs
StepCallback = Callable[[int, dict[str, float]], None]


class ValidationHook(Protocol):
    """What the trainer asks of validation (:class:`evaluate.validation.Validator` is one):
    the keys it holds out of training, when it is due, and running it (every rank)."""

    held_out_keys: set[str]

    def due(self, step: int) -> bool: ...

    def run(self, step: int) -> dict: ...


#: builds a run's validation hook from the trainer once its model, encoders and metrics exist
#: (None: no validation); the application passes it in, the trainer imports no sampler
ValidationFactory = Callable[["Trainer"], "ValidationHook | None"]


def init_distributed() -> tuple[int, int, torch.device]:
    """Join (or create) the default process group: NCCL on GPUs, gloo on CPU.

    Reads torchrun's ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` / ``MASTER_ADDR`` /
    ``MASTER_PORT``; without them runs as a single process on a loopback store. A group that
    a launcher already made (Ray Train's ``TorchTrainer``) is used as it is, on the GPU that
    launcher made current. Returns ``(rank, world_size, device)``.
    """
    cuda = torch.cuda.is_available()
    launched = dist.is_initialized()  # by Ray Train, which also made this worker's GPU current
    if not launched:
        if "RANK" not in os.environ:
            os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                              MASTER_PORT=os.environ.get("MASTER_PORT", "29511"))
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(minutes=30))
    device = torch.device("cpu")
    if cuda:
        device = torch.device("cuda", torch.cuda.current_device() if launched
                              else int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    return dist.get_rank(), dist.get_world_size(), device


def lr_lambda(optim: OptimConfig, max_steps: int) -> Callable[[int], float]:
    """Multiplier of ``optim.lr`` after ``step`` scheduler steps: linear warm-up from 0, then
    constant, cosine or linear decay to ``min_lr_ratio`` at ``max_steps``."""
    def factor(step: int) -> float:
        if step < optim.warmup_steps:
            return (step + 1) / optim.warmup_steps
        if optim.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - optim.warmup_steps) / max(1, max_steps - optim.warmup_steps))
        decay = 0.5 * (1 + math.cos(math.pi * progress)) if optim.schedule == "cosine" else 1 - progress
        return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * decay
    return factor


class Trainer:
    """One fine-tuning run of :class:`~trainer.config.TrainConfig` on this process's rank.

    Raises (at construction):
        UsageError: the checkpoint to initialise from is missing or does not fit the
            architecture, or an encoder folder is missing.
        OSError: an encoder folder is unreadable (not in ``save_pretrained`` layout).
    """

    #: samples of this rank trained with unmasked cross-attention (prompt over text_len)
    unmasked_prompts: int = 0

    def __init__(self, config: TrainConfig, validation: ValidationFactory | None = None):
        self.config = config
        self.rank, self.world_size, self.device = init_distributed()
        # dp × cp: the cp ranks of a data-parallel group read the same sample and split it
        self.mesh = build_mesh(self.device, self.world_size, config.parallel.context)
        self.cp = config.parallel.context
        self.dp_rank, self.dp_size = self.mesh["dp"].get_local_rank(), self.mesh["dp"].size()
        run = config.run
        self.output_dir = Path(run.output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if self.rank == 0:
            (self.output_dir / "config.resolved.yaml").write_text(dump_yaml(config))

        self.model_config = get_config(config.model.name)
        latest = ckpt.latest_checkpoint(self.output_dir) if run.resume else None
        self.model, _ = build_model(
            self.model_config, config.model, self.device, seed=run.seed,
            mixed_precision=self.device.type == "cuda" and run.mixed_precision == "bf16",
            # a resume overwrites every weight, except LoRA's frozen base (not checkpointed)
            load_init=latest is None or config.model.lora is not None,
            context_group=self.mesh["cp"].get_group())
        self.causal = config.model.causal
        if self.causal is not None:
            # FSDP2 gathers the root's parameters in hooks on forward() only
            register_fsdp_forward_method(self.model, "forward_teacher_forcing")
        # LoRA: only the adapters train, so only they get AdamW state
        self.optimizer = torch.optim.AdamW(trainable_parameters(self.model), lr=config.optim.lr,
                                           betas=config.optim.betas, eps=config.optim.eps,
                                           weight_decay=config.optim.weight_decay,
                                           # one kernel, DTensor-aware; offloaded parameters step on the CPU
                                           fused=self.device.type == "cuda" and not config.model.cpu_offload)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(config.optim, run.max_steps))
        self.flow = FlowMatching(config.objective, self.device)
        self.encoders = self._load_encoders()
        self.metrics = MetricsLogger(self.output_dir, run.tensorboard, enabled=self.rank == 0)
        self.validator = validation(self) if validation is not None else None
        self.loader = TrainLoader(config.data, self.dp_rank, self.dp_size,
                                  frozenset(self.validator.held_out_keys if self.validator else ()))
        # extra doubles as the template of what a resume loads per data-parallel rank
        self.state = ckpt.TrainState(self.model, self.optimizer, self.scheduler, 0,
                                     {"loader": self.loader.state_dict()},
                                     trainable_only=config.model.lora is not None,
                                     data_rank=self.dp_rank)
        if latest is not None:
            ckpt.load(self.state, latest)
            self.loader.load_state_dict(self.state.extra["loader"])
            log.info("resumed from %s (step %d)", latest, self.state.step)

    # ---- construction ----------------------------------------------------------------------
    def _load_encoders(self) -> FrozenEncoders:
        cfg = self.config
        enc = cfg.encoders
        for name in ("vae", "text_encoder", "tokenizer"):
            folder = getattr(enc, name)
            if folder and not Path(folder).is_dir():
                raise UsageError(f"encoders.{name}: no such folder {folder}")
        if cfg.data.kind == "latents":  # only the tokenizer is needed, for the prompt windows
            enc = enc.model_copy(update={"vae": None, "text_encoder": None,
                                         "tokenizer": enc.tokenizer or enc.text_encoder})
        return FrozenEncoders.load(enc, self.device)

    # ---- one step --------------------------------------------------------------------------
    def prepare(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, ShotLayout, list | None]:
        """Model inputs of a batch: latents [B, C, F_lat, H_lat, W_lat], context
        [B, L_text, D] (float32, on the device), its ShotLayout and prompt token spans."""
        text_len = self.model_config.text_len
        if batch.video is not None:
            latents = self.encoders.encode_video(batch.video)
            states = self.encoders.encode_prompts(batch.prompts, text_len)
            length = max(s.shape[0] for s in states)
            context = torch.stack([torch.nn.functional.pad(s, (0, 0, 0, length - s.shape[0]))
                                   for s in states])
        else:
            latents = batch.latents.to(self.device, torch.float32, non_blocking=True)
            context = batch.context.to(self.device, torch.float32, non_blocking=True)
        _, ph, pw = self.model_config.patch_size
        tokens_per_frame = (latents.shape[3] // ph) * (latents.shape[4] // pw)
        layout = ShotLayout.stack([
            ShotLayout.from_cut_frames(batch.num_frames, cuts, tokens_per_frame, self.device)
            for cuts in batch.cut_frames])
        spans = None
        if self.config.model.window_cross_attention:
            # a prompt that lost shot captions to text_len must not end the run: that sample
            # gets unmasked cross-attention, counted and logged
            spans = []
            shots = [len(cuts) + 1 for cuts in batch.cut_frames]
            for key, (sample_spans, why) in zip(batch.keys, self.encoders.text_spans(batch.prompts, shots, text_len)):
                if why is not None:
                    self.unmasked_prompts += 1
                    log.warning("sample %s: %s; unmasked cross-attention", key, why)
                spans.append(sample_spans)
        return latents, context, layout, spans

    def step(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, ShotLayout]:
        """One optimiser step. Returns (loss, grad norm) as device scalars and the layout."""
        latents, context, layout, spans = self.prepare(batch)
        generator = torch.Generator(self.device).manual_seed(
            (self.config.run.seed * 1_000_003 + self.state.step) * 4099 + self.dp_rank)
        noised = self.flow.noise(latents, generator)
        if self.causal is None:
            prediction = self.model(noised.x_t, noised.timestep, context, layout, spans)
        else:
            # parallel teacher forcing: clean copies at t = 0, then the noisy copies at the
            # sample's t; the prediction is the noisy half's, so the loss is on it alone
            # per-shot text: every latent frame's window of its shot (layout.frame_shot)
            text_mask = None if spans is None else self.model.frame_text_mask(layout, spans)
            prediction = self.model.forward_teacher_forcing(
                latents, noised.x_t, noised.timestep, context, self.causal, text_mask)
        loss = self.flow.loss(prediction, noised)
        torch._assert_async(torch.isfinite(loss), "non-finite loss")  # no host sync on GPUs
        loss.backward()
        max_norm = self.config.optim.grad_clip or float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable_parameters(self.model), max_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.state.step += 1
        return loss.detach(), grad_norm, layout

    # ---- the run ---------------------------------------------------------------------------
    def train(self, on_step: StepCallback | None = None) -> None:
        """Run until ``run.max_steps``, checkpointing and logging; then export the weights.

        Args:
            on_step: called after every step on every rank with (step, metrics) — metrics are
                filled on logging steps (e.g. the Ray Train launcher reports them).
        """
        run = self.config.run
        bar = tqdm(total=run.max_steps, initial=self.state.step, desc="train", unit="step",
                   disable=self.rank != 0)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        try:
            self._loop(on_step, bar)
        finally:
            self.loader.close()
            bar.close()
        if run.export_safetensors and self.config.model.lora is not None:
            export_adapter(self.model, self.config.model.lora, self.output_dir / "lora.safetensors")
        elif run.export_safetensors:
            ckpt.export_safetensors(self.model, self.output_dir / "model.safetensors")
        self.metrics.close()

    def _loop(self, on_step: StepCallback | None, bar: tqdm) -> None:
        """Steps until ``run.max_steps``: log, checkpoint and call ``on_step`` as configured."""
        run = self.config.run
        if self.validator is not None and self.validator.due(self.state.step):
            self.validator.run(self.state.step)  # step 0: the model before fine-tuning
        timer = StepTimer(self.device)
        window = {"loss": 0, "flops": 0, "samples": 0, "tokens": 0, "steps": 0}  # since the last log
        for batch in self.loader:
            if self.state.step >= run.max_steps:
                break
            loss, grad_norm, layout = self.step(batch)
            window["loss"] += loss  # a device tensor: no host sync until the log
            # per rank: the cp ranks of a sample share its work and count it once between them
            if self.causal is None:
                window["flops"] += step_flops(self.model_config, layout, self.config.model.sparse_self_attention) / self.cp
            else:
                window["flops"] += teacher_forcing_step_flops(self.model_config, layout, self.causal)
            window["samples"] += layout.batch_size / self.cp
            # teacher forcing runs every token twice (clean and noisy copies)
            window["tokens"] += layout.batch_size * layout.seq_len * (1 if self.causal is None else 2) / self.cp
            window["steps"] += 1
            metrics: dict[str, float] = {}
            step = self.state.step
            if step % run.log_every == 0 or step == run.max_steps:
                metrics = self._metrics(grad_norm, window, timer.lap())
                window = dict.fromkeys(window, 0)
                self.metrics.log(step, metrics)
                bar.set_postfix(progress_postfix(metrics, self.device))
            bar.update(1)
            if step % run.checkpoint_every == 0 or step == run.max_steps:
                self.save()
            if self.validator is not None and self.validator.due(step):
                started = time.perf_counter()
                self.validator.run(step)
                timer.start += time.perf_counter() - started  # step times leave validation out
            if on_step is not None:
                on_step(step, metrics)

    def _metrics(self, grad_norm: torch.Tensor, window: dict, seconds: float) -> dict[str, float]:
        """Scalars of a log (one all-reduce, one host sync): the loss averaged over the steps
        since the last log (``window``) and over ranks; the grad norm and lr of the last step;
        throughput and MFU over the window's ``seconds``; skipped samples so far (all ranks)."""
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        loss = window["loss"] / window["steps"]
        # the cp ranks of a sample count its skips and prompts once between them
        stats = torch.stack([loss.float(), torch.tensor(self.loader.skipped / self.cp, device=loss.device),
                             torch.tensor(float(window["samples"]), device=loss.device),
                             torch.tensor(self.unmasked_prompts / self.cp, device=loss.device)])
        dist.all_reduce(stats)
        step_time = seconds / window["steps"]
        return {
            "loss": stats[0].item() / self.world_size,
            "grad_norm": float(grad_norm),
            "lr": self.scheduler.get_last_lr()[0],
            "step_time_s": step_time,
            "samples_per_s": stats[2].item() / seconds,
            "tokens_per_s_per_gpu": window["tokens"] / seconds,
            "mfu": window["flops"] / seconds / (self.config.run.peak_tflops * 1e12),
            "peak_memory_gib": peak_memory_gib(self.device),
            "skipped_samples": stats[1].item(),
            "unmasked_prompts": stats[3].item(),
        }

    def save(self) -> Path:
        """Checkpoint the run now (collective)."""
        self.state.extra = {"loader": self.loader.state_dict()}
        return ckpt.save(self.state, self.output_dir, self.config.run.keep_checkpoints)
