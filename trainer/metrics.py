"""Per-step metrics: loss, grad norm, lr, throughput, MFU, peak memory; TensorBoard + jsonl.

MFU = model FLOPs of the step / step time / peak, per GPU. Model FLOPs are 3 × the forward
(:func:`model.flops.forward_flops`, which counts the sparse attention's useful pairs): backward
is twice the forward for every matmul; the activation-checkpointing recompute is not counted
(it is hardware work, not model work), as in the PaLM / torchtitan definition.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from multishot.model.causal import CausalConfig, teacher_forcing_attention_pairs
from multishot.model.config import WanConfig
from multishot.model.flops import forward_flops
from multishot.model.layout import ShotLayout

#: backward ≈ 2 × forward for a training step's model FLOPs
TRAIN_FLOPS_PER_FORWARD = 3


def step_flops(config: WanConfig, layout: ShotLayout, sparse: bool) -> int:
    """Model FLOPs of one training step on this rank's batch (all samples of ``layout``)."""
    per_sample = forward_flops(config, layout.num_latent_frames, layout.tokens_per_frame,
                               layout if sparse else None)
    return TRAIN_FLOPS_PER_FORWARD * per_sample * layout.batch_size


def teacher_forcing_step_flops(config: WanConfig, layout: ShotLayout, causal: CausalConfig) -> int:
    """Model FLOPs of one teacher-forcing training step on this rank's batch: the forward of
    the ``2·L`` tokens (clean and noisy copies) of every sample with the four quadrants'
    self-attention pairs (:func:`model.causal.teacher_forcing_attention_pairs`, CAMR's routed
    frames counted as attended), × 3."""
    f, hw = layout.num_latent_frames, layout.tokens_per_frame
    pairs = teacher_forcing_attention_pairs(f, hw, causal)
    return TRAIN_FLOPS_PER_FORWARD * forward_flops(config, 2 * f, hw, attention_pairs=pairs) \
        * layout.batch_size


def progress_postfix(metrics: dict[str, float], device: torch.device) -> dict[str, str]:
    """What the training progress bar shows after a log: the loss, and MFU on a GPU; on a CPU,
    whose MFU against ``run.peak_tflops`` (a GPU's peak) would read 0.0%, the step time
    instead (``metrics.jsonl`` keeps every scalar)."""
    shown = {"loss": f"{metrics['loss']:.4f}"}
    if device.type == "cpu":
        shown["step"] = f"{metrics['step_time_s']:.2f}s"
    else:
        shown["mfu"] = f"{metrics['mfu']:.1%}"
    return shown


class MetricsLogger:
    """Writes one JSON line per logged step to ``metrics.jsonl`` (rank 0) and, if asked, the
    same scalars to TensorBoard under ``tensorboard/``."""

    def __init__(self, output_dir: str | Path, tensorboard: bool, enabled: bool):
        self.enabled = enabled
        self.path = Path(output_dir) / "metrics.jsonl"
        self.writer = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(Path(output_dir) / "tensorboard"))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as out:
            out.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.writer is not None:
            for name, value in metrics.items():
                self.writer.add_scalar(name, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class StepTimer:
    """Wall time of a step, synchronising the device first (a host sync, once per step, only
    where metrics are logged)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.start = time.perf_counter()

    def lap(self) -> float:
        """Seconds since the previous lap (or construction)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        elapsed, self.start = now - self.start, now
        return elapsed


def peak_memory_gib(device: torch.device) -> float:
    """Peak allocated device memory since the last reset, GiB (0 on CPU)."""
    if device.type != "cuda":
        return 0.0
    return torch.cuda.max_memory_allocated(device) / 2**30
