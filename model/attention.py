"""Attention for the multi-shot DiT: dense, HoloCine's sparse inter-shot self-attention in four
backends computing one function, and window cross-attention.

Every function takes ``q, k, v`` as ``[B, L, heads, head_dim]`` (Wan's layout) and returns
``[B, L_q, heads, head_dim]``, so a Ulysses all-to-all over heads can wrap the call unchanged.

Sparse inter-shot self-attention (HoloCine ``attention_per_batch_with_shots``): the queries of
shot ``i`` attend to ``[K_i ; K_g]`` — the shot's own tokens, then the global bank ``K_g`` (the
first latent frame of every shot, keys after RoPE, in shot order). The shot's own first frame is
thus in its keys **twice**, so in the softmax it weighs double: the dense definition
(``reference``) adds ``ln 2`` to those logits. We reproduce that on purpose, because HoloCine's
released weights were tuned with it; :class:`model.layout.ShotLayout` holds the packed index.

Backends (``attention_backend`` of :class:`model.dit.WanModel`):

* ``reference``: dense attention over all ``L`` keys in float32 with the log-multiplicity mask
  (``-inf`` outside the pattern, ``ln 2`` on the own first frame). The definition; CPU and tests.
* ``varlen``: packed queries and ``[K_i ; K_g]`` keys with ``cu_seqlens`` through
  ``flash_attn_varlen_func`` (FA3's ``flash_attn_interface`` first, then FA2's ``flash_attn``)
  when installed, else ``torch.nn.attention.varlen.varlen_attn``. CUDA only.
* ``sdpa``: one ``scaled_dot_product_attention`` call per shot over the packed keys (cuDNN
  first on CUDA). Runs on CPU too.
* ``flex``: FlexAttention over the packed sequences with a document mask (query segment ==
  key segment); the BlockMask is built once per layout and device (compiled
  ``create_block_mask`` on CUDA; the eager one materialises the dense mask, tens of GB at
  95k tokens). Compiled ``flex_attention`` on CUDA, the eager one on CPU (forward only:
  PyTorch's FlexAttention has no CPU backward, so it raises when gradients are needed there).

No backend reads a device value on the host: offsets and maxima come from the layout as ints.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from multishot.model.layout import ShotLayout

BACKENDS = ("reference", "varlen", "sdpa", "flex")

#: cuDNN first: on Hopper it is the fastest SDPA kernel for head dim 128 (flash next).
_SDPA_PRIORITY = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION,
                  SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
          attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """SDPA on ``[B, L, H, D]`` tensors (transposed views, no copies), cuDNN first on CUDA."""
    args = (q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    if q.is_cuda:
        with _cuda_sdpa_priority():
            out = F.scaled_dot_product_attention(*args, attn_mask=attn_mask)
    else:
        out = F.scaled_dot_product_attention(*args, attn_mask=attn_mask)
    return out.transpose(1, 2)


#: whether this torch's ``sdpa_kernel`` takes ``set_priority``; looked up once (an
#: ``inspect.signature`` per attention call cost ~60 of them per DiT call of streaming)
_SDPA_SET_PRIORITY = "set_priority" in inspect.signature(sdpa_kernel).parameters


def _cuda_sdpa_priority():
    if _SDPA_SET_PRIORITY:
        return sdpa_kernel(_SDPA_PRIORITY, set_priority=True)
    return sdpa_kernel(_SDPA_PRIORITY)


def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    mask: torch.Tensor | None = None) -> torch.Tensor:
    """Full attention (Wan's own self- and cross-attention).

    Args:
        q: ``[B, L_q, H, D]``; k, v: ``[B, L_k, H, D]``.
        mask: optional boolean ``[B, L_q, L_k]``, True where a query may attend (window
            cross-attention). HoloCine adds ``-1e4`` where False; a boolean mask gives the same
            softmax (``exp(-1e4)`` is 0 in float32) as long as every row admits one key. Or
            SDPA's additive form of it (0 / −inf in ``q``'s dtype, the same result), which a
            caller attending with one mask in many blocks builds once.
    Returns:
        ``[B, L_q, H, D]``.
    """
    return _sdpa(q, k, v, None if mask is None else mask[:, None])


# ---- sparse inter-shot self-attention ------------------------------------------------------

def sparse_self_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          layout: ShotLayout, backend: str = "reference") -> torch.Tensor:
    """HoloCine's sparse inter-shot self-attention (module docstring), by ``backend``.

    Args:
        q, k, v: ``[B, L, H, D]`` with RoPE applied to ``q`` and ``k``; ``B`` and ``L`` must
            match ``layout`` (``layout.batch_size``, ``layout.seq_len``).
        layout: the batch's :class:`ShotLayout`, on the tensors' device.
        backend: one of :data:`BACKENDS`.
    Returns:
        ``[B, L, H, D]`` in ``q``'s dtype.
    Raises:
        ValueError: unknown backend or shapes that disagree with the layout.
        RuntimeError: the backend cannot run on this device (``varlen`` on CPU).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose from {BACKENDS}")
    b, seq, _, _ = q.shape
    if (b, seq) != (layout.batch_size, layout.seq_len):
        raise ValueError(f"q has batch {b} × {seq} tokens, the layout {layout.batch_size} × "
                         f"{layout.seq_len}")
    return _SPARSE[backend](q, k, v, layout)


def _reference(q, k, v, layout: ShotLayout) -> torch.Tensor:
    b, seq, heads, d = q.shape
    shot = layout.token_shot()                                          # [B, L]
    first = torch.ones_like(layout.frame_shot, dtype=torch.bool)         # first frame of a shot
    first[:, 1:] = layout.frame_shot[:, 1:] != layout.frame_shot[:, :-1]
    in_bank = first.repeat_interleave(layout.tokens_per_frame, dim=1)    # [B, L]
    # How often each key appears in the query's packed KV [K_i ; K_g]: once in its own shot,
    # once more if it is in the bank (so the own first frame counts twice).
    count = (shot[:, :, None] == shot[:, None, :]).float() + in_bank[:, None, :].float()
    bias = torch.log(count)[:, None]                                    # -inf where 0
    qf, kf, vf = (t.float().transpose(1, 2) for t in (q, k, v))
    scores = qf @ kf.transpose(-1, -2) / math.sqrt(d) + bias
    return (scores.softmax(-1) @ vf).transpose(1, 2).to(q.dtype)


class _PackKV(torch.autograd.Function):
    """Gather ``[B·L, ...]`` rows into the packed ``[KV_1; KV_g; KV_2; KV_g; …]`` order.

    The backward avoids ``index_select``'s generic atomic scatter (bf16 atomics where the bank
    rows collide): own-shot copies are a plain gather (each token once), and the bank copies of
    a sample are summed over its shots in float32 before one collision-free ``index_add_``.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, layout: ShotLayout) -> torch.Tensor:
        ctx.layout = layout
        return x.index_select(0, layout.kv_index)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        layout = ctx.layout
        grad_x = grad.index_select(0, layout.own_rows)
        for tokens, ranges in zip(layout.bank_tokens, layout.bank_row_ranges):
            acc = grad[ranges[0][0]:ranges[0][1]].float()
            for start, end in ranges[1:]:
                acc += grad[start:end]
            grad_x.index_add_(0, tokens, acc.to(grad_x.dtype))
        return grad_x, None


def pack_kv(x: torch.Tensor, layout: ShotLayout) -> torch.Tensor:
    """``x`` ``[B·L, H, D]`` → packed ``[sum_kv, H, D]`` rows ``layout.kv_index`` (differentiable)."""
    return _PackKV.apply(x, layout)


def _packed(q, k, v, layout: ShotLayout):
    """Flatten the batch and gather the packed keys/values: ``[B·L, H, D]``, ``[sum_kv, H, D]``."""
    b, seq, heads, d = q.shape
    kp = pack_kv(k.reshape(b * seq, heads, d), layout)
    vp = pack_kv(v.reshape(b * seq, heads, d), layout)
    return q.reshape(b * seq, heads, d), kp, vp


@functools.cache
def _varlen_function() -> tuple[str, Callable]:
    """The varlen kernel: FA3, FA2, then PyTorch's ``varlen_attn`` (which needs CUDA)."""
    for module, name in (("flash_attn_interface", "fa3"), ("flash_attn", "fa2")):
        try:
            return name, importlib.import_module(module).flash_attn_varlen_func
        except (ImportError, AttributeError):
            continue
    from torch.nn.attention.varlen import varlen_attn
    return "torch", varlen_attn


def varlen_implementation() -> str:
    """Which kernel the ``varlen`` backend uses here: ``"fa3"``, ``"fa2"`` or ``"torch"``."""
    return _varlen_function()[0]


def _varlen(q, k, v, layout: ShotLayout) -> torch.Tensor:
    if not q.is_cuda:
        raise RuntimeError("the 'varlen' attention backend needs a CUDA device (flash_attn or "
                           "torch varlen_attn); on CPU use 'reference', 'sdpa' or 'flex'")
    qp, kp, vp = _packed(q, k, v, layout)
    _, fn = _varlen_function()
    out = fn(qp, kp, vp, layout.cu_seqlens_q, layout.cu_seqlens_k, layout.max_q, layout.max_kv)
    if isinstance(out, tuple):  # some FA3 builds return (out, lse)
        out = out[0]
    return out.view_as(q)


def _per_shot_sdpa(q, k, v, layout: ShotLayout) -> torch.Tensor:
    qp, kp, vp = _packed(q, k, v, layout)
    outs = []
    for q0, q1, k0, k1 in zip(layout.q_offsets, layout.q_offsets[1:], layout.kv_offsets,
                              layout.kv_offsets[1:]):
        outs.append(_sdpa(qp[None, q0:q1], kp[None, k0:k1], vp[None, k0:k1])[0])
    return torch.cat(outs).view_as(q)


_compiled_flex: Callable | None = None

#: Triton kernels index with int32: a FlexAttention call whose packed tensors hold more
#: elements than this runs head group by head group on contiguous copies.
_FLEX_MAX_ELEMENTS = 2**31 - 1


def _flex_kernel(device: torch.device) -> Callable:
    from torch.nn.attention.flex_attention import flex_attention
    if device.type != "cuda":
        return flex_attention  # eager: materialises scores, fine for test shapes
    global _compiled_flex
    if _compiled_flex is None:
        # Static shapes were faster than dynamic ones on an H200 (75.6 vs 79.2 ms forward,
        # 308 vs 342 ms forward+backward at 95k tokens, 24 heads). Each new length or grad
        # mode recompiles; past dynamo's recompile limit (8) it would silently fall back to
        # the unfused eager kernel (dense scores: out of memory at these lengths), so raise it.
        import torch._dynamo
        for name, limit in (("recompile_limit", 256), ("accumulated_recompile_limit", 1024)):
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), limit))
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex


def flex_block_mask(layout: ShotLayout):
    """The layout's FlexAttention BlockMask (document mask over the packed sequences), built on
    first use and cached on the layout: ``Q_LEN = B·L``, ``KV_LEN = sum_kv``."""
    from torch.nn.attention.flex_attention import create_block_mask
    device = layout.q_segment.device
    key = ("flex_block_mask", str(device))
    if key not in layout.cache:
        q_seg, kv_seg = layout.q_segment, layout.kv_segment

        def same_shot(b, h, q_idx, kv_idx):
            return q_seg[q_idx] == kv_seg[kv_idx]

        layout.cache[key] = create_block_mask(
            same_shot, None, None, q_seg.numel(), kv_seg.numel(), device=device,
            _compile=device.type == "cuda")
    return layout.cache[key]


def _flex(q, k, v, layout: ShotLayout) -> torch.Tensor:
    if not q.is_cuda and torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        raise RuntimeError("the 'flex' attention backend has no backward on CPU (PyTorch's "
                           "FlexAttention); train on CUDA, or use 'sdpa' / 'reference' on CPU")
    qp, kp, vp = _packed(q, k, v, layout)                       # [tokens, H, D]
    kernel, block_mask = _flex_kernel(q.device), flex_block_mask(layout)
    heads = q.shape[2]
    group = max(1, heads // math.ceil(kp.numel() / _FLEX_MAX_ELEMENTS))
    outs = []
    for h0 in range(0, heads, group):
        # [1, h, tokens, D]; a transposed view while it fits int32 indexing, else a copy.
        qh, kh, vh = (t[None, :, h0:h0 + group].transpose(1, 2) for t in (qp, kp, vp))
        if group < heads:
            qh, kh, vh = qh.contiguous(), kh.contiguous(), vh.contiguous()
        outs.append(kernel(qh, kh, vh, block_mask=block_mask).transpose(1, 2)[0])
    return (outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)).reshape_as(q)


def shot_local_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                         layout: ShotLayout) -> torch.Tensor:
    """HoloCine's "sparse w/o global" ablation (Table 2): the queries of shot ``i`` attend to
    the shot's own tokens ``K_i`` only, no global bank, so nothing passes between shots in
    self-attention. One SDPA call with a block-diagonal boolean mask ``[B, 1, L, L]`` (any
    device, differentiable; the mask is ``L²`` per sample, meant for ablation-sized runs).

    Args:
        q, k, v: ``[B, L, H, D]`` with RoPE applied; ``B``, ``L`` as ``layout``.
    Returns:
        ``[B, L, H, D]`` in ``q``'s dtype.
    Raises:
        ValueError: shapes disagree with the layout.
    """
    b, seq = q.shape[:2]
    if (b, seq) != (layout.batch_size, layout.seq_len):
        raise ValueError(f"q has batch {b} × {seq} tokens, the layout {layout.batch_size} × "
                         f"{layout.seq_len}")
    shot = layout.token_shot()                                           # [B, L]
    return _sdpa(q, k, v, (shot[:, :, None] == shot[:, None, :])[:, None])


_SPARSE = {"reference": _reference, "varlen": _varlen, "sdpa": _per_shot_sdpa, "flex": _flex}
