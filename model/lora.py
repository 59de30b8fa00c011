"""LoRA fine-tuning of the Wan DiT through peft, and the adapter file the Wan tools load.

Training: :func:`apply_lora` injects peft LoRA layers (``peft.inject_adapter_in_model``) into
the Linear layers named by ``model.lora.target_modules`` and freezes everything else; the
trainer then wraps the model as usual (compile → activation checkpointing → FSDP2), hands the
optimiser only the adapter parameters, and checkpoints only those (plus the optimiser).

A LoRA layer computes ``W x + s · B (A x)`` with ``A`` ``[rank, in]``, ``B`` ``[out, rank]``
(zero at the start, so training starts at the base model) and ``s = alpha / rank``
(Hu et al. 2021, peft's ``LoraLayer``).

The adapter file (:func:`save_adapter`) is one safetensors file in the key layout of the Wan
LoRAs people share, which ComfyUI (``comfy/lora.py``: ``diffusion_model.<module>`` +
``.lora_A/.lora_B.weight``), DiffSynth-Studio (``diffsynth/lora/GeneralLoRALoader``) and
diffusers (``WanLoraLoaderMixin`` via ``_convert_non_diffusers_wan_lora_to_diffusers``) all
load::

    diffusion_model.blocks.0.self_attn.q.lora_A.weight   [rank, in]
    diffusion_model.blocks.0.self_attn.q.lora_B.weight   [out, rank]   (× alpha / rank)

The scale ``alpha / rank`` is folded into ``lora_B`` and no ``.alpha`` keys are written:
DiffSynth ignores ``.alpha`` (it multiplies ``B·A`` by the user's strength only), while
ComfyUI and diffusers read a missing alpha as scale 1, so all three apply the same update.
Rank, alpha and targets are kept in the file's metadata.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from pydantic import Field

from multishot.config import Section
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

#: Wan's attention projections (self and cross: q, k, v, o) and both FFN linears, as peft
#: module-name suffixes; DiffSynth-Studio's default ``lora_target_modules`` for Wan.
DEFAULT_TARGET_MODULES = ["q", "k", "v", "o", "ffn.0", "ffn.2"]

#: peft's name of the one adapter a run trains
ADAPTER_NAME = "default"

#: key prefix of the exported adapter (ComfyUI's ``diffusion_model.`` namespace)
FILE_PREFIX = "diffusion_model."

_PEFT_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])\.(?:" + ADAPTER_NAME + r"\.)?weight$")


class LoraConfig(Section):
    """``model.lora`` of a train config: LoRA adapters instead of a full fine-tune."""

    rank: int = Field(32, ge=1, description="rank r of every adapter (A: [r, in], B: [out, r])")
    alpha: float | None = Field(None, gt=0, description=(
        "scale numerator: the update is (alpha / rank)·B·A; None = rank (scale 1)"))
    dropout: float = Field(0.0, ge=0, lt=1, description=(
        "dropout on the adapter input (peft lora_dropout); > 0 makes activation checkpointing "
        "keep the RNG state for the recompute"))
    target_modules: list[str] = Field(default_factory=lambda: list(DEFAULT_TARGET_MODULES),
                                      min_length=1, description=(
        "Linear layers to adapt, as module-name suffixes (peft target_modules): the default "
        "is the attention projections q, k, v, o (self and cross) and the FFN's ffn.0, ffn.2"))

    @property
    def scale(self) -> float:
        """``alpha / rank``: the factor on ``B·A``."""
        return (self.alpha or self.rank) / self.rank


def _peft():
    """Import peft (it imports transformers, which imports torchvision: see torchvision_cpu)."""
    from multishot.torchvision_cpu import import_torchvision

    import_torchvision()
    import peft

    return peft


def apply_lora(model: nn.Module, config: LoraConfig, base_dtype: torch.dtype | None = None) -> nn.Module:
    """Inject LoRA adapters into ``model`` in place and freeze everything but them.

    Call on the plain model, before compile, activation checkpointing and FSDP (torchtitan's
    order: model changes first, then the parallelism). The base Linears become peft
    ``lora.Linear`` modules: their weights move to ``<module>.base_layer.weight``; the
    adapters are ``<module>.lora_A.default.weight`` (Kaiming-uniform) and
    ``<module>.lora_B.default.weight`` (zeros), so the model's output is unchanged.

    Args:
        base_dtype: cast the frozen base parameters to this dtype (bf16 on GPUs: the base is
            only read, so it needs no fp32 master copy); the adapters stay float32.
    Returns:
        ``model`` (the same object).
    Raises:
        ValueError: no module of ``model`` matches ``config.target_modules`` (peft's message),
            or a matched module is not a Linear.
    """
    peft = _peft()
    spec = peft.LoraConfig(r=config.rank, lora_alpha=config.alpha or config.rank,
                           lora_dropout=config.dropout, target_modules=list(config.target_modules),
                           bias="none")
    peft.inject_adapter_in_model(spec, model, adapter_name=ADAPTER_NAME)
    wrong = [name for name, m in model.named_modules()
             if isinstance(m, peft.tuners.lora.LoraLayer) and not isinstance(m.get_base_layer(), nn.Linear)]
    if wrong:
        raise ValueError(f"model.lora.target_modules match non-Linear modules {wrong[:3]}")
    for name, param in model.named_parameters():
        param.requires_grad_(".lora_" in name)
        if base_dtype is not None and not param.requires_grad:
            param.data = param.data.to(base_dtype)
    return model


def init_adapters(model: nn.Module) -> None:
    """Give every adapter peft's initialisation again (A Kaiming-uniform, B zeros): after a
    model built on ``meta`` is materialised, ``WanModel.init_weights`` has treated the
    adapters' Linears as its own."""
    peft = _peft()
    for module in model.modules():
        if isinstance(module, peft.tuners.lora.LoraLayer):
            module.reset_lora_parameters(ADAPTER_NAME, init_lora_weights=True)


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters that train (all of them in a full fine-tune, the adapters in LoRA)."""
    return [p for p in model.parameters() if p.requires_grad]


def _canonical(name: str) -> str:
    """A parameter name without the wrappers' prefixes (checkpoint wrapper, torch.compile)."""
    return name.replace("_checkpoint_wrapped_module.", "").replace("_orig_mod.", "")


def adapter_state_dict(peft_state: dict[str, torch.Tensor], config: LoraConfig) -> dict[str, torch.Tensor]:
    """peft adapter tensors (``<module>.lora_A.default.weight`` …, e.g. a model's full state
    dict) → the exported layout ``diffusion_model.<module>.lora_{A,B}.weight`` with
    ``alpha / rank`` folded into ``lora_B``; other keys are ignored. float32, on the CPU."""
    out = {}
    for key, value in peft_state.items():
        match = _PEFT_KEY.match(_canonical(key))
        if match is None:
            continue
        value = value.detach().float().cpu()
        if match["ab"] == "B":
            value = value * config.scale
        out[f"{FILE_PREFIX}{match['module']}.lora_{match['ab']}.weight"] = value.contiguous()
    return out


def save_adapter(adapter: dict[str, torch.Tensor], path: str | Path, config: LoraConfig) -> Path:
    """Write an :func:`adapter_state_dict` as one safetensors file (metadata: rank, alpha,
    targets). Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": "pt", "lora_rank": str(config.rank), "lora_alpha": str(config.alpha or config.rank),
            "lora_target_modules": json.dumps(config.target_modules),
            "lora_scale_folded_into_B": "true"}
    save_file(adapter, str(path), metadata=meta)
    return path


def load_adapter(path: str | Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Read a Wan LoRA file: ``{module name: (A [r, in], B [out, r])}`` in official Wan module
    names (``blocks.0.self_attn.q``), float32, with the file's scale already in ``B``.

    Accepts our export and the common variants: a ``diffusion_model.`` / ``model.diffusion_model.``
    prefix or none, ``lora_A/lora_B`` or ``lora_down/lora_up``, and ``.alpha`` keys (folded
    in as ``alpha / rank``, as ComfyUI does).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: a module has A without B (or the reverse), or a key is not a LoRA key.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no LoRA file at {path}")
    with safe_open(str(path), "pt") as f:
        return adapter_modules({k: f.get_tensor(k) for k in f.keys()}, str(path))


def adapter_modules(tensors: dict[str, torch.Tensor], source: str = "adapter",
                    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Wan LoRA tensors (a file's keys, see :func:`load_adapter`) → ``{module: (A, B)}``.

    Raises:
        ValueError: as :func:`load_adapter` (``source`` names the origin in the message).
    """
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        name = key.removeprefix("model.").removeprefix(FILE_PREFIX)
        match = re.match(r"^(.+)\.(lora_A|lora_down|lora_B|lora_up)\.weight$|^(.+)\.(alpha)$", name)
        if match is None:
            raise ValueError(f"{source}: {key!r} is not a LoRA key (<module>.lora_A/B.weight, .alpha)")
        module = match[1] or match[3]
        kind = {"lora_A": "A", "lora_down": "A", "lora_B": "B", "lora_up": "B", "alpha": "alpha"}[match[2] or match[4]]
        parts.setdefault(module, {})[kind] = value.float()
    out = {}
    for module, p in parts.items():
        if "A" not in p or "B" not in p:
            raise ValueError(f"{source}: module {module} lacks lora_{'B' if 'A' in p else 'A'}")
        b = p["B"] * (float(p["alpha"]) / p["A"].shape[0]) if "alpha" in p else p["B"]
        out[module] = (p["A"], b)
    return out


def merge_adapter(base: dict[str, torch.Tensor], adapter: dict[str, tuple[torch.Tensor, torch.Tensor]],
                  scale: float = 1.0) -> dict[str, torch.Tensor]:
    """Full Wan weights with the adapter merged: ``W' = W + scale · B · A`` (float32 math,
    stored in each weight's dtype).

    Args:
        base: a Wan state dict in official names (``blocks.0.self_attn.q.weight`` …).
        adapter: :func:`load_adapter`'s modules (the LoRA scale already in ``B``).
        scale: strength on top (1 = as trained).
    Raises:
        ValueError: the adapter names a module the base lacks, or the shapes disagree.
    """
    merged = dict(base)
    for module, (a, b) in adapter.items():
        key = f"{module}.weight"
        if key not in base:
            raise ValueError(f"LoRA module {module} is not in the base weights")
        w = base[key]
        if (b.shape[0], a.shape[1]) != tuple(w.shape) or a.shape[0] != b.shape[1]:
            raise ValueError(f"LoRA {module}: B {tuple(b.shape)} · A {tuple(a.shape)} does not fit "
                             f"weight {tuple(w.shape)}")
        merged[key] = (w.float() + scale * (b.to(w.device) @ a.to(w.device))).to(w.dtype)
    return merged


def base_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A LoRA-injected model's state dict → the base weights in official Wan names (adapter
    tensors dropped, peft's ``.base_layer`` and wrapper prefixes removed)."""
    return {_canonical(k).replace(".base_layer.", "."): v for k, v in state.items() if ".lora_" not in k}


@torch.no_grad()
def apply_lora_file(model: nn.Module, path: str | Path, scale: float = 1.0) -> int:
    """Merge a Wan LoRA file into ``model``'s weights in place: ``W += scale · B · A`` for every
    module the file names (``multishot generate --lora PATH --lora-scale S``). Merging costs
    nothing per step at inference; to undo, reload the base weights.

    Args:
        model: a plain :class:`model.dit.WanModel` (not LoRA-injected, not sharded).
        path: a LoRA file (:func:`load_adapter` lists the accepted layouts).
        scale: strength (1 = as trained; 0 leaves the model as it is).
    Returns:
        the number of weights changed.
    Raises:
        FileNotFoundError, ValueError: as :func:`load_adapter`; a module the model lacks or
            whose shape disagrees.
    """
    adapter = load_adapter(path)
    params = dict(model.named_parameters())
    weights = {f"{m}.weight": params.get(f"{m}.weight") for m in adapter}
    missing = [k for k, w in weights.items() if w is None]
    if missing:
        raise ValueError(f"{path} names modules the model lacks: {missing[:3]}")
    merged = merge_adapter({k: w.data for k, w in weights.items()}, adapter, scale)
    for key, w in weights.items():
        w.copy_(merged[key])
    return len(adapter)


def export_adapter(model: nn.Module, config: LoraConfig, path: str | Path) -> Path | None:
    """Gather the (FSDP2-sharded) adapters and write them on rank 0 as a Wan LoRA file
    (:func:`save_adapter`). Collective: every rank calls it.

    Returns:
        the path on rank 0, None on other ranks.
    """
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(
        full_state_dict=True, cpu_offload=True, ignore_frozen_params=True))
    out = save_adapter(adapter_state_dict(state, config), path, config) if dist.get_rank() == 0 else None
    dist.barrier()
    return out


def read_checkpoint_adapter(checkpoint: str | Path, config: LoraConfig) -> dict[str, torch.Tensor]:
    """The adapter of a LoRA run's DCP checkpoint folder (``checkpoints/step-NNNNNNNN``) in the
    exported layout (:func:`adapter_state_dict`), read in this process without a process group.

    Raises:
        FileNotFoundError: ``checkpoint`` is not a complete DCP checkpoint.
        ValueError: it holds no LoRA adapter (a full fine-tune's checkpoint).
    """
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    from multishot.model import dcp_reader

    checkpoint = Path(checkpoint)
    if not (checkpoint / ".metadata").is_file():
        raise FileNotFoundError(f"no complete DCP checkpoint at {checkpoint}")
    meta = dcp_reader.read_metadata_file(checkpoint / ".metadata").state_dict_metadata
    prefix = "train.model."  # trainer.checkpoint saves {"train": TrainState}; its "model" entry
    wanted = {key: torch.empty(m.size, dtype=m.properties.dtype) for key, m in meta.items()
              if key.startswith(prefix) and ".lora_" in key and isinstance(m, TensorStorageMetadata)}
    if not wanted:
        raise ValueError(f"{checkpoint} holds no LoRA adapter (model.lora was not set)")
    dcp_reader.load(wanted, checkpoint, no_dist=True)
    return adapter_state_dict({k[len(prefix):]: v for k, v in wanted.items()}, config)
