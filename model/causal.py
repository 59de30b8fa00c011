"""CausalCine's causal chunk-wise mode of the DiT: chunk layout, the teacher-forcing attention
pattern, Content-Aware Memory Routing (CAMR) and the KV cache of streaming generation.

CausalCine (§3.2–3.3) turns the bidirectional multi-shot DiT into an autoregressive one over
**chunks** of ``chunk_latent_frames`` latent frames. The layout of the teacher-forcing sequence
follows Self-Forcing's ``wan/modules/causal_model.py`` and CausVid (read, not copied): one
sequence ``[clean chunks ; noisy chunks]`` of ``2·F_lat`` latent frames, the clean copies at
timestep 0, the noisy copies at one sampled timestep, both copies of a latent frame at the same
RoPE position (its frame index). Self-attention, by chunk (the four quadrants):

* clean → clean: causal, a clean chunk sees itself and every earlier clean chunk;
* noisy → clean: only strictly earlier clean chunks;
* noisy → noisy: only itself;
* clean → noisy: nothing.

**CAMR** (parameter-free, per self-attention layer, the same code in training and inference):
a history latent frame's descriptor is its keys (after RoPE) mean-pooled over its spatial tokens,
``[heads, head_dim]``; a query chunk's descriptor is its queries mean-pooled over its frames and
tokens. History frames outside the local window (the ``local_window_chunks`` chunks before the
query chunk) are scored by the head-summed dot product ``sum_h <q_h, k_h>`` — with descriptors
after RoPE this is ``H·hw·n`` times the mean attention logit between the chunk and the frame —
and the top ``routed_frames`` are attended together with the local window (ties: the earlier
frame first). ``routed_frames: 0`` turns CAMR off (all history is attended).

Decisions (ours; the paper leaves them open):

* **Chunking** (:class:`ChunkLayout`): the *first* chunk takes the remainder,
  ``(F_lat − 1) mod c + 1`` latent frames, every later chunk ``c``. Wan's causal VAE encodes the
  first video frame alone into latent frame 0, so at Wan2.2-5B's 241 frames (61 latent frames)
  chunk 0 is that one frame and 20 chunks of 3 follow (each 12 video frames); at 81 frames
  (21 latent frames) it gives Self-Forcing's / CausVid's 7 × 3.
* **CAMR in the clean → clean quadrant**: off by default (``route_clean: false``), as in the
  paper, where CAMR sparsifies the noisy → clean quadrant only; the clean pass of streaming then
  attends all history. ``route_clean: true`` routes the clean copies too (a clean chunk sees
  its local window, its routed frames and itself), bounding the clean pass. Either way training
  and inference run the same rule: the clean pass that writes a chunk's K/V into the cache
  (:meth:`model.dit.WanModel.forward_chunk` with ``write_cache=True``) attends exactly what the
  clean copy attends in teacher forcing.
* **Per-shot text**: every latent frame carries its shot's cross-attention mask (HoloCine's window
  cross-attention, :meth:`model.dit.WanModel.frame_text_mask`), both copies of a frame the same;
  a chunk that straddles a cut therefore conditions each of its frames on its own shot's prompt
  (per-latent-frame prompts), so the packer's cuts need not fall on chunk boundaries.

Attention backends (the model's ``attention_backend``): ``reference`` builds the dense token
mask from the frame mask and runs float32 softmax attention (the definition; CPU tests);
``sdpa`` (and ``varlen``, which has no separate causal kernel) runs one
``scaled_dot_product_attention`` per query chunk over its gathered keys; ``flex`` runs
FlexAttention with a mask_mod over the frame mask (compiled on CUDA, eager on CPU, forward only
on CPU as in :mod:`model.attention`). A streamed chunk needs no mask: it attends its gathered
history and itself in one call (float32 softmax for ``reference``, SDPA for the others).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from pydantic import Field

from multishot.config import Section
from multishot.model.attention import _flex_kernel, _sdpa


class CausalConfig(Section):
    """The YAML section ``model.causal`` of training and generation configs: the causal
    chunk-wise mode (CausalCine §3.2–3.3). Absent (None) = the bidirectional model."""

    chunk_latent_frames: int = Field(3, ge=1, description=(
        "latent frames per chunk (CausalCine and Self-Forcing: 3); the first chunk takes the "
        "remainder (model.causal.ChunkLayout)"))
    local_window_chunks: int = Field(2, ge=0, description=(
        "CAMR: chunks before the current one that are always attended (default ours)"))
    routed_frames: int = Field(6, ge=0, description=(
        "CAMR: history latent frames outside the local window attended by descriptor score "
        "(default ours: two chunks' worth); 0 = CAMR off, every history frame is attended"))
    route_clean: bool = Field(False, description=(
        "CAMR also routes the clean copies (clean -> clean quadrant, and the clean pass that "
        "writes the KV cache); false = the paper's: clean chunks attend all earlier clean chunks"))

    @property
    def routing(self) -> bool:
        """CAMR is on (``routed_frames > 0``)."""
        return self.routed_frames > 0


@dataclass(frozen=True)
class ChunkLayout:
    """Chunks of ``num_latent_frames`` latent frames: the first takes the remainder
    ``(F_lat − 1) mod c + 1``, every later one ``c = chunk_latent_frames`` (module docstring).

    ``starts[i]`` / ``ends[i]``: latent frames ``[start, end)`` of chunk ``i`` (Python ints).
    """

    num_latent_frames: int
    chunk_latent_frames: int
    starts: tuple[int, ...]
    ends: tuple[int, ...]

    @classmethod
    def build(cls, num_latent_frames: int, chunk_latent_frames: int) -> ChunkLayout:
        """E.g. ``build(61, 3)``: chunk 0 = frame 0, then 20 chunks of 3; ``build(21, 3)``: 7 × 3.

        Raises:
            ValueError: ``num_latent_frames < 1`` or ``chunk_latent_frames < 1``.
        """
        if num_latent_frames < 1 or chunk_latent_frames < 1:
            raise ValueError(f"cannot chunk {num_latent_frames} latent frames by "
                             f"{chunk_latent_frames}")
        first = (num_latent_frames - 1) % chunk_latent_frames + 1
        starts = (0,) + tuple(range(first, num_latent_frames, chunk_latent_frames))
        ends = starts[1:] + (num_latent_frames,)
        return cls(num_latent_frames, chunk_latent_frames, starts, ends)

    @property
    def num_chunks(self) -> int:
        return len(self.starts)

    def chunk_of_frame(self) -> list[int]:
        """Chunk index of every latent frame, ``[F_lat]``."""
        return [i for i, (s, e) in enumerate(zip(self.starts, self.ends)) for _ in range(e - s)]


# ---- CAMR ----------------------------------------------------------------------------------

def frame_descriptors(keys: torch.Tensor, tokens_per_frame: int) -> torch.Tensor:
    """CAMR key descriptors: keys (after RoPE) ``[B, F·hw, H, D]`` mean-pooled over each latent
    frame's ``hw`` spatial tokens → ``[B, F, H, D]`` float32."""
    b, seq, h, d = keys.shape
    return keys.float().view(b, seq // tokens_per_frame, tokens_per_frame, h, d).mean(2)


def query_descriptor(queries: torch.Tensor) -> torch.Tensor:
    """CAMR query descriptor of a chunk: its queries (after RoPE) ``[B, n·hw, H, D]``
    mean-pooled over all its frames and tokens → ``[B, H, D]`` float32."""
    return queries.float().mean(1)


def route_frames(query_desc: torch.Tensor, key_desc: torch.Tensor, k: int,
                 num_candidates: torch.Tensor | None = None) -> torch.Tensor:
    """CAMR's selection: the ``k`` candidate frames of highest head-summed dot product.

    Args:
        query_desc: ``[B, H, D]`` (:func:`query_descriptor`).
        key_desc: ``[B, F_c, H, D]`` descriptors of the candidate frames (:func:`frame_descriptors`).
        k: frames to keep; ``k >= F_c`` keeps all.
        num_candidates: ``[]`` int64 on ``key_desc``'s device: only frames ``[0, num_candidates)``
            of ``key_desc`` are candidates (the streaming cache's storage holds frames beyond
            them); the caller keeps ``k <= num_candidates``. None = all ``F_c``.
    Returns:
        ``[B, min(k, F_c)]`` int64 candidate indices in ascending order. Equal scores keep the
        earlier frame (a stable descending sort), so masking frames past ``num_candidates``
        (scored −inf) picks what ``key_desc[:, :num_candidates]`` alone would.
    """
    scores = torch.einsum("bhd,bfhd->bf", query_desc.float(), key_desc.float())
    if num_candidates is not None:
        frame = torch.arange(scores.shape[1], device=scores.device)
        scores = scores.masked_fill(frame >= num_candidates, float("-inf"))
    top = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    return top.sort(dim=1).values


@dataclass
class KVSelection:
    """Key frames one query chunk attends: contiguous ``ranges`` of frames (``[start, end)``,
    the same for the whole batch) plus ``routed`` frames ``[B, r]`` int64 (CAMR; None = none).
    Frame indices are in the key sequence's frame space (teacher forcing: ``[0, 2·F_lat)``,
    clean frames first; streaming: ``[0, F_cached + F_chunk)``, the chunk's own frames last)."""

    ranges: list[tuple[int, int]]
    routed: torch.Tensor | None = None

    def num_frames(self) -> int:
        return sum(e - s for s, e in self.ranges) + \
            (0 if self.routed is None else self.routed.shape[1])


def history_frames(chunk: int, chunk_starts: tuple[int, ...] | list[int], config: CausalConfig,
                   route: bool) -> tuple[tuple[int, int] | None, int]:
    """The data-independent half of :func:`select_history`: the history range query chunk
    ``chunk`` always attends and the number of frames CAMR routes among.

    Returns:
        ``(range, candidates)``: all history ``[0, start)`` and 0 candidates without routing
        (or before the local window leaves anything out); with CAMR the local window
        ``[start of chunk − W, start)`` and candidates ``[0, start − W)``. The range is None
        when empty.
    """
    start = chunk_starts[chunk]
    window = chunk_starts[max(0, chunk - config.local_window_chunks)]
    if not route or window == 0:
        return ((0, start) if start else None), 0
    return ((window, start) if window < start else None), window


def select_history(chunk: int, chunk_starts: tuple[int, ...] | list[int], config: CausalConfig,
                   route: bool, query_desc: torch.Tensor | None = None,
                   key_desc: torch.Tensor | None = None) -> KVSelection:
    """History frames (clean frames ``[0, start of chunk)``) that query chunk ``chunk`` attends.

    Args:
        chunk: the query chunk's index.
        chunk_starts: first latent frame of every chunk up to at least ``chunk``.
        config: the causal config (local window, routed frames).
        route: apply CAMR (``config.routing`` and, for clean copies, ``config.route_clean``).
        query_desc: ``[B, H, D]``, needed when routing.
        key_desc: ``[B, F_hist, H, D]`` descriptors of the history frames, ``F_hist >=`` the
            chunk's start; needed when routing.
    Returns:
        All history as one range, or with CAMR the local window ``[start of chunk − W, start)``
        and the routed frames of ``[0, start of chunk − W)`` (:func:`history_frames`).
    """
    always, candidates = history_frames(chunk, chunk_starts, config, route)
    ranges = [always] if always else []
    if not candidates:
        return KVSelection(ranges)
    return KVSelection(ranges, route_frames(query_desc, key_desc[:, :candidates],
                                            config.routed_frames))


def teacher_forcing_selections(chunks: ChunkLayout, config: CausalConfig,
                               query_desc: torch.Tensor | None = None,
                               key_desc: torch.Tensor | None = None) -> list[KVSelection]:
    """Key frames of every query chunk of the teacher-forcing sequence (the four quadrants with
    CAMR), in the ``[0, 2·F_lat)`` frame space.

    Args:
        chunks: the chunk layout of ``F_lat`` latent frames (``N`` chunks).
        config: the causal config.
        query_desc: ``[B, 2N, H, D]``: the descriptor of clean chunks ``0..N−1`` then noisy chunks
            ``0..N−1``; needed when ``config.routing``.
        key_desc: ``[B, F_lat, H, D]`` descriptors of the clean frames; needed when routing.
    Returns:
        ``2N`` selections: clean chunk ``i`` (its history and itself), then noisy chunk ``i``
        (its history and its own noisy frames ``F_lat + [start, end)``).
    Raises:
        ValueError: routing without descriptors.
    """
    if config.routing and (query_desc is None or key_desc is None):
        raise ValueError("CAMR routing needs query and key descriptors")
    f, n = chunks.num_latent_frames, chunks.num_chunks
    out = []
    for copy in ("clean", "noisy"):
        route = config.routing and (copy == "noisy" or config.route_clean)
        for i, (s, e) in enumerate(zip(chunks.starts, chunks.ends)):
            qd = None if query_desc is None else query_desc[:, i + (n if copy == "noisy" else 0)]
            sel = select_history(i, chunks.starts, config, route, qd, key_desc)
            own = (s, e) if copy == "clean" else (f + s, f + e)
            out.append(KVSelection(sel.ranges + [own], sel.routed))
    return out


def selections_to_frame_mask(chunks: ChunkLayout, selections: list[KVSelection],
                             batch_size: int, device: torch.device | str | None = None,
                             ) -> torch.Tensor:
    """The frame-level mask of :func:`teacher_forcing_selections`: ``[B, 2F, 2F]`` bool, True
    where a query frame may attend a key frame (rows: clean frames then noisy frames)."""
    f, n = chunks.num_latent_frames, chunks.num_chunks
    mask = torch.zeros(batch_size, 2 * f, 2 * f, dtype=torch.bool, device=device)
    bounds = list(zip(chunks.starts, chunks.ends))
    for j, sel in enumerate(selections):
        s, e = bounds[j % n]
        q0, q1 = (s, e) if j < n else (f + s, f + e)
        for a, b in sel.ranges:
            mask[:, q0:q1, a:b] = True
        if sel.routed is not None:
            rows = torch.arange(batch_size, device=device)[:, None]
            mask[rows, q0:q1, sel.routed.to(device)] = True   # every row of q0:q1
    return mask


def teacher_forcing_frame_mask(chunks: ChunkLayout, config: CausalConfig, batch_size: int = 1,
                               query_desc: torch.Tensor | None = None,
                               key_desc: torch.Tensor | None = None,
                               device: torch.device | str | None = None) -> torch.Tensor:
    """The teacher-forcing self-attention mask at latent-frame granularity, ``[B, 2F, 2F]``
    bool (every token of a query frame attends every token of an admitted key frame); arguments
    as :func:`teacher_forcing_selections`. The token mask is this mask repeated ``hw`` times
    along both axes."""
    sels = teacher_forcing_selections(chunks, config, query_desc, key_desc)
    return selections_to_frame_mask(chunks, sels, batch_size, device)


def teacher_forcing_attention_pairs(num_latent_frames: int, tokens_per_frame: int,
                                    config: CausalConfig) -> int:
    """Query-key pairs one sample's teacher-forcing self-attention computes (``2L`` queries),
    for FLOP counts (:func:`model.flops.forward_flops`'s ``attention_pairs``). Data-independent:
    CAMR always routes ``min(routed_frames, frames before the window)`` frames."""
    chunks = ChunkLayout.build(num_latent_frames, config.chunk_latent_frames)
    zeros = torch.zeros(1, 2 * chunks.num_chunks, 1, 1), torch.zeros(1, num_latent_frames, 1, 1)
    sels = teacher_forcing_selections(chunks, config, *zeros)
    sizes = [e - s for s, e in zip(chunks.starts, chunks.ends)] * 2
    return sum(n * tokens_per_frame * sel.num_frames() * tokens_per_frame
               for n, sel in zip(sizes, sels))


# ---- attention kernels ---------------------------------------------------------------------

def _merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Adjacent ``[start, end)`` ranges joined (in order), empty ones dropped."""
    out: list[tuple[int, int]] = []
    for a, b in ranges:
        if a == b:
            continue
        if out and out[-1][1] == a:
            out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def _gather_frames(x: torch.Tensor, sel: KVSelection, own: torch.Tensor | None = None,
                   ) -> torch.Tensor:
    """Keys or values ``x`` ``[B, F, hw, H, D]`` of the selected frames (then ``own``
    ``[B, n, hw, H, D]``) → ``[B, n_sel·hw, H, D]``; one contiguous range is a view (a clean
    chunk without CAMR attends the prefix ``[0, end)``), anything else a copy."""
    parts = [x[:, a:b] for a, b in _merged(sel.ranges)]
    if sel.routed is not None:
        rows = torch.arange(x.shape[0], device=x.device)[:, None]
        parts.append(x[rows, sel.routed.to(x.device)])
    if own is not None:
        parts.append(own)
    return torch.cat(parts, dim=1).flatten(1, 2)


def _masked_reference(q, k, v, mask: torch.Tensor | None) -> torch.Tensor:
    """Float32 softmax attention, ``mask`` ``[B, L_q, L_k]`` bool or None (the definition)."""
    qf, kf, vf = (t.float().transpose(1, 2) for t in (q, k, v))
    scores = qf @ kf.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None], float("-inf"))
    return (scores.softmax(-1) @ vf).transpose(1, 2).to(q.dtype)


class TeacherForcingAttention:
    """Self-attention of one teacher-forced forward over ``[clean ; noisy]`` tokens (the four
    quadrants, CAMR per layer): built once per forward, called by every block.

    Args:
        chunks: the chunk layout of the ``F_lat`` latent frames.
        config: the causal config.
        tokens_per_frame: ``hw``, tokens per latent frame after patching.
        backend: ``reference`` / ``sdpa`` / ``varlen`` / ``flex`` (module docstring).
    """

    def __init__(self, chunks: ChunkLayout, config: CausalConfig, tokens_per_frame: int,
                 backend: str):
        self.chunks, self.config, self.hw, self.backend = chunks, config, tokens_per_frame, backend
        self._static: list[KVSelection] | None = None
        # without CAMR every layer has the same pattern: its frame mask and BlockMask
        self._static_mask: torch.Tensor | None = None
        self._static_block_mask = None
        #: the last layer's selections (tests read the routing)
        self.last_selections: list[KVSelection] | None = None

    def selections(self, q: torch.Tensor, k: torch.Tensor) -> list[KVSelection]:
        """Key frames of every query chunk for this layer's ``q``, ``k`` ``[B, 2L, H, D]``."""
        if not self.config.routing:
            if self._static is None:
                self._static = teacher_forcing_selections(self.chunks, self.config)
            return self._static
        f, hw = self.chunks.num_latent_frames, self.hw
        with torch.no_grad():  # routing is a discrete choice: no gradient through it
            key_desc = frame_descriptors(k[:, :f * hw], hw)                   # [B, F, H, D]
            qf = frame_descriptors(q, hw)                                     # [B, 2F, H, D]
            bounds = [(s, e) for s, e in zip(self.chunks.starts, self.chunks.ends)]
            # mean over a chunk's frames of per-frame means = mean over all its tokens
            query_desc = torch.stack([qf[:, off + s:off + e].mean(1)
                                      for off in (0, f) for s, e in bounds], dim=1)
        return teacher_forcing_selections(self.chunks, self.config, query_desc, key_desc)

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``q, k, v`` ``[B, 2L, H, D]`` (RoPE applied) → ``[B, 2L, H, D]``."""
        sels = self.selections(q, k)
        self.last_selections = sels
        b, seq, h, d = q.shape
        f, hw, n = self.chunks.num_latent_frames, self.hw, self.chunks.num_chunks
        if self.backend in ("reference", "flex"):
            if self.config.routing:
                frame_mask, block_mask = selections_to_frame_mask(self.chunks, sels, b,
                                                                  q.device), None
            else:  # the same pattern in every layer: build it once
                if self._static_mask is None:
                    self._static_mask = selections_to_frame_mask(self.chunks, sels, b, q.device)
                frame_mask, block_mask = self._static_mask, self._static_block_mask
            if self.backend == "reference":
                mask = frame_mask.repeat_interleave(hw, 1).repeat_interleave(hw, 2)
                return _masked_reference(q, k, v, mask)
            if block_mask is None:
                block_mask = _frame_block_mask(frame_mask, hw, seq, q.device)
                if not self.config.routing:
                    self._static_block_mask = block_mask
            return _flex(q, k, v, block_mask)
        k5, v5 = k.view(b, 2 * f, hw, h, d), v.view(b, 2 * f, hw, h, d)
        bounds = list(zip(self.chunks.starts, self.chunks.ends))
        outs = []
        for j, sel in enumerate(sels):
            s, e = bounds[j % n]
            q0 = (s if j < n else f + s) * hw
            outs.append(_sdpa(q[:, q0:q0 + (e - s) * hw], _gather_frames(k5, sel),
                              _gather_frames(v5, sel)))
        return torch.cat(outs, dim=1)


def _frame_block_mask(frame_mask: torch.Tensor, hw: int, seq: int, device: torch.device):
    """FlexAttention BlockMask of ``mask_mod = frame_mask[b, q // hw, kv // hw]`` over ``seq``
    queries and keys (``frame_mask`` ``[B, F_q, F_k]``; compiled ``create_block_mask`` on CUDA,
    the eager one, which materialises the dense mask, on CPU)."""
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(bi, h, q_idx, kv_idx):
        return frame_mask[bi, q_idx // hw, kv_idx // hw]

    return create_block_mask(mask_mod, frame_mask.shape[0], None, seq, seq, device=device,
                             _compile=device.type == "cuda")


def _flex(q, k, v, block_mask) -> torch.Tensor:
    """FlexAttention of ``[B, L, H, D]`` tensors under ``block_mask``."""
    if not q.is_cuda and torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        raise RuntimeError("the 'flex' attention backend has no backward on CPU (PyTorch's "
                           "FlexAttention); train on CUDA, or use 'sdpa' / 'reference' on CPU")
    kernel = _flex_kernel(q.device)
    out = kernel(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), block_mask=block_mask)
    return out.transpose(1, 2)


# ---- KV cache ------------------------------------------------------------------------------

@dataclass
class LayerKV:
    """One block's cache in preallocated storage: clean keys and values (after RoPE)
    ``[B, capacity, hw, H, D]`` and CAMR descriptors ``[B, capacity, H, D]`` float32, of which
    the first ``frames`` latent frames are filled.

    An append copies a chunk into place; the storage grows (a new tensor, by doubling) only when
    a chunk does not fit. Between growths its address stays fixed: what a CUDA graph of a
    denoising pass reads (:mod:`generate.graphs`).
    """

    key_storage: torch.Tensor | None = None
    value_storage: torch.Tensor | None = None
    descriptor_storage: torch.Tensor | None = None
    frames: int = 0

    @property
    def keys(self) -> torch.Tensor | None:
        """The cached keys ``[B, frames·hw, H, D]`` (a view), None when empty."""
        return None if self.frames == 0 else self.key_storage[:, :self.frames].flatten(1, 2)

    @property
    def values(self) -> torch.Tensor | None:
        """The cached values ``[B, frames·hw, H, D]`` (a view), None when empty."""
        return None if self.frames == 0 else self.value_storage[:, :self.frames].flatten(1, 2)

    @property
    def descriptors(self) -> torch.Tensor | None:
        """CAMR descriptors of the cached frames ``[B, frames, H, D]`` (a view), None when empty."""
        return None if self.frames == 0 else self.descriptor_storage[:, :self.frames]

    @property
    def capacity(self) -> int:
        return 0 if self.key_storage is None else self.key_storage.shape[1]

    def reserve(self, frames: int, like: torch.Tensor) -> None:
        """Make room for ``frames`` latent frames of ``like``'s ``[B, n, hw, H, D]`` layout,
        dtype and device (keeping what is cached): at least doubling when it grows."""
        if frames <= self.capacity:
            return
        b, _, hw, h, d = like.shape
        capacity = max(frames, 2 * self.capacity)
        grown = [like.new_zeros(b, capacity, hw, h, d), like.new_zeros(b, capacity, hw, h, d),
                 like.new_zeros(b, capacity, h, d, dtype=torch.float32)]
        if self.frames:
            for new, old in zip(grown, (self.key_storage, self.value_storage,
                                        self.descriptor_storage)):
                new[:, :self.frames] = old[:, :self.frames]
        self.key_storage, self.value_storage, self.descriptor_storage = grown

    def append(self, k: torch.Tensor, v: torch.Tensor, hw: int) -> None:
        """Cache a chunk's keys and values ``[B, n·hw, H, D]`` after the cached frames."""
        b, seq, h, d = k.shape
        n = seq // hw
        k5, v5 = k.view(b, n, hw, h, d), v.view(b, n, hw, h, d)
        self.reserve(self.frames + n, k5)
        end = self.frames + n
        self.key_storage[:, self.frames:end] = k5
        self.value_storage[:, self.frames:end] = v5
        self.descriptor_storage[:, self.frames:end] = frame_descriptors(k.detach(), hw)
        self.frames = end


@dataclass
class KVCache:
    """The clean KV cache of streaming generation: per block the keys/values (after RoPE) and
    CAMR frame descriptors of every finished chunk (:class:`LayerKV`), and where each chunk
    starts.

    Build with :meth:`empty`; :meth:`model.dit.WanModel.forward_chunk` with ``write_cache=True``
    appends a chunk. Earlier chunks are never recomputed.
    """

    layers: list[LayerKV]
    #: first latent frame of every cached chunk
    chunk_starts: list[int] = field(default_factory=list)
    #: latent frames cached (the next chunk's first frame and RoPE position)
    num_frames: int = 0
    tokens_per_frame: int | None = None
    #: latent frames each layer's storage is first made for (more grow it by doubling)
    reserve_frames: int = 0

    @classmethod
    def empty(cls, num_layers: int, reserve_frames: int = 0) -> KVCache:
        """An empty cache for a model of ``num_layers`` blocks (``model.config.num_layers``);
        ``reserve_frames``: latent frames to allocate at the first append (a stream of known
        length: no growth, so CUDA graphs of its passes are captured once)."""
        return cls([LayerKV() for _ in range(num_layers)], reserve_frames=reserve_frames)

    @property
    def num_chunks(self) -> int:
        return len(self.chunk_starts)


@dataclass
class ChunkPlan:
    """Everything a streamed chunk's forward reads besides its inputs and the cache's storage,
    built from the cache's bookkeeping before the pass (:meth:`build`; RoPE tables are the
    model's, :meth:`model.dit.WanModel.chunk_plan`).

    The tensors are what changes from chunk to chunk at a fixed shape, so a CUDA graph captured
    for one chunk replays for the next once they are copied into its plan (:meth:`copy_`);
    ``key`` names the shapes (chunks with the same key run the same kernels).

    Attributes:
        cos, sin: RoPE tables of the chunk's tokens at their frame positions
            ``[f·hw, 1, head_dim/2]`` float32.
        history: ``[n]`` int64 history frames every query attends (all history, or CAMR's
            local window), ascending.
        num_candidates: ``[]`` int64: CAMR routes among frames ``[0, num_candidates)``.
        routed: frames CAMR picks among them (0: no routing).
        write: the clean pass (appends the chunk's keys/values to the cache).
    """

    cos: torch.Tensor
    sin: torch.Tensor
    history: torch.Tensor
    num_candidates: torch.Tensor
    routed: int
    write: bool

    @classmethod
    def build(cls, cache: KVCache, config: CausalConfig, cos: torch.Tensor, sin: torch.Tensor,
              write: bool) -> ChunkPlan:
        """The plan of the cache's next chunk: history and routing by :func:`history_frames`
        (``route`` for denoising passes when CAMR is on, for the clean pass only with
        ``route_clean``)."""
        starts = list(cache.chunk_starts) + [cache.num_frames]
        route = config.routing and (not write or config.route_clean)
        always, candidates = history_frames(len(starts) - 1, starts, config, route)
        device = cos.device
        history = torch.arange(*(always or (0, 0)), device=device)
        # a fill, not a host copy: a pageable copy would wait for the GPU's queue to drain
        return cls(cos, sin, history, torch.full((), candidates, device=device),
                   min(config.routed_frames, candidates), write)

    @property
    def key(self) -> tuple:
        return (tuple(self.cos.shape), self.history.shape[0], self.routed, self.write)

    def copy_(self, other: ChunkPlan) -> None:
        """Take ``other``'s tensors into this plan's (same :attr:`key`)."""
        if other.key != self.key:
            raise ValueError(f"plan {other.key} does not fit {self.key}")
        for name in ("cos", "sin", "history", "num_candidates"):
            getattr(self, name).copy_(getattr(other, name))


class ChunkAttention:
    """Self-attention of one streaming chunk against the cache: built once per
    :meth:`model.dit.WanModel.forward_chunk`, ``layer(i)`` gives block ``i``'s kernel.

    The chunk's queries attend the plan's history frames (all of it, or with CAMR the local
    window and the routed frames) and the chunk's own tokens, gathered from the cache's storage
    by index (the same kernels for every chunk of a plan key); the clean pass appends the
    chunk's keys/values to the cache.
    """

    def __init__(self, cache: KVCache, plan: ChunkPlan, chunk_frames: int, tokens_per_frame: int,
                 backend: str):
        self.cache, self.plan, self.hw, self.backend = cache, plan, tokens_per_frame, backend
        self.chunk_frames = chunk_frames
        # blocks that have appended: activation checkpointing runs a block's forward again in
        # backward, and that recompute must not append twice (the history it reads is the
        # frames before the chunk, unchanged by the append)
        self._written: set[int] = set()

    def layer(self, index: int) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor],
                                            torch.Tensor]:
        """Block ``index``'s kernel ``q, k, v`` ``[B, n·hw, H, D]`` → ``[B, n·hw, H, D]``."""
        kv, plan = self.cache.layers[index], self.plan

        def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            b, _, h, d = q.shape
            hw = self.hw
            frames = plan.history.expand(b, -1)
            if plan.routed:
                with torch.no_grad():  # routing is a discrete choice: no gradient through it
                    routed = route_frames(query_descriptor(q), kv.descriptor_storage,
                                          plan.routed, plan.num_candidates)
                frames = torch.cat([frames, routed], 1)
            if frames.shape[1]:
                rows = torch.arange(b, device=q.device)[:, None]
                keys = torch.cat([kv.key_storage[rows, frames], k.view(b, -1, hw, h, d)], 1)
                values = torch.cat([kv.value_storage[rows, frames], v.view(b, -1, hw, h, d)], 1)
                keys, values = keys.flatten(1, 2), values.flatten(1, 2)
            else:
                keys, values = k, v
            if plan.write and index not in self._written:
                if kv.frames == 0 and self.cache.reserve_frames:
                    kv.reserve(self.cache.reserve_frames, k.view(b, -1, hw, h, d))
                kv.append(k, v, hw)
                self._written.add(index)
            if self.backend == "reference":
                return _masked_reference(q, keys, values, None)
            return _sdpa(q, keys, values)

        return attend

    def commit(self) -> None:
        """Record the written chunk in the cache's bookkeeping (after the last block)."""
        if self.plan.write:
            self.cache.chunk_starts.append(self.cache.num_frames)
            self.cache.num_frames += self.chunk_frames
            self.cache.tokens_per_frame = self.hw
