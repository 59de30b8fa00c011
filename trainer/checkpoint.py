"""Checkpoints that resume exactly (torch.distributed.checkpoint), and export to safetensors.

A checkpoint is a DCP folder ``output_dir/checkpoints/step-NNNNNNNN/`` holding, sharded as the
run is: the model and AdamW state (``get_state_dict``: FSDP2 DTensor shards), the learning-rate
scheduler, the step counter, and per data-parallel rank (keys ``rank{r}``, as torchtitan keys its
data loader state; the context-parallel ranks of a sample share one) the loader position and the
CPU / CUDA RNG states. DCP reshards the rest, so a run resumes at another ``parallel.context``
with the same number of data-parallel ranks. DCP writes ``.metadata`` after every
rank has written its part, so only folders holding it count as complete.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.checkpoint.stateful import Stateful

from multishot.model.checkpoint import save_safetensors

log = logging.getLogger(__name__)

STEP_DIR = "step-{:08d}"


class TrainState(Stateful):
    """Everything a resume restores, as one DCP ``Stateful``.

    ``extra`` is this data-parallel rank's ``{"loader": ..., ...}`` (plain picklable values);
    ``data_rank`` its data-parallel rank (None: the global rank).
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, step: int, extra: dict[str, Any],
                 data_rank: int | None = None):
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.step, self.extra = step, extra
        self.data_rank = dist.get_rank() if data_rank is None else data_rank

    def state_dict(self) -> dict[str, Any]:
        model_state, optim_state = get_state_dict(self.model, self.optimizer)
        rank = self.data_rank
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state()
        return {"model": model_state, "optim": optim_state,
                "scheduler": self.scheduler.state_dict(), "step": self.step,
                f"rank{rank}": {**self.extra, "rng": rng}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optim"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        mine = state[f"rank{self.data_rank}"]
        torch.set_rng_state(mine["rng"]["cpu"])
        if "cuda" in mine["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state(mine["rng"]["cuda"])
        self.extra = {k: v for k, v in mine.items() if k != "rng"}


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder under ``output_dir/checkpoints``, or None."""
    root = Path(output_dir) / "checkpoints"
    done = sorted(p for p in root.glob("step-*") if (p / ".metadata").exists())
    return done[-1] if done else None


def save(state: TrainState, output_dir: str | Path, keep: int) -> Path:
    """Write ``state`` as checkpoint ``step-NNNNNNNN`` (collective: every rank calls it), then
    remove all but the newest ``keep`` complete checkpoints (rank 0)."""
    path = Path(output_dir) / "checkpoints" / STEP_DIR.format(state.step)
    dcp.save({"train": state}, checkpoint_id=str(path))
    if dist.get_rank() == 0:
        done = sorted(p for p in path.parent.glob("step-*") if (p / ".metadata").exists())
        for old in done[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return path


def load(state: TrainState, path: str | Path) -> None:
    """Restore ``state`` in place from checkpoint ``path`` (collective).

    The per-rank entries of other ranks are in the checkpoint too; each rank asks for its own.
    """
    request = state.state_dict()
    dcp.load({"train": _Requested(state, request)}, checkpoint_id=str(path))


class _Requested(Stateful):
    """Hands DCP a state dict template computed once, then applies what was loaded."""

    def __init__(self, state: TrainState, request: dict[str, Any]):
        self.state, self.request = state, request

    def state_dict(self) -> dict[str, Any]:
        return self.request

    def load_state_dict(self, loaded: dict[str, Any]) -> None:
        self.state.load_state_dict(loaded)


def export_safetensors(model: torch.nn.Module, path: str | Path) -> Path | None:
    """Gather the full (unsharded) weights and write them on rank 0 as one safetensors file in
    the official Wan key names (:func:`model.checkpoint.save_safetensors`). Collective.

    Returns:
        the path on rank 0, None on other ranks.
    """
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    full = {k.replace("_checkpoint_wrapped_module.", ""): v for k, v in full.items()}
    out = None
    if dist.get_rank() == 0:
        out = save_safetensors(full, path)[0]
        log.info("exported %d tensors to %s", len(full), out)
    dist.barrier()
    return out
