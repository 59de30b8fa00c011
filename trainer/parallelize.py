"""Parallelism applied beside the single-device model (torchtitan's ``parallelize`` order):
the ``dp × cp`` device mesh, Ulysses context parallelism over its ``cp`` ranks, regional
``torch.compile`` of every block, per-block activation checkpointing, then FSDP2 per block,
then FSDP2 on the root.

The model code (``model/dit.py``) knows nothing of this beyond one hook: attention takes
``q, k, v`` as ``[B, L, heads, head_dim]`` in one function, and context parallelism
(:mod:`trainer.context_parallel`) wraps that call with its all-to-alls.
"""

from __future__ import annotations

import torch
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch import nn


def build_mesh(device: torch.device, world_size: int, context: int) -> DeviceMesh:
    """The ``("dp", "cp")`` device mesh of all ranks: ``world_size / context`` data-parallel
    groups of ``context`` ranks that split one sample (``parallel.context``).

    ``cp`` is the inner dimension, as in torchtitan: the ranks of a sample are consecutive, so
    on ``torchrun`` nodes their all-to-alls stay on one host's NVLink.

    Raises:
        ValueError: ``context`` does not divide ``world_size``.
    """
    if context < 1 or world_size % context:
        raise ValueError(f"parallel.context {context} must divide the number of ranks "
                         f"{world_size}")
    return init_device_mesh(device.type, (world_size // context, context),
                            mesh_dim_names=("dp", "cp"))


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

    The group is all ``dp × cp`` ranks (torchtitan's ``dp_shard_cp``): the ranks splitting a
    sample hold different parameter shards too, and FSDP's gradient average over them is the
    reduction context parallelism needs (:mod:`trainer.context_parallel`).

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
