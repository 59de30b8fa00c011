"""Benchmark the main job on the bundled footage (demo/footage): speed per stage and end to end.

Runs ``multishot pipeline run`` with ``configs/pipeline/demo.yaml`` (no aesthetic weights, no
Gemini) into a fresh temporary folder and writes ``benchmarks/results/pipeline.json``:

* ``wall_s``: end to end, Ray start-up and the index included;
* ``realtime_factor``: source seconds per wall second, end to end, and ``per_core`` (÷ CPUs);
* ``stage_seconds``: wall seconds spent in each stage, summed over videos (stages of different
  videos overlap, so these add up to more than ``wall_s`` when they run side by side);
* ``decode_passes_per_video``: how many times each source video is decoded (detect, analyse,
  render).

Usage: ``python benchmarks/pipeline.py [--input DIR] [--config YAML] [--out JSON]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", default=str(REPO / "demo" / "footage"))
    parser.add_argument("--config", default=str(REPO / "configs" / "pipeline" / "demo.yaml"))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "pipeline.json"))
    args = parser.parse_args()

    from multishot.config import load_config
    from multishot.pipeline.config import PipelineConfig
    from multishot.pipeline.run import run_pipeline

    cpus = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(args.config, PipelineConfig, {"input": args.input, "output": tmp})
        start = time.perf_counter()
        report = run_pipeline(config, progress=False)
        wall = time.perf_counter() - start
    source_s = report["source_hours"] * 3600
    result = {
        "machine": {"cpus": cpus, "platform": platform.platform(), "python": platform.python_version()},
        "input": args.input,
        "videos": report["videos_in"],
        "source_s": source_s,
        "samples": report["samples"],
        "samples_per_bucket": report["samples_per_bucket"],
        "wall_s": wall,
        "realtime_factor": source_s / wall,
        "realtime_factor_per_core": source_s / wall / cpus,
        "stage_seconds": report["stage_seconds"],
        "stage_realtime_factor": {k: source_s / v for k, v in report["stage_seconds"].items() if v > 0.01},
        "decode_passes_per_video": report["decode_passes_per_video"],
        "aesthetic": report["aesthetic"],
        "target_realtime_factor": 3.0,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
