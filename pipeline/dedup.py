"""Near-duplicate shots across every video of an output folder: keyframe hashes, an index that
never compares all pairs, and the rule that says which copy stays.

**Keyframes.** Every candidate frame of the scan (``analyse.candidates_per_s`` a second, at the
fixed analysis scale, inside the active picture area: :mod:`pipeline.scan`) gets a 64-bit
perceptual hash, the DCT hash of ``imagehash.phash`` (32×32 grey, low 8×8 DCT coefficients
against their median; Zauner, "Implementation and Benchmarking of Perceptual Image Hash
Functions", 2010). A shot's keyframes are the candidates inside it. Scale, codec and letterbox
bars change a hash by a few bits (the analysis scale and the active-area crop remove most of
them); another picture differs in about half of its 64 bits.

**Rule.** Two shots are near-duplicates when a keyframe of one lies within
``dedup.max_distance`` bits (Hamming) of a keyframe of the other. Only shots the filter keeps
take part (a shot already removed for another reason is neither marked nor a twin). Shots are
taken in a fixed order: the shots kept by earlier runs into the output first (their decisions
stand), then this run's videos by source path (then source id), each video's shots in time
order; a shot with a kept near-duplicate before it is removed as ``duplicate`` and names that
twin (the nearest one; the earlier on a tie), else it is kept. The order depends on neither
Ray's scheduling nor which videos an interrupted run finished, so a rerun or a resume gives
the same answer.

**Index.** Multi-index hashing (Norouzi, Punjani and Fleet, "Fast Search in Hamming Space with
Multi-Index Hashing", CVPR 2012): the 64 bits are cut into 4 bands of 16; two hashes within
``d`` bits agree within ``d // 4`` bits on at least one band (pigeonhole: otherwise they differ
in at least ``4 (d // 4 + 1) > d`` bits). Each band's values are sorted once; a hash looks up
every value within ``d // 4`` bits of its own in each band (``searchsorted``: 137 lookups a band
at the default 10 bits), and only the hashes found there are compared. The work grows with the
number of keyframes times the hashes sharing a band value (with uniform hashes ``N / 65536``),
not with all pairs.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from itertools import combinations

import numpy as np

from multishot.dataset.shards import ShardSetLayout
from multishot.dataset.storage import resolve
from multishot.pipeline.analyse import CandidateScore
from multishot.pipeline.config import PipelineConfig
from multishot.pipeline.detect import DetectedShot
from multishot.pipeline.task import VideoTask
from multishot.pipeline.write import last_manifest, trusted_results

BANDS = 4
BAND_BITS = 64 // BANDS
#: queries handled per step of :func:`near_pairs` (bounds its memory: chunk × lookups × 8 bytes)
CHUNK = 1024


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


def _kept_shots(tasks: Iterable[VideoTask]) -> list[tuple[VideoTask, int]]:
    """``(task, shot index)`` of every kept shot with keyframes, in the rule's order within
    ``tasks`` (by source path, then source id; each video's shots in time order)."""
    ordered = sorted((t for t in tasks if t.alive), key=lambda t: (t.name, t.source_id))
    return [(t, k) for t in ordered for k, row in enumerate(t.shots) if row.kept and row.keyframe_hashes]


def mark_duplicates(earlier: Iterable[VideoTask], tasks: Iterable[VideoTask], max_distance: int) -> int:
    """Mark the kept shots of ``tasks`` that near-duplicate an earlier kept shot (the rule in
    the module docstring): reason ``duplicate``, ``duplicate_of`` naming the twin.

    Args:
        earlier: finished videos of earlier runs into the output (not changed).
        tasks: this run's videos, after the analyse stage.
    Returns:
        how many shots were marked.
    """
    shots = _kept_shots(earlier)
    fixed = len(shots)  # earlier runs' decisions stand
    shots += _kept_shots(tasks)
    owner = np.array([s for s, (t, k) in enumerate(shots) for _ in t.shots[k].keyframe_hashes], np.int64)
    hashes = np.array([int(h, 16) for t, k in shots for h in t.shots[k].keyframe_hashes], np.uint64)
    i, j, distance = near_pairs(hashes, max_distance)
    a, b = owner[i], owner[j]  # a <= b: entries are numbered in the shots' order
    twins: dict[int, dict[int, int]] = {}
    for first, later, d in zip(a.tolist(), b.tolist(), distance.tolist()):
        if first != later and later >= fixed:
            near = twins.setdefault(later, {})
            near[first] = min(d, near.get(first, d))
    kept, marked = set(range(fixed)), 0
    for s in range(fixed, len(shots)):
        candidates = [(d, first) for first, d in twins.get(s, {}).items() if first in kept]
        if not candidates:
            kept.add(s)
            continue
        d, first = min(candidates)
        task, k = shots[s]
        twin, twin_shot = shots[first]
        row = task.shots[k]
        row.reason = "duplicate"
        row.duplicate_of = (twin.source_id, twin_shot, d)
        marked += 1
    return marked


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
        mark_duplicates(earlier, tasks, config.dedup.max_distance)

    return process
