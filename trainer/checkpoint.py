"""Checkpoints that resume exactly (torch.distributed.checkpoint), initial weights loaded
shard by shard, and export to safetensors.

A checkpoint is a DCP folder ``output_dir/checkpoints/step-NNNNNNNN/`` holding, sharded as the
run is: the model and AdamW state (``get_state_dict``: FSDP2 DTensor shards), the learning-rate
scheduler, the step counter, and per data-parallel rank (keys ``rank{r}``, as torchtitan keys its
data loader state; the context-parallel ranks of a sample share one) the loader position and the
CPU / CUDA RNG states. DCP reshards the rest, so a run resumes at another ``parallel.context``
with the same number of data-parallel ranks. DCP writes ``.metadata`` after every
rank has written its part, so only folders holding it count as complete.

Initial weights (``model.init_from``: Wan / HoloCine / diffusers safetensors) are read into the
already sharded model by :func:`load_init_weights`: every rank reads only the slices of each
tensor that it owns (DCP's ``HuggingFaceStorageReader``), as torchtitan loads Hugging Face
checkpoints, so no rank ever holds the whole state dict.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import HuggingFaceStorageReader
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.checkpoint.stateful import Stateful

from multishot.errors import UsageError
from multishot.model import dcp_reader
from multishot.model.checkpoint import (
    LoadReport,
    TensorHeader,
    checkpoint_files,
    compare_shapes,
    read_headers,
    save_safetensors,
    wan_names,
)

log = logging.getLogger(__name__)

STEP_DIR = "step-{:08d}"


class TrainState(Stateful):
    """Everything a resume restores, as one DCP ``Stateful``.

    ``extra`` is this data-parallel rank's ``{"loader": ..., ...}`` (plain picklable values);
    ``data_rank`` its data-parallel rank (None: the global rank).
    ``trainable_only``: save and restore only the parameters that train (LoRA: the adapters;
    the frozen base is rebuilt from ``model.init_from`` / the seed on resume).
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, step: int, extra: dict[str, Any],
                 trainable_only: bool = False, data_rank: int | None = None):
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.step, self.extra = step, extra
        self.data_rank = dist.get_rank() if data_rank is None else data_rank
        # strict off with trainable_only: the model lacks the frozen keys on purpose, and DCP's
        # load already fails on any requested key the checkpoint lacks
        self.options = StateDictOptions(ignore_frozen_params=True, strict=False) \
            if trainable_only else None

    def state_dict(self) -> dict[str, Any]:
        model_state, optim_state = get_state_dict(self.model, self.optimizer, options=self.options)
        rank = self.data_rank
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state()
        return {"model": model_state, "optim": optim_state,
                "scheduler": self.scheduler.state_dict(), "step": self.step,
                f"rank{rank}": {**self.extra, "rng": rng}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optim"], options=self.options)
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
    dcp_reader.load({"train": _Requested(state, request)}, path)


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


@dataclass
class InitLoad:
    """What :func:`load_init_weights` did on this rank.

    ``report``: keys missing / unexpected / mismatched against the model (:class:`LoadReport`);
    ``bytes_read``: bytes of tensor slices this rank read from the files; ``largest_read``: the
    largest single slice (the reader holds one at a time besides the model's own shards);
    ``checkpoint_bytes``: the whole checkpoint's tensors, for comparison.
    """

    report: LoadReport
    bytes_read: int
    largest_read: int
    checkpoint_bytes: int


class _SliceReader(HuggingFaceStorageReader):
    """DCP's safetensors reader, counting the bytes of the slices it is asked to read (the
    planner asks each rank only for its own shards' slices)."""

    def __init__(self, path: str, headers: dict[str, TensorHeader]):
        super().__init__(path)
        self.headers = headers
        self.bytes_read = self.largest_read = 0

    def read_data(self, plan, planner):
        for item in plan.items:
            n = self.headers[item.storage_index.fqn].dtype.itemsize
            for length in item.lengths:
                n *= length
            self.bytes_read += n
            self.largest_read = max(self.largest_read, n)
        return super().read_data(plan, planner)


def load_init_weights(model: torch.nn.Module, path: str | Path) -> InitLoad:
    """Load a Wan DiT checkpoint into ``model``, already sharded (FSDP2) and materialised, each
    rank reading only the slices it owns. Collective: every rank calls it.

    ``path`` is what :func:`model.checkpoint.checkpoint_files` takes (one ``.safetensors``, a
    sharded ``*.safetensors.index.json`` or a folder); keys are mapped to Wan names by
    :func:`model.checkpoint.wan_names` (diffusers names, wrapper prefixes) and cast to the
    parameters' dtype. Keys the model lacks are left unread.

    Raises:
        UsageError: nothing at ``path``, or the checkpoint lacks a parameter of the model or
            has one in another shape (the message lists them).
    """
    try:
        files = checkpoint_files(path)
    except FileNotFoundError as err:
        raise UsageError(f"model.init_from: {err}") from None
    headers = read_headers(files)
    names = wan_names(headers)
    # sharded DTensors sharing the parameters' storage, under clean Wan names (DCP drops the
    # activation-checkpoint and compile wrappers' prefixes)
    own = get_model_state_dict(model)
    # a LoRA model's base weights sit at <module>.base_layer.weight; its adapters are not in a
    # base checkpoint (they start from their own initialisation)
    own = {k.replace(".base_layer.", "."): v for k, v in own.items() if ".lora_" not in k}
    report = compare_shapes({k: tuple(v.shape) for k, v in own.items()},
                            {wan: headers[key].shape for key, wan in names.items()})
    if report.missing or report.mismatched:
        raise UsageError(f"model.init_from {path} does not fit the model: {report}")
    if report.unexpected:
        log.warning("%s: %d tensors the model does not have, not loaded: %s", path,
                    len(report.unexpected), report.unexpected[:5])
    request = {key: own[wan] for key, wan in names.items() if wan in own}
    # the reader loads every .safetensors of one folder: give it a folder of just these files
    with tempfile.TemporaryDirectory(prefix="init_from-") as folder:
        for f in files:
            os.symlink(f.resolve(), Path(folder) / f.name)
        reader = _SliceReader(folder, {key: headers[key] for key in request})
        dcp.load(request, storage_reader=reader)
    return InitLoad(report, reader.bytes_read, reader.largest_read,
                    sum(h.nbytes for h in headers.values()))
