"""Finishing a run: per-video results → Parquet index and tables, manifest, run report.

Built from the per-video result files of every input video (processed now or in an earlier,
interrupted run), so the index always describes exactly the shards on disk. Shards that no
result names (left by a run with other settings) are removed.
"""

from __future__ import annotations

import collections
import logging

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from multishot.dataset.shards import Manifest, ShardSetLayout, write_json, write_manifest
from multishot.config import dump_yaml
from multishot.pipeline.config import PipelineConfig

log = logging.getLogger(__name__)

SHOT_COLUMNS = ["source", "source_id", "shot_index", "start_frame", "end_frame", "start_s", "end_s",
                "gap_before", "brightness", "ocr_text_ratio", "aesthetic", "kept", "reason"]
REJECT_COLUMNS = ["source", "source_id", "status", "stage", "reason"]


def _write_table(fs: pafs.FileSystem, path: str, rows: list[dict], columns: list[str] | None = None) -> None:
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    table = pa.Table.from_pylist(rows) if rows else pa.table({c: pa.array([], pa.string()) for c in columns or []})
    tmp = path + ".tmp"
    pq.write_table(table, tmp, filesystem=fs)
    fs.move(tmp, path)


def _shot_rows(result: dict) -> list[dict]:
    fps = result["info"]["fps"] if result.get("info") else 0.0
    return [
        {
            "source": result["source"],
            "source_id": result["source_id"],
            "shot_index": i,
            "start_frame": s["start_frame"],
            "end_frame": s["end_frame"],
            "start_s": s["start_frame"] / fps,
            "end_s": s["end_frame"] / fps,
            "gap_before": s["gap_before"],
            "brightness": s["brightness"],
            "ocr_text_ratio": s["ocr_text_ratio"],
            "aesthetic": s["aesthetic"],
            "kept": s["kept"],
            "reason": s["reason"],
        }
        for i, s in enumerate(result["shots"])
    ]


def finalize(
    fs: pafs.FileSystem,
    layout: ShardSetLayout,
    config: PipelineConfig,
    samples_hash: str,
    results: list[dict],
    unreadable: list[dict],
    wall_s: float,
) -> dict:
    """Write ``index/*.parquet``, ``manifest.json``, ``report.json`` and the resolved config;
    print and return the report (see :func:`summary`)."""
    samples = [row for r in results for row in r["index_rows"]]
    shots = [row for r in results for row in _shot_rows(r)]
    rejects = unreadable + [
        {k: r[k] for k in REJECT_COLUMNS} for r in results if r["status"] != "ok"
    ]
    shards = sorted((s for r in results for s in r["shards"]), key=lambda s: s["name"])
    _remove_unlisted_shards(fs, layout, {s["name"] for s in shards})
    _write_table(fs, layout.samples_index, samples, ["key"])
    _write_table(fs, layout.shots_table, shots, SHOT_COLUMNS)
    _write_table(fs, layout.rejects_table, rejects, REJECT_COLUMNS)
    write_manifest(fs, layout, Manifest(kind="samples", samples_hash=samples_hash, shards=shards))
    report = summary(config, results, unreadable, samples, shots, wall_s)
    write_json(fs, layout.report, report)
    with fs.open_output_stream(layout.resolved_config) as out:
        out.write(dump_yaml(config).encode())
    print(format_report(report))
    return report


def _remove_unlisted_shards(fs: pafs.FileSystem, layout: ShardSetLayout, listed: set[str]) -> None:
    if fs.get_file_info(layout.shards_dir).type != pafs.FileType.Directory:
        return
    for info in fs.get_file_info(pafs.FileSelector(layout.shards_dir)):
        name = info.path.rsplit("/", 1)[-1]
        if name.endswith(".tar") and name not in listed:
            log.info("removing shard %s: no current result lists it", name)
            fs.delete_file(info.path)


def summary(config: PipelineConfig, results: list[dict], unreadable: list[dict], samples: list[dict], shots: list[dict], wall_s: float) -> dict:
    """The run report: inputs and rejects, shots by decision, samples per bucket, hours, speed."""
    status = collections.Counter(r["status"] for r in results) + collections.Counter(u["status"] for u in unreadable)
    reasons = collections.Counter(reason for s in shots if s["reason"] for reason in s["reason"].split(","))
    source_s = sum(r["info"]["duration_s"] for r in results if r.get("info"))
    stage_s = collections.Counter()
    for r in results:
        stage_s.update(r["seconds"])
    passes = [len(r["decode"]) for r in results if r["status"] in ("ok", "partial")]
    return {
        "videos_in": len(results) + len(unreadable),
        "videos_by_status": dict(status),
        "rejects": [
            {"source": r["source"], "status": r["status"], "stage": r["stage"], "reason": r["reason"]}
            for r in [*unreadable, *results] if r["status"] != "ok"
        ],
        "shots_found": len(shots),
        "shots_kept": sum(s["kept"] for s in shots),
        "shots_removed_by_reason": dict(reasons),
        "samples": len(samples),
        "samples_per_bucket": dict(collections.Counter(s["bucket"] for s in samples)),
        "sample_hours": sum(s["duration_s"] for s in samples) / 3600,
        "source_hours": source_s / 3600,
        "dropped_samples": [d for r in results for d in r["dropped_samples"]],
        "aesthetic": "scored" if config.analyse.aesthetic_enabled else "skipped (no weights in config)",
        "ocr_backend": config.analyse.ocr_backend,
        "captions": _captions(samples),
        "stage_seconds": dict(stage_s),
        "decode_passes_per_video": (sum(passes) / len(passes)) if passes else 0.0,
        "wall_s": wall_s,
        "realtime_factor": source_s / wall_s if wall_s else 0.0,
    }


def _captions(samples: list[dict]) -> str:
    status = collections.Counter(s["caption_status"] for s in samples)
    if set(status) <= {"pending"}:
        return ("pending (no GEMINI_API_KEY): caption later with "
                "`multishot annotate --shards OUT --output OUT_CAPTIONED`")
    return ", ".join(f"{k} {v}" for k, v in sorted(status.items()))


def format_report(report: dict) -> str:
    """The report as the few lines a person reads at the end of a run."""
    lines = [
        "── multishot pipeline ──",
        f"videos in        {report['videos_in']}  ({', '.join(f'{k} {v}' for k, v in sorted(report['videos_by_status'].items()))})",
        f"shots            {report['shots_found']} found, {report['shots_kept']} kept"
        + (f"; removed: {', '.join(f'{k} {v}' for k, v in sorted(report['shots_removed_by_reason'].items()))}" if report["shots_removed_by_reason"] else ""),
        f"samples          {report['samples']}  ({', '.join(f'{k}: {v}' for k, v in report['samples_per_bucket'].items())})",
        f"footage          {report['source_hours'] * 3600:.1f} s in, {report['sample_hours'] * 3600:.1f} s of samples",
        f"aesthetic        {report['aesthetic']}",
        f"captions         {report['captions']}",
        f"wall time        {report['wall_s']:.1f} s  ({report['realtime_factor']:.2f}× realtime)",
    ]
    for r in report["rejects"]:
        lines.append(f"  {r['status']:<8} {r['source'].rsplit('/', 1)[-1]}: [{r['stage']}] {r['reason']}")
    return "\n".join(lines)
