"""What single-threaded decoding costs: one full decode pass, frame-threaded vs one thread.

The pipeline decodes with one thread (``pipeline/decode.py``) so that a damaged file gives the
same pixels on every machine. This measures a whole decode pass over each real footage file
(every frame decoded, none converted, as the detect and analyse passes mostly do) with PyAV's
``thread_type="AUTO"`` (frame threads, FFmpeg's default thread count) and with
``thread_count=1``, runs interleaved, median of ``--runs``. It also checks which setting gives
the same pixels twice over the damaged ``corrupt_zeroed_middle_bbb.mp4`` at 1 and all CPUs.

Writes ``decode.json`` and ``decode.md`` into ``--out`` (default benchmarks/results/decode).
Usage: ``python benchmarks/decode.py [--runs 5]``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import statistics
import time
from pathlib import Path

import av

from harness import results_dir, write_report

FOOTAGE = Path(__file__).resolve().parents[2] / "shared" / "footage"
FILES = ["archive/bbb_first60s_360p.mp4", "archive/sintel_trailer_480p.mp4"]
DAMAGED = "bad/corrupt_zeroed_middle_bbb.mp4"


def decode(path: Path, threaded: bool, hash_from: int | None = None) -> tuple[float, float, int, str]:
    """Wall and CPU seconds of one pass, frames decoded, a hash of the pixels from frame ``hash_from`` on."""
    digest = hashlib.sha256()
    start, cpu = time.perf_counter(), time.process_time()
    frames = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if threaded:
            stream.thread_type = "AUTO"
        else:
            stream.codec_context.thread_count = 1
        for packet in container.demux(stream):
            try:
                decoded = packet.decode()
            except av.error.FFmpegError:
                continue
            for frame in decoded:
                frames += 1
                if hash_from is not None and frames >= hash_from:
                    digest.update(frame.to_ndarray().tobytes())
    return time.perf_counter() - start, time.process_time() - cpu, frames, digest.hexdigest()[:12]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=results_dir("decode"))
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    rows = []
    for name in FILES:
        times: dict[bool, list[float]] = {True: [], False: []}
        cpu: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(args.runs):
            for threaded in (True, False):
                seconds, cpu_s, frames, _ = decode(FOOTAGE / name, threaded)
                times[threaded].append(seconds)
                cpu[threaded].append(cpu_s)
        auto, one = statistics.median(times[True]), statistics.median(times[False])
        auto_cpu, one_cpu = statistics.median(cpu[True]), statistics.median(cpu[False])
        rows.append({"file": name, "frames": frames, "auto_threads_s": round(auto, 3), "one_thread_s": round(one, 3),
                     "auto_threads_cpu_s": round(auto_cpu, 3), "one_thread_cpu_s": round(one_cpu, 3),
                     "wall_slowdown": round(one / auto, 2), "cpu_ratio": round(one_cpu / auto_cpu, 2)})
    same = {}
    for threaded in (True, False):
        hashes = []
        for allowed in ({cpus[0]}, set(cpus)):
            os.sched_setaffinity(0, allowed)
            hashes.append(decode(FOOTAGE / DAMAGED, threaded, hash_from=600)[3])
        os.sched_setaffinity(0, cpus)
        same["auto_threads" if threaded else "one_thread"] = hashes[0] == hashes[1]
    result = {
        "device": f"{platform.processor() or platform.machine()}, {len(cpus)} CPUs available, "
                  f"load average {os.getloadavg()[0]:.1f} at the end (shared machine)",
        "pyav": av.__version__, "ffmpeg": ".".join(map(str, av.ffmpeg_version_info)) if isinstance(
            av.ffmpeg_version_info, tuple) else str(av.ffmpeg_version_info),
        "runs": args.runs, "passes": rows, "damaged_file_same_pixels_at_1_and_all_cpus": same,
    }
    lines = [
        "# Decode pass: frame threads vs one thread", "",
        f"Device: {result['device']}; PyAV {result['pyav']}, FFmpeg {result['ffmpeg']}; median of {args.runs} runs.", "",
        "| file | frames | wall, AUTO threads (s) | wall, 1 thread (s) | CPU, AUTO (s) | CPU, 1 thread (s) |",
        "|---|---|---|---|---|---|",
        *[f"| {r['file']} | {r['frames']} | {r['auto_threads_s']} | {r['one_thread_s']} | {r['auto_threads_cpu_s']} "
          f"| {r['one_thread_cpu_s']} |" for r in rows],
        "", f"Same pixels over the damaged file at 1 CPU and at all CPUs: {same}.", "",
        "CPU seconds are the cost: one thread does the same work as frame threads. Wall time on a",
        "loaded machine mostly shows the scheduler giving a process with more threads a larger share;",
        "on idle cores one video's pass takes up to (cores)x longer, while the pipeline keeps the",
        "cores busy by decoding several videos side by side (detect, analyse and render actors).", "",
    ]
    write_report(args.out / "decode.json", result, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
