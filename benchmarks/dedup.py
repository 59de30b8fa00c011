"""The cost of near-duplicate search (pipeline/dedup.py): a keyframe's perceptual hash, the
multi-index-hashing pair search over N keyframe hashes, and the CLIP-embedding pair search over
N keyframe embeddings with its recall.

    python benchmarks/dedup.py [--sizes 10000 100000 300000] [--embedding-sizes 10000 30000 100000 300000]
                               [--out benchmarks/results/dedup/dedup.json]

Hash: ms per candidate frame at the analysis scale (640x360, Big Buck Bunny's first 200 frames),
median of 3 passes. Search: seconds for :func:`near_pairs` over N uniformly random 64-bit hashes
(the best case for the index: real keyframes of one shot lie near each other and share bucket
values more often), at 7 and 10 bits, one run each, with the pairs found.

Embeddings: the CLIP forward is the aesthetic score's (no second one); what dedup adds per
keyframe is its float16 copy in the result file (:func:`pack_embedding`: bytes, and µs to pack
and unpack) and the search. Search: seconds for :func:`similar_pairs` at ``min_cosine`` 0.99 over
N 768-d (ViT-L/14) unit vectors, 90% uniformly random and 10% copies of others at cosines drawn
uniformly from 0.97 to 1 (uniform vectors are the k-means lists' worst case: no clusters to
follow; real CLIP embeddings cluster), one run each. Recall: the share of the planted pairs at
or above 0.99 that are found (two uniform 768-d vectors are never that near: the planted pairs
are all the pairs there are; checked by brute force up to 30,000); up to 20,000 the search is
exhaustive, so recall 1 by construction.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np

import harness


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 300_000])
    parser.add_argument("--embedding-sizes", type=int, nargs="+", default=[10_000, 30_000, 100_000, 300_000])
    parser.add_argument("--out", type=Path, default=harness.results_dir("dedup") / "dedup.json")
    args = parser.parse_args()
    load_at_start = os.getloadavg()[0]

    import av

    from multishot.pipeline.dedup import keyframe_hash, near_pairs, pack_embedding, similar_pairs, unpack_embeddings

    footage = harness.REPO.parent / "shared" / "footage" / "archive" / "bbb_first60s_360p.mp4"
    with av.open(str(footage)) as container:
        frames = [f.to_ndarray(format="rgb24", width=640, height=360)
                  for _, f in zip(range(200), container.decode(video=0))]
    passes = []
    for _ in range(3):
        start = time.perf_counter()
        for frame in frames:
            keyframe_hash(frame)
        passes.append((time.perf_counter() - start) / len(frames) * 1000)
    rng = np.random.default_rng(0)
    search = []
    for n in args.sizes:
        hashes = rng.integers(0, 2**64, size=n, dtype=np.uint64)
        for bits in (7, 10):
            start = time.perf_counter()
            i, _, _ = near_pairs(hashes, bits)
            search.append({"keyframes": n, "max_distance": bits, "seconds": round(time.perf_counter() - start, 2),
                           "pairs": len(i)})
    vectors = _unit(rng, 10_000, 768)
    start = time.perf_counter()
    packed = [pack_embedding(v) for v in vectors]
    pack_us = (time.perf_counter() - start) / len(vectors) * 1e6
    start = time.perf_counter()
    unpack_embeddings(packed)
    unpack_us = (time.perf_counter() - start) / len(vectors) * 1e6
    embedding = []
    for n in args.embedding_sizes:
        x, planted = _planted(rng, n, 768)
        start = time.perf_counter()
        i, j, _ = similar_pairs(x, 0.99)
        seconds = time.perf_counter() - start
        want = {(int(a), int(b)) for a, b in planted[(x[planted[:, 0]] * x[planted[:, 1]]).sum(1) >= 0.99]}
        if n <= 30_000:  # brute force: the planted pairs are all the pairs there are
            brute = set()
            for at in range(0, len(x), 2048):
                a, b = np.nonzero(x[at : at + 2048] @ x.T >= 0.99)
                brute |= {(int(u), int(v)) for u, v in zip(a + at, b) if u < v}
            if brute != want:
                raise RuntimeError(f"{len(brute - want)} unplanted pairs above 0.99: the recall below would be wrong")
        got = set(zip(i.tolist(), j.tolist()))
        embedding.append({"keyframes": len(x), "min_cosine": 0.99, "seconds": round(seconds, 2), "pairs": len(got),
                          "planted_pairs_above": len(want), "recall": round(len(got & want) / max(1, len(want)), 4)})
    report = {"device": harness.device_name(), "hash_ms_per_frame_640x360": round(statistics.median(passes), 3),
              "search": search,
              "embedding_bytes_per_keyframe_768d": len(packed[0]),
              "embedding_pack_us": round(pack_us, 2), "embedding_unpack_us": round(unpack_us, 2),
              "embedding_search": embedding,
              "load_average_1min": [round(load_at_start, 1), round(os.getloadavg()[0], 1)]}
    lines = [f"# Near-duplicate search cost ({report['device']})", "",
             f"The machine's 1-minute load average at the start and the end: {report['load_average_1min'][0]} and "
             f"{report['load_average_1min'][1]} (other processes share its cores: every time is an upper bound).", "",
             f"pHash of a 640x360 keyframe: {report['hash_ms_per_frame_640x360']} ms (median of 3 passes over "
             "200 frames; 2 keyframes per source second).", "",
             "| keyframes | max_distance | seconds | pairs found |", "|---|---|---|---|"]
    lines += [f"| {r['keyframes']} | {r['max_distance']} | {r['seconds']} | {r['pairs']} |" for r in search]
    lines += ["", "Uniformly random hashes (the index's best case); the machine is shared, so times are upper "
              "bounds of the code's own cost.", "",
              "## CLIP embeddings (when CLIP weights are given)", "",
              "The CLIP forward is the aesthetic score's: no second one. Each pick's L2-normalised embedding is kept "
              f"as float16, {report['embedding_bytes_per_keyframe_768d']} bytes of base64 at 768-d (ViT-L/14) in the "
              f"result file; {report['embedding_pack_us']} µs to pack and {report['embedding_unpack_us']} µs to read "
              "back a keyframe.", "",
              "| keyframes | min_cosine | seconds | pairs found | planted pairs ≥ min_cosine | recall |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {r['keyframes']} | {r['min_cosine']} | {r['seconds']} | {r['pairs']} | {r['planted_pairs_above']} "
              f"| {r['recall']} |" for r in embedding]
    lines += ["", "768-d unit vectors, 90% uniformly random and 10% copies of others at cosines uniform in "
              "0.97-1 (the k-means lists' worst case: no clusters). Up to 20,000 keyframes every pair is compared "
              "(exact); above, pairs within k-means lists (sqrt(N) of them, each keyframe in the lists of its 2 "
              "nearest centroids). Same shared machine: upper bounds."]
    harness.write_report(args.out, report, "\n".join(lines) + "\n")
    print("\n".join(lines))


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _planted(rng: np.random.Generator, n: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` unit vectors ``[n, d]``, the last tenth copies of earlier ones at cosines uniform in
    0.97-1, and the planted pairs ``[n / 10, 2]`` (original, copy)."""
    copies = n // 10
    base = _unit(rng, n - copies, d)
    source = rng.choice(len(base), copies, replace=False)
    noise = _unit(rng, copies, d)
    noise -= (noise * base[source]).sum(1, keepdims=True) * base[source]
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    cosine = rng.uniform(0.97, 1.0, (copies, 1)).astype(np.float32)
    x = np.concatenate([base, cosine * base[source] + np.sqrt(1 - cosine**2) * noise]).astype(np.float32)
    return x, np.stack([source, np.arange(len(base), n)], 1)


if __name__ == "__main__":
    main()
