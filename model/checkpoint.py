"""Checkpoint I/O in Wan's official parameter names.

Reads Wan2.1 / Wan2.2 / HoloCine safetensors (one file, or shards with a
``*.safetensors.index.json``) and diffusers-format Wan transformers (``WanTransformer3DModel``
key names, mapped as DiffSynth-Studio's ``WanModelStateDictConverter.from_diffusers`` does), and
writes safetensors in official names.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

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


def is_diffusers_state_dict(state_dict: dict[str, torch.Tensor]) -> bool:
    """True for diffusers ``WanTransformer3DModel`` key names."""
    return any(k.startswith("condition_embedder.") or ".attn1." in k for k in state_dict)


def from_diffusers(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename diffusers Wan keys to Wan's; keys no rule matches are kept as they are (and then
    show up as unexpected in :func:`load_into`)."""
    out = {}
    for key, value in state_dict.items():
        new = key
        for pattern, repl in _DIFFUSERS_RULES:
            new, n = re.subn(pattern, repl, key)
            if n:
                break
        out[new] = value
    return out


def _strip_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in _PREFIXES:
        if state_dict and all(k.startswith(prefix) for k in state_dict):
            return {k[len(prefix):]: v for k, v in state_dict.items()}
    return state_dict


def load_state_dict_file(path: str | Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """A Wan DiT state dict in official names from safetensors.

    ``path`` is a ``.safetensors`` file, a ``*.safetensors.index.json`` (shards listed in its
    ``weight_map``), or a folder holding one index or any ``.safetensors`` files. Diffusers names
    are mapped (:func:`from_diffusers`), a common wrapper prefix stripped.

    Raises:
        FileNotFoundError: nothing loadable at ``path``.
        ValueError: the same key appears in two files.
    """
    path = Path(path)
    if path.is_dir():
        index = sorted(path.glob("*.safetensors.index.json"))
        files = [path / f for f in sorted(set(json.loads(index[0].read_text())["weight_map"]
                                              .values()))] if index \
            else sorted(path.glob("*.safetensors"))
    elif path.name.endswith(".index.json"):
        files = [path.parent / f for f in
                 sorted(set(json.loads(path.read_text())["weight_map"].values()))]
    else:
        files = [path]
    if not files or not all(f.is_file() for f in files):
        raise FileNotFoundError(f"no safetensors checkpoint at {path}")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        part = load_file(str(f), device=device)
        dup = state.keys() & part.keys()
        if dup:
            raise ValueError(f"{f} repeats keys {sorted(dup)[:3]}…")
        state.update(part)
    state = _strip_prefix(state)
    return from_diffusers(state) if is_diffusers_state_dict(state) else state


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
    report = LoadReport(missing=sorted(own.keys() - state_dict.keys()),
                        unexpected=sorted(state_dict.keys() - own.keys()))
    loadable = {}
    for key in sorted(own.keys() & state_dict.keys()):
        if own[key].shape != state_dict[key].shape:
            report.mismatched.append(f"{key}: {tuple(state_dict[key].shape)} vs "
                                     f"{tuple(own[key].shape)}")
        else:
            loadable[key] = state_dict[key]
    model.load_state_dict(loadable, strict=False)
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
