"""The stages of the main job, declared once as a list, and a runner for them without Ray.

One row per source video (a :class:`~multishot.pipeline.task.VideoTask`); every stage maps a
task to a task (1:1), so a video's shards and its resume marker are written by the last stage
and a rerun can skip whole videos. A stage is a factory called once per worker (it loads the
models a Ray actor keeps) that returns the per-video function; :func:`apply` runs that function
on live tasks only, times it, and turns a bad input into a recorded rejection and an unexpected
exception into an ``error`` status instead of a failed run (webdataset's ``handler=`` policy).

``pipeline/run.py`` maps :data:`STAGES` onto a Ray Data chain; :func:`run_sequential` runs the
same list in this process (tests, debugging: ``ray.runner: sequential``). Each stage's Ray
resources are its config section's ``resources`` (Cosmos-Curate's stage spec). Within the
detect stage a video fans out: its segments go to a pool of scanning actors
(:mod:`pipeline.scan`) and come back stitched, so the chain stays one row per video.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import pyarrow.fs as pafs

from multishot.dataset.shards import ShardSetLayout
from multishot.dataset.storage import resolve
from multishot.pipeline.analyse import shot_scores
from multishot.pipeline.config import PipelineConfig, Resources
from multishot.pipeline.dedup import dedup_stage, shot_embeddings, shot_hashes
from multishot.pipeline.detect import min_shot_frames, shots_of
from multishot.pipeline.filter import decide
from multishot.pipeline.overlay import find_overlays, is_overlay, ratio_without_overlays, shows_overlay
from multishot.pipeline.pack import PackShot, pack_video
from multishot.pipeline.picture import ActiveArea, black_frames, detect_active_area, trimmed_shot
from multishot.pipeline.render import crop_rejection, render_samples
from multishot.pipeline.sample import plan_sample
from multishot.pipeline.source_stamp import change_problem
from multishot.pipeline.task import RenderedSample, ShotRow, VideoTask
from multishot.pipeline.scan import (LocalScans, RayScans, ScanJob, SegmentStore, plan_segments, scan_hash, stitch,
                                     stitch_picture)
from multishot.pipeline.decode import DecodeStats, ProbeError, analysis_size, probe
from multishot.pipeline.stage_progress import report
from multishot.pipeline.write import save_result, write_samples

log = logging.getLogger(__name__)

#: a decode pass that ends this many seconds before the container's duration marks damage
TRUNCATION_SLACK_S = 1.0

Process = Callable[[VideoTask], None]


@dataclass(frozen=True)
class Stage:
    """One step of the chain.

    ``setup(config, samples_hash)`` runs once per worker and returns the per-video function;
    ``section`` names the config section whose ``resources`` place it; ``actor`` stages
    run as a Ray actor pool (models, clients and heavy imports set up once per actor), the
    others as Ray tasks;
    ``every_task`` stages also see rejected tasks (the writer saves their result);
    ``scans`` stages get the pool of segment-scanning actors (``setup(config, samples_hash,
    scans)``) and run as light Ray tasks that wait on it;
    a ``barrier`` stage's function takes every live video of the run at once (a list), after all
    of them passed the stages before it: it runs in the driver, where the chain is cut in two.
    """

    name: str
    setup: Callable[..., Process]
    section: str
    actor: bool = False
    every_task: bool = False
    scans: bool = False
    barrier: bool = False

    def resources(self, config: PipelineConfig) -> Resources:
        return getattr(config, self.section).resources


def apply(stage: Stage, process: Process, task: VideoTask) -> VideoTask:
    """Run ``process`` on ``task`` under ``stage``'s failure policy (see the module docstring)."""
    if task.alive or stage.every_task:
        with task.timed(stage.name):
            try:
                process(task)
            except ProbeError as err:
                task.fail(stage.name, str(err))
            except Exception as err:  # noqa: BLE001 - one bad video must not end the run
                log.warning("%s failed on %s:\n%s", stage.name, task.name, traceback.format_exc())
                task.fail(stage.name, f"{type(err).__name__}: {err}", status="error")
    report(stage.name, task)  # per-stage progress (pipeline/stage_progress.py)
    return task


def apply_barrier(stage: Stage, process: Callable[[list[VideoTask]], None], tasks: list[VideoTask]) -> list[VideoTask]:
    """Run a barrier stage's ``process`` on the live ones of ``tasks`` (each is charged an equal
    share of its time); an unexpected exception sets every live task's status to ``error``."""
    import time

    live = [t for t in tasks if t.alive]
    start, cpu = time.perf_counter(), time.process_time()
    try:
        process(live)
    except Exception as err:  # noqa: BLE001 - recorded on each video; a rerun retries them
        log.warning("%s failed:\n%s", stage.name, traceback.format_exc())
        for task in live:
            task.fail(stage.name, f"{type(err).__name__}: {err}", status="error")
    for task in live:
        task.seconds[stage.name] = (time.perf_counter() - start) / len(live)
        task.cpu_seconds[stage.name] = (time.process_time() - cpu) / len(live)
    for task in tasks:
        report(stage.name, task)
    return tasks


def phases(stages: list[Stage]) -> list[list[Stage]]:
    """``stages`` cut before and after each barrier stage: runs of per-video stages, and each
    barrier alone."""
    cut: list[list[Stage]] = [[]]
    for stage in stages:
        if stage.barrier:
            cut += [[stage], []]
        else:
            cut[-1].append(stage)
    return [p for p in cut if p]


def _probe(config: PipelineConfig, samples_hash: str) -> Process:
    def process(task: VideoTask) -> None:
        fs, path = resolve(task.source)
        task.info = probe(path, fs)
        # a source whose aspect ratio the render crop would mutilate is rejected up front
        if reason := crop_rejection(task.info, config.render):
            task.fail("probe", reason)
            return
        # the picture inside letterbox / pillarbox bars: scored, checked and rendered from here on
        task.active_area = detect_active_area(path, fs, task.info, config.detect, config.analyse.analysis_short_side)

    return process


def _note_damage(task: VideoTask, stage: str, stats: DecodeStats) -> None:
    """Mark a video decoded only in part as ``partial`` with what was lost (it is still used)."""
    notes = []
    if task.info and stats.last_time_s < task.info.duration_s - TRUNCATION_SLACK_S:
        notes.append(f"decoding stopped at {stats.last_time_s:.2f} s of {task.info.duration_s:.2f} s")
    if stats.errors:
        notes.append(f"{stats.errors} undecodable packets skipped ({stats.last_error})")
    if notes:
        task.fail(task.stage or stage, "; ".join(notes), status="partial")


def _detect(config: PipelineConfig, samples_hash: str, scans: LocalScans | RayScans | None = None) -> Process:
    """A video → its shots and candidate scores: its segments not on record yet are scanned
    by ``scans`` (a Ray actor pool, or this process), then all are stitched."""
    fs, root = resolve(config.output)
    work_dir = ShardSetLayout(root).work_dir
    settings = scan_hash(config)
    scans = scans or LocalScans(config)

    def process(task: VideoTask) -> None:
        info = task.info
        store = SegmentStore.of_video(fs, work_dir, task.source_id, settings)
        segments = plan_segments(info.num_frames, info.fps, config)
        size = analysis_size(info, config.analyse.analysis_short_side)
        area = task.active_area or ActiveArea()
        todo = [ScanJob(task.source, info.fps, s, size, config.output, store.dir, area)
                for s in segments if store.load(s) is None]  # finished segments are resume points
        fresh = list(scans.run(todo))
        # the scanning actors' CPU (this process only waits): what the stage cost
        task.cpu_seconds["detect"] = task.cpu_seconds.get("detect", 0.0) + sum(r.cpu_s for r in fresh)
        results = [store.load(s) for s in segments]
        if None in results:
            raise RuntimeError(f"segment results missing after the scan: {[s.name for s, r in zip(segments, results) if r is None]}")
        single, many, candidates, stats = stitch(results)
        task.decode["detect"] = stats
        _note_damage(task, "detect", stats)
        black, luma, thumbs = stitch_picture(results)
        shots = shots_of(config.detect, single, many, info.fps, thumbs if len(thumbs) == len(single) else None)
        if not shots:
            task.fail("detect", f"no shots found ({stats.frames} frames decoded)")
            return
        # every detected shot goes on record; a too-short one is never analysed or packed
        task.shots = _trim_black(shots, black, luma, config, info.fps)
        task.candidates, task.analysis_size = candidates, size

    return process


def _trim_black(shots: list, black_ratio, luma, config: PipelineConfig, fps: float) -> list[ShotRow]:
    """The shot rows of detected ``shots``: each shot's fades from and to black trimmed off
    (the frames become a gradual transition), its black fraction measured, and ``black`` as
    its reason when too little is left or too much is black (:mod:`pipeline.picture`)."""
    rows = []
    if len(black_ratio) < max((s.end_frame for s in shots), default=0):  # no per-frame darkness
        return [ShotRow(shot=shot, reason="too_short" if shot.too_short else "") for shot in shots]
    black = black_frames(black_ratio, config.detect)
    shortest = min_shot_frames(config.detect, fps)
    for shot in shots:
        if shot.too_short:
            rows.append(ShotRow(shot=shot, reason="too_short"))
            continue
        # nothing but black and fades: kept whole on record, removed
        shot, too_little = trimmed_shot(shot, black, luma, config.detect, shortest)
        reason = "black" if too_little else ""
        fraction = float(black[shot.start_frame:shot.end_frame].mean())
        if not reason and fraction > config.filter.max_black_fraction:
            reason = "black"
        rows.append(ShotRow(shot=shot, black_fraction=fraction, reason=reason))
    return rows


def _analyse(config: PipelineConfig, samples_hash: str) -> Process:
    def process(task: VideoTask) -> None:
        rows = [r for r in task.shots if not r.shot.too_short]
        by_index = {c.index: c for c in task.candidates}
        order = sorted(by_index)
        for shot_row in rows:
            shot_row.scores = shot_scores(shot_row.shot, by_index, order, config.analyse)
            shot_row.keyframe_hashes = shot_hashes(shot_row.shot, by_index, order)
            shot_row.keyframe_embeddings = shot_embeddings(shot_row.shot, by_index, order,
                                                           config.analyse.frames_per_shot)
        _overlays(task, rows, config)
        task.candidates = []  # per-shot now; keeps the result file small

    return process


def _overlays(task: VideoTask, rows: list[ShotRow], config: PipelineConfig) -> None:
    """Once all shots of a video are scored: find its burned-in overlays, apply
    ``analyse.overlay.action`` (:mod:`pipeline.overlay`) and decide each shot."""
    settings = config.analyse.overlay
    task.overlays = find_overlays([r.scores.text_boxes for r in rows], settings)
    for row in rows:
        scores = row.scores
        if task.overlays and settings.action != "record":
            ratio = ratio_without_overlays(scores.text_boxes, task.overlays, settings.min_iou)
            scores = replace(scores, ocr_text_ratio=ratio if scores.ocr_text_ratio is not None else None)
            row.scores = scores
        # detection's own reasons (black) stay
        reasons = [r for r in row.reason.split(",") if r] + [r for r in decide(scores, config.filter).split(",") if r]
        if settings.action == "reject" and shows_overlay(scores.text_boxes, task.overlays, settings.min_iou):
            reasons.append("overlay")
        # a title or credit, whatever its area (pipeline.analyse.title_boxes); overlays keep their rule
        leave = task.overlays if settings.action != "record" else []
        if "text" not in reasons and any(not is_overlay(b, leave, settings.min_iou) for b in scores.title_boxes):
            reasons.append("text")
        row.reason = ",".join(reasons)


def _pack(config: PipelineConfig, samples_hash: str) -> Process:
    def process(task: VideoTask) -> None:
        shots = [PackShot(i, r.shot.start_frame, r.shot.end_frame, r.kept, r.shot.gap_before)
                 for i, r in enumerate(task.shots)]
        task.samples = pack_video(shots, config.pack, task.info.fps, config.render.fps)

    return process


def _render(config: PipelineConfig, samples_hash: str) -> Process:
    def process(task: VideoTask) -> None:
        if not task.samples:
            return
        planned = [plan_sample(task, sample, config, samples_hash) for sample in task.samples]
        fs, path = resolve(task.source)
        stats = task.decode.setdefault("render", DecodeStats())
        rendered = render_samples(path, fs, task.info, [job for _, job in planned], config.render, stats,
                                  area=task.active_area)
        for (record, _), result in zip(planned, rendered):
            if result.mp4 is None:
                task.dropped_samples.append({"key": record.key, "reason": result.error})
            else:
                record = record.model_copy(update={"damaged_frames": result.substituted})
                task.rendered.append(RenderedSample(record=record, mp4=result.mp4))

    return process


def _caption(config: PipelineConfig, samples_hash: str) -> Process:
    """Captions from ``caption.source`` (joined by source video and time span), then from the
    captioning backend for the samples still pending, when its credentials are set."""
    from multishot.annotate.caption_source import CaptionSource, join_captions
    from multishot.annotate.captioner import Captioner

    layout = ShardSetLayout(resolve(config.output)[1])
    source = CaptionSource.read(config.caption.source) if config.caption.source else None
    captioner = Captioner.from_env(config.annotate, cache_dir=f"{layout.work_dir}/captions")

    def process(task: VideoTask) -> None:
        if source is not None:
            for rendered in task.rendered:
                record, why = join_captions(rendered.record, source, config.caption.min_overlap)
                rendered.record = record if why is None else record.model_copy(update={"caption_error": why})
        pending = [r for r in task.rendered if r.record.caption_status != "ok"]
        if captioner is None or not pending:
            return  # no credentials (Gemini key, api_key_env): samples stay caption_status=pending
        with ThreadPoolExecutor(config.annotate.concurrency) as pool:
            records = list(pool.map(lambda r: captioner.annotate(r.record, r.mp4), pending))
        for rendered, record in zip(pending, records):
            rendered.record = record

    return process


def _write(config: PipelineConfig, samples_hash: str) -> Process:
    fs, root = resolve(config.output)
    layout = ShardSetLayout(root)

    settings = scan_hash(config)

    def process(task: VideoTask) -> None:
        task.samples_hash = samples_hash
        if problem := change_problem(task):
            # what the stages read is not the file its id names: no shards, no result file and
            # no segment resume points, so the next run redoes it from its current bytes
            task.fail("write", problem, status="error")
            task.rendered = []
            store = SegmentStore.of_video(fs, layout.work_dir, task.source_id, settings)
            if fs.get_file_info(store.dir).type == pafs.FileType.Directory:
                fs.delete_dir(store.dir)
            log.warning("%s: %s", task.name, problem)
            return
        if task.alive:
            write_samples(task, fs, layout, config.write.max_samples_per_shard)
        task.rendered = []
        save_result(task, fs, layout)  # last: the marker a rerun trusts

    return process


#: The chain, top to bottom: every stage is 1:1 (one video in, the same video out).
STAGES: list[Stage] = [
    # 1:1, container facts from headers only: reserves no core, two at a time are plenty
    Stage("probe", _probe, "probe"),
    # 1:1, the one decode for detection and analysis: the video's segments go to a pool of
    # scanning actors (TransNetV2 + OCR (+ CLIP) loaded once each, placed by detect.resources;
    # most of the CPU work), finished segments are resume points; this task only waits: no core
    Stage("detect", _detect, "detect", scans=True),
    # 1:1, per-shot scores from the scan's candidate frames (shots not too short), the video's
    # burned-in overlays from their OCR boxes, then the filter: no core reserved
    Stage("analyse", _analyse, "analyse"),
    # all videos at once, in the driver: near-duplicate shots across the run and the output's
    # earlier runs (pipeline/dedup.py); Ray Data's chain is cut here
    Stage("dedup", dedup_stage, "dedup", barrier=True),
    # 1:1, pure arithmetic on the shot list: no core reserved
    Stage("pack", _pack, "pack"),
    # 1:1, one decode pass, x264 per sample (mp4 bytes ride in the task): half a core each
    Stage("render", _render, "render"),
    # 1:1, joins caption.source, then waits on Gemini (a client per actor, its cache on the
    # output) for what it left pending: no core reserved
    Stage("caption", _caption, "caption", actor=True),
    # 1:1, shards then the resume marker; sees rejected videos too so their result is recorded;
    # an actor: webdataset (which imports torch, 2 CPU-s) is imported once, at the first shard
    Stage("write", _write, "write", actor=True, every_task=True),
]


def run_sequential(config: PipelineConfig, samples_hash: str, tasks: Iterable[VideoTask],
                   stages: list[Stage] = STAGES) -> Iterator[VideoTask]:
    """Run ``stages`` over ``tasks`` in this process, one video at a time; yields finished tasks.
    With a barrier stage every video passes the stages before it first."""
    cut = phases(stages)
    for k, phase in enumerate(cut):
        processes = [(stage, stage.setup(config, samples_hash)) for stage in phase]
        if phase[0].barrier:
            tasks = apply_barrier(phase[0], processes[0][1], list(tasks))
            continue
        done = (_through(processes, task) for task in tasks)
        tasks = done if k == len(cut) - 1 else list(done)
    yield from tasks


def _through(processes: list[tuple[Stage, Process]], task: VideoTask) -> VideoTask:
    for stage, process in processes:
        apply(stage, process, task)
    return task
