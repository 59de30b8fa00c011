"""``multishot shards ls|stats|show|sheet|report|verify|export|audit``: see, check and export a shard set.

PATH is a shard set's root (local folder or ``pyarrow.fs`` URI such as ``s3://bucket/run``) of
any kind: samples (``multishot pipeline``), captioned (``multishot annotate``) or latents
(``multishot precompute``); ``sheet`` needs the mp4s of the first two. Each command is a thin wrapper over one module of
``dataset/`` (shardset, where, stats, describe, sheet, report_html, verify, export).
"""

from __future__ import annotations

import argparse
import json
import sys

from multishot.dataset.shards import MAX_MEMBER_BYTES, ShardError

_WHERE_HELP = (
    "keep samples where FIELD OP VALUE holds (OP: = != < <= > >=); repeat to combine, e.g. "
    "--where bucket=15s --where 'num_shots>=3' --where caption_status=pending (quote > and <). "
    "Fields: the ls columns."
)


def _open(args: argparse.Namespace):
    from multishot.dataset.shardset import ShardSet

    return ShardSet.open(args.path, max_member_bytes=args.max_member_mb << 20, progress=not args.quiet)


def _ls(args: argparse.Namespace) -> int:
    from multishot.dataset.shardset import ROW_COLUMNS
    from multishot.dataset.where import parse_where, select

    conditions = [parse_where(w, ROW_COLUMNS) for w in args.where]
    rows = select(_open(args).rows(), conditions)
    if args.json:  # streamed: one line per sample as it is read
        for row in rows:
            print(json.dumps(row))
        return 0
    rows = list(rows)  # the table's column widths need every row
    shown = [c for c in ROW_COLUMNS if c not in ("shard", "source")] if not args.wide else list(ROW_COLUMNS)
    table = [[_cell(row[c]) for c in shown] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in table]) for i, c in enumerate(shown)]
    for r in [shown, *table]:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    print(f"{len(rows)} samples", file=sys.stderr)
    return 0


def _cell(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-2 else f"{value:.2f}"
    return str(value)


def _stats(args: argparse.Namespace) -> int:
    from multishot.dataset.stats import compute_stats, format_stats, plot_stats

    stats = compute_stats(_open(args))
    summary = stats.summary()
    print(json.dumps(summary, indent=1) if args.json else format_stats(summary))
    if args.plot:
        plot_stats(stats, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


def _show(args: argparse.Namespace) -> int:
    from multishot.dataset.describe import describe_sample

    record, _ = _open(args).sample(args.key, json_only=True)  # metadata only: the video is streamed past
    print(record.model_dump_json(indent=1) if args.json else describe_sample(record))
    return 0


def _sheet(args: argparse.Namespace) -> int:
    from multishot.dataset.sheet import render_sheet

    if args.all == (args.key is not None):
        raise ValueError("give either KEY or --all")
    if args.all:
        return _sheet_all(args)
    record, members = _open(args).sample(args.key)
    if "mp4" not in members:
        raise ValueError(f"sample {args.key} has no .mp4 member (a latent shard set?): a sheet needs the video")
    image, layout = render_sheet(record, members["mp4"], frames_per_shot=args.frames, thumb_height=args.thumb_height)
    image.save(args.output)
    print(f"wrote {args.output}: {layout.width}x{layout.height} px, {record.num_shots} shots", file=sys.stderr)
    return 0


def _sheet_all(args: argparse.Namespace) -> int:
    """``sheet PATH --all -o DIR``: DIR/KEY.png for every sample (DIR made when missing)."""
    from pathlib import Path

    from multishot.dataset.report_html import each_sample
    from multishot.dataset.sheet import render_sheet

    folder = Path(args.output)
    folder.mkdir(parents=True, exist_ok=True)
    written = 0
    for _, record, members in each_sample(_open(args)):
        if "mp4" not in members:
            raise ValueError(f"sample {record.key} has no .mp4 member (a latent shard set?): a sheet needs the video")
        image, _ = render_sheet(record, members["mp4"], frames_per_shot=args.frames, thumb_height=args.thumb_height)
        image.save(folder / f"{record.key}.png")
        print(folder / f"{record.key}.png")
        written += 1
    print(f"wrote {written} sheets to {folder}", file=sys.stderr)
    return 0


def _report(args: argparse.Namespace) -> int:
    from multishot.dataset.report_html import write_report

    shard_set = _open(args)
    base, _, query = args.path.partition("?")  # a URI's query (endpoint, region) stays at its end
    output = args.output or f"{base.rstrip('/')}/report" + (f"?{query}" if query else "")
    done = write_report(shard_set, output, frames_per_shot=args.frames, thumb_height=args.thumb_height,
                        max_rejected=args.max_rejected)
    failed = f", {len(done.sheets_failed)} without a sheet ({', '.join(done.sheets_failed)})" if done.sheets_failed else ""
    print(f"wrote {done.index}: {done.videos} videos, {done.samples} samples{failed}, "
          f"{done.rejected_shots} rejected shots ({done.thumbnails} with a thumbnail)", file=sys.stderr)
    print(done.index)
    return 0


def _verify(args: argparse.Namespace) -> int:
    from multishot.dataset.verify import verify

    problems = verify(_open(args), decode=not args.no_decode)
    for problem in problems:
        print(problem)
    print(f"{len(problems)} problems" if problems else "ok: no problems found", file=sys.stderr)
    return 1 if problems else 0


def _audit(args: argparse.Namespace) -> int:
    # the checks are the pipeline's detectors (pipeline imports dataset, not the reverse: this
    # command is app level and moves to multishot/cli/ with the refactor)
    from multishot.pipeline.audit import audit_set, format_table, summary

    config = None
    if args.config:
        from multishot.config import load_config
        from multishot.pipeline.config import PipelineConfig

        config = load_config(args.config, PipelineConfig)
    results = audit_set(_open(args), config)
    totals = summary(results)
    if args.json:
        from multishot.dataset.storage import resolve, write_json

        fs, path = resolve(args.json)
        write_json(fs, path, {"summary": totals, "samples": [r.as_dict() for r in results]})
    print(format_table(results))
    print(f"{totals['failing']} of {totals['samples']} samples fail: bars {totals['bars']}, black {totals['black']}, "
          f"text {totals['text']}, scene change inside a shot {totals['scene_change']}", file=sys.stderr)
    return 1 if totals["failing"] else 0


def _export(args: argparse.Namespace) -> int:
    from multishot.dataset.describe import caption_state
    from multishot.dataset.export import export_sample

    record, members = _open(args).sample(args.key)
    for path in export_sample(record, members, args.output, force=args.force):
        print(path)
    if record.caption_status != "ok":
        print(f"{record.key}: no prompt written, captions {caption_state(record)}", file=sys.stderr)
    return 0


def _handled(func):
    """Run a command, turning expected failures (missing key/set, damaged shard, bad output
    path) into a :class:`~multishot.errors.UsageError` (one line on stderr, exit 2)."""

    def run(args: argparse.Namespace) -> int:
        import tarfile

        from multishot.errors import UsageError

        try:
            return func(args)
        except BrokenPipeError:
            raise  # the reader went away (`| head`): not a problem of the shard set
        except (KeyError, OSError, ValueError, tarfile.TarError) as err:
            message = err.args[0] if isinstance(err, KeyError) and err.args else err
            hint = ""
            if isinstance(err, (ShardError, tarfile.TarError)):
                hint = " (`multishot shards verify PATH` lists every problem of the set)"
            raise UsageError(f"{message}{hint}") from err

    return run


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``shards`` and its sub-commands to the ``multishot`` parser."""
    shards = subparsers.add_parser(
        "shards",
        help="inspect, check and export a shard set",
        description=__doc__.split("\n\n")[0] + " Long scans show a progress bar on stderr.",
    )
    commands = shards.add_subparsers(dest="shards_command", metavar="SUBCOMMAND", required=True)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("path", metavar="PATH", help="shard set root: local folder or pyarrow.fs URI")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    common.add_argument(
        "--max-member-mb",
        type=int,
        default=MAX_MEMBER_BYTES >> 20,
        help="refuse tar members larger than this many MiB (default %(default)s)",
    )
    keyed = argparse.ArgumentParser(add_help=False, parents=[common])
    keyed.add_argument("key", metavar="KEY", help="sample key (see `ls`)")

    p = commands.add_parser("ls", parents=[common], help="list samples (from the index, else the shards)")
    p.add_argument("--where", action="append", default=[], metavar="FIELD OP VALUE", help=_WHERE_HELP)
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--wide", action="store_true", help="also show shard and source columns")
    p.set_defaults(func=_handled(_ls))

    p = commands.add_parser(
        "stats", parents=[common], help="totals, duration / shot-count / score histograms, rejection reasons"
    )
    p.add_argument("--plot", metavar="OUT.png", help="also write a figure of the distributions (PNG)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_handled(_stats))

    p = commands.add_parser("show", parents=[keyed], help="a sample's metadata, shots, cut frames and HoloCine prompt")
    p.add_argument("--json", action="store_true", help="print the sample's JSON record instead")
    p.set_defaults(func=_handled(_show))

    p = commands.add_parser(
        "sheet", parents=[common], help="contact sheet PNG: one row of frames per shot, with time range and caption"
    )
    p.add_argument("key", metavar="KEY", nargs="?", help="sample key (see `ls`); or --all")
    p.add_argument("--all", action="store_true", help="a sheet of every sample: -o names a folder, DIR/KEY.png")
    p.add_argument("-o", "--output", "--out", required=True, metavar="OUT.png|DIR",
                   help="PNG to write (with --all: folder, made when missing)")
    p.add_argument("--frames", type=int, default=4, help="frames per shot (default %(default)s)")
    p.add_argument("--thumb-height", type=int, default=135, help="thumbnail height in pixels (default %(default)s)")
    p.set_defaults(func=_handled(_sheet))

    p = commands.add_parser(
        "report", parents=[common],
        help="an HTML page of a run: videos, every sample's contact sheet, rejected shots with thumbnails, stats",
    )
    p.add_argument("-o", "--output", "--out", metavar="DIR",
                   help="folder (or pyarrow.fs URI) for index.html and img/ (default PATH/report)")
    p.add_argument("--frames", type=int, default=4, help="frames per shot in the sheets (default %(default)s)")
    p.add_argument("--thumb-height", type=int, default=135, help="thumbnail height in pixels (default %(default)s)")
    p.add_argument("--max-rejected", type=int, metavar="N", help="show at most N rejected shots (default all)")
    p.set_defaults(func=_handled(_report))

    p = commands.add_parser(
        "verify",
        parents=[common],
        help="check tars, member names, mp4 decoding vs JSON, schema, index and checksums; exit 1 on problems",
    )
    p.add_argument("--no-decode", action="store_true", help="skip decoding the mp4s (faster, weaker)")
    p.set_defaults(func=_handled(_verify))

    p = commands.add_parser(
        "audit", parents=[common],
        help="check each sample's video for bars, black frames, text and scene changes inside a shot; exit 1 "
             "when one fails",
    )
    p.add_argument("--json", metavar="OUT.json", help="also write every sample's findings as JSON")
    p.add_argument("--config", metavar="PIPELINE.yaml", help="pipeline config whose thresholds to apply "
                   "(default: the built-in defaults)")
    p.set_defaults(func=_handled(_audit))

    p = commands.add_parser(
        "export", parents=[keyed],
        help="write the sample's members (KEY.json + KEY.mp4, or KEY.safetensors) and, captions ok, KEY.txt "
             "with the prompt",
    )
    p.add_argument("-o", "--output", "--out", required=True, metavar="DIR",
                   help="folder (or pyarrow.fs URI) to write into; made when missing")
    p.add_argument("--force", action="store_true", help="overwrite files of the sample already in DIR")
    p.set_defaults(func=_handled(_export))
