"""FLOP counts of the DiT, for the attention benchmark and the trainer's MFU.

A multiply-add is 2 FLOPs. Attention counts the pairs the pattern computes: full attention
``L²``; HoloCine's sparse self-attention ``sum_i N_i · (N_i + G)`` per sample (shot i's ``N_i``
queries against its ``N_i`` keys plus the ``G``-token global bank, the duplicated own first frame
included, since the kernels compute it). Element-wise work (norms, RoPE, modulation, softmax) is
left out, as usual for MFU.
"""

from __future__ import annotations

import math

from multishot.model.config import WanConfig
from multishot.model.layout import ShotLayout

#: Backward over forward FLOPs: 2 for matmuls (grad input + grad weight); for attention
#: FlashAttention's convention of 2.5 (five matmuls against two) is used by the benchmark.
ATTENTION_BACKWARD_RATIO = 2.5


def attention_flops(num_pairs: int, num_heads: int, head_dim: int) -> int:
    """Forward FLOPs of attention over ``num_pairs`` query-key pairs: ``QK^T`` and ``PV``,
    ``4 · pairs · heads · head_dim``."""
    return 4 * num_pairs * num_heads * head_dim


def self_attention_pairs(seq_len: int, shot_layout: ShotLayout | None) -> int:
    """Query-key pairs of one sample's self-attention: ``L²`` or the sparse pattern's
    (the layout's average per sample)."""
    if shot_layout is None:
        return seq_len * seq_len
    return shot_layout.attention_pairs() // shot_layout.batch_size


def forward_flops(config: WanConfig, num_latent_frames: int, tokens_per_frame: int,
                  shot_layout: ShotLayout | None = None, text_len: int | None = None,
                  attention_pairs: int | None = None) -> int:
    """Model FLOPs of one forward pass of one sample.

    Args:
        config: the architecture.
        num_latent_frames, tokens_per_frame: the token grid (``L`` = their product; tokens per
            frame is after patching, 1560 at 480×832).
        shot_layout: sparse self-attention layout (per-sample average over its batch); None →
            full self-attention.
        text_len: text tokens attended (default ``config.text_len``: Wan pads to it).
        attention_pairs: self-attention query-key pairs of one sample, overriding the layout's
            (the causal mode's teacher forcing: ``2·F_lat`` frames and
            :func:`model.causal.teacher_forcing_attention_pairs`).
    Returns:
        FLOPs (int). Training step ≈ 3 × this (backward ≈ 2 × forward).
    """
    dim, ffn, heads, hd = config.dim, config.ffn_dim, config.num_heads, config.head_dim
    seq = num_latent_frames * tokens_per_frame
    lt = config.text_len if text_len is None else text_len
    patch = math.prod(config.patch_size)
    per_block = (
        2 * seq * dim * dim * 4                                   # self-attn q, k, v, o
        + attention_flops(self_attention_pairs(seq, shot_layout) if attention_pairs is None
                          else attention_pairs, heads, hd)
        + 2 * seq * dim * dim * 2 + 2 * lt * dim * dim * 2        # cross-attn q, o; k, v
        + attention_flops(seq * lt, heads, hd)                    # cross-attn (dense)
        + 2 * seq * dim * ffn * 2                                 # FFN
    )
    embed = (2 * seq * config.in_channels * patch * dim           # patch embedding
             + 2 * lt * (config.text_dim * dim + dim * dim)       # text embedding
             + 2 * (config.freq_dim * dim + dim * dim + dim * 6 * dim))  # time embedding
    head = 2 * seq * dim * config.out_channels * patch
    return config.num_layers * per_block + embed + head
