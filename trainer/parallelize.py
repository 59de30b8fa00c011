"""Parallelism applied beside the single-device model: :func:`parallelize` owns the order.

:func:`build_model` builds the model on the ``meta`` device, calls :func:`parallelize`, then
materialises the shards (``to_empty`` + ``WanModel.init_weights``) and loads ``init_from`` into
them (:func:`trainer.checkpoint.load_init_weights`), so no rank holds the whole model.

The model code (``model/dit.py``) knows nothing of this. Attention takes ``q, k, v`` as
``[B, L, heads, head_dim]`` in one function, so Ulysses context parallelism (an all-to-all
from sequence-sharded to head-sharded before it, and back after) can wrap that call later
without touching the sparse attention.
"""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch import nn

from multishot.model.config import WanConfig
from multishot.model.dit import WanModel
from multishot.trainer.checkpoint import InitLoad, load_init_weights

if TYPE_CHECKING:
    from multishot.trainer.config import ModelConfig

log = logging.getLogger(__name__)


def build_model(model_config: WanConfig, config: ModelConfig, device: torch.device, *,
                seed: int, mixed_precision: bool, load_init: bool = True,
                ) -> tuple[torch.nn.Module, InitLoad | None]:
    """The sharded ``WanModel`` of a run (collective: every rank of the default process group).

    Built on ``meta``, wrapped by :func:`parallelize` (compile → activation checkpointing →
    FSDP2), materialised on ``device`` (``to_empty``) with Wan's initialisation
    (``WanModel.init_weights``), then, if ``config.init_from`` and ``load_init``, read from that
    checkpoint slice by slice (:func:`trainer.checkpoint.load_init_weights`): no rank holds the
    whole model or state dict.

    Args:
        model_config: the architecture (``model.config.get_config(config.name)``).
        config: the run's model section (backend, sparse attention, wrappers, ``init_from``).
        seed: seeds the initialisation.
        load_init: read ``config.init_from`` (False when a resume will overwrite the weights).
        mixed_precision: bf16 compute under FSDP2 (:func:`apply_fsdp`).
    Returns:
        the model and what the checkpoint load read on this rank (None without a load).
    Raises:
        UsageError: ``init_from`` is missing or does not fit the architecture.
    """
    with torch.device("meta"):
        model = WanModel(model_config, config.attention_backend,
                         sparse_self_attention=config.sparse_self_attention)
    parallelize(model, config, device, mixed_precision)
    model.to_empty(device=device)
    # CUDA: DTensor's offset-based RNG draws every shard as its part of one seeded full
    # tensor. CPU has no DTensor RNG: each rank draws its shards from its own generator, so the
    # seed is made per rank (one seed would give every rank's shards the same values).
    torch.manual_seed(seed + (dist.get_rank() if device.type == "cpu" else 0))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "DTensor random operators may not have complete support")
        model.init_weights()
    loaded = None
    if config.init_from and load_init:
        loaded = load_init_weights(model, config.init_from)
        log.info("initialised from %s: read %.1f of its %.1f MiB on this rank", config.init_from,
                 loaded.bytes_read / 2**20, loaded.checkpoint_bytes / 2**20)
    return model, loaded


def parallelize(model: nn.Module, config: ModelConfig, device: torch.device,
                mixed_precision: bool) -> None:
    """Wrap ``model`` (a ``WanModel``, on ``meta`` or materialised) in place, in this order:

    1. regional ``torch.compile`` of every block (:func:`apply_compile`), if
       ``config.compile`` (None: on for CUDA, off for CPU);
    2. activation checkpointing around every block but the last ``checkpoint_skip_last``
       (:func:`apply_activation_checkpointing`), if ``config.activation_checkpointing``;
    3. FSDP2 on every block, then on the root (:func:`apply_fsdp`).

    torchtitan checkpoints first and compiles the checkpointed block; we compile inside the
    checkpoint because our self-attention call is a deliberate graph break (an eager island,
    :func:`model.dit.self_attention_kernel`), and a checkpoint region dynamo traces must be one
    graph. FSDP comes last so that its all-gather hooks wrap the whole (checkpointed) block.

    Args:
        mixed_precision: bf16 compute with fp32 gradient reduction (see :func:`apply_fsdp`).
    """
    if device.type == "cuda" if config.compile is None else config.compile:
        apply_compile(model)
    if config.activation_checkpointing:
        apply_activation_checkpointing(model, config.checkpoint_skip_last)
    apply_fsdp(model, mixed_precision)


def apply_compile(model: nn.Module, backend: str = "inductor") -> None:
    """Compile every block of ``model.blocks`` in place (regional compilation,
    ``nn.Module.compile``: parameter names and state-dict keys unchanged).

    The blocks share one code object and dynamo lifts their parameters to graph inputs, so the
    graphs are compiled once and reused by all blocks. Inductor fuses the float32 element-wise
    work around the matmuls (modulation, LayerNorm / RMSNorm, RoPE, gated residuals: bf16 in,
    float32 math, bf16 out, one kernel) — the numerics stay Wan's. The self-attention call
    (:func:`model.dit.self_attention_kernel`) is an eager island, so a new shot layout
    recompiles nothing. Compiled inside the activation checkpoint and the FSDP2 unit: the
    recompute re-runs the compiled forward, and FSDP's all-gather hooks stay eager.

    Args:
        backend: the ``torch.compile`` backend (``"aot_eager"`` checks the graphs without
            generating kernels).
    """
    for block in model.blocks:
        block.compile(backend=backend)


def apply_activation_checkpointing(model: nn.Module, skip_last: int = 0) -> None:
    """Wrap blocks of ``model.blocks`` so their activations are recomputed in backward
    (non-reentrant ``torch.utils.checkpoint``; DiffSynth's per-block gradient checkpointing).

    Args:
        skip_last: the last ``skip_last`` blocks keep their activations (no recompute): each
            saves a third of its forward's work for its activations' memory.
    """
    for i, block in enumerate(model.blocks):
        if i < len(model.blocks) - skip_last:
            model.blocks[i] = checkpoint_wrapper(block, preserve_rng_state=False)


def apply_fsdp(model: nn.Module, mixed_precision: bool) -> None:
    """Shard ``model`` with FSDP2 over the default process group: one unit per block, then
    the root (embeddings, head).

    Args:
        mixed_precision: bf16 parameters for compute with fp32 gradient reduction (the sharded
            fp32 parameters stay the optimiser's master weights); False computes in fp32 (CPU /
            gloo runs).
    """
    # cast_forward_inputs off: the model casts activations to its parameters' dtype itself and
    # keeps timesteps and the modulation in fp32 (Wan asserts it; bf16 timesteps near 1000
    # would round to steps of 4)
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32,
                                  cast_forward_inputs=False) \
        if mixed_precision else MixedPrecisionPolicy(cast_forward_inputs=False)
    last = len(model.blocks) - 1
    for i, block in enumerate(model.blocks):
        # the last block's parameters are needed again at once by backward: keep them gathered
        fully_shard(block, mp_policy=policy, reshard_after_forward=i < last)
    # the time embedding and projection are tiny and feed every block's modulation: fp32
    # parameters in forward, as Wan computes them (bf16 weights put 0.4% error into e0)
    fp32 = MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32, cast_forward_inputs=False)
    for module in (model.time_embedding, model.time_projection):
        fully_shard(module, mp_policy=fp32)
    fully_shard(model, mp_policy=policy)
