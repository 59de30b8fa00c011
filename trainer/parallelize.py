"""Parallelism applied beside the single-device model (torchtitan's ``parallelize`` order):
regional ``torch.compile`` of every block, per-block activation checkpointing, then FSDP2 per
block, then FSDP2 on the root.

The model code (``model/dit.py``) knows nothing of this. Attention takes ``q, k, v`` as
``[B, L, heads, head_dim]`` in one function, so Ulysses context parallelism (an all-to-all
from sequence-sharded to head-sharded before it, and back after) can wrap that call later
without touching the sparse attention.
"""

from __future__ import annotations

from functools import partial

import torch
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard
from torch import nn
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

_aten = torch.ops.aten
#: ops whose outputs selective checkpointing keeps (torchtitan's ``_save_list``, all matmuls
#: kept): the Linear matmuls and every attention kernel the backends call (cuDNN, flash,
#: memory-efficient, CPU flash, varlen flash). Everything else in a block is element-wise
#: or a norm in float32 (modulation, LayerNorm, RMSNorm, RoPE, GELU, gated residuals): cheap
#: to recompute but as large as the matmul outputs, so it is recomputed.
SAVED_OPS = frozenset(op for op in (
    _aten.mm.default, _aten.addmm.default, _aten.bmm.default, _aten.baddbmm.default,
    _aten.convolution.default,
    _aten._scaled_dot_product_cudnn_attention.default,
    _aten._scaled_dot_product_flash_attention.default,
    _aten._scaled_dot_product_efficient_attention.default,
    _aten._scaled_dot_product_flash_attention_for_cpu.default,
    _aten._flash_attention_forward.default,
    _aten._efficient_attention_forward.default,
))


def _selective_policy(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    """Keep the outputs of :data:`SAVED_OPS`, recompute the rest (``torch.utils.checkpoint``'s
    selective activation checkpointing)."""
    return CheckpointPolicy.MUST_SAVE if op in SAVED_OPS else CheckpointPolicy.PREFER_RECOMPUTE


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


def apply_activation_checkpointing(model: nn.Module, skip_last: int = 0, policy: str = "full",
                                   preserve_rng_state: bool = False) -> None:
    """Wrap blocks of ``model.blocks`` so their activations are recomputed in backward
    (non-reentrant ``torch.utils.checkpoint``; DiffSynth's per-block gradient checkpointing).

    Args:
        skip_last: the last ``skip_last`` blocks keep their activations (no recompute): each
            saves a third of its forward's work for its activations' memory.
        policy: ``"full"`` recomputes the whole block; ``"selective"`` keeps the outputs of
            :data:`SAVED_OPS` (matmuls, attention) and recomputes the element-wise and norm
            ops between them (``create_selective_checkpoint_contexts``, as torchtitan's op-level
            SAC). Selective needs eager blocks or blocks compiled *after* this wrapping
            (:func:`apply_compile` on the wrapped blocks): a policy cannot see into a graph
            compiled inside it.
        preserve_rng_state: replay the forward's RNG in the recompute (needed when the block
            draws random numbers: LoRA dropout).
    Raises:
        ValueError: unknown policy.
    """
    if policy not in ("full", "selective"):
        raise ValueError(f"unknown activation checkpointing policy {policy!r}")
    extra = {"context_fn": partial(create_selective_checkpoint_contexts, _selective_policy)} \
        if policy == "selective" else {}
    for i, block in enumerate(model.blocks):
        if i < len(model.blocks) - skip_last:
            model.blocks[i] = checkpoint_wrapper(block, preserve_rng_state=preserve_rng_state, **extra)


def apply_fsdp(model: nn.Module, mixed_precision: bool, cpu_offload: bool = False) -> None:
    """Shard ``model`` with FSDP2 over the default process group: one unit per block, then
    the root (embeddings, head).

    Args:
        mixed_precision: bf16 parameters for compute with fp32 gradient reduction (the sharded
            fp32 parameters stay the optimiser's master weights); False computes in fp32 (CPU /
            gloo runs).
        cpu_offload: keep the sharded parameters, their gradients and so the optimiser state
            in pinned CPU memory (``CPUOffloadPolicy``); each unit is copied to the GPU for its
            all-gather and the optimiser step runs on the CPU. Lets a 5B full fine-tune fit
            an 80 GB GPU, at the cost of host-device copies and a CPU AdamW step.
    """
    # cast_forward_inputs off: the model casts activations to its parameters' dtype itself and
    # keeps timesteps and the modulation in fp32 (Wan asserts it; bf16 timesteps near 1000
    # would round to steps of 4)
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32,
                                  cast_forward_inputs=False) \
        if mixed_precision else MixedPrecisionPolicy(cast_forward_inputs=False)
    offload = CPUOffloadPolicy(pin_memory=torch.cuda.is_available()) if cpu_offload else OffloadPolicy()
    last = len(model.blocks) - 1
    for i, block in enumerate(model.blocks):
        # the last block's parameters are needed again at once by backward: keep them gathered
        fully_shard(block, mp_policy=policy, offload_policy=offload, reshard_after_forward=i < last)
    fully_shard(model, mp_policy=policy, offload_policy=offload)
