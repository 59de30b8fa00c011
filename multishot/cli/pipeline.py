"""``multishot pipeline run``: the main job, locally or under ``ray job submit``."""

from __future__ import annotations

import argparse

from multishot.cli.launch import add_config_args, merged, overrides

DESCRIPTION = """\
Split videos into shots (TransNetV2 or PySceneDetect), score shots (brightness, OCR text
area, LAION aesthetic), filter them, pack consecutive kept shots into 5 s / 15 s / 60 s
multi-shot samples, render them at 832x480 16 fps, and write WebDataset shards with a
Parquet index, shots and rejects tables, a manifest and a run report.

Locally it starts a private Ray on 127.0.0.1. Under `ray job submit` (RAY_ADDRESS set) it
joins that cluster. A rerun with the same settings skips videos already done, so an
interrupted run is resumed by running the same command again. An output folder gathers
the films of every run into it: its index covers them all, and no finished work is deleted.
"""

EPILOG = """\
exit status:
  0  every input video was processed (some may be partial or rejected: see the report)
  1  a stage failed unexpectedly on some video (status "error"; a rerun retries it)
  2  bad usage, config, input or output (one line on stderr)
  3  no input video could be used: every one was rejected

examples:
  multishot pipeline run --config configs/pipeline/demo.yaml
  multishot pipeline run --config configs/pipeline/demo.yaml --dry-run
  multishot pipeline run --config configs/pipeline/demo.yaml --set render.fps=8 --output out/fps8
  multishot pipeline run --config configs/pipeline/demo.yaml --input /data/films --output s3://bucket/shards
  ray job submit --address http://127.0.0.1:8265 -- multishot pipeline run --config configs/pipeline/demo.yaml \\
      --input /data/films --output /data/shards
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    pipeline = subparsers.add_parser("pipeline", help="run the video → shards pipeline")
    sub = pipeline.add_subparsers(dest="pipeline_command", metavar="ACTION", required=True)
    run = sub.add_parser(
        "run", help="run the pipeline", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(run, "pipeline")
    run.add_argument("--input", help="folder, glob, text file of paths, or Parquet manifest; local or URI "
                     "(overrides the config's 'input')")
    run.add_argument("-o", "--output", "--out", help="output folder or URI (overrides the config's 'output')")
    run.add_argument("--caption-source", metavar="FILE", help="captions the archive already has: JSON lines of "
                     "per-shot captions keyed by source video and time span (overrides the config's caption.source; "
                     "docs/pipeline.md)")
    run.add_argument("--ray-address", help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--dry-run", action="store_true",
                     help="list which videos would be processed, skipped or rejected, and why; start nothing")
    run.set_defaults(func=_run)


#: exit status of a run in which every input video was rejected (documented in --help, README)
EXIT_ALL_REJECTED = 3


def _run(args: argparse.Namespace) -> int:
    import os

    from multishot.config import load_config
    from multishot.errors import UsageError
    from multishot.pipeline.config import PipelineConfig
    from multishot.pipeline.discover import InputError
    from multishot.pipeline.run import OutputError, run_pipeline

    flags: dict = {}
    for key in ("input", "output"):
        value = getattr(args, key)
        if value is not None:
            flags[key] = value if "://" in value else os.path.abspath(value)
    if args.caption_source is not None:
        flags["caption"] = {"source": os.path.abspath(args.caption_source)}
    if args.ray_address:
        flags["ray"] = {"address": args.ray_address}
    try:
        config = load_config(args.config, PipelineConfig, merged(overrides(args.set), flags))
        config = config.model_copy(update={
            k: os.path.abspath(v) for k, v in (("input", config.input), ("output", config.output))
            if v is not None and "://" not in v
        })
        if config.caption.source is not None:  # the caption actors may not share this directory
            config = config.model_copy(update={"caption": config.caption.model_copy(
                update={"source": config.caption.source.resolve()})})
        if args.dry_run:
            from multishot.pipeline.plan import format_plan, plan_run

            print(format_plan(plan_run(config)))
            return 0
        report = run_pipeline(config, progress=not args.no_progress)
    except (InputError, OutputError, ValueError) as err:
        raise UsageError(str(err)) from err
    if report["videos_by_status"].get("error"):
        return 1
    if report["this_run"]["usable"] == 0:
        return EXIT_ALL_REJECTED
    return 0
