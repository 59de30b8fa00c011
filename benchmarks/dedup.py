"""The cost of near-duplicate search (pipeline/dedup.py): a keyframe's perceptual hash, and the
multi-index-hashing pair search over N keyframe hashes.

    python benchmarks/dedup.py [--sizes 10000 100000 300000] [--out benchmarks/results/dedup/dedup.json]

Hash: ms per candidate frame at the analysis scale (640x360, Big Buck Bunny's first 200 frames),
median of 3 passes. Search: seconds for :func:`near_pairs` over N uniformly random 64-bit hashes
(the best case for the index: real keyframes of one shot lie near each other and share bucket
values more often), at 7 and 10 bits, one run each, with the pairs found.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

import harness


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 300_000])
    parser.add_argument("--out", type=Path, default=harness.results_dir("dedup") / "dedup.json")
    args = parser.parse_args()

    import av

    from multishot.pipeline.dedup import keyframe_hash, near_pairs

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
    report = {"device": harness.device_name(), "hash_ms_per_frame_640x360": round(statistics.median(passes), 3),
              "search": search}
    lines = [f"# Near-duplicate search cost ({report['device']})", "",
             f"pHash of a 640x360 keyframe: {report['hash_ms_per_frame_640x360']} ms (median of 3 passes over "
             "200 frames; 2 keyframes per source second).", "",
             "| keyframes | max_distance | seconds | pairs found |", "|---|---|---|---|"]
    lines += [f"| {r['keyframes']} | {r['max_distance']} | {r['seconds']} | {r['pairs']} |" for r in search]
    lines += ["", "Uniformly random hashes (the index's best case); the machine is shared, so times are upper "
              "bounds of the code's own cost."]
    harness.write_report(args.out, report, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
