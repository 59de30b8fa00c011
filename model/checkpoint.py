"""Checkpoint I/O in Wan's official parameter names.

Reads Wan2.1 / Wan2.2 / HoloCine safetensors (one file, or shards with a
``*.safetensors.index.json``) and diffusers-format Wan transformers (``WanTransformer3DModel``
key names, mapped as DiffSynth-Studio's ``WanModelStateDictConverter.from_diffusers`` does), and
writes safetensors in official names. The name mapping (:func:`wan_names`) and the file headers
(:func:`read_headers`) also serve the trainer's distributed loader, which reads each rank's
slices without loading whole tensors (:func:`trainer.checkpoint.load_init_weights`).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from multishot.model.config import get_config
from multishot.model.dit import WanModel

log = logging.getLogger(__name__)

#: diffusers → Wan key rewrites, applied in order (block index kept by the regex group).
_DIFFUSERS_RULES: list[tuple[str, str]] = [
    (r"^blocks\.(\d+)\.attn1\.to_out\.0\.", r"blocks.\1.self_attn.o."),
    (r"^blocks\.(\d+)\.attn2\.to_out\.0\.", r"blocks.\1.cross_attn.o."),
    (r"^blocks\.(\d+)\.attn1\.to_([qkv])\.", r"blocks.\1.self_attn.\2."),
    (r"^blocks\.(\d+)\.attn2\.to_([qkv])\.", r"blocks.\1.cross_attn.\2."),
    (r"^blocks\.(\d+)\.attn1\.norm_([qk])\.", r"blocks.\1.self_attn.norm_\2."),
    (r"^blocks\.(\d+)\.attn2\.norm_([qk])\.", r"blocks.\1.cross_attn.norm_\2."),
    (r"^blocks\.(\d+)\.ffn\.net\.0\.proj\.", r"blocks.\1.ffn.0."),
    (r"^blocks\.(\d+)\.ffn\.net\.2\.", r"blocks.\1.ffn.2."),
    (r"^blocks\.(\d+)\.norm2\.", r"blocks.\1.norm3."),  # diffusers' norm2 is the affine one
    (r"^blocks\.(\d+)\.scale_shift_table$", r"blocks.\1.modulation"),
    (r"^condition_embedder\.text_embedder\.linear_1\.", "text_embedding.0."),
    (r"^condition_embedder\.text_embedder\.linear_2\.", "text_embedding.2."),
    (r"^condition_embedder\.time_embedder\.linear_1\.", "time_embedding.0."),
    (r"^condition_embedder\.time_embedder\.linear_2\.", "time_embedding.2."),
    (r"^condition_embedder\.time_proj\.", "time_projection.1."),
    (r"^scale_shift_table$", "head.modulation"),
    (r"^proj_out\.", "head.head."),
]

#: Prefixes some single-file exports put before the official names (ComfyUI, wrappers).
_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "dit.")


def is_diffusers_state_dict(state_dict: Iterable[str]) -> bool:
    """True for diffusers ``WanTransformer3DModel`` key names (``state_dict``: a state dict or
    its keys)."""
    return any(k.startswith("condition_embedder.") or ".attn1." in k for k in state_dict)


def from_diffusers(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename diffusers Wan keys to Wan's; keys no rule matches are kept as they are (and then
    show up as unexpected in :func:`load_into`)."""
    return {_from_diffusers_key(key): value for key, value in state_dict.items()}


def _from_diffusers_key(key: str) -> str:
    for pattern, repl in _DIFFUSERS_RULES:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    return key


def wan_names(keys: Iterable[str]) -> dict[str, str]:
    """Official Wan name of every checkpoint key: a wrapper prefix shared by all keys stripped
    (``model.diffusion_model.``, ...), diffusers names mapped (:func:`from_diffusers`).

    Returns:
        ``{checkpoint key: Wan key}`` in the order of ``keys``.
    """
    keys = list(keys)
    names = {k: k for k in keys}
    for prefix in _PREFIXES:
        if keys and all(k.startswith(prefix) for k in keys):
            names = {k: k[len(prefix):] for k in keys}
            break
    if is_diffusers_state_dict(names.values()):
        names = {k: _from_diffusers_key(v) for k, v in names.items()}
    return names


def checkpoint_files(path: str | Path) -> list[Path]:
    """The safetensors files of a checkpoint.

    ``path`` is a ``.safetensors`` file, a ``*.safetensors.index.json`` (shards listed in its
    ``weight_map``, e.g. Wan's ``diffusion_pytorch_model-0000x-of-0000y.safetensors``), or a
    folder holding one index or any ``.safetensors`` files.

    Raises:
        FileNotFoundError: nothing loadable at ``path`` (or a listed shard is missing).
    """
    path = Path(path)
    if path.is_dir():
        index = sorted(path.glob("*.safetensors.index.json"))
        files = _index_files(index[0]) if index else sorted(path.glob("*.safetensors"))
    elif path.name.endswith(".index.json") and path.is_file():
        files = _index_files(path)
    else:
        files = [path]
    if not files or not all(f.is_file() for f in files):
        raise FileNotFoundError(f"no safetensors checkpoint at {path}")
    return files


def _index_files(index: Path) -> list[Path]:
    return [index.parent / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]


@dataclass(frozen=True)
class TensorHeader:
    """A tensor of a safetensors file as its header describes it (no data read)."""

    file: Path
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def read_headers(files: list[Path]) -> dict[str, TensorHeader]:
    """``{checkpoint key: TensorHeader}`` of ``files`` from their headers alone.

    Raises:
        ValueError: the same key appears in two files.
    """
    headers: dict[str, TensorHeader] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as handle:
            for key in handle.keys():
                if key in headers:
                    raise ValueError(f"{f} repeats key {key} of {headers[key].file}")
                part = handle.get_slice(key)
                headers[key] = TensorHeader(f, tuple(part.get_shape()),
                                            _SAFETENSORS_DTYPES[part.get_dtype()])
    return headers


#: safetensors header dtype names → torch dtypes
_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
                       "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32,
                       "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
                       "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}


def load_state_dict_file(path: str | Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """A Wan DiT state dict in official names from safetensors (every tensor, on ``device``).

    ``path`` as :func:`checkpoint_files` takes it; names mapped by :func:`wan_names`. A
    distributed run loads only its shards instead (:func:`trainer.checkpoint.load_init_weights`).

    Raises:
        FileNotFoundError: nothing loadable at ``path``.
        ValueError: the same key appears in two files.
    """
    state: dict[str, torch.Tensor] = {}
    for f in checkpoint_files(path):
        part = load_file(str(f), device=device)
        dup = state.keys() & part.keys()
        if dup:
            raise ValueError(f"{f} repeats keys {sorted(dup)[:3]}…")
        state.update(part)
    return {wan: state[key] for key, wan in wan_names(state).items()}


def compare_shapes(model_shapes: dict[str, tuple[int, ...]],
                   file_shapes: dict[str, tuple[int, ...]]) -> LoadReport:
    """What loading a checkpoint of ``file_shapes`` into a model of ``model_shapes`` (both
    ``{Wan key: shape}``) would leave missing, unexpected and mismatched."""
    report = LoadReport(missing=sorted(model_shapes.keys() - file_shapes.keys()),
                        unexpected=sorted(file_shapes.keys() - model_shapes.keys()))
    for key in sorted(model_shapes.keys() & file_shapes.keys()):
        if tuple(model_shapes[key]) != tuple(file_shapes[key]):
            report.mismatched.append(f"{key}: {tuple(file_shapes[key])} vs "
                                     f"{tuple(model_shapes[key])}")
    return report


@dataclass
class LoadReport:
    """What :func:`load_into` did: keys the model has but the file lacked (``missing``), keys
    the file has but the model lacks (``unexpected``), and keys present in both with different
    shapes (``mismatched``: ``key: file shape vs model shape``; not loaded)."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every parameter loaded and nothing left over."""
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        return (f"{len(self.missing)} missing, {len(self.unexpected)} unexpected, "
                f"{len(self.mismatched)} mismatched"
                + "".join(f"\n  {name}: {keys[:5]}{'…' if len(keys) > 5 else ''}"
                          for name, keys in (("missing", self.missing),
                                             ("unexpected", self.unexpected),
                                             ("mismatched", self.mismatched)) if keys))


def load_into(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> LoadReport:
    """Copy ``state_dict`` into ``model`` by name (cast to each parameter's dtype), skipping
    keys of the wrong shape, and report what did not match. The model's own values stay where
    nothing was loaded."""
    own = model.state_dict()
    report = compare_shapes({k: tuple(v.shape) for k, v in own.items()},
                            {k: tuple(v.shape) for k, v in state_dict.items()})
    bad = {m.split(":")[0] for m in report.mismatched}
    model.load_state_dict({k: v for k, v in state_dict.items() if k in own and k not in bad},
                          strict=False)
    return report


def save_safetensors(state_dict: dict[str, torch.Tensor], path: str | Path,
                     max_shard_bytes: int | None = None) -> list[Path]:
    """Write ``state_dict`` (official Wan names) as safetensors.

    One file at ``path`` when it fits ``max_shard_bytes`` (or no limit is given); otherwise
    shards ``<stem>-00001-of-0000N.safetensors`` beside ``path`` plus
    ``<path>.index.json`` (Hugging Face layout), loadable with :func:`load_state_dict_file`.
    Returns the files written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if max_shard_bytes is not None and shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = t
        size += nbytes
    if len(shards) == 1:
        save_file(shards[0], str(path), metadata={"format": "pt"})
        return [path]
    stem = path.name.removesuffix(".safetensors")
    files, weight_map = [], {}
    for i, shard in enumerate(shards, 1):
        f = path.with_name(f"{stem}-{i:05d}-of-{len(shards):05d}.safetensors")
        save_file(shard, str(f), metadata={"format": "pt"})
        files.append(f)
        weight_map.update({k: f.name for k in shard})
    index = path.with_name(path.name + ".index.json")
    index.write_text(json.dumps({"metadata": {"total_size": sum(
        t.numel() * t.element_size() for t in tensors.values())}, "weight_map": weight_map},
        indent=1))
    return files + [index]


def load_dit(name: str, checkpoint: str, device: torch.device, dtype: torch.dtype, *,
             attention_backend: str = "sdpa", sparse_self_attention: bool = True,
             global_bank: bool = True) -> WanModel:
    """A :class:`WanModel` with ``checkpoint``'s weights, built on ``meta`` and materialised
    straight on ``device`` in ``dtype`` (no random initialisation of billions of weights). The
    time embedding and projection stay float32 (tiny; Wan computes them in float32 and bf16
    weights put ~0.4% error into the modulation, as the trainer's FSDP policy notes).

    Raises:
        FileNotFoundError: nothing loadable at ``checkpoint``.
        ValueError: the checkpoint lacks weights of the architecture or has other shapes.
    """
    with torch.device("meta"):
        model = WanModel(get_config(name), attention_backend,
                         sparse_self_attention=sparse_self_attention, global_bank=global_bank)
    model = model.to(dtype)
    model.time_embedding.float()
    model.time_projection.float()
    model = model.to_empty(device=device)
    report = load_into(model, load_state_dict_file(checkpoint, device="cpu"))
    if report.missing or report.mismatched:
        raise ValueError(f"{checkpoint} does not fit model {name}: {report}")
    if report.unexpected:
        log.warning("%s: %d unexpected keys ignored (%s…)", checkpoint, len(report.unexpected),
                    report.unexpected[:3])
    return model.eval().requires_grad_(False)
