"""What the motion score of issue 34 costs (CPU seconds per realtime second of footage), and
whether DIS's cheaper preset decides as its more accurate one.

On the bundled demo footage (``demo/footage``, 202 s):

* **the flow alone**: each video's candidate frames (``analyse.candidates_per_s``, at the analysis
  scale, inside its active area, decoded beforehand), through :class:`pipeline.motion.FlowMeter`
  with DIS's ``FAST`` preset (the pipeline's) and ``MEDIUM``: CPU ms a pair, CPU s per realtime s;
* **in the scan**: :class:`pipeline.scan.SegmentScanner` over each whole video with
  ``analyse.motion_backend: dis`` and ``none`` (the defaults otherwise: OCR on every candidate):
  the scan's CPU seconds per realtime second with and without the motion score;
* **decisions**: each shot's motion (:func:`pipeline.motion.shot_motion`, over the shots the
  detector finds, not too short) from both presets' pairs, against ``filter.min_motion``.

CPU seconds (``time.process_time``, every thread of this process): other work on the machine
slows the wall clock but hardly the figures. Writes ``benchmarks/results/motion/motion.{json,md}``
through :func:`harness.write_report`.

Usage: ``python benchmarks/motion.py [--out benchmarks/results/motion/motion.json]``
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import cv2
import numpy as np
from harness import REPO, device_name, results_dir, write_report

from multishot.pipeline.analyse import is_candidate
from multishot.pipeline.config import PipelineConfig
from multishot.pipeline.decode import analysis_size, iter_frames, probe
from multishot.pipeline.detect import shots_of
from multishot.pipeline.motion import FlowMeter, shot_motion
from multishot.pipeline.picture import detect_active_area
from multishot.pipeline.scan import SegmentScanner, stitch_picture

PRESETS = {"FAST": cv2.DISOPTICAL_FLOW_PRESET_FAST, "MEDIUM": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}


def candidate_frames(path: str, config: PipelineConfig) -> tuple[float, list[tuple[int, np.ndarray]]]:
    """``(fps, [(index, active picture [H, W, 3])])`` of a video's candidates, as the scan sees them."""
    info = probe(path)
    area = detect_active_area(path, None, info, config.detect, config.analyse.analysis_short_side)
    w, h = analysis_size(info, config.analyse.analysis_short_side)
    per_s = config.analyse.candidates_per_s
    wanted = np.array([i for i in range(int(info.duration_s * info.fps) + 1) if is_candidate(i, info.fps, per_s)])
    return info.fps, [(i, area.crop(f).copy()) for i, f in iter_frames(path, fps=info.fps, width=w, height=h,
                                                                         wanted=wanted)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(results_dir("motion") / "motion.json"))
    args = parser.parse_args()
    load_before = os.getloadavg()
    videos = sorted(str(p) for p in (REPO / "demo/footage").glob("*.mp4"))
    seconds = sum(probe(v).duration_s for v in videos)
    config = PipelineConfig()

    # the flow alone, per preset
    flow = {name: {"cpu_s": 0.0, "pairs": 0} for name in PRESETS}
    pairs: dict[str, dict[str, dict[int, float]]] = {name: {} for name in PRESETS}
    sizes = {}
    for path in videos:
        fps, frames = candidate_frames(path, config)
        sizes[Path(path).name] = list(frames[0][1].shape[1::-1])
        for name, preset in PRESETS.items():
            meter = FlowMeter(fps, preset)
            t = time.process_time()
            got = {i: meter.measure(i, f) for i, f in frames}
            flow[name]["cpu_s"] += time.process_time() - t
            flow[name]["pairs"] += len(frames) - 1
            pairs[name][path] = got
    for f in flow.values():
        f["cpu_ms_per_pair"] = f["cpu_s"] / f["pairs"] * 1e3
        f["cpu_s_per_realtime_s"] = f["cpu_s"] / seconds

    # in the scan, with and without
    scan = {}
    shots = {}
    for backend in ("none", "dis"):
        cfg = PipelineConfig.model_validate({"analyse": {"motion_backend": backend}})
        scanner = SegmentScanner(cfg)
        cpu = 0.0
        for path in videos:
            info = probe(path)
            area = detect_active_area(path, None, info, cfg.detect, cfg.analyse.analysis_short_side)
            size = analysis_size(info, cfg.analyse.analysis_short_side)
            result = scanner.scan(path, None, info.fps, 0, None, analysis_size=size, area=area)
            cpu += result.cpu_s
            if backend == "dis":
                _, _, thumbs = stitch_picture([result])
                shots[path] = [s for s in shots_of(cfg.detect, np.array(result.single), np.array(result.many),
                                                   info.fps, thumbs) if not s.too_short]
        scan[backend] = {"cpu_s": cpu, "cpu_s_per_realtime_s": cpu / seconds}

    # each shot's motion from either preset's pairs, and the decision
    limit = config.filter.min_motion
    rows = []
    for path in videos:
        for shot in shots[path]:
            row = {"video": Path(path).name, "start_frame": shot.start_frame, "end_frame": shot.end_frame}
            for name in PRESETS:
                inside = sorted(i for i in pairs[name][path] if shot.start_frame <= i < shot.end_frame)
                row[name] = shot_motion([pairs[name][path][i] for i in inside[1:]])
            rows.append(row)
    measured = [r for r in rows if r["FAST"] is not None]
    differ = [r for r in measured if (r["FAST"] < limit) != (r["MEDIUM"] < limit)]
    report = {
        "device": device_name(),
        "machine_note": f"shared with the lead's and other helpers' work: load average "
                        f"{load_before[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end",
        "footage_s": seconds, "videos": len(videos), "analysis_sizes": sizes,
        "candidates_per_s": config.analyse.candidates_per_s, "min_motion": limit,
        "flow": flow, "scan": scan,
        "scan_added_cpu_s_per_realtime_s": scan["dis"]["cpu_s_per_realtime_s"] - scan["none"]["cpu_s_per_realtime_s"],
        "shots_measured": len(measured),
        "static_fast": sum(r["FAST"] < limit for r in measured),
        "static_medium": sum(r["MEDIUM"] < limit for r in measured),
        "decisions_differ": differ,
        "shots": rows,
    }
    write_report(args.out, report, markdown)
    print(markdown(report))


def markdown(r: dict) -> str:
    f, m = r["flow"]["FAST"], r["flow"]["MEDIUM"]
    none, dis = r["scan"]["none"], r["scan"]["dis"]
    lines = [
        "# What the motion score costs (issue 34)\n",
        f"Device: {r['device']}; {r['machine_note']}. CPU seconds (process time, all threads of the "
        f"process) over the {r['footage_s']:.0f} s of `demo/footage` ({r['videos']} videos; analysis scale "
        f"{', '.join(f'{w}×{h}' for w, h in r['analysis_sizes'].values())}), "
        f"{r['candidates_per_s']:g} candidate frames a second, `python benchmarks/motion.py`.\n",
        "| | CPU ms a pair | CPU s per realtime s |", "|---|---|---|",
        f"| DIS `FAST` alone (the pipeline's) | {f['cpu_ms_per_pair']:.1f} | {f['cpu_s_per_realtime_s']:.4f} |",
        f"| DIS `MEDIUM` alone (for comparison) | {m['cpu_ms_per_pair']:.1f} | {m['cpu_s_per_realtime_s']:.4f} |",
        f"| scan, `motion_backend: none` | | {none['cpu_s_per_realtime_s']:.3f} |",
        f"| scan, `motion_backend: dis` | | {dis['cpu_s_per_realtime_s']:.3f} |",
        f"| scan, added | | {r['scan_added_cpu_s_per_realtime_s']:.3f} |\n",
        f"The scan rows are whole scans (decode, TransNetV2, OCR on every candidate) whose difference is "
        f"within the noise of a shared machine; the flow rows time the flow alone. Decisions at "
        f"`filter.min_motion` {r['min_motion']:g} over the {r['shots_measured']} shots the detector finds "
        f"(not too short, fades not trimmed): static with `FAST` {r['static_fast']}, with `MEDIUM` "
        f"{r['static_medium']}; shots decided otherwise: {len(r['decisions_differ'])}.\n",
        "| video | frames | motion `FAST` | `MEDIUM` |", "|---|---|---|---|",
    ]
    for s in r["shots"]:
        fast, med = (f"{s[k]:.4f}" if s[k] is not None else "–" for k in ("FAST", "MEDIUM"))
        lines.append(f"| {s['video']} | {s['start_frame']}–{s['end_frame']} | {fast} | {med} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
