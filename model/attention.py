"""Attention for the multi-shot DiT: dense, HoloCine's sparse inter-shot self-attention in five
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
* ``flex_inplace``: FlexAttention over the unpacked ``[B, H, L, D]`` tensors, reading the bank
  in place (no packed K/V copies, no gather in the backward): a ``mask_mod`` admits a key of
  the query's own shot or of its sample's bank, a ``score_mod`` adds ``ln 2`` where the key is
  the own shot's first frame — ``reference``'s log-multiplicity mask as a block-sparse kernel,
  which also reads the own first frame once where the packed backends compute it twice. Both
  look up the layout's per-token shot index and bank flag by batch index (samples may have
  different shots). BlockMask (``[B, 1, L, L]`` blocks) and mods built once per layout and
  device (:func:`flex_inplace_mask`); compiled on CUDA, eager and forward-only on CPU, as
  ``flex``. Source: FlexAttention (Dong et al. 2024, arXiv 2412.05496;
  ``torch.nn.attention.flex_attention``).

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

BACKENDS = ("reference", "varlen", "sdpa", "flex", "flex_inplace")

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
        RuntimeError: the backend cannot run on this device (``varlen`` on CPU; ``flex`` and
            ``flex_inplace`` on CPU when gradients are needed).
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
    shot, in_bank = layout.token_shot(), layout.token_in_bank()         # [B, L]
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


def _check_flex_grad(q, k, v, backend: str) -> None:
    if not q.is_cuda and torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        raise RuntimeError(f"the {backend!r} attention backend has no backward on CPU (PyTorch's "
                           "FlexAttention); train on CUDA, or use 'sdpa' / 'reference' on CPU")


def _flex_call(q, k, v, masks: Callable[[int, int], tuple]) -> torch.Tensor:
    """FlexAttention (compiled on CUDA) on ``[B, L_q, H, D]`` / ``[B, L_k, H, D]`` tensors →
    ``[B, L_q, H, D]``; ``masks(start, stop)`` gives ``(block_mask, score_mod)`` for samples
    ``start:stop``. ``[B', H, L, D]`` transposed views, as many samples a call as int32
    indexing allows; a sample past it runs head group by head group on contiguous copies."""
    b, _, heads, _ = q.shape
    kernel = _flex_kernel(q.device)
    per_sample = max(q[0].numel(), k[0].numel())
    samples = max(1, min(b, _FLEX_MAX_ELEMENTS // per_sample))
    group = max(1, heads // math.ceil(per_sample / _FLEX_MAX_ELEMENTS))
    outs = []
    for b0 in range(0, b, samples):
        block_mask, score_mod = masks(b0, min(b, b0 + samples))
        parts = []
        for h0 in range(0, heads, group):
            qh, kh, vh = (t[b0:b0 + samples, :, h0:h0 + group].transpose(1, 2)
                          for t in (q, k, v))
            if group < heads:
                qh, kh, vh = qh.contiguous(), kh.contiguous(), vh.contiguous()
            parts.append(kernel(qh, kh, vh, score_mod=score_mod,
                                block_mask=block_mask).transpose(1, 2))
        outs.append(parts[0] if len(parts) == 1 else torch.cat(parts, dim=2))
    return outs[0] if len(outs) == 1 else torch.cat(outs)


def _flex(q, k, v, layout: ShotLayout) -> torch.Tensor:
    _check_flex_grad(q, k, v, "flex")
    qp, kp, vp = _packed(q, k, v, layout)                       # [tokens, H, D]
    out = _flex_call(qp[None], kp[None], vp[None],
                     lambda start, stop: (flex_block_mask(layout), None))
    return out.reshape_as(q)


#: the logit offset that weighs a key double (``reference``'s ``log`` of the multiplicity 2)
_LN2 = math.log(2.0)


def flex_inplace_mask(layout: ShotLayout, start: int = 0, stop: int | None = None):
    """The ``flex_inplace`` backend's ``(block_mask, score_mod)`` for samples ``start:stop`` of
    the batch (default all), built on first use and cached on the layout per device.

    The mask admits key ``kv`` to query ``q`` of sample ``b`` when both are in one shot or
    ``kv`` is in the bank; ``score_mod`` adds ``ln 2`` to the logit where ``kv`` is in the
    bank *and* the query's shot (the own first frame, in ``[K_i ; K_g]`` twice). The BlockMask
    is ``B' = stop − start`` by ``L × L`` tokens, broadcast over heads; compiled
    ``create_block_mask`` on CUDA (the eager one materialises the dense ``[B', L, L]`` mask).

    Returns:
        ``(BlockMask, score_mod)`` for ``flex_attention`` on ``[B', H, L, D]`` tensors.
    """
    from torch.nn.attention.flex_attention import create_block_mask
    device = layout.frame_shot.device
    stop = layout.batch_size if stop is None else stop
    key = ("flex_inplace_mask", str(device), start, stop)
    if key not in layout.cache:
        shot = layout.token_shot()[start:stop].to(torch.int32)                  # [B', L]
        bank_shot = torch.where(layout.token_in_bank()[start:stop], shot, -1)   # -1: not in bank

        def own_shot_or_bank(b, h, q_idx, kv_idx):
            return (shot[b, q_idx] == shot[b, kv_idx]) | (bank_shot[b, kv_idx] >= 0)

        def own_first_frame_twice(score, b, h, q_idx, kv_idx):
            return torch.where(bank_shot[b, kv_idx] == shot[b, q_idx], score + _LN2, score)

        block_mask = create_block_mask(own_shot_or_bank, stop - start, None, layout.seq_len,
                                       layout.seq_len, device=device,
                                       _compile=device.type == "cuda")
        layout.cache[key] = block_mask, own_first_frame_twice
    return layout.cache[key]


def _flex_inplace(q, k, v, layout: ShotLayout) -> torch.Tensor:
    _check_flex_grad(q, k, v, "flex_inplace")
    return _flex_call(q, k, v, lambda start, stop: flex_inplace_mask(layout, start, stop))


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


_SPARSE = {"reference": _reference, "varlen": _varlen, "sdpa": _per_shot_sdpa, "flex": _flex,
           "flex_inplace": _flex_inplace}
