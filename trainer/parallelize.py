"""Parallelism applied beside the single-device model (torchtitan's ``parallelize`` order):
per-block activation checkpointing, then FSDP2 per block, then FSDP2 on the root.

The model code (``model/dit.py``) knows nothing of this. Attention takes ``q, k, v`` as
``[B, L, heads, head_dim]`` in one function, so Ulysses context parallelism (an all-to-all
from sequence-sharded to head-sharded before it, and back after) can wrap that call later
without touching the sparse attention.
"""

from __future__ import annotations

import torch
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch import nn


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Wrap every block of ``model.blocks`` so its activations are recomputed in backward
    (non-reentrant ``torch.utils.checkpoint``; DiffSynth's per-block gradient checkpointing)."""
    for i, block in enumerate(model.blocks):
        model.blocks[i] = checkpoint_wrapper(block, preserve_rng_state=False)


def apply_fsdp(model: nn.Module, mixed_precision: bool) -> None:
    """Shard ``model`` with FSDP2 over the default process group: one unit per block, then
    the root (embeddings, head).

    Args:
        mixed_precision: bf16 parameters for compute with fp32 gradient reduction (the sharded
            fp32 parameters stay the optimiser's master weights); False computes in fp32 (CPU /
            gloo runs).
    """
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
        if mixed_precision else MixedPrecisionPolicy()
    last = len(model.blocks) - 1
    for i, block in enumerate(model.blocks):
        # the last block's parameters are needed again at once by backward: keep them gathered
        fully_shard(block, mp_policy=policy, reshard_after_forward=i < last)
    fully_shard(model, mp_policy=policy)
