"""The Wan2.1 / Wan2.2 DiT with HoloCine's multi-shot attention.

Reads bottom-up like Wan2.2's ``wan/modules/model.py`` (embeddings and RoPE → norms →
attention → block → head → model) and keeps its parameter names, so Wan2.1/2.2 and HoloCine
checkpoints load by name (:mod:`model.checkpoint`). Differences from Wan's code, all
numerically negligible or structural: RoPE is applied with real cos/sin in float32 instead of
complex float64; the timestep is one value per sample (``[B]``) in :meth:`WanModel.forward`
and one per latent frame in the causal mode (Wan2.2's per-token timesteps, stored per frame);
HoloCine's two mechanisms are built in: window cross-attention (``text_spans``) and sparse
inter-shot self-attention (``shot_layout``), see :mod:`model.attention` and
:mod:`model.prompt_spans`. CausalCine's causal chunk-wise mode (teacher forcing and streaming
with a KV cache) is :meth:`WanModel.forward_teacher_forcing` and :meth:`WanModel.forward_chunk`,
its attention in :mod:`model.causal`.

Numerically sensitive parts run in float32 whatever the parameter dtype: the timestep
embedding and modulation, the norms, RoPE, and the gated residual updates (as Wan does under
``autocast(float32)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from multishot.model.attention import (BACKENDS, dense_attention, shot_local_attention,
                                       sparse_self_attention)
from multishot.model.causal import (CausalConfig, ChunkAttention, ChunkLayout, ChunkPlan,
                                    KVCache, TeacherForcingAttention)
from multishot.model.config import WanConfig
from multishot.model.layout import ShotLayout
from multishot.model.prompt_spans import TextSpans, shot_text_mask
from multishot.model.rope import apply_rope, rope_cos_sin


def sinusoid_embedding(dim: int, position: torch.Tensor) -> torch.Tensor:
    """Wan's timestep features ``[cos, sin]`` (float64 inside): ``[N]`` → ``[N, dim]`` float32."""
    half = dim // 2
    pos = position.to(torch.float64)
    freqs = torch.pow(10000, -torch.arange(half, dtype=torch.float64, device=pos.device) / half)
    sinusoid = torch.outer(pos, freqs)
    return torch.cat([torch.cos(sinusoid), torch.sin(sinusoid)], dim=1).float()


class Float32Sequential(nn.Sequential):
    """Linear layers and activations computed in float32 whatever the parameters' dtype: the
    input and any bf16 weights are upcast (Wan runs the time embedding and projection under
    ``autocast(float32)`` and asserts float32). ``[N, in]`` → ``[N, out]`` float32. Under FSDP2,
    :func:`trainer.parallelize.apply_fsdp` also keeps these parameters fp32 in forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        for m in self:
            x = F.linear(x, m.weight.float(), m.bias.float()) if isinstance(m, nn.Linear) else m(x)
        return x


class RMSNorm(nn.Module):
    """RMS norm over the last dim with a learned scale (Wan ``WanRMSNorm``), float32 inside."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) \
            * self.weight


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 (Wan ``WanLayerNorm``), returned in the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).type_as(x)


class SelfAttention(nn.Module):
    """Self-attention with QK RMS norm over the full width and 3D RoPE (Wan
    ``WanSelfAttention``); sparse inter-shot when given a :class:`ShotLayout`."""

    def __init__(self, dim: int, num_heads: int, eps: float = 1e-6):
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = RMSNorm(dim, eps)
        self.norm_k = RMSNorm(dim, eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                layout: ShotLayout | None, backend: str, shard=None,
                causal: Callable | None = None, global_bank: bool = True) -> torch.Tensor:
        """``x`` ``[B, L, dim]`` → ``[B, L, dim]``; ``layout=None`` → full attention;
        ``global_bank=False`` → each shot attends only itself (:func:`self_attention_kernel`). Under
        context parallelism ``x``, ``cos``, ``sin`` hold this rank's tokens and ``shard`` is
        the forward's :class:`model.context_parallel.SequenceShard`. ``causal``: the causal
        mode's kernel ``q, k, v → out`` (:mod:`model.causal`), replacing layout and backend; it
        takes ``q`` and ``k`` before RoPE (Block-Relative RoPE) and ``cos``, ``sin`` are unused."""
        b, seq, _ = x.shape
        q = self.norm_q(self.q(x)).view(b, seq, self.num_heads, -1)
        k = self.norm_k(self.k(x)).view(b, seq, self.num_heads, -1)
        v = self.v(x).view(b, seq, self.num_heads, -1)
        if causal is not None:  # Block-Relative RoPE: the causal kernel rotates per query chunk
            return self.o(causal_attention_kernel(causal, q, k, v).flatten(2))
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        return self.o(self_attention_kernel(q, k, v, layout, backend, shard,
                                            global_bank).flatten(2))


@torch.compiler.disable
def self_attention_kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          layout: ShotLayout | None, backend: str, shard=None,
                          global_bank: bool = True) -> torch.Tensor:
    """The self-attention kernel call, ``[B, L, H, D]`` → ``[B, L, H, D]``: full attention for
    ``layout=None``, else the sparse inter-shot attention of ``backend``.

    An eager island under a regional ``torch.compile`` of the block (the trainer's
    ``model.compile``): the kernels are cuDNN / flash calls either way, and the sparse backends'
    per-shot Python loops would otherwise specialise (recompile) the block for every new shot
    layout. With a ``shard`` (context parallelism) ``q, k, v`` hold this rank's tokens and the
    shard's Ulysses all-to-alls wrap the same kernel call. ``global_bank=False``: HoloCine's
    "sparse w/o global" ablation, each shot attends only itself
    (:func:`model.attention.shot_local_attention`, whatever the backend).
    """
    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if layout is None:
            return dense_attention(q, k, v)
        if not global_bank:
            return shot_local_attention(q, k, v, layout)
        return sparse_self_attention(q, k, v, layout, backend)

    return attend(q, k, v) if shard is None else shard.attention(q, k, v, attend)


@torch.compiler.disable
def causal_attention_kernel(causal: Callable, q: torch.Tensor, k: torch.Tensor,
                            v: torch.Tensor) -> torch.Tensor:
    """The causal mode's self-attention call (an eager island like
    :func:`self_attention_kernel`: CAMR's routing is data-dependent per layer and chunk)."""
    return causal(q, k, v)


def _modulate(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``x·(1 + scale) + shift`` in float32: ``x`` ``[B, L, dim]``; ``scale``, ``shift``
    ``[B, 1, dim]`` (one timestep per sample) or ``[B, F, 1, dim]`` (per latent frame, the
    tokens grouped by frame: Wan2.2's per-token timesteps, stored per frame)."""
    if scale.dim() == 3:
        return x.float() * (1 + scale) + shift
    return (x.float().unflatten(1, (scale.shape[1], -1)) * (1 + scale) + shift).flatten(1, 2)


def _gated(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """``x + y·gate`` in float32, ``gate`` as ``scale`` of :func:`_modulate`; in ``x``'s dtype."""
    if gate.dim() == 3:
        return (x.float() + y.float() * gate).type_as(x)
    return (x.float() + (y.float().unflatten(1, (gate.shape[1], -1)) * gate).flatten(1, 2)
            ).type_as(x)


class CrossAttention(SelfAttention):
    """Text cross-attention (Wan ``WanT2VCrossAttention``, T2V), with HoloCine's window mask.

    Same parameters as :class:`SelfAttention` (Wan subclasses it the same way); no RoPE.
    """

    def forward(self, x: torch.Tensor, context: torch.Tensor,
                mask: torch.Tensor | None) -> torch.Tensor:
        """``x`` ``[B, L, dim]``, ``context`` ``[B, L_text, dim]``, ``mask`` ``[B, L, L_text]``
        boolean or additive (:func:`model.attention.dense_attention`), or None
        → ``[B, L, dim]``."""
        b, seq, _ = x.shape
        q = self.norm_q(self.q(x)).view(b, seq, self.num_heads, -1)
        k = self.norm_k(self.k(context)).view(b, context.shape[1], self.num_heads, -1)
        v = self.v(context).view(b, context.shape[1], self.num_heads, -1)
        return self.o(dense_attention(q, k, v, mask).flatten(2))


class WanBlock(nn.Module):
    """One DiT block (Wan ``WanAttentionBlock``):
    ``x += g1·SA(LN(x)(1+s1)+b1); x += CA(norm3(x), text); x += g2·FFN(LN(x)(1+s2)+b2)``,
    with the six modulation vectors ``modulation + e0`` (float32)."""

    def __init__(self, config: WanConfig):
        super().__init__()
        dim, eps = config.dim, config.eps
        self.norm1 = LayerNorm(dim, eps, elementwise_affine=False)
        self.self_attn = SelfAttention(dim, config.num_heads, eps)
        self.norm3 = LayerNorm(dim, eps, elementwise_affine=True)
        self.cross_attn = CrossAttention(dim, config.num_heads, eps)
        self.norm2 = LayerNorm(dim, eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(dim, config.ffn_dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(config.ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim ** 0.5)

    def forward(self, x: torch.Tensor, e0: torch.Tensor, context: torch.Tensor,
                cos: torch.Tensor, sin: torch.Tensor, layout: ShotLayout | None,
                text_mask: torch.Tensor | None, backend: str, shard=None,
                causal: Callable | None = None, global_bank: bool = True) -> torch.Tensor:
        """``x`` ``[B, L, dim]``, ``e0`` ``[B, 6, dim]`` float32 (or ``[B, F, 6, dim]``: one per
        latent frame, ``L = F·hw``), ``context`` ``[B, L_text, dim]`` → ``[B, L, dim]``;
        ``shard``, ``causal``, ``global_bank``: see :meth:`SelfAttention.forward`."""
        assert e0.dtype == torch.float32
        shift1, scale1, gate1, shift2, scale2, gate2 = \
            (self.modulation.float() + e0).chunk(6, e0.dim() - 2)
        y = self.self_attn(_modulate(self.norm1(x), scale1, shift1).type_as(x),
                           cos, sin, layout, backend, shard, causal, global_bank)
        x = _gated(x, y, gate1)
        x = x + self.cross_attn(self.norm3(x), context, text_mask)
        y = self.ffn(_modulate(self.norm2(x), scale2, shift2).type_as(x))
        return _gated(x, y, gate2)


class Head(nn.Module):
    """Output head (Wan ``Head``): modulated LayerNorm, then a linear map to patch pixels."""

    def __init__(self, config: WanConfig):
        super().__init__()
        self.norm = LayerNorm(config.dim, config.eps, elementwise_affine=False)
        self.head = nn.Linear(config.dim, config.out_channels * math.prod(config.patch_size))
        self.modulation = nn.Parameter(torch.randn(1, 2, config.dim) / config.dim ** 0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """``x`` ``[B, L, dim]``, ``e`` ``[B, dim]`` float32 (or ``[B, F, dim]``: one per latent
        frame, ``L = F·hw``) → ``[B, L, out·prod(patch)]``."""
        shift, scale = (self.modulation.float() + e.unsqueeze(-2)).chunk(2, e.dim() - 1)
        return self.head(_modulate(self.norm(x), scale, shift).type_as(x))


@dataclass
class BlockInputs:
    """What :meth:`WanModel.forward` hands its blocks: ``tokens`` ``[B, L, dim]``, ``e``
    ``[B, dim]`` and ``e0`` ``[B, 6, dim]`` float32, the embedded ``context``
    ``[B, text_len, dim]``, RoPE ``cos`` / ``sin`` ``[L, head_dim / 2]``, the self-attention
    ``layout`` (None = full), the window ``text_mask`` ``[B, L, text_len]`` or None, the
    context-parallel ``shard`` or None and the token ``grid`` ``(f, h, w)``. A CUDA graph of
    the blocks (:mod:`generate.graphs`) refills its copies of the tensor fields (:data:`TENSORS`)
    before every replay."""

    tokens: torch.Tensor
    e: torch.Tensor
    e0: torch.Tensor
    context: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor
    layout: ShotLayout | None
    text_mask: torch.Tensor | None
    shard: object
    grid: tuple[int, int, int]

    TENSORS: ClassVar[tuple[str, ...]] = ("tokens", "e", "e0", "context", "cos", "sin", "text_mask")


class WanModel(nn.Module):
    """Wan2.1/2.2 text-to-video DiT predicting the flow-matching velocity, with HoloCine's
    window cross-attention and sparse inter-shot self-attention.

    Args:
        config: the architecture (:func:`model.config.get_config`).
        attention_backend: sparse self-attention backend, one of
            :data:`model.attention.BACKENDS`.
        sparse_self_attention: use the sparse inter-shot self-attention when a shot layout is
            given (HoloCine's ``use_sparse_self_attn``); False keeps full self-attention and
            uses the layout for the window cross-attention only.
        global_bank: with sparse self-attention, every shot also attends the global bank
            (the first latent frame of every shot; HoloCine's summary tokens). False is
            HoloCine's "sparse w/o global" ablation (Table 2): each shot attends only itself.
        window_inclusive_end, window_admit_padding: HoloCine's window-mask quirks
            (:func:`model.prompt_spans.shot_text_mask`), on by default.
    Raises:
        ValueError: unknown backend.
    """

    def __init__(self, config: WanConfig, attention_backend: str = "reference", *,
                 sparse_self_attention: bool = True, window_inclusive_end: bool = True,
                 window_admit_padding: bool = True, global_bank: bool = True):
        super().__init__()
        if attention_backend not in BACKENDS:
            raise ValueError(f"unknown attention backend {attention_backend!r}; "
                             f"choose from {BACKENDS}")
        self.config = config
        self.attention_backend = attention_backend
        self.sparse_self_attention = sparse_self_attention
        self.global_bank = global_bank
        self.window_inclusive_end = window_inclusive_end
        self.window_admit_padding = window_admit_padding
        #: context parallelism (model.context_parallel.apply_context_parallel sets it): None
        #: runs the sample on this device; else ``split(L)`` gives the forward's sequence shard
        self.context_parallel = None
        #: the first-block cache of the sampler's steps (model.step_cache.apply_step_cache sets
        #: it): None runs every block on every call of :meth:`forward`
        self.step_cache = None
        dim = config.dim
        self.patch_embedding = nn.Conv3d(config.in_channels, dim, kernel_size=config.patch_size,
                                         stride=config.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(config.text_dim, dim),
                                            nn.GELU(approximate="tanh"), nn.Linear(dim, dim))
        self.time_embedding = Float32Sequential(nn.Linear(config.freq_dim, dim), nn.SiLU(),
                                                nn.Linear(dim, dim))
        self.time_projection = Float32Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.blocks = nn.ModuleList(WanBlock(config) for _ in range(config.num_layers))
        self.head = Head(config)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Wan's initialisation (``WanModel.init_weights``): Xavier-uniform linears with zero
        bias, Xavier patch embedding, N(0, 0.02) text/time embeddings, zero output head,
        modulation N(0, 1/dim). Call after ``to_empty`` when the model was built on ``meta``."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (RMSNorm, LayerNorm)) and m.weight is not None:
                nn.init.ones_(m.weight)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.patch_embedding.weight.flatten(1))
        nn.init.zeros_(self.patch_embedding.bias)
        for seq in (self.text_embedding, self.time_embedding):
            for m in seq:
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, std=0.02)
        nn.init.zeros_(self.head.head.weight)
        for p in [b.modulation for b in self.blocks] + [self.head.modulation]:
            p.copy_(torch.randn_like(p) / self.config.dim ** 0.5)

    def text_mask(self, layout: ShotLayout, text_spans: list[TextSpans | None],
                  text_len: int) -> torch.Tensor:
        """Window cross-attention mask ``[B, L, text_len]`` bool for the batch; a None entry (or
        spans without a global caption) leaves that sample unmasked.

        Raises:
            ValueError: ``len(text_spans) != B`` or a video has more shots than its prompt.
        """
        return self.frame_text_mask(layout, text_spans, text_len).repeat_interleave(
            layout.tokens_per_frame, dim=1)

    def frame_text_mask(self, layout: ShotLayout, text_spans: list[TextSpans | None],
                        text_len: int | None = None) -> torch.Tensor:
        """Window cross-attention mask per latent frame, ``[B, F_lat, text_len]`` bool (each
        frame admits the global caption and its shot's caption; :meth:`text_mask` repeats it
        over the frame's tokens). The causal mode takes this per-frame form: slice a streamed
        chunk's frames from it. ``text_len`` defaults to ``config.text_len``.

        Raises:
            ValueError: ``len(text_spans) != B`` or a video has more shots than its prompt.
        """
        text_len = self.config.text_len if text_len is None else text_len
        if len(text_spans) != layout.batch_size:
            raise ValueError(f"{len(text_spans)} text spans for a batch of {layout.batch_size}")
        device = layout.frame_shot.device
        s_max = max(len(starts) for starts in layout.shot_starts)
        tables = []
        for starts, spans in zip(layout.shot_starts, text_spans):
            spans = spans or TextSpans(None)
            table = shot_text_mask(spans, len(starts), text_len,
                                   inclusive_end=self.window_inclusive_end,
                                   admit_padding=self.window_admit_padding)
            tables.append(torch.cat([table, table.new_zeros(s_max - len(starts), text_len)]))
        table = torch.stack(tables).to(device)                            # [B, S_max, Lt]
        return torch.gather(table, 1, layout.frame_shot[:, :, None].expand(-1, -1, text_len))

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                shot_layout: ShotLayout | None = None,
                text_spans: list[TextSpans | None] | None = None) -> torch.Tensor:
        """Predict the flow-matching velocity of noisy latents.

        Args:
            x: latents ``[B, C_in, F_lat, H_lat, W_lat]``; ``F_lat``, ``H_lat``, ``W_lat``
                divisible by the patch size.
            timestep: ``[B]`` float in ``[0, 1000)``.
            context: UMT5 text states ``[B, L_text, text_dim]``, ``L_text <= text_len``; shorter
                contexts are zero-padded to ``text_len`` (Wan pads to 512; the pads pass through
                the text embedding and are attended to).
            shot_layout: the batch's shots (``F_lat`` latent frames of ``(H_lat/2)·(W_lat/2)``
                tokens); None → one shot, full self-attention.
            text_spans: per sample :class:`TextSpans` for window cross-attention (needs
                ``shot_layout``); None → unmasked cross-attention.
        Returns:
            ``[B, C_out, F_lat, H_lat, W_lat]`` in the parameters' dtype.
        Raises:
            ValueError: shapes disagree with the config or the layout; ``text_spans`` without a
                layout.
        """
        return self.blocks_and_head(self.block_inputs(x, timestep, context, shot_layout,
                                                      text_spans))

    def block_inputs(self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                     shot_layout: ShotLayout | None = None,
                     text_spans: list[TextSpans | None] | None = None) -> BlockInputs:
        """The first part of :meth:`forward` (same arguments and errors): the embeddings, RoPE
        tables, masks and sequence shard its blocks take (:class:`BlockInputs`)."""
        cfg = self.config
        b = x.shape[0]
        pt, ph, pw = cfg.patch_size
        if x.shape[1] != cfg.in_channels or any(n % p for n, p in zip(x.shape[2:], cfg.patch_size)):
            raise ValueError(f"latents {tuple(x.shape)} do not fit {cfg.in_channels} channels "
                             f"and patch {cfg.patch_size}")
        if context.shape[1] > cfg.text_len or context.shape[2] != cfg.text_dim:
            raise ValueError(f"context {tuple(context.shape)} exceeds [B, {cfg.text_len}, "
                             f"{cfg.text_dim}]")
        grid = (x.shape[2] // pt, x.shape[3] // ph, x.shape[4] // pw)
        if shot_layout is not None and (shot_layout.batch_size, shot_layout.num_latent_frames,
                                        shot_layout.tokens_per_frame) != (b, grid[0],
                                                                          grid[1] * grid[2]):
            raise ValueError(f"shot layout ({shot_layout.batch_size} × "
                             f"{shot_layout.num_latent_frames} frames × "
                             f"{shot_layout.tokens_per_frame} tokens) does not fit batch {b}, "
                             f"token grid {grid}")
        if text_spans is not None and shot_layout is None:
            raise ValueError("window cross-attention (text_spans) needs a shot_layout")
        dtype = self.patch_embedding.weight.dtype

        # Timestep → e [B, dim] and the six block modulations e0 [B, 6, dim], float32.
        e = self.time_embedding(sinusoid_embedding(cfg.freq_dim, timestep))
        e0 = self.time_projection(e).unflatten(1, (6, cfg.dim))
        assert e.dtype == torch.float32 and e0.dtype == torch.float32

        context = F.pad(context.to(dtype), (0, 0, 0, cfg.text_len - context.shape[1]))
        context = self.text_embedding(context)                        # [B, text_len, dim]
        text_mask = None if text_spans is None else \
            self.text_mask(shot_layout, text_spans, cfg.text_len)     # [B, L, text_len]

        tokens = self.patch_embedding(x.to(dtype)).flatten(2).transpose(1, 2)   # [B, L, dim]
        cos, sin = rope_cos_sin(cfg, grid, tokens.device)
        layout = shot_layout if self.sparse_self_attention else None
        shard = None
        if self.context_parallel is not None:
            # Ulysses: from here to the head each rank holds its slice of the tokens; RoPE
            # and the window mask go with their tokens (pad rows admit every text token)
            shard = self.context_parallel.split(tokens.shape[1])
            tokens, cos, sin = shard.shard(tokens), shard.shard(cos, 0), shard.shard(sin, 0)
            text_mask = None if text_mask is None else shard.shard(text_mask, pad_value=True)
        return BlockInputs(tokens, e, e0, context, cos, sin, layout, text_mask, shard, grid)

    def blocks_and_head(self, inputs: BlockInputs) -> torch.Tensor:
        """The rest of :meth:`forward`: the blocks (through the step cache when one is set,
        :mod:`model.step_cache`), the head and unpatchify → ``[B, C_out, F_lat, H_lat, W_lat]``."""
        i = inputs

        def call_block(block: WanBlock, tokens: torch.Tensor) -> torch.Tensor:
            return block(tokens, i.e0, i.context, i.cos, i.sin, i.layout, i.text_mask,
                         self.attention_backend, i.shard, global_bank=self.global_bank)

        tokens = i.tokens
        if self.step_cache is not None:
            if i.shard is not None:
                raise ValueError("the step cache does not work with context parallelism")
            tokens = self.step_cache.run(self.blocks, tokens, call_block)
        else:
            for block in self.blocks:
                tokens = call_block(block, tokens)
        out = self.head(tokens, i.e)                                  # [B, L, pt·ph·pw·C]
        if i.shard is not None:
            out = i.shard.gather(out)
        return self.unpatchify(out, i.grid)

    # ---- causal chunk-wise mode (CausalCine §3.2–3.3, model.causal) -------------------------

    def forward_teacher_forcing(self, clean: torch.Tensor, noisy: torch.Tensor,
                                timestep: torch.Tensor, context: torch.Tensor,
                                causal: CausalConfig, text_mask: torch.Tensor | None = None,
                                ) -> torch.Tensor:
        """Parallel teacher forcing: one forward over ``[clean chunks ; noisy chunks]``
        (:mod:`model.causal`: the four quadrants, CAMR), the velocity of the noisy half.

        The clean copies run at timestep 0, the noisy ones at ``timestep``; both copies of a
        latent frame get its cross-attention mask. RoPE is Block-Relative (:mod:`model.causal`):
        each query chunk's keys are rotated at compact positions of their own. Self-Forcing's
        ``wan/modules/causal_model.py`` layout; per-token timesteps as Wan2.2's
        ``wan/modules/model.py`` (``t`` ``[B, L]``, ``e0`` ``[B, L, 6, dim]``), stored per latent
        frame here. The flow-matching loss belongs on the returned (noisy) half only.

        Args:
            clean: clean latents ``[B, C_in, F_lat, H_lat, W_lat]``.
            noisy: noisy latents, same shape.
            timestep: the noisy half's timestep, ``[B]`` (one for all chunks, CausalCine) or
                ``[B, F_lat]`` (per latent frame), float in ``[0, 1000)``.
            context: text states ``[B, L_text, text_dim]`` as in :meth:`forward`.
            causal: the chunk size and CAMR settings.
            text_mask: window cross-attention per latent frame ``[B, F_lat, text_len]`` bool
                (:meth:`frame_text_mask`); None → unmasked.
        Returns:
            velocity of the noisy latents ``[B, C_out, F_lat, H_lat, W_lat]``.
        Raises:
            ValueError: shapes disagree with each other or the config; a temporal patch size
                other than 1; context parallelism is set (not supported in the causal mode).
        """
        if clean.shape != noisy.shape:
            raise ValueError(f"clean {tuple(clean.shape)} and noisy {tuple(noisy.shape)} latents "
                             "differ in shape")
        grid = self._causal_grid(clean, context)
        b, (f, h, w) = clean.shape[0], grid
        hw = h * w
        t = self._frame_timesteps(timestep, b, f)
        e, e0 = self._time_embedding(torch.cat([torch.zeros_like(t), t], 1))  # [B, 2F, ...]
        context = self._embed_context(context)
        if text_mask is not None:
            text_mask = self._token_text_mask(text_mask, b, f, hw)
            text_mask = torch.cat([text_mask, text_mask], 1)               # [B, 2L, text_len]
        dtype = self.patch_embedding.weight.dtype
        tokens = torch.cat([self.patch_embedding(z.to(dtype)).flatten(2).transpose(1, 2)
                            for z in (clean, noisy)], 1)                   # [B, 2L, dim]
        attention = TeacherForcingAttention(ChunkLayout.build(f, causal.chunk_latent_frames),
                                            causal, hw, self.attention_backend,
                                            self._rope_table(h, w, tokens.device))
        for block in self.blocks:  # RoPE: per query chunk inside the attention
            tokens = block(tokens, e0, context, None, None, None, text_mask,
                           self.attention_backend, None, attention)
        out = self.head(tokens[:, f * hw:], e[:, f:])                       # noisy half
        return self.unpatchify(out, grid)

    def forward_chunk(self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                      cache: KVCache, chunk_index: int, causal: CausalConfig,
                      text_mask: torch.Tensor | None = None, write_cache: bool = False,
                      plan: ChunkPlan | None = None) -> torch.Tensor:
        """One chunk of streaming generation against the KV cache (never recomputing earlier
        chunks): the chunk's tokens attend the cached history (with CAMR: the local window and
        the routed frames) and themselves.

        A denoising step calls it with the noisy chunk and its timestep. When the chunk is
        done, one clean pass with ``write_cache=True`` and timestep 0 appends its keys/values
        to the cache; that pass attends exactly what the clean copy attends in
        :meth:`forward_teacher_forcing`, so the noisy outputs of teacher forcing equal those of
        a rollout given the same clean chunks, noise and timestep.

        Args:
            x: the chunk's latents ``[B, C_in, F_chunk, H_lat, W_lat]``; for equality with
                teacher forcing, chunks as :class:`model.causal.ChunkLayout` cuts them.
            timestep: ``[B]`` or ``[B, F_chunk]`` float in ``[0, 1000)``; 0 for the clean pass.
            context: text states ``[B, L_text, text_dim]`` (may change from chunk to chunk).
            cache: the cache (:meth:`model.causal.KVCache.empty`); its batch and token grid
                must match ``x``.
            chunk_index: the chunk's number, ``cache.num_chunks`` (a check on the caller).
            causal: the chunk size and CAMR settings (those of training).
            text_mask: the chunk's frames' rows of :meth:`frame_text_mask`,
                ``[B, F_chunk, text_len]`` bool; None → unmasked.
            write_cache: the clean pass: append the chunk's keys/values and descriptors.
            plan: the chunk's :class:`model.causal.ChunkPlan` (:meth:`chunk_plan`); None builds
                it. A CUDA graph of this call (:mod:`generate.graphs`) passes its own, whose
                tensors it refills before every replay.
        Returns:
            velocity ``[B, C_out, F_chunk, H_lat, W_lat]``.
        Raises:
            ValueError: ``chunk_index`` is not the cache's next chunk; shapes disagree with the
                config or the cache; context parallelism is set.
        """
        if chunk_index != cache.num_chunks:
            raise ValueError(f"chunk {chunk_index} does not follow the cache's "
                             f"{cache.num_chunks} chunks")
        if len(cache.layers) != len(self.blocks):
            raise ValueError(f"cache of {len(cache.layers)} layers for {len(self.blocks)} blocks")
        grid = self._causal_grid(x, context)
        b, (f, h, w) = x.shape[0], grid
        hw = h * w
        if cache.tokens_per_frame not in (None, hw):
            raise ValueError(f"chunk of {hw} tokens per frame, cache of {cache.tokens_per_frame}")
        cached = cache.layers[0].key_storage if cache.layers else None
        if cached is not None and cached.shape[0] != b:
            raise ValueError(f"chunk of batch {b}, cache of batch {cached.shape[0]}")
        e, e0 = self._time_embedding(self._frame_timesteps(timestep, b, f))
        context = self._embed_context(context)
        dtype = self.patch_embedding.weight.dtype
        if text_mask is not None:
            # SDPA's additive form of the boolean mask (0 / −inf, what SDPA would build from
            # it in every block's cross-attention), built once for all blocks
            allowed = self._token_text_mask(text_mask, b, f, hw)
            text_mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
            text_mask.masked_fill_(~allowed, float("-inf"))
        tokens = self.patch_embedding(x.to(dtype)).flatten(2).transpose(1, 2)   # [B, L_c, dim]
        if plan is None:
            plan = self.chunk_plan(x, cache, causal, write_cache)
        elif plan.write != write_cache or plan.cos.shape[0] < f * hw:
            raise ValueError(f"plan {plan.key} does not fit a chunk of {f * hw} tokens "
                             f"(write_cache={write_cache})")
        attention = ChunkAttention(cache, plan, f, hw, self.attention_backend)
        for i, block in enumerate(self.blocks):  # RoPE: the plan's, inside the attention
            tokens = block(tokens, e0, context, None, None, None, text_mask,
                           self.attention_backend, None, attention.layer(i))
        attention.commit()
        return self.unpatchify(self.head(tokens, e), grid)

    def chunk_plan(self, x: torch.Tensor, cache: KVCache, causal: CausalConfig,
                   write_cache: bool) -> ChunkPlan:
        """The :class:`model.causal.ChunkPlan` of the cache's next chunk, latents ``x``
        ``[B, C_in, F_chunk, H_lat, W_lat]``: the history it attends, CAMR's routing, the
        Block-Relative RoPE tables of its key frames."""
        f, h, w = (n // p for n, p in zip(x.shape[2:], self.config.patch_size))
        return ChunkPlan.build(cache, causal, f, self._rope_table(h, w, x.device), write_cache)

    def _rope_table(self, h: int, w: int, device: torch.device):
        """``frames -> (cos, sin)``: RoPE tables of ``frames`` latent frames of ``h × w``
        tokens at temporal positions ``0 … frames − 1`` (:data:`model.causal.RopeTable`),
        kept per shape (a causal pass needs at most ``horizon_frames`` of them; not buffers, as
        Wan's table is not: they follow the device the model runs on)."""
        tables = self.__dict__.setdefault("_rope_tables", {})

        def table(frames: int) -> tuple[torch.Tensor, torch.Tensor]:
            key = (frames, h, w, str(device))
            if key not in tables:
                tables[key] = rope_cos_sin(self.config, (frames, h, w), device)
            return tables[key]

        return table

    def _causal_grid(self, x: torch.Tensor, context: torch.Tensor) -> tuple[int, int, int]:
        """Checks for the causal paths; the token grid ``(F_lat, h, w)`` of latents ``x``."""
        cfg = self.config
        if self.context_parallel is not None:
            raise ValueError("the causal mode does not support context parallelism")
        if cfg.patch_size[0] != 1:
            raise ValueError(f"the causal mode needs a temporal patch of 1, not {cfg.patch_size}")
        if x.dim() != 5 or x.shape[1] != cfg.in_channels or \
                any(n % p for n, p in zip(x.shape[2:], cfg.patch_size)):
            raise ValueError(f"latents {tuple(x.shape)} do not fit {cfg.in_channels} channels "
                             f"and patch {cfg.patch_size}")
        if context.shape[0] != x.shape[0] or context.shape[1] > cfg.text_len or \
                context.shape[2] != cfg.text_dim:
            raise ValueError(f"context {tuple(context.shape)} does not fit [{x.shape[0]}, "
                             f"<= {cfg.text_len}, {cfg.text_dim}]")
        return tuple(n // p for n, p in zip(x.shape[2:], cfg.patch_size))

    @staticmethod
    def _frame_timesteps(timestep: torch.Tensor, b: int, f: int) -> torch.Tensor:
        """``[B]`` or ``[B, F]`` → ``[B, F]`` float32 timesteps per latent frame."""
        if timestep.shape == (b,):
            return timestep.float()[:, None].expand(b, f)
        if timestep.shape == (b, f):
            return timestep.float()
        raise ValueError(f"timestep {tuple(timestep.shape)} is neither [{b}] nor [{b}, {f}]")

    def _time_embedding(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-frame timesteps ``[B, F]`` → ``e`` ``[B, F, dim]`` and ``e0`` ``[B, F, 6, dim]``
        float32 (Wan2.2's per-token path, once per frame instead of per token)."""
        b, f = t.shape
        e = self.time_embedding(sinusoid_embedding(self.config.freq_dim, t.reshape(-1)))
        e0 = self.time_projection(e).unflatten(1, (6, self.config.dim))
        assert e.dtype == torch.float32 and e0.dtype == torch.float32
        return e.view(b, f, -1), e0.view(b, f, 6, -1)

    def _embed_context(self, context: torch.Tensor) -> torch.Tensor:
        """``[B, L_text, text_dim]`` → zero-padded to ``text_len`` and embedded,
        ``[B, text_len, dim]`` (as :meth:`forward`)."""
        cfg = self.config
        dtype = self.patch_embedding.weight.dtype
        context = F.pad(context.to(dtype), (0, 0, 0, cfg.text_len - context.shape[1]))
        return self.text_embedding(context)

    def _token_text_mask(self, mask: torch.Tensor, b: int, f: int, hw: int) -> torch.Tensor:
        """Per-frame mask ``[B, F, text_len]`` → per token ``[B, F·hw, text_len]``."""
        if mask.shape != (b, f, self.config.text_len) or mask.dtype != torch.bool:
            raise ValueError(f"text mask {tuple(mask.shape)} {mask.dtype} is not bool "
                             f"[{b}, {f}, {self.config.text_len}]")
        return mask.repeat_interleave(hw, dim=1)

    def unpatchify(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """``[B, f·h·w, pt·ph·pw·C]`` → ``[B, C, f·pt, h·ph, w·pw]`` (Wan's channel-last patch
        order ``(pt, ph, pw, C)``)."""
        b, c = x.shape[0], self.config.out_channels
        f, h, w = grid
        pt, ph, pw = self.config.patch_size
        x = x.view(b, f, h, w, pt, ph, pw, c).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.reshape(b, c, f * pt, h * ph, w * pw)
