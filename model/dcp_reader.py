"""Reading torch.distributed.checkpoint (DCP) folders without running code from them.

DCP's ``FileSystemReader`` reads a checkpoint's ``.metadata`` with ``pickle.load`` and its
non-tensor entries (step, scheduler, loader position, RNG state) with
``torch.load(weights_only=False)`` (torch 2.13 ``filesystem.py`` / ``default_planner.py``): a
crafted file in a run folder, which people share and download like weights, would run code on
``multishot train`` (resume), ``export-lora`` or a distill resume. Here

* ``.metadata`` is unpickled by :class:`MetadataUnpickler`, which admits only DCP's own metadata
  classes and the torch / pathlib types they hold (the list below is every class a DCP save in
  this torch writes; anything else is refused before it is created);
* non-tensor entries are read with ``torch.load(weights_only=True)``, torch's own restricted
  unpickler (tensors, containers, numbers, strings).

A refused file raises :class:`UnsafeCheckpointError` naming the file and the refused global; no
object of the file is built, so nothing the file asks for runs.
"""

from __future__ import annotations

import io
import pathlib
import pickle
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import metadata as dcp_metadata
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.planner import ReadItem

from multishot.errors import UsageError


class UnsafeCheckpointError(UsageError):
    """A checkpoint file asks to build an object that a checkpoint never holds."""


def _allowed() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {}
    for name in ("Metadata", "TensorStorageMetadata", "TensorProperties", "ChunkStorageMetadata",
                 "BytesStorageMetadata", "StorageMeta", "MetadataIndex", "_MEM_FORMAT_ENCODING"):
        allowed[("torch.distributed.checkpoint.metadata", name)] = getattr(dcp_metadata, name)
    allowed[("torch.distributed.checkpoint.filesystem", "_StorageInfo")] = _StorageInfo
    allowed[("torch", "Size")] = torch.Size
    for name in dir(torch):  # dtypes pickle as their name in module torch (torch.float32 ...)
        value = getattr(torch, name, None)
        if isinstance(value, torch.dtype):
            allowed[("torch", name)] = value
    allowed[("torch.serialization", "_get_layout")] = torch.serialization._get_layout
    for name in ("PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath", "Path"):
        allowed[("pathlib", name)] = getattr(pathlib, name)
    allowed[("collections", "OrderedDict")] = __import__("collections").OrderedDict
    return allowed


_ALLOWED = _allowed()


class MetadataUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only the globals a DCP ``.metadata`` holds."""

    def __init__(self, file: io.BufferedIOBase, source: str):
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafeCheckpointError(
                f"{self.source}: refused to load {module}.{name} (a DCP checkpoint's metadata "
                "holds only checkpoint metadata classes; this file may be crafted to run code)"
            ) from None


def read_metadata_file(path: str | Path) -> dcp_metadata.Metadata:
    """The ``Metadata`` in DCP file ``path`` (a checkpoint folder's ``.metadata``).

    Raises:
        UnsafeCheckpointError: the file names a global outside DCP's metadata classes, or is
            not DCP metadata at all.
    """
    path = Path(path)
    with open(path, "rb") as f:
        try:
            meta = MetadataUnpickler(f, str(path)).load()
        except UnsafeCheckpointError:
            raise
        except Exception as e:  # truncated / not a pickle
            raise UnsafeCheckpointError(f"{path}: not a DCP checkpoint metadata file ({e})") from None
    if not isinstance(meta, dcp_metadata.Metadata):
        raise UnsafeCheckpointError(f"{path}: holds {type(meta).__name__}, not DCP Metadata")
    return meta


class SafeFileSystemReader(dcp.FileSystemReader):
    """DCP's ``FileSystemReader`` with ``.metadata`` read by :func:`read_metadata_file`."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> dcp_metadata.Metadata:
        meta = read_metadata_file(self._get_metadata_path(kwargs.get("rank")))
        if getattr(meta, "storage_meta", None) is None:
            meta.storage_meta = dcp_metadata.StorageMeta()
        meta.storage_meta.load_id = self.load_id
        return meta


class SafeLoadPlanner(DefaultLoadPlanner):
    """DCP's ``DefaultLoadPlanner`` reading non-tensor entries with ``weights_only=True``."""

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        try:
            obj = torch.load(value, weights_only=True)
        except pickle.UnpicklingError as e:
            raise UnsafeCheckpointError(
                f"checkpoint entry {read_item.dest_index.fqn}: refused to unpickle "
                f"({str(e).splitlines()[0]})") from None
        # as DefaultLoadPlanner.load_bytes (torch 2.13), with the object loaded above
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj


def load(state_dict: dict[str, Any], path: str | Path, no_dist: bool = False) -> None:
    """``dcp.load(state_dict, checkpoint_id=path)`` through the safe reader and planner
    (collective unless ``no_dist``).

    Raises:
        UnsafeCheckpointError: a file of the checkpoint asks for an object a checkpoint never holds.
    """
    # DCP turns a failed metadata read into an AssertionError text: read it here first, so that
    # a refusal surfaces as itself on every rank (each reads the file; it is small)
    read_metadata_file(Path(path) / ".metadata")
    try:
        dcp.load(state_dict, storage_reader=SafeFileSystemReader(str(path)),
                 planner=SafeLoadPlanner(), no_dist=no_dist)
    except CheckpointException as err:
        # DCP wraps each rank's exception (with its traceback) into one CheckpointException
        for exc, _ in err.failures.values():
            if isinstance(exc, UnsafeCheckpointError):
                raise exc from None
        raise
