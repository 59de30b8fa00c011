"""CausalCine's causal chunk-wise mode of the DiT: chunk layout, the teacher-forcing attention
pattern, Content-Aware Memory Routing (CAMR), Block-Relative RoPE and the bounded KV cache of
streaming generation.

CausalCine (§3.2–3.3) turns the bidirectional multi-shot DiT into an autoregressive one over
**chunks** of ``chunk_latent_frames`` latent frames. The layout of the teacher-forcing sequence
follows Self-Forcing's ``wan/modules/causal_model.py`` and CausVid (read, not copied): one
sequence ``[clean chunks ; noisy chunks]`` of ``2·F_lat`` latent frames, the clean copies at
timestep 0, the noisy copies at one sampled timestep. Self-attention, by chunk (the four
quadrants):

* clean → clean: causal, a clean chunk sees itself and earlier clean chunks;
* noisy → clean: only strictly earlier clean chunks;
* noisy → noisy: only itself;
* clean → noisy: nothing.

**CAMR** (parameter-free, per self-attention layer, the same code in training and inference):
a history latent frame's descriptor is its keys (**before** RoPE: content, not position)
mean-pooled over its spatial tokens, ``[heads, head_dim]``; a query chunk's descriptor is its
queries (before RoPE) mean-pooled over its frames and tokens. History frames outside the local
window (the ``local_window_chunks`` chunks before the query chunk) are scored by the
head-summed dot product ``sum_h <q_h, k_h>`` and the top ``routed_frames`` are attended
together with the local window (ties: the earlier frame first). ``routed_frames: 0`` turns CAMR
off. Routing on unrotated descriptors is the paper's order (route on content, then rotate);
descriptors pooled after absolute RoPE carried a recency bias (issue 32: a frame identical in
content to the query scored 0.76 of its unrotated score at distance 3, 0.49 at 990).

**Block-Relative RoPE** (CausalCine §3.3). Keys are cached unrotated; after routing, every
attention call rotates the frames it attends at *compact block-relative* temporal positions,
so that the same cached key may get a different position for different queries. The seed
text lost the paper's exact positions (its equation 9); our rule (:func:`block_positions`):

    the K key frames of a query chunk, in temporal order — routed memory (ascending), the
    local window (or the history range), the chunk's own n frames — take positions
    0, 1, …, K − 1; the chunk's queries take the positions of its own frames, K − n … K − 1.

So routed memory sits directly before the local window, gaps closed. Why this rule: every
query-key distance is at most ``K − 1``, and the selection rule (:func:`history_frames`)
keeps ``K <= horizon_frames`` (the training horizon), so no phase outside training is ever
seen, however long the stream; within a training sample without CAMR the positions are the
absolute frame indices (history ``[0, start)`` is already compact), so a model tuned with
absolute RoPE sees the positions it was tuned on where nothing was routed; and the positions
depend only on the count of each kind of frame, not on *which* frames were routed, so a
chunk's RoPE tables are fixed per shape (what a CUDA graph replays). The spatial (h, w) bands
keep their absolute positions. Teacher forcing applies the same rule per query chunk (it
gathers each chunk's keys, rotates them and attends, as streaming does): one code path
(:func:`attend_chunk`; where the compact positions are the frames' own indices teacher
forcing slices keys rotated once, the same numbers, :class:`TeacherForcingAttention`).

**Bounded attention** (:func:`history_frames`): a query chunk of ``n`` frames never attends
more than ``horizon_frames`` frames, its own included. Without routing (CAMR off, or the clean
copies with ``route_clean: false``) it attends the last ``horizon_frames − n`` history frames
(all of them within a training sample of ``<= horizon_frames`` frames); with CAMR the local
window and ``routed_frames`` routed frames, which the config check keeps within the horizon.

Decisions (ours; the paper leaves them open):

* **Chunking** (:class:`ChunkLayout`): the *first* chunk takes the remainder,
  ``(F_lat − 1) mod c + 1`` latent frames, every later chunk ``c``. Wan's causal VAE encodes the
  first video frame alone into latent frame 0, so at Wan2.2-5B's 241 frames (61 latent frames)
  chunk 0 is that one frame and 20 chunks of 3 follow (each 12 video frames); at 81 frames
  (21 latent frames) it gives Self-Forcing's / CausVid's 7 × 3.
* **CAMR in the clean → clean quadrant**: off by default (``route_clean: false``), as in the
  paper, where CAMR sparsifies the noisy → clean quadrant only; a clean chunk then attends the
  last ``horizon_frames − n`` frames. ``route_clean: true`` routes the clean copies too.
  Either way training and inference run the same rule: the clean pass that writes a chunk's
  K/V into the cache (:meth:`model.dit.WanModel.forward_chunk` with ``write_cache=True``)
  attends exactly what the clean copy attends in teacher forcing.
* **The cache's memory budget** (:class:`LayerKV`): a ring of the last ``horizon_frames − 1``
  frames (what any unrouted pass may attend) and a pool of ``memory_frames`` older frames for
  CAMR, least-recently-routed first out (module section "KV cache"). A fixed pool, not
  eviction by a rule of what routing "can no longer need": CAMR routes by content over all
  earlier frames, so no frame is provably unneeded; a bounded pool that keeps what routing
  keeps choosing (a character's frames while the story returns to them) and lets frames never
  chosen age out is the budget with a known size.
* **Per-shot text**: every latent frame carries its shot's cross-attention mask (HoloCine's window
  cross-attention, :meth:`model.dit.WanModel.frame_text_mask`), both copies of a frame the same;
  a chunk that straddles a cut therefore conditions each of its frames on its own shot's prompt
  (per-latent-frame prompts), so the packer's cuts need not fall on chunk boundaries.

Attention backends (the model's ``attention_backend``): ``reference`` runs float32 softmax
attention per query chunk over its gathered, rotated keys (the definition; CPU tests); every
other backend (``sdpa``, ``varlen``, ``flex``, ``flex_inplace``) runs one
``scaled_dot_product_attention`` per query chunk. FlexAttention has no use here: Block-Relative RoPE rotates a chunk's keys at
positions of its own, which no single masked call over a shared key sequence can express.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from pydantic import Field, model_validator

from multishot.config import Section
from multishot.model.attention import _sdpa
from multishot.model.rope import ROPE_MAX_POSITIONS, apply_rope

#: ``frames -> (cos, sin)``: RoPE tables ``[frames·hw, 1, head_dim/2]`` of a grid of ``frames``
#: latent frames at temporal positions ``0 … frames − 1`` (the model's spatial grid)
RopeTable = Callable[[int], tuple[torch.Tensor, torch.Tensor]]


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
        "(default ours: two chunks' worth); 0 = CAMR off, the last horizon_frames are attended"))
    route_clean: bool = Field(False, description=(
        "CAMR also routes the clean copies (clean -> clean quadrant, and the clean pass that "
        "writes the KV cache); false = the paper's: clean chunks attend the last "
        "horizon_frames frames"))
    horizon_frames: int = Field(61, ge=1, le=ROPE_MAX_POSITIONS, description=(
        "the training horizon in latent frames: no query chunk attends more frames than this, "
        "its own included, and Block-Relative RoPE keeps every position below it (default: "
        "the 61 latent frames of the 241-frame samples the causal model is tuned on)"))
    memory_frames: int = Field(60, ge=0, description=(
        "streaming KV cache: frames older than the last horizon_frames - 1 kept for CAMR, "
        "least recently routed evicted first (default ours: as many as the recent ring, "
        "~15 s of video at 16 fps; 8.6 GB per CFG row at Wan2.2-5B 480x832 bf16)"))

    @model_validator(mode="after")
    def _within_horizon(self) -> CausalConfig:
        span = (self.local_window_chunks + 1) * self.chunk_latent_frames + self.routed_frames
        if self.routing and span > self.horizon_frames:
            raise ValueError(
                f"the local window ({self.local_window_chunks} chunks), {self.routed_frames} "
                f"routed frames and the chunk ({self.chunk_latent_frames}) span {span} frames, "
                f"beyond horizon_frames {self.horizon_frames}")
        if self.chunk_latent_frames > self.horizon_frames:
            raise ValueError(f"chunk_latent_frames {self.chunk_latent_frames} exceeds "
                             f"horizon_frames {self.horizon_frames}")
        return self

    @property
    def routing(self) -> bool:
        """CAMR is on (``routed_frames > 0``)."""
        return self.routed_frames > 0

    @property
    def recent_frames(self) -> int:
        """Frames of the streaming cache's recent ring: ``horizon_frames − 1``, the most
        history any pass attends as a range (a one-frame chunk without routing)."""
        return max(self.horizon_frames - 1, 1)


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
    """CAMR key descriptors: keys (before RoPE) ``[B, F·hw, H, D]`` mean-pooled over each latent
    frame's ``hw`` spatial tokens → ``[B, F, H, D]`` float32."""
    b, seq, h, d = keys.shape
    return keys.float().view(b, seq // tokens_per_frame, tokens_per_frame, h, d).mean(2)


def query_descriptor(queries: torch.Tensor) -> torch.Tensor:
    """CAMR query descriptor of a chunk: its queries (before RoPE) ``[B, n·hw, H, D]``
    mean-pooled over all its frames and tokens → ``[B, H, D]`` float32."""
    return queries.float().mean(1)


def _top_k_chronological(scores: torch.Tensor, frames: torch.Tensor, k: int) -> torch.Tensor:
    """Indices ``[B, k]`` of the ``k`` highest ``scores`` ``[B, S]`` (equal scores: the smaller
    frame number ``frames`` ``[B, S]`` first), ordered by frame number."""
    order = frames.argsort(dim=1, stable=True)                          # slots by frame
    ranked = torch.sort(scores.gather(1, order), dim=1, descending=True, stable=True).indices
    top = order.gather(1, ranked[:, :k])
    return top.gather(1, frames.gather(1, top).argsort(dim=1))


def route_frames(query_desc: torch.Tensor, key_desc: torch.Tensor, k: int,
                 num_candidates: torch.Tensor | None = None) -> torch.Tensor:
    """CAMR's selection: the ``k`` candidate frames of highest head-summed dot product.

    Args:
        query_desc: ``[B, H, D]`` (:func:`query_descriptor`).
        key_desc: ``[B, F_c, H, D]`` descriptors of the candidate frames (:func:`frame_descriptors`),
            frame ``i`` at index ``i``.
        k: frames to keep; ``k >= F_c`` keeps all.
        num_candidates: ``[]`` int64: only frames ``[0, num_candidates)`` are candidates (the
            caller keeps ``k <= num_candidates``). None = all ``F_c``.
    Returns:
        ``[B, min(k, F_c)]`` int64 candidate indices in ascending order. Equal scores keep the
        earlier frame, so masking frames past ``num_candidates`` (scored −inf) picks what
        ``key_desc[:, :num_candidates]`` alone would.
    """
    scores = torch.einsum("bhd,bfhd->bf", query_desc.float(), key_desc.float())
    frame = torch.arange(scores.shape[1], device=scores.device)
    if num_candidates is not None:
        scores = scores.masked_fill(frame >= num_candidates, float("-inf"))
    return _top_k_chronological(scores, frame.expand_as(scores), min(k, scores.shape[1]))


@dataclass
class KVSelection:
    """Key frames one query chunk attends, in temporal order: ``routed`` frames ``[B, r]``
    int64 (CAMR, ascending; None = none), all earlier than the contiguous ``ranges`` of frames
    (``[start, end)``, the same for the whole batch) that follow them. Frame indices are in the
    teacher-forcing sequence's frame space ``[0, 2·F_lat)`` (clean frames first). Block-Relative
    RoPE puts the ``K`` frames at positions ``0 … K − 1`` in this order."""

    ranges: list[tuple[int, int]]
    routed: torch.Tensor | None = None

    def num_frames(self) -> int:
        return sum(e - s for s, e in self.ranges) + \
            (0 if self.routed is None else self.routed.shape[1])


def history_frames(start: int, window: int, size: int, config: CausalConfig,
                   route: bool) -> tuple[tuple[int, int] | None, int]:
    """The data-independent half of the selection: the history range a query chunk always
    attends and the number of frames CAMR routes among (module docstring, "Bounded attention").

    Args:
        start: the chunk's first latent frame (history is ``[0, start)``).
        window: the first frame of the local window (the start of chunk ``i − W``; 0 while
            ``i < W``).
        size: the chunk's own frames ``n``.
        config: the causal config; route: apply CAMR.
    Returns:
        ``(range, candidates)``: without routing (or before the window leaves anything out)
        the last ``horizon_frames − n`` history frames and 0 candidates; with CAMR the local
        window ``[window, start)`` and candidates ``[0, window)``. The range is None when empty.
    """
    if not route or window == 0:
        first = max(0, start - (config.horizon_frames - size))
        return ((first, start) if first < start else None), 0
    return ((window, start) if window < start else None), window


def select_history(chunk: int, chunk_starts: tuple[int, ...] | list[int], size: int,
                   config: CausalConfig, route: bool, query_desc: torch.Tensor | None = None,
                   key_desc: torch.Tensor | None = None) -> KVSelection:
    """History frames (clean frames before chunk ``chunk``) that query chunk ``chunk`` of
    ``size`` frames attends: :func:`history_frames`, then CAMR's routed frames among
    ``[0, window)`` (``query_desc`` ``[B, H, D]`` and ``key_desc`` ``[B, F_hist, H, D]``, needed
    when routing)."""
    window = chunk_starts[max(0, chunk - config.local_window_chunks)]
    always, candidates = history_frames(chunk_starts[chunk], window, size, config, route)
    ranges = [always] if always else []
    if not candidates:
        return KVSelection(ranges)
    return KVSelection(ranges, route_frames(query_desc, key_desc[:, :candidates],
                                            config.routed_frames))


def teacher_forcing_selections(chunks: ChunkLayout, config: CausalConfig,
                               query_desc: torch.Tensor | None = None,
                               key_desc: torch.Tensor | None = None) -> list[KVSelection]:
    """Key frames of every query chunk of the teacher-forcing sequence (the four quadrants with
    CAMR, bounded by the horizon), in the ``[0, 2·F_lat)`` frame space.

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
            sel = select_history(i, chunks.starts, e - s, config, route, qd, key_desc)
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


# ---- attention: Block-Relative RoPE, one kernel for training and streaming ------------------

def block_positions(num_key_frames: int, num_query_frames: int) -> tuple[range, range]:
    """Block-Relative RoPE's temporal positions (module docstring): the ``K`` key frames (in
    temporal order, the query chunk's own ``n`` last) at ``0 … K − 1``, the queries at
    ``K − n … K − 1``. Every query-key distance is below ``K``."""
    return range(num_key_frames - num_query_frames, num_key_frames), range(num_key_frames)


def attend_chunk(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                 cos: torch.Tensor, sin: torch.Tensor, backend: str) -> torch.Tensor:
    """One query chunk's self-attention with Block-Relative RoPE: the only attention call of
    the causal mode (teacher forcing and streaming alike).

    Args:
        q: the chunk's queries before RoPE ``[B, n·hw, H, D]``.
        keys, values: the gathered key frames before RoPE, in temporal order, the chunk's own
            last, ``[B, K·hw, H, D]``.
        cos, sin: RoPE tables of ``K`` frames at positions ``0 … K − 1``
            ``[K·hw, 1, D/2]`` (:data:`RopeTable`); the queries take the last ``n·hw`` rows
            (:func:`block_positions`).
        backend: ``reference`` (float32 softmax) or any other (SDPA).
    Returns:
        ``[B, n·hw, H, D]`` in ``q``'s dtype.
    """
    nq = q.shape[1]
    return _attend(apply_rope(q, cos[-nq:], sin[-nq:]), apply_rope(keys, cos, sin), values,
                   backend)


def _attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
            backend: str) -> torch.Tensor:
    """Unmasked attention of rotated ``[B, L, H, D]`` tensors: float32 softmax for
    ``reference``, SDPA otherwise."""
    if backend == "reference":
        return _masked_reference(q, keys, values, None)
    return _sdpa(q, keys, values)


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


def _gather_frames(x: torch.Tensor, sel: KVSelection) -> torch.Tensor:
    """Keys or values ``x`` ``[B, F, hw, H, D]`` of the selected frames in temporal order
    (routed, then the ranges) → ``[B, K·hw, H, D]``; one contiguous range is a view."""
    parts = []
    if sel.routed is not None:
        rows = torch.arange(x.shape[0], device=x.device)[:, None]
        parts.append(x[rows, sel.routed.to(x.device)])
    parts += [x[:, a:b] for a, b in _merged(sel.ranges)]
    return (parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)).flatten(1, 2)


def _masked_reference(q, k, v, mask: torch.Tensor | None) -> torch.Tensor:
    """Float32 softmax attention, ``mask`` ``[B, L_q, L_k]`` bool or None (the definition)."""
    qf, kf, vf = (t.float().transpose(1, 2) for t in (q, k, v))
    scores = qf @ kf.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None], float("-inf"))
    return (scores.softmax(-1) @ vf).transpose(1, 2).to(q.dtype)


class TeacherForcingAttention:
    """Self-attention of one teacher-forced forward over ``[clean ; noisy]`` tokens (the four
    quadrants, CAMR per layer, Block-Relative RoPE per query chunk): built once per forward,
    called by every block.

    Args:
        chunks: the chunk layout of the ``F_lat`` latent frames.
        config: the causal config.
        tokens_per_frame: ``hw``, tokens per latent frame after patching.
        backend: ``reference`` or another (module docstring).
        rope: the model's RoPE tables by frame count (:data:`RopeTable`).
    """

    def __init__(self, chunks: ChunkLayout, config: CausalConfig, tokens_per_frame: int,
                 backend: str, rope: RopeTable):
        self.chunks, self.config, self.hw, self.backend = chunks, config, tokens_per_frame, backend
        self.rope = rope
        self._static: list[KVSelection] | None = None
        #: the last layer's selections (tests read the routing)
        self.last_selections: list[KVSelection] | None = None

    def selections(self, q: torch.Tensor, k: torch.Tensor) -> list[KVSelection]:
        """Key frames of every query chunk for this layer's ``q``, ``k`` ``[B, 2L, H, D]``
        (before RoPE)."""
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
        """``q, k, v`` ``[B, 2L, H, D]`` (before RoPE) → ``[B, 2L, H, D]``: per query chunk,
        its selected frames gathered, rotated and attended (:func:`attend_chunk`).

        A shortcut with the same numbers: where a chunk's compact positions are its frames'
        own indices (no routed frame, history ``[0, start)``: every chunk of a sample within
        the horizon without CAMR, and every clean chunk with the paper's ``route_clean:
        false``), its keys are slices of ``q``, ``k`` rotated once at absolute positions
        instead of a rotated copy per chunk (RoPE is elementwise, so a row is rotated the same
        either way); the others rotate their gathered keys (:func:`attend_chunk`)."""
        sels = self.selections(q, k)
        self.last_selections = sels
        b, seq, h, d = q.shape
        f, hw, n = self.chunks.num_latent_frames, self.hw, self.chunks.num_chunks
        k5, v5 = k.view(b, 2 * f, hw, h, d), v.view(b, 2 * f, hw, h, d)
        bounds = list(zip(self.chunks.starts, self.chunks.ends))
        absolute = None
        outs = []
        for j, sel in enumerate(sels):
            s, e = bounds[j % n]
            q0, q1 = (s if j < n else f + s) * hw, (e if j < n else f + e) * hw
            if _at_own_positions(sel, f):
                if absolute is None:  # both copies of frame i at position i, once per layer
                    cos, sin = self.rope(f)
                    cos, sin = torch.cat([cos, cos]), torch.cat([sin, sin])
                    absolute = (apply_rope(q, cos, sin),
                                apply_rope(k, cos, sin).view(b, 2 * f, hw, h, d))
                keys, values = _gather_frames(absolute[1], sel), _gather_frames(v5, sel)
                outs.append(_attend(absolute[0][:, q0:q1], keys, values, self.backend))
                continue
            cos, sin = self.rope(sel.num_frames())
            outs.append(attend_chunk(q[:, q0:q1], _gather_frames(k5, sel),
                                     _gather_frames(v5, sel), cos, sin, self.backend))
        return torch.cat(outs, dim=1)


def _at_own_positions(sel: KVSelection, num_frames: int) -> bool:
    """Whether a selection's compact positions ``0 … K − 1`` are its frames' own indices
    (frame ``i`` of either copy at ``i``): no routed frames, and the frames ``0, 1, …, K − 1``
    in order."""
    if sel.routed is not None:
        return False
    position = 0
    for a, b in sel.ranges:
        if a % num_frames != position:
            return False
        position += b - a
    return True


# ---- KV cache ------------------------------------------------------------------------------

@dataclass
class LayerKV:
    """One block's streaming cache in bounded storage: keys and values before RoPE
    ``[B, S, hw, H, D]``, CAMR descriptors ``[B, S, H, D]`` float32, and per slot its frame
    number and the chunk that last used it, ``[B, S]`` int64 (−1: empty).

    Slots ``[0, R)`` (``R = recent``, :attr:`CausalConfig.recent_frames`) are a ring of the last
    ``R`` frames, frame ``f`` in slot ``f mod R``: every history range a pass attends lies in it.
    Slots ``[R, R + M)`` (``M = memory``, :attr:`CausalConfig.memory_frames`) are CAMR's memory
    pool: a frame leaving the ring moves there, replacing the pool's least recently used frame
    (empty slots first, then the oldest among equals) unless it was itself used less recently,
    in which case it is dropped. A frame is "used" by the chunk that wrote it and by every pass
    whose CAMR routes it (:meth:`route`); each batch row keeps its own pool (rows route apart).

    The storage grows (a new tensor, by doubling) until it holds the ring, then once to
    ``R + M`` when the ring first wraps; from then on its size and addresses stay fixed however
    long the stream runs: what a CUDA graph of a denoising pass reads (:mod:`generate.graphs`).
    Frame numbers and use stamps are int64 (no overflow in any stream).
    """

    key_storage: torch.Tensor | None = None
    value_storage: torch.Tensor | None = None
    descriptor_storage: torch.Tensor | None = None
    frame_storage: torch.Tensor | None = None
    used_storage: torch.Tensor | None = None
    recent: int = 0
    memory: int = 0
    #: frames written so far (the next frame's number)
    frames: int = 0

    @property
    def capacity(self) -> int:
        return 0 if self.key_storage is None else self.key_storage.shape[1]

    @property
    def final(self) -> bool:
        """The storage has its final size, ``recent + memory`` slots: its size and addresses
        never change again (later reserves return at once)."""
        return self.key_storage is not None and self.capacity == self.recent + self.memory

    def reserve(self, frames: int, like: torch.Tensor, recent: int, memory: int) -> None:
        """Make room for frames ``[0, frames)`` of ``like``'s ``[B, n, hw, H, D]`` layout,
        dtype and device, in a ring of ``recent`` slots and a pool of ``memory`` (keeping what
        is cached): ``min(frames, recent)`` slots, at least doubling, while the ring is not
        full; ``recent + memory`` beyond.

        Raises:
            ValueError: ``recent`` or ``memory`` differ from the cache's (a cache belongs to
                one causal config).
        """
        if self.key_storage is not None and (recent, memory) != (self.recent, self.memory):
            raise ValueError(f"a cache of ring {self.recent} and pool {self.memory} frames "
                             f"used with ring {recent} and pool {memory}")
        self.recent, self.memory = recent, memory
        if frames <= recent:
            target = min(max(frames, 2 * self.capacity), recent)
        else:
            target = recent + memory
        if target <= self.capacity:
            return
        b, _, hw, h, d = like.shape
        grown = [like.new_zeros(b, target, hw, h, d), like.new_zeros(b, target, hw, h, d),
                 like.new_zeros(b, target, h, d, dtype=torch.float32),
                 torch.full((b, target), -1, dtype=torch.int64, device=like.device),
                 torch.full((b, target), -1, dtype=torch.int64, device=like.device)]
        old = self.storages()
        if self.capacity:
            for new, tensor in zip(grown, old):
                new[:, :self.capacity] = tensor
        (self.key_storage, self.value_storage, self.descriptor_storage, self.frame_storage,
         self.used_storage) = grown

    def storages(self) -> tuple:
        """The five storage tensors (keys, values, descriptors, frame numbers, use stamps)."""
        return (self.key_storage, self.value_storage, self.descriptor_storage,
                self.frame_storage, self.used_storage)

    def append(self, k: torch.Tensor, v: torch.Tensor, hw: int, stamp: torch.Tensor | int,
               recent: int, memory: int) -> None:
        """Cache a chunk's keys and values before RoPE ``[B, n·hw, H, D]`` as frames
        ``frames … frames + n − 1``, used by chunk ``stamp`` (``[]`` int64 or an int)."""
        b, seq, h, d = k.shape
        n = seq // hw
        k5, v5 = k.view(b, n, hw, h, d), v.view(b, n, hw, h, d)
        self.reserve(self.frames + n, k5, recent, memory)
        descriptors = frame_descriptors(k.detach(), hw)
        for j in range(n):
            frame = self.frames + j
            slot = frame % self.recent
            if frame >= self.recent and self.memory:
                self._to_pool(slot)
            self.key_storage[:, slot] = k5[:, j]
            self.value_storage[:, slot] = v5[:, j]
            self.descriptor_storage[:, slot] = descriptors[:, j]
            self.frame_storage[:, slot] = frame
            self.used_storage[:, slot] = stamp
        self.frames += n

    def _to_pool(self, slot: int) -> None:
        """Move ring slot ``slot``'s frame into the pool (class docstring), on the device."""
        r = self.recent
        used, frame = self.used_storage, self.frame_storage
        rows = torch.arange(used.shape[0], device=used.device)
        pool_used, pool_frame = used[:, r:], frame[:, r:]
        lowest = pool_used.min(dim=1, keepdim=True).values
        victim = r + torch.where(pool_used == lowest, pool_frame,
                                 torch.iinfo(torch.int64).max).argmin(dim=1)      # [B]
        leave_used, leave_frame = used[:, slot], frame[:, slot]
        victim_used, victim_frame = used[rows, victim], frame[rows, victim]
        move = (leave_used > victim_used) | ((leave_used == victim_used) &
                                             (leave_frame > victim_frame))      # [B]
        for tensor in self.storages():
            keep = move.view(-1, *[1] * (tensor.dim() - 2))
            tensor[rows, victim] = torch.where(keep, tensor[:, slot], tensor[rows, victim])

    def route(self, query_desc: torch.Tensor, window_start: torch.Tensor, k: int,
              stamp: torch.Tensor) -> torch.Tensor:
        """CAMR over the cached frames before ``window_start`` (``[]`` int64): the ``k`` of
        highest score (:func:`route_frames`' rule: equal scores, the earlier frame), as slots
        ``[B, k]`` int64 in temporal order; marks them used by chunk ``stamp``. The caller
        keeps ``k`` within the candidates (:meth:`KVCache.cached_before`)."""
        scores = torch.einsum("bhd,bshd->bs", query_desc.float(), self.descriptor_storage)
        frames = self.frame_storage
        scores = scores.masked_fill((frames < 0) | (frames >= window_start), float("-inf"))
        slots = _top_k_chronological(scores, frames, k)
        self.used_storage.scatter_(1, slots, stamp.expand(slots.shape))
        return slots


@dataclass
class KVCache:
    """The clean KV cache of streaming generation: per block the keys/values (before RoPE),
    CAMR descriptors and bookkeeping of the finished chunks in bounded storage
    (:class:`LayerKV`), and where the last chunks start.

    Build with :meth:`empty`; :meth:`model.dit.WanModel.forward_chunk` with ``write_cache=True``
    appends a chunk. Earlier chunks are never recomputed. Memory stays within
    ``horizon_frames − 1 + memory_frames`` frames per layer and row however long the stream.
    """

    layers: list[LayerKV]
    #: first latent frame of the last cached chunks (those a local window may start at)
    recent_starts: list[int] = field(default_factory=list)
    #: chunks cached
    num_chunks: int = 0
    #: latent frames cached (the next chunk's first frame)
    num_frames: int = 0
    tokens_per_frame: int | None = None
    #: latent frames each layer's storage is first made for (capped by the budget)
    reserve_frames: int = 0

    @classmethod
    def empty(cls, num_layers: int, reserve_frames: int = 0) -> KVCache:
        """An empty cache for a model of ``num_layers`` blocks (``model.config.num_layers``);
        ``reserve_frames``: latent frames to allocate at the first append (a stream of known
        length; capped by the config's budget): fewer growth steps, so CUDA graphs of its
        passes are captured once)."""
        return cls([LayerKV() for _ in range(num_layers)], reserve_frames=reserve_frames)

    def addresses(self) -> tuple:
        """This cache's identity and the addresses of every layer's storage tensors (None
        where not allocated yet): what a CUDA graph of a pass over it reads, unchanged while
        the storage neither grows nor is replaced (:attr:`LayerKV.final`)."""
        return (id(self),) + tuple(None if t is None else t.data_ptr()
                                   for kv in self.layers for t in kv.storages())

    def window_start(self, window_chunks: int) -> int:
        """First frame of the next chunk's local window (the start of chunk
        ``num_chunks − window_chunks``; 0 while there are fewer chunks)."""
        if window_chunks == 0:
            return self.num_frames
        if self.num_chunks < window_chunks:
            return 0
        return self.recent_starts[-window_chunks]

    def cached_before(self, window: int, config: CausalConfig) -> int:
        """Frames before ``window`` still cached (ring and pool, :class:`LayerKV`): CAMR's
        candidates. All of them until frames start to leave the pool."""
        left_ring = max(0, self.num_frames - config.recent_frames)
        return window - left_ring + min(config.memory_frames, left_ring)


@dataclass
class ChunkPlan:
    """Everything a streamed chunk's forward reads besides its inputs and the cache's storage,
    built from the cache's bookkeeping before the pass (:meth:`build`).

    The tensors are what changes from chunk to chunk at a fixed shape, so a CUDA graph captured
    for one chunk replays for the next once they are copied into its plan (:meth:`copy_`);
    ``key`` names the shapes (chunks with the same key run the same kernels).

    Attributes:
        cos, sin: Block-Relative RoPE tables of the pass's ``K`` key frames at positions
            ``0 … K − 1`` ``[K·hw, 1, head_dim/2]`` float32 (the chunk's queries take the last
            rows); fixed per ``K``.
        history: ``[n]`` int64 ring slots of the history frames every query attends (the last
            ``horizon − f`` frames, or CAMR's local window), in temporal order.
        window_start: ``[]`` int64: CAMR routes among cached frames before it.
        stamp: ``[]`` int64: the chunk's number (CAMR's least-recently-used clock).
        routed: frames CAMR picks (0: no routing).
        write: the clean pass (appends the chunk's keys/values to the cache).
        config: the causal config (ring and pool sizes, local window).
    """

    cos: torch.Tensor
    sin: torch.Tensor
    history: torch.Tensor
    window_start: torch.Tensor
    stamp: torch.Tensor
    routed: int
    write: bool
    config: CausalConfig

    @classmethod
    def build(cls, cache: KVCache, config: CausalConfig, frames: int, rope: RopeTable,
              write: bool) -> ChunkPlan:
        """The plan of the cache's next chunk of ``frames`` latent frames: history and routing
        by :func:`history_frames` (``route`` for denoising passes when CAMR is on, for the
        clean pass only with ``route_clean``), RoPE tables by :func:`block_positions`."""
        start = cache.num_frames
        window = cache.window_start(config.local_window_chunks)
        route = config.routing and (not write or config.route_clean)
        always, candidates = history_frames(start, window, frames, config, route)
        if candidates:
            candidates = cache.cached_before(window, config)
        routed = min(config.routed_frames, candidates)
        first, end = always or (0, 0)
        cos, sin = rope(end - first + routed + frames)
        device = cos.device
        # device fills and arange, not host copies: a pageable copy would wait for the GPU's
        # queue to drain
        history = torch.arange(first, end, device=device) % config.recent_frames
        return cls(cos, sin, history, torch.full((), window, device=device),
                   torch.full((), cache.num_chunks, device=device), routed, write, config)

    @property
    def key(self) -> tuple:
        return (tuple(self.cos.shape), self.history.shape[0], self.routed, self.write)

    def copy_(self, other: ChunkPlan) -> None:
        """Take ``other``'s tensors into this plan's (same :attr:`key`)."""
        if other.key != self.key:
            raise ValueError(f"plan {other.key} does not fit {self.key}")
        for name in ("cos", "sin", "history", "window_start", "stamp"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine is not theirs:
                mine.copy_(theirs)


class ChunkAttention:
    """Self-attention of one streaming chunk against the cache: built once per
    :meth:`model.dit.WanModel.forward_chunk`, ``layer(i)`` gives block ``i``'s kernel.

    The chunk's queries attend the plan's history frames (the last horizon frames, or with
    CAMR the local window and the routed frames) and the chunk's own tokens, gathered from the
    cache's storage by slot (the same kernels for every chunk of a plan key), rotated by
    Block-Relative RoPE (:func:`attend_chunk`); the clean pass appends the chunk's keys/values
    (before RoPE) to the cache.
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
        """Block ``index``'s kernel ``q, k, v`` ``[B, n·hw, H, D]`` (before RoPE) →
        ``[B, n·hw, H, D]``."""
        kv, plan, config = self.cache.layers[index], self.plan, self.plan.config

        def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            b, _, h, d = q.shape
            hw = self.hw
            if plan.history.shape[0] or plan.routed:
                slots = plan.history.expand(b, -1)
                if plan.routed:
                    with torch.no_grad():  # routing is a discrete choice: no gradient through it
                        routed = kv.route(query_descriptor(q), plan.window_start, plan.routed,
                                          plan.stamp)
                    slots = torch.cat([routed, slots], 1)      # routed frames are the earlier
                rows = torch.arange(b, device=q.device)[:, None]
                keys = torch.cat([kv.key_storage[rows, slots], k.view(b, -1, hw, h, d)], 1)
                values = torch.cat([kv.value_storage[rows, slots], v.view(b, -1, hw, h, d)], 1)
                keys, values = keys.flatten(1, 2), values.flatten(1, 2)
            else:
                keys, values = k, v
            if plan.write and index not in self._written:
                if kv.frames == 0 and self.cache.reserve_frames:
                    kv.reserve(self.cache.reserve_frames, k.view(b, -1, hw, h, d),
                               config.recent_frames, config.memory_frames)
                kv.append(k, v, hw, plan.stamp, config.recent_frames, config.memory_frames)
                self._written.add(index)
            return attend_chunk(q, keys, values, plan.cos, plan.sin, self.backend)

        return attend

    def commit(self) -> None:
        """Record the written chunk in the cache's bookkeeping (after the last block)."""
        if self.plan.write:
            cache = self.cache
            cache.recent_starts.append(cache.num_frames)
            del cache.recent_starts[:-max(self.plan.config.local_window_chunks, 1)]
            cache.num_chunks += 1
            cache.num_frames += self.chunk_frames
            cache.tokens_per_frame = self.hw
