"""``multishot eval``: Shot Cut Accuracy and consistency of generated multi-shot videos."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from multishot.cli.launch import add_config_args, overrides

DESCRIPTION = """\
Score generated multi-shot mp4s with the columns of HoloCine's Table 1, each computed as its
source computes it: Shot Cut Accuracy (HoloCine appendix A.1: cuts detected with the pipeline's
TransNetV2, matched one-to-one to the requested cuts), ViCLIP inter-shot consistency over shots
naming the same [characterK] (and CausalCine's DINOv2 variant), VBench subject (DINO v1) and
background (CLIP ViT-B/32) consistency inside each detected shot, ViCLIP semantic consistency
(global caption vs video, shot caption vs shot) and VBench's aesthetic score.
The requested cut frames and the prompt come from the JSON beside each mp4 (keys cut_frames and
prompt, or a sample record), or from --cuts / --prompt for every video. Metrics whose weights
the config does not name are reported as skipped.
"""

EPILOG = """\
examples:
  multishot eval out/gen/ --json out/gen/report.json
  multishot eval scene.mp4 --cuts 65,125 --config configs/eval/default.yaml
  multishot eval --suite benchmarks/prompts/holocine_protocol.jsonl --videos out/suite/ \
      --generate configs/generate/holocine_a14b.yaml --config configs/eval/default.yaml \
      --json out/suite/report.json --markdown out/suite/report.md
"""

class EvalInputError(ValueError):
    """A video, sidecar JSON or --cuts value that cannot be evaluated; the message says which."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("eval", help="Shot Cut Accuracy and consistency of generated videos",
                              description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("videos", nargs="*", help="mp4 files, or folders whose *.mp4 are evaluated")
    add_config_args(p, "eval", required=False)
    p.add_argument("--cuts", help="requested cut frames for every video, e.g. 65,125 (default: the JSON beside each mp4)")
    p.add_argument("--prompt", help="the prompt of every video (default: the JSON beside each mp4)")
    p.add_argument("-o", "--output", "--json", dest="json", metavar="REPORT.json",
                   help="write the JSON report here (--json: the older name)")
    p.add_argument("--suite", help=(
        "a benchmark prompts file (benchmarks/prompts/*.jsonl, HoloCine's protocol): score "
        "VIDEOS/NAME.mp4 of every item against its prompt and target cuts"))
    p.add_argument("--videos", dest="suite_videos", metavar="DIR",
                   help="--suite: the folder of the suite's videos (NAME.mp4)")
    p.add_argument("--generate", metavar="CONFIG", help=(
        "--suite: a configs/generate/ YAML; the videos missing from --videos are generated first"))
    p.add_argument("--limit", type=int, help="--suite: the first N prompts only")
    p.add_argument("--markdown", help="write the report as a markdown table here")
    p.set_defaults(func=_run)


def parse_cuts(text: str) -> list[int]:
    """``"65,125"`` → ``[65, 125]``; an empty string is no cut (one shot).

    Raises:
        EvalInputError: not comma-separated integers.
    """
    try:
        return [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise EvalInputError(f"--cuts takes comma-separated frame numbers, got {text!r}") from None


def find_videos(specs: list[str]) -> list[Path]:
    """mp4 files named directly or found (sorted) in named folders.

    Raises:
        EvalInputError: a path does not exist, or nothing was found.
    """
    videos: list[Path] = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            videos += sorted(path.glob("*.mp4"))
        elif path.is_file():
            videos.append(path)
        else:
            raise EvalInputError(f"{spec} does not exist")
    if not videos:
        raise EvalInputError(f"no .mp4 found in {' '.join(specs)}")
    return videos


def sidecar(video: Path) -> tuple[list[int] | None, str | None]:
    """Requested cuts and prompt from ``video``'s ``.json`` sibling: ``cut_frames`` and ``prompt``
    keys (``multishot generate``), or a sample record (the pipeline's, prompt from its captions).
    ``(None, None)`` when there is no sibling.

    Raises:
        EvalInputError: the JSON is unreadable or its ``cut_frames`` is not a list of integers.
    """
    from multishot.dataset.record import SampleRecord

    path = video.with_suffix(".json")
    if not path.is_file():
        return None, None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise EvalInputError(f"{path}: not JSON ({err})") from None
    cuts = data.get("cut_frames")
    if cuts is not None and not (isinstance(cuts, list) and all(isinstance(c, int) for c in cuts)):
        raise EvalInputError(f"{path}: cut_frames must be a list of frame numbers, got {cuts!r}")
    prompt = data.get("prompt")
    if prompt is None and "shots" in data and data.get("caption_status") == "ok":
        prompt = SampleRecord.model_validate(data).prompt()
    return cuts, prompt


def _json_beside(video: Path) -> dict | None:
    """The JSON beside ``video`` (already checked by :func:`sidecar`), or None."""
    path = video.with_suffix(".json")
    return json.loads(path.read_text()) if path.is_file() else None


def _run(args: argparse.Namespace) -> int:
    from multishot.config import ConfigError
    from multishot.evaluate.report import origin, overall, overall_by_origin, table
    from multishot.evaluate.video import Evaluator
    from multishot.pipeline.decode import ProbeError

    if args.suite is not None:
        return _run_suite(args)
    try:
        if not args.videos:
            raise EvalInputError("name mp4 files or folders, or --suite FILE --videos DIR")
        config = _eval_config(args)
        videos = find_videos(args.videos)
        cuts = parse_cuts(args.cuts) if args.cuts is not None else None
        evaluator = Evaluator(config)
        results = []
        for video in videos:
            requested, prompt = sidecar(video)
            requested = cuts if cuts is not None else requested
            prompt = args.prompt if args.prompt is not None else prompt
            try:
                results.append({**evaluator.evaluate(video, requested, prompt), "origin": origin(_json_beside(video))})
            except (ProbeError, ValueError) as err:
                raise EvalInputError(f"{video}: {err}") from None
    except (ConfigError, EvalInputError, FileNotFoundError) as err:
        lines = [line.strip() for line in str(err).splitlines()]  # a config error lists its keys
        print(f"multishot eval: {'; '.join(lines)}", file=sys.stderr)
        return 2
    summary = overall(results)
    print(table(results, summary))
    if args.json:
        # "overall": every video; "overall_by_origin": generated and real videos apart
        report = {"config": config.model_dump(mode="json"), "videos": results, "overall": summary,
                  "overall_by_origin": overall_by_origin(results)}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1))
    if args.markdown:
        from multishot.evaluate.suite import markdown

        _write(args.markdown, markdown([{"name": Path(r["video"]).stem, **r} for r in results], summary))
    return 0


def _eval_config(args: argparse.Namespace):
    """The eval config of ``--config`` (or EvalConfig's defaults) with ``--set`` applied."""
    from multishot.config import load_config
    from multishot.evaluate.config import EvalConfig

    settings = overrides(args.set)
    return load_config(args.config, EvalConfig, settings) if args.config \
        else EvalConfig.model_validate(settings)


def _write(path: str, text: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)


def _run_suite(args: argparse.Namespace) -> int:
    """``eval --suite``: generate what is missing (with --generate), score every prompt's video."""
    from multishot.config import ConfigError
    from multishot.evaluate.report import overall, table
    from multishot.evaluate.suite import evaluate_suite, generate_missing, load_suite, markdown
    from multishot.evaluate.video import Evaluator
    from multishot.pipeline.decode import ProbeError

    try:
        if args.suite_videos is None or args.videos:
            raise EvalInputError("--suite takes the videos folder as --videos DIR (no positional videos)")
        if args.cuts is not None or args.prompt is not None:
            raise EvalInputError("--suite gives each video its prompt and cuts; drop --cuts / --prompt")
        if args.limit is not None and args.limit < 1:
            raise EvalInputError(f"--limit must be >= 1, got {args.limit}")
        config = _eval_config(args)
        try:
            requests = load_suite(args.suite, args.limit)
        except OSError as err:
            raise EvalInputError(f"--suite {args.suite}: {err.strerror or err}") from None
        if not requests:
            raise EvalInputError(f"--suite {args.suite}: no prompts")
        videos = Path(args.suite_videos)
        if args.generate:
            videos.mkdir(parents=True, exist_ok=True)
            generate_missing(requests, videos, args.generate)
        evaluator = Evaluator(config)
        try:
            results = evaluate_suite(requests, videos, evaluator)
        except (ProbeError, ValueError) as err:
            raise EvalInputError(str(err)) from None
    except (ConfigError, EvalInputError, FileNotFoundError, ValueError) as err:
        lines = [line.strip() for line in str(err).splitlines()]
        print(f"multishot eval: {'; '.join(lines)}", file=sys.stderr)
        return 2
    summary = overall(results)
    print(table(results, summary))
    if args.json:
        report = {"config": config.model_dump(mode="json"), "suite": str(args.suite),
                  "prompts": results, "overall": summary}
        _write(args.json, json.dumps(report, indent=1))
    if args.markdown:
        _write(args.markdown, markdown(results, summary))
    return 0
