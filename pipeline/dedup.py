"""Near-duplicate shots across every video of an output folder: keyframe hashes or CLIP
embeddings, indexes that never compare all pairs, and the rule that says which copy stays.

**Keyframes.** Every candidate frame of the scan (``analyse.candidates_per_s`` a second, at the
fixed analysis scale, inside the active picture area: :mod:`pipeline.scan`) gets a 64-bit
perceptual hash, the DCT hash of ``imagehash.phash`` (32×32 grey, low 8×8 DCT coefficients
against their median; Zauner, "Implementation and Benchmarking of Perceptual Image Hash
Functions", 2010). A shot's keyframes are the candidates inside it. Scale, codec and letterbox
bars change a hash by a few bits (the analysis scale and the active-area crop remove most of
them); another picture differs in about half of its 64 bits.

**CLIP embeddings.** When the config gives CLIP weights (``analyse.clip_weights``: the aesthetic
score runs), the L2-normalised CLIP image embedding the aesthetic head reads of each of a shot's
picks (:func:`pipeline.analyse.pick_candidates`, ``analyse.frames_per_shot`` of them) is kept
too, as float16 (no second CLIP forward: :meth:`pipeline.aesthetic.AestheticScorer.score_and_embed`).
Two keyframes are the same picture when their cosine similarity is at least
``dedup.min_cosine``: the rule of the semantic deduplication of NeMo Curator
(``IdentifyDuplicatesStage`` keeps pairs with ``cosine_sim_score >= 1 - eps``) and of
Cosmos-Curate's dedup pipeline, whose ``--eps-to-extract`` defaults to 0.01, so 0.99 here.
Both compare clip-level video embeddings; this compares CLIP image embeddings of keyframes, and
the default has not been checked against the bundled footage with the real ViT-L/14 weights
(none can be had here). The embeddings are only as meaningful as the weights: with the small
random weights of the tests the decisions exercise the code, nothing more.

**Rule.** Two shots are near-duplicates when a keyframe of one matches a keyframe of the other:
by CLIP embedding when both shots have embeddings, else (one of them has none: a result made
before embeddings were kept) by pHash, within ``dedup.max_distance`` bits (Hamming). Only shots
the filter keeps take part (a shot already removed for another reason is neither marked nor a
twin). Shots are taken in a fixed order: the shots kept by earlier runs into the output first
(their decisions stand), then this run's videos by source path (then source id), each video's
shots in time order; a shot with a kept near-duplicate before it is removed as ``duplicate`` and
names that twin (the nearest one: the highest cosine, else the fewest bits; the earlier on a
tie), else it is kept. The order depends on neither Ray's scheduling nor which videos an
interrupted run finished, so a rerun or a resume gives the same answer.

**Hash index.** Multi-index hashing (Norouzi, Punjani and Fleet, "Fast Search in Hamming Space with
Multi-Index Hashing", CVPR 2012): the 64 bits are cut into 4 bands of 16; two hashes within
``d`` bits agree within ``d // 4`` bits on at least one band (pigeonhole: otherwise they differ
in at least ``4 (d // 4 + 1) > d`` bits). Each band's values are sorted once; a hash looks up
every value within ``d // 4`` bits of its own in each band (``searchsorted``: 137 lookups a band
at the default 10 bits), and only the hashes found there are compared. The work grows with the
number of keyframes times the hashes sharing a band value (with uniform hashes ``N / 65536``),
not with all pairs.

**Embedding index.** Up to :data:`EXACT_UP_TO` keyframes, every pair (blocks of a matrix
product: exact). Above, the scheme of NeMo Curator's semantic deduplication (SemDeDup: Abbas et
al., 2023): k-means (FAISS, spherical, ``sqrt(N)`` centroids; Douze et al., "The Faiss
library", 2024) cuts the embeddings into lists and only pairs within a list are compared; each
keyframe joins the lists of its :data:`SPILL` nearest centroids, so that a pair astride a list
boundary is still found. The work grows as ``SPILL² N^1.5`` (lists of about ``SPILL sqrt(N)``),
not ``N²``; it is approximate: the recall of the pairs above the threshold is measured against
brute force (tests/test_dedup.py, benchmarks/dedup.py). Every pair found is verified: its
cosine is recomputed alone. The lists depend on every embedding in the search, so past
:data:`EXACT_UP_TO` a resume (which searches another set: the finished videos' kept shots and
the rest) may find a pair the first run missed, or miss one it found; up to it, never.
"""

from __future__ import annotations

import base64
import bisect
import logging
from collections.abc import Callable, Iterable
from itertools import combinations

import numpy as np

from multishot.dataset.shards import ShardSetLayout
from multishot.dataset.storage import resolve
from multishot.pipeline.analyse import CandidateScore, pick_candidates
from multishot.pipeline.config import PipelineConfig
from multishot.pipeline.detect import DetectedShot
from multishot.pipeline.task import VideoTask
from multishot.pipeline.write import last_manifest, trusted_results

log = logging.getLogger(__name__)

BANDS = 4
BAND_BITS = 64 // BANDS
#: queries handled per step of :func:`near_pairs` (bounds its memory: chunk × lookups × 8 bytes)
CHUNK = 1024
#: up to this many embeddings :func:`similar_pairs` compares every pair (exact); above, within k-means lists
EXACT_UP_TO = 20_000
#: the k-means lists an embedding joins: those of its nearest centroids (benchmarks/dedup.py: recall)
SPILL = 2
#: a pair is kept for the exact check from this far below ``min_cosine`` (block products' rounding)
SLACK = 1e-4


def keyframe_hash(frame: np.ndarray) -> str:
    """The 64-bit perceptual (DCT) hash of an RGB uint8 frame ``[H, W, 3]``, as 16 hex digits
    (``imagehash.phash``: grey, 32×32 Lanczos, the 8×8 lowest DCT coefficients against their
    median)."""
    import imagehash
    from PIL import Image

    return str(imagehash.phash(Image.fromarray(frame)))


def shot_hashes(shot: DetectedShot, candidates: dict[int, CandidateScore], order: list[int]) -> list[str]:
    """The keyframe hashes of a shot: those of the candidates inside ``[start_frame, end_frame)``.

    Args:
        candidates: the video's candidate scores by source frame index.
        order: ``sorted(candidates)``.
    """
    lo, hi = bisect.bisect_left(order, shot.start_frame), bisect.bisect_left(order, shot.end_frame)
    return [candidates[i].phash for i in order[lo:hi] if candidates[i].phash is not None]


def pack_embedding(embedding: np.ndarray) -> str:
    """An L2-normalised embedding ``[D]`` as base64 of its float16 values (2 D bytes before
    base64: 1,536 for ViT-L/14); float16 moves a cosine by about 1e-3 at most."""
    return base64.b64encode(np.asarray(embedding, np.float16).tobytes()).decode()


def unpack_embeddings(packed: list[str]) -> np.ndarray:
    """Embeddings ``[N, D]`` float32 from :func:`pack_embedding` strings, each L2-normalised
    again (the float16 rounding).

    Raises:
        ValueError: they differ in length (another CLIP model).
    """
    rows = [np.frombuffer(base64.b64decode(p), np.float16) for p in packed]
    if len({len(r) for r in rows}) > 1:
        raise ValueError(f"embeddings of different sizes {sorted({len(r) for r in rows})}: made by different CLIP models")
    x = np.stack(rows).astype(np.float32) if rows else np.zeros((0, 0), np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def shot_embeddings(shot: DetectedShot, candidates: dict[int, CandidateScore], order: list[int],
                    count: int) -> list[str]:
    """The CLIP embeddings (:func:`pack_embedding`) of a shot's ``count`` picks
    (:func:`pipeline.analyse.pick_candidates`: the frames the aesthetic score reads); empty
    when CLIP did not run.

    Args:
        candidates: the video's candidate scores by source frame index.
        order: ``sorted(candidates)``.
    """
    picks = [candidates[i] for i in pick_candidates(shot, order, count)]
    return [p.embedding for p in picks if p.embedding is not None]


def _masks(radius: int) -> np.ndarray:
    """Every 16-bit value with at most ``radius`` bits set ``[M]`` (int64)."""
    return np.array([sum(1 << b for b in bits) for k in range(radius + 1) for bits in combinations(range(BAND_BITS), k)],
                    np.int64)


def near_pairs(hashes: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair of hashes within ``max_distance`` bits, by multi-index hashing (module docstring).

    Args:
        hashes: ``[N]`` uint64.
    Returns:
        ``(i, j, distance)``, each ``[P]`` int64, ``i < j``, every such pair once, sorted by ``(i, j)``.
    """
    n = len(hashes)
    masks = _masks(max_distance // BANDS)
    found = []
    for band in range(BANDS):
        keys = ((hashes >> np.uint64(BAND_BITS * band)) & np.uint64(0xFFFF)).astype(np.int64)
        order = np.argsort(keys, kind="stable")
        # bucket v holds order[first[v]:first[v + 1]]: one lookup per probe, no search
        first = np.searchsorted(keys[order], np.arange(2**BAND_BITS + 1))
        for start in range(0, n, CHUNK):
            query = np.arange(start, min(n, start + CHUNK))
            probes = (keys[query][:, None] ^ masks[None, :]).ravel()
            lo, hi = first[probes], first[probes + 1]
            counts = hi - lo
            total = int(counts.sum())
            if not total:
                continue
            # the positions of every range [lo, hi) in one array
            at = np.repeat(lo - np.cumsum(counts) + counts, counts) + np.arange(total)
            i = np.repeat(np.repeat(query, len(masks)), counts)
            j = order[at]
            keep = (i < j) & (np.bitwise_count(hashes[i] ^ hashes[j]) <= max_distance)  # verified at once
            found.append(np.stack([i[keep], j[keep]], 1))
    if not found:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    pairs = np.unique(np.concatenate(found), axis=0)  # a pair near in several bands: once
    distance = np.bitwise_count(hashes[pairs[:, 0]] ^ hashes[pairs[:, 1]]).astype(np.int64)
    return pairs[:, 0], pairs[:, 1], distance


def _lists(x: np.ndarray, exact_up_to: int) -> list[np.ndarray]:
    """The groups of rows of ``x`` ``[N, D]`` compared among themselves (module docstring): one
    of all rows up to ``exact_up_to``, else each k-means list with the rows that have its
    centroid among their :data:`SPILL` nearest."""
    n, d = x.shape
    if n <= exact_up_to:
        return [np.arange(n)]
    import faiss

    kmeans = faiss.Kmeans(d, int(np.sqrt(n)), niter=20, seed=1234, spherical=True)
    kmeans.train(x)  # FAISS samples at most 256 rows a centroid
    _, nearest = kmeans.index.search(x, SPILL)  # unit centroids: L2-nearest is cosine-nearest
    rows = np.repeat(np.arange(n), SPILL)
    order = np.argsort(nearest.ravel(), kind="stable")
    bounds = np.searchsorted(nearest.ravel()[order], np.arange(kmeans.k + 1))
    return [rows[order[a:b]] for a, b in zip(bounds[:-1], bounds[1:]) if b - a > 1]


def similar_pairs(embeddings: np.ndarray, min_cosine: float, exact_up_to: int = EXACT_UP_TO
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs of embeddings whose cosine similarity is at least ``min_cosine`` (module docstring:
    every pair up to ``exact_up_to`` embeddings; above, pairs within k-means lists, which may
    miss a pair).

    Args:
        embeddings: ``[N, D]`` float32, L2-normalised.
    Returns:
        ``(i, j, cosine)``: ``[P]`` int64, int64, float32; ``i < j``, each pair once, sorted by
        ``(i, j)``; ``cosine`` recomputed for each pair alone (NumPy, float32).
    """
    x = np.ascontiguousarray(embeddings, np.float32)
    found = [np.zeros((0, 2), np.int64)]
    for members in _lists(x, exact_up_to) if len(x) > 1 else []:
        group = x[members]
        for start in range(0, len(members), CHUNK):  # a block of rows at a time: bounded memory
            a, b = np.nonzero(group[start : start + CHUNK] @ group.T >= min_cosine - SLACK)
            i, j = members[a + start], members[b]
            found.append(np.stack([i[i < j], j[i < j]], 1))
    pairs = np.unique(np.concatenate(found), axis=0)  # sorted by (i, j); a pair in two lists: once
    cosine = np.einsum("pd,pd->p", x[pairs[:, 0]], x[pairs[:, 1]]) if len(pairs) else np.zeros(0, np.float32)
    keep = cosine >= min_cosine
    return pairs[keep, 0], pairs[keep, 1], cosine[keep]


def _kept_shots(tasks: Iterable[VideoTask]) -> list[tuple[VideoTask, int]]:
    """``(task, shot index)`` of every kept shot with keyframes, in the rule's order within
    ``tasks`` (by source path, then source id; each video's shots in time order)."""
    ordered = sorted((t for t in tasks if t.alive), key=lambda t: (t.name, t.source_id))
    return [(t, k) for t in ordered for k, row in enumerate(t.shots)
            if row.kept and (row.keyframe_hashes or row.keyframe_embeddings)]


def mark_duplicates(earlier: Iterable[VideoTask], tasks: Iterable[VideoTask], max_distance: int,
                    min_cosine: float) -> dict[str, int]:
    """Mark the kept shots of ``tasks`` that near-duplicate an earlier kept shot (the rule in
    the module docstring): reason ``duplicate``, ``duplicate_of`` naming the twin (with the
    keyframes' distance in bits when found by pHash) and ``duplicate_cosine`` (when found by
    CLIP embedding).

    Args:
        earlier: finished videos of earlier runs into the output (not changed).
        tasks: this run's videos, after the analyse stage.
    Returns:
        ``{"marked": shots marked, "clip": shots compared by embedding, "phash": the others}``.

    Raises:
        ValueError: the shots' embeddings differ in size (another CLIP model).
    """
    shots = _kept_shots(earlier)
    fixed = len(shots)  # earlier runs' decisions stand
    shots += _kept_shots(tasks)
    rows = [t.shots[k] for t, k in shots]
    embedded = np.array([bool(r.keyframe_embeddings) for r in rows], bool)
    # twins[later][first]: how near (a key that sorts the nearest first), later >= fixed
    twins: dict[int, dict[int, tuple[int, float]]] = {}

    def note(a: np.ndarray, b: np.ndarray, keys: list[tuple[int, float]]) -> None:
        for first, later, key in zip(a.tolist(), b.tolist(), keys):
            if first != later and later >= fixed:
                near = twins.setdefault(later, {})
                near[first] = min(key, near.get(first, key))

    if not embedded.all():  # pHash: pairs of shots not both embedded
        owner = np.array([s for s, r in enumerate(rows) for _ in r.keyframe_hashes], np.int64)
        hashes = np.array([int(h, 16) for r in rows for h in r.keyframe_hashes], np.uint64)
        i, j, distance = near_pairs(hashes, max_distance)
        a, b = owner[i], owner[j]  # a <= b: entries are numbered in the shots' order
        use = ~(embedded[a] & embedded[b])
        note(a[use], b[use], [(1, d) for d in distance[use].tolist()])
    if embedded.any():
        owner = np.array([s for s, r in enumerate(rows) for _ in r.keyframe_embeddings], np.int64)
        i, j, cosine = similar_pairs(unpack_embeddings([e for r in rows for e in r.keyframe_embeddings]), min_cosine)
        note(owner[i], owner[j], [(0, -c) for c in cosine.tolist()])
    kept, marked = set(range(fixed)), 0
    for s in range(fixed, len(shots)):
        candidates = [(key, first) for first, key in twins.get(s, {}).items() if first in kept]
        if not candidates:
            kept.add(s)
            continue
        (kind, value), first = min(candidates)
        task, k = shots[s]
        twin, twin_shot = shots[first]
        row = task.shots[k]
        row.reason = "duplicate"
        row.duplicate_of = (twin.source_id, twin_shot, int(value) if kind else None)
        row.duplicate_cosine = None if kind else round(-value, 4)
        marked += 1
    return {"marked": marked, "clip": int(embedded.sum()), "phash": int((~embedded).sum())}


def dedup_stage(config: PipelineConfig, samples_hash: str) -> Callable[[list[VideoTask]], None]:
    """The pipeline's deduplication step over all of a run's videos at once (a barrier stage of
    :data:`pipeline.stages.STAGES`): the kept shots of the finished results in the output (made
    with the same settings, :func:`pipeline.write.trusted_results`) come first."""

    def process(tasks: list[VideoTask]) -> None:
        if not config.dedup.enabled:
            return
        earlier = []
        if config.output:  # a run always has one; stages run by hand may not
            fs, root = resolve(config.output)
            layout = ShardSetLayout(root)
            here = {t.source_id for t in tasks}
            earlier = [r for r in trusted_results(fs, layout, samples_hash, last_manifest(fs, layout), fresh=set())
                       if r.source_id not in here]
        found = mark_duplicates(earlier, tasks, config.dedup.max_distance, config.dedup.min_cosine)
        log.info("dedup: %d of %d kept shots marked duplicate; compared by CLIP image embedding "
                 "(cosine >= %s): %d, by keyframe pHash (<= %d bits): %d", found["marked"],
                 found["clip"] + found["phash"], config.dedup.min_cosine, found["clip"],
                 config.dedup.max_distance, found["phash"])

    return process
