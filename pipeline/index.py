"""Finishing a run: per-video results → Parquet index and tables, manifest, run report.

Built from every trusted per-video result in ``_work/`` made with the run's settings (processed
now, by an earlier interrupted run, or by a run over other inputs into the same folder), so the
index describes exactly the shards on disk. Finished work is never deleted: the only shards
removed are older renders of a video whose current result lists other shard names; a shard no
trusted result lists (made with other settings, or by a result that can no longer be trusted)
is moved to ``_work/set_aside/`` and logged.

The tables under ``index/`` (this module owns their columns):

* ``samples.parquet``: one row per sample (:func:`pipeline.sample.index_row`).
* ``shots.parquet`` (:data:`SHOT_COLUMNS`): every detected shot of every video, the whole record
  of what detection saw. Shots shorter than ``detect.min_shot_s`` have a row with reason
  ``too_short`` (and no scores). The ``transition*`` columns describe the transition into the
  shot: ``cut`` (an empty span at the shot's first frame) or ``gradual`` (a fade or dissolve:
  frames ``[transition_start_frame, transition_end_frame)`` that belong to no shot), its span in
  source frames and seconds; null for a first shot that starts at frame 0. Consecutive rows of a
  video are therefore adjacent or separated by exactly their transition; a gradual transition
  that runs into the video's end is the frames after its last shot's ``end_frame``.
  ``gap_before`` is ``transition == 'gradual'``. ``black_fraction``: the fraction of the shot's
  frames that are black (:mod:`pipeline.picture`; after its fades to and from black are trimmed,
  which moves its ends and widens the transitions around it; null for a too-short shot).
  ``motion``: the median optical flow between its candidate frames, in fractions of the
  picture's shorter side a second (:mod:`pipeline.motion`; null when not measured: a too-short
  shot, one under two candidates, ``analyse.motion_backend: none``); under ``filter.min_motion``
  the shot is removed as ``static``.
  ``keyframe_hashes``: the 64-bit perceptual hash (16 hex digits) of each candidate frame in the
  shot; a shot removed as ``duplicate`` names its kept twin, ``duplicate_of_source_id`` and
  ``duplicate_of_shot`` (its ``shot_index``), and how near they are: ``duplicate_cosine``, the
  cosine similarity of their nearest keyframes' CLIP embeddings when both shots have them (CLIP
  weights given), else ``duplicate_distance``, the bits between their nearest keyframes' hashes
  (:mod:`pipeline.dedup`); null otherwise.
* ``videos.parquet`` (:data:`VIDEO_SCHEMA`): one row per video with a result: status, duration,
  shot counts, its burned-in ``overlays`` (:mod:`pipeline.overlay`: box in fractions of the
  frame, text, how many shots show it) and its ``active_area`` (the picture inside letterbox or
  pillarbox bars, in fractions of the frame: :mod:`pipeline.picture`).
* ``rejects.parquet`` (:data:`REJECT_COLUMNS`): videos whose status is not ``ok``.
"""

from __future__ import annotations

import collections
import logging

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from multishot.dataset.shards import Manifest, ShardSetLayout, write_manifest
from multishot.dataset.storage import write_bytes, write_json
from multishot.config import dump_yaml
from multishot.pipeline.config import PipelineConfig
from multishot.pipeline.task import VideoTask
from multishot.pipeline.write import shard_settings, shard_source_id

log = logging.getLogger(__name__)

SHOT_COLUMNS = ["source", "source_id", "shot_index", "start_frame", "end_frame", "start_s", "end_s",
                "gap_before", "transition", "transition_start_frame", "transition_end_frame",
                "transition_start_s", "transition_end_s", "brightness", "ocr_text_ratio", "aesthetic",
                "motion", "black_fraction", "keyframe_hashes", "duplicate_of_source_id", "duplicate_of_shot",
                "duplicate_distance", "duplicate_cosine", "kept", "reason"]
OVERLAY_TYPE = pa.struct([("x0", pa.float64()), ("y0", pa.float64()), ("x1", pa.float64()), ("y1", pa.float64()),
                          ("text", pa.string()), ("shots", pa.int64()), ("shot_fraction", pa.float64())])
AREA_TYPE = pa.struct([("x0", pa.float64()), ("y0", pa.float64()), ("x1", pa.float64()), ("y1", pa.float64())])
VIDEO_SCHEMA = pa.schema([("source", pa.string()), ("source_id", pa.string()), ("status", pa.string()),
                          ("duration_s", pa.float64()), ("fps", pa.float64()), ("shots", pa.int64()),
                          ("shots_kept", pa.int64()), ("overlays", pa.list_(OVERLAY_TYPE)),
                          ("active_area", AREA_TYPE)])
REJECT_COLUMNS = ["source", "source_id", "status", "stage", "reason"]


def _write_table(fs: pafs.FileSystem, path: str, rows: list[dict], columns: list[str] | None = None,
                 schema: pa.Schema | None = None) -> None:
    if schema is not None:
        table = pa.Table.from_pylist(rows, schema=schema)
    else:
        table = pa.Table.from_pylist(rows) if rows else pa.table({c: pa.array([], pa.string()) for c in columns or []})
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf)
    write_bytes(fs, path, buf.getvalue().to_pybytes())  # whole, also on object storage


def finalize(
    fs: pafs.FileSystem,
    layout: ShardSetLayout,
    config: PipelineConfig,
    samples_hash: str,
    results: list[VideoTask],
    unreadable: list[dict],
    wall_s: float,
    this_run: dict,
) -> dict:
    """Write ``index/*.parquet`` (see the module docstring), ``manifest.json``, ``report.json`` and the resolved config;
    print and return the report (see :func:`summary`).

    ``results``: the trusted results of every video in the output folder
    (:func:`multishot.pipeline.write.trusted_results`); ``unreadable``: reject rows of inputs that
    never became a task; ``this_run``: counts of this run's inputs (``inputs``, ``processed``,
    ``usable``: ok or partial), kept in the report as ``this_run``.
    """
    samples = [row for r in results for row in r.index_rows]
    shots = [row for r in results for row in r.shot_rows()]
    rejects = unreadable + [r.reject_row() for r in results if r.status != "ok"]
    shards = sorted((s for r in results for s in r.shards), key=lambda s: s["name"])
    _write_table(fs, layout.samples_index, samples, ["key"])
    _write_table(fs, layout.shots_table, shots, SHOT_COLUMNS)
    _write_table(fs, layout.videos_table, [r.video_row() for r in results], schema=VIDEO_SCHEMA)
    _write_table(fs, layout.rejects_table, rejects, REJECT_COLUMNS)
    write_manifest(fs, layout, Manifest(kind="samples", samples_hash=samples_hash, shards=shards))
    # only now, with the new manifest in place: a reader never finds a listed shard missing
    _tidy_shards(fs, layout, {s["name"] for s in shards}, {r.source_id for r in results}, samples_hash)
    report = {**summary(config, results, unreadable, samples, shots, wall_s, this_run.get("source_s")),
              "this_run": this_run}
    write_json(fs, layout.report, report)
    write_bytes(fs, layout.resolved_config, dump_yaml(config).encode())
    print(format_report(report))
    return report


def _tidy_shards(fs: pafs.FileSystem, layout: ShardSetLayout, listed: set[str], indexed: set[str],
                 samples_hash: str) -> None:
    """Make ``shards/`` hold exactly the ``listed`` tars without deleting finished work: a tar
    of an ``indexed`` video made with these settings (``samples_hash`` in its name) that its
    result no longer lists is an older render of it (the video now has fewer shards) and is
    removed; any other unlisted tar (other settings among them) is moved to ``_work/set_aside/``."""
    if fs.get_file_info(layout.shards_dir).type != pafs.FileType.Directory:
        return
    for info in fs.get_file_info(pafs.FileSelector(layout.shards_dir)):
        name = info.path.rsplit("/", 1)[-1]
        if not name.endswith(".tar") or name in listed:
            continue
        if shard_source_id(name) in indexed and shard_settings(name) == samples_hash:
            log.info("removing shard %s: an older render of a video whose result lists its current shards", name)
            fs.delete_file(info.path)
        else:
            aside = f"{layout.work_dir}/set_aside"
            log.warning("moving shard %s to %s: no trusted result with these settings lists it", name, aside)
            fs.create_dir(aside, recursive=True)
            fs.move(info.path, f"{aside}/{name}")


def summary(config: PipelineConfig, results: list[VideoTask], unreadable: list[dict], samples: list[dict],
            shots: list[dict], wall_s: float, processed_s: float | None = None) -> dict:
    """The run report over the output folder's videos: inputs and rejects, shots by decision,
    samples per bucket, hours, speed.

    ``shots_removed`` counts shots not kept; ``shots_removed_by_reason`` counts reasons, and a
    shot failing several tests is under each (so the reasons may add up to more).
    ``sample_seconds_per_bucket``: the buckets are packed from the same footage independently
    (one shot may be in a 5 s and a 15 s sample), so ``sample_hours`` sums overlapping footage.
    ``realtime_factor``: source seconds of the videos processed in this run
    (``processed_s``) over the run's wall time; None when this run processed nothing (resumed)
    or ``processed_s`` is not given."""
    status = collections.Counter(r.status for r in results) + collections.Counter(u["status"] for u in unreadable)
    reasons = collections.Counter(reason for s in shots if s["reason"] for reason in s["reason"].split(","))
    source_s = sum(r.info.duration_s for r in results if r.info)
    stage_s, stage_cpu_s = collections.Counter(), collections.Counter()
    for r in results:
        stage_s.update(r.seconds)
        stage_cpu_s.update(r.cpu_seconds)
    passes = [len(r.decode) for r in results if r.alive]
    # which decoder each pass ran on (nvdec: the GPU's), and why a GPU pass fell back to the CPU
    decoders = collections.Counter(f"{stage}: {d.decoder}" for r in results for stage, d in r.decode.items())
    notes = sorted({f"{stage}: {d.note}" for r in results for stage, d in r.decode.items() if d.note})
    rejects = [*unreadable, *(r.reject_row() for r in results)]
    return {
        "videos_in": len(results) + len(unreadable),
        "videos_by_status": dict(status),
        "rejects": [{k: r[k] for k in ("source", "status", "stage", "reason")} for r in rejects if r["status"] != "ok"],
        "shots_found": len(shots),
        "shots_kept": sum(s["kept"] for s in shots),
        "shots_removed": sum(not s["kept"] for s in shots),
        "shots_removed_by_reason": dict(reasons),
        "overlays": [{"source": r.name, "text": o.text, "shot_fraction": o.shot_fraction}
                     for r in results for o in r.overlays],
        "samples": len(samples),
        "samples_per_bucket": dict(collections.Counter(s["bucket"] for s in samples)),
        "samples_by_shot_count": shot_count_distribution(samples),
        "sample_hours": sum(s["duration_s"] for s in samples) / 3600,
        "sample_seconds_per_bucket": dict(_per_bucket_seconds(samples)),
        "source_hours": source_s / 3600,
        "dropped_samples": [d for r in results for d in r.dropped_samples],
        "aesthetic": "scored" if config.analyse.aesthetic_enabled else "skipped (no weights in config)",
        "dedup": _dedup(config, results),
        "ocr_backend": config.analyse.ocr_backend,
        "captions": _captions(samples),
        "stage_seconds": dict(stage_s),
        "stage_cpu_seconds": dict(stage_cpu_s),
        "decode_passes_per_video": (sum(passes) / len(passes)) if passes else 0.0,
        "decoders": dict(decoders),
        "decoder_notes": notes,
        "wall_s": wall_s,
        "realtime_factor": processed_s / wall_s if processed_s and wall_s else None,
    }


def _dedup(config: PipelineConfig, results: list[VideoTask]) -> str:
    """Which near-duplicate test the analysed shots took part in (:mod:`pipeline.dedup`): by CLIP
    image embedding (shots with embeddings) or by keyframe pHash (the others)."""
    if not config.dedup.enabled:
        return "off"
    analysed = [row for r in results for row in r.shots if row.scores is not None]
    clip = sum(bool(row.keyframe_embeddings) for row in analysed)
    text = (f"{clip} analysed shots by CLIP image embedding (cosine >= {config.dedup.min_cosine}), "
            f"{len(analysed) - clip} by keyframe pHash (<= {config.dedup.max_distance} bits)")
    if clip:
        text += "; the embeddings are only as meaningful as analyse.clip_weights (random weights: meaningless)"
    return text


def _per_bucket_seconds(samples: list[dict]) -> collections.Counter:
    seconds: collections.Counter = collections.Counter()
    for s in samples:
        seconds[s["bucket"]] += s["duration_s"]
    return seconds
def shot_count_distribution(samples: list[dict]) -> dict[str, dict[str, int]]:
    """Per bucket, how many samples hold each number of shots: ``{bucket: {"1": n, "2": m, …}}``
    (keys are strings, as JSON keeps them), buckets and counts in order; so a user sees how many
    of the "multi-shot" samples hold one shot."""
    counts: dict[str, collections.Counter] = {}
    for s in samples:
        counts.setdefault(s["bucket"], collections.Counter())[int(s["num_shots"])] += 1
    return {bucket: {str(k): c[k] for k in sorted(c)} for bucket, c in sorted(counts.items())}


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
        f"this run         {report['this_run']['inputs']} inputs, {report['this_run']['processed']} processed, "
        f"{report['this_run']['usable']} usable",
        f"videos in        {report['videos_in']}  ({', '.join(f'{k} {v}' for k, v in sorted(report['videos_by_status'].items()))})",
        f"shots            {report['shots_found']} found, {report['shots_kept']} kept, {report['shots_removed']} removed"
        + (f"; reasons (a shot may have several): "
           f"{', '.join(f'{k} {v}' for k, v in sorted(report['shots_removed_by_reason'].items()))}"
           if report["shots_removed_by_reason"] else ""),
        *(f"overlay          {o['source'].rsplit('/', 1)[-1]}: {o['text']!r} in {o['shot_fraction']:.0%} of its shots"
          for o in report["overlays"]),
        f"samples          {report['samples']}  ({', '.join(f'{k}: {v}' for k, v in report['samples_per_bucket'].items())})",
        *(f"shots/sample     {bucket}: " + ", ".join(f"{n} shot{'s' if n != '1' else ''} ×{c}" for n, c in counts.items())
          for bucket, counts in report.get("samples_by_shot_count", {}).items()),
        f"footage          {report['source_hours'] * 3600:.1f} s in; samples per bucket "
        f"{', '.join(f'{k} {v:.1f} s' for k, v in report['sample_seconds_per_bucket'].items()) or 'none'} "
        "(buckets overlap: one shot may be in several)",
        f"aesthetic        {report['aesthetic']}",
        f"near-duplicates  {report['dedup']}",
        f"captions         {report['captions']}",
        f"wall time        {report['wall_s']:.1f} s  " + (
            f"({report['realtime_factor']:.2f}× realtime over the {report['this_run']['processed']} videos "
            "processed in this run)" if report["realtime_factor"] is not None else "(resumed: nothing processed)"),
    ]
    for r in report["rejects"]:
        lines.append(f"  {r['status']:<8} {r['source'].rsplit('/', 1)[-1]}: [{r['stage']}] {r['reason']}")
    return "\n".join(lines)
