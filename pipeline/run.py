"""The pipeline as a Ray Data chain: video files → shots → samples → WebDataset shards.

One row per source video (a :class:`~pipeline.task.VideoTask`); every stage maps a row to a row
(1:1), so a video's shards and its result file are written by the stage that renders it, and a
rerun can skip whole videos. Stage logic lives in the stage modules as plain functions and
classes; the wrappers here only load models once per Ray actor, time the stage, and turn a bad
input into a recorded rejection instead of a failed run.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from concurrent.futures import ThreadPoolExecutor

import pyarrow.fs as pafs
from tqdm import tqdm

from multishot.dataset.shards import TMP_SUFFIX, ShardSetLayout, resolve
from multishot.config import config_hash
from multishot.pipeline.config import PipelineConfig
from multishot.pipeline.discover import discover
from multishot.pipeline.filter import decide
from multishot.pipeline.index import finalize
from multishot.pipeline.pack import PackShot, pack_video
from multishot.pipeline.render import crop_rejection, render_samples
from multishot.pipeline.sample import plan_sample
from multishot.pipeline.task import ShotRow, VideoTask, fingerprint
from multishot.pipeline.video import DecodeStats, ProbeError, probe
from multishot.pipeline.write import load_result, save_result, write_samples

log = logging.getLogger(__name__)

#: a decode pass that ends this many seconds before the container's duration marks damage
TRUNCATION_SLACK_S = 1.0
#: what a TransNetV2 actor holds (model, a batch of windows' activations): measured 1.3 GiB
#: with 8 windows a batch; told to Ray so it does not over-pack actors on small nodes
DETECT_MEMORY_BYTES = int(1.5 * 2**30)


def samples_hash(config: PipelineConfig) -> str:
    """Hash of the settings that decide the samples: not input and output, not where and how
    wide stages run (Ray, actors, batch sizes), nor the captioning settings (captions of
    finished shards are added by ``multishot annotate``)."""
    placement = {"num_actors": 1, "num_cpus": 1.0, "num_gpus": 0.0, "batch_windows": 8}
    neutral = {
        "input": None, "output": None, "ray": type(config.ray)(), "annotate": type(config.annotate)(),
        "detect": config.detect.model_copy(update=placement),
        "analyse": config.analyse.model_copy(update={"num_actors": 1}),
    }
    return config_hash(config.model_copy(update=neutral))


def _guarded(stage: str):
    """Make ``fn(task)`` (or ``method(self, task)``) a row → row stage that runs on live tasks
    only, is timed, and records a bad input (rejected) or an unexpected exception (error)."""

    def wrap(fn):
        def run(*args):
            *owner, row = args
            task = VideoTask.from_row(row)
            if task.alive:
                with task.timed(stage):
                    try:
                        fn(*owner, task)
                    except ProbeError as err:
                        task.fail(stage, str(err))
                    except Exception as err:  # noqa: BLE001 - one bad video must not end the run
                        log.warning("%s failed on %s:\n%s", stage, task.source, traceback.format_exc())
                        task.fail(stage, f"{type(err).__name__}: {err}", status="error")
            return task.to_row()

        return run

    return wrap


def probe_stage(row: dict, config: PipelineConfig) -> dict:
    """1:1. Container facts (duration, fps, frames, size, codec); unopenable files, and sources
    whose aspect ratio the render crop would mutilate, are rejected."""

    @_guarded("probe")
    def run(task: VideoTask) -> None:
        fs, path = resolve(task.source)
        task.info = probe(path, fs)
        if reason := crop_rejection(task.info, config.render):
            task.fail("probe", reason)

    return run(row)


def _note_damage(task: VideoTask, stats: DecodeStats) -> None:
    """Mark a video decoded only in part as ``partial`` with what was lost (it is still used)."""
    notes = []
    if task.info and stats.last_time_s < task.info.duration_s - TRUNCATION_SLACK_S:
        notes.append(f"decoding stopped at {stats.last_time_s:.2f} s of {task.info.duration_s:.2f} s")
    if stats.errors:
        notes.append(f"{stats.errors} undecodable packets skipped ({stats.last_error})")
    if notes:
        task.fail(task.stage or "detect", "; ".join(notes), status="partial")


class DetectStage:
    """Actor pool stage, one detector model per actor (GPU when Ray gives the actor one)."""

    def __init__(self, config: PipelineConfig):
        from multishot.pipeline.detect import make_detector

        self.detector = make_detector(config.detect)

    @_guarded("detect")
    def __call__(self, task: VideoTask) -> None:
        fs, path = resolve(task.source)
        stats = task.decode.setdefault("detect", DecodeStats())
        shots = self.detector.detect(path, fs, task.info.fps, stats)
        _note_damage(task, stats)
        if not shots:
            task.fail("detect", f"no shots found ({stats.frames} frames decoded)")
            return
        task.shots = [ShotRow(shot, None) for shot in shots]


class AnalyseStage:
    """Actor pool stage: OCR (and CLIP when weights are given) loaded once per actor."""

    def __init__(self, config: PipelineConfig):
        from multishot.pipeline.analyse import ShotAnalyser

        self.config = config
        self.analyser = ShotAnalyser(config.analyse)

    @_guarded("analyse")
    def __call__(self, task: VideoTask) -> None:
        fs, path = resolve(task.source)
        stats = task.decode.setdefault("analyse", DecodeStats())
        scores = self.analyser.analyse(path, fs, task.info.fps, [r.shot for r in task.shots], stats)
        for shot_row, score in zip(task.shots, scores):
            shot_row.scores = score
            shot_row.reason = decide(score, self.config.filter)


def pack_stage(row: dict, config: PipelineConfig) -> dict:
    """1:1, pure: filter decisions → packed samples per bucket."""

    @_guarded("pack")
    def run(task: VideoTask) -> None:
        shots = [PackShot(i, r.shot.start_frame, r.shot.end_frame, r.kept, r.shot.gap_before) for i, r in enumerate(task.shots)]
        task.samples = pack_video(shots, config.pack, task.info.fps, config.render.fps)

    return run(row)


class RenderWriteStage:
    """1:1: render every sample of a video from one decode pass, caption it when a Gemini key
    is configured, write its shards and result."""

    def __init__(self, config: PipelineConfig, samples_hash: str):
        from multishot.annotate.captioner import Captioner

        self.config = config
        self.hash = samples_hash
        self.fs, root = resolve(config.output)
        self.layout = ShardSetLayout(root)
        self.captioner = Captioner.from_env(config.annotate, cache_dir=f"{self.layout.work_dir}/captions")

    def __call__(self, row: dict) -> dict:
        row = self._render_write(row)
        save_result(VideoTask.from_row(row), self.fs, self.layout, self.hash)
        return row

    @_guarded("render")
    def _render_write(self, task: VideoTask) -> None:
        if not task.samples:
            return
        planned = [plan_sample(task, sample, self.config, self.hash) for sample in task.samples]
        fs, path = resolve(task.source)
        stats = task.decode.setdefault("render", DecodeStats())
        rendered = render_samples(path, fs, task.info, [job for _, job in planned], self.config.render, stats)
        done = []
        for (record, _), result in zip(planned, rendered):
            if result.mp4 is None:
                task.dropped_samples.append({"key": record.key, "reason": result.error})
            else:
                done.append((record.model_copy(update={"damaged_frames": result.substituted}), result.mp4))
        if self.captioner is not None:
            with task.timed("annotate"), ThreadPoolExecutor(self.config.annotate.concurrency) as pool:
                records = pool.map(lambda pair: self.captioner.annotate(*pair), done)
                done = [(record, mp4) for record, (_, mp4) in zip(records, done)]
        with task.timed("write"):
            write_samples(task, done, self.fs, self.layout, self.config.write.max_samples_per_shard)


def _init_ray(config: PipelineConfig) -> bool:
    """Connect to Ray; returns True when this call started a private local Ray (to shut down).

    A private local Ray is kept on loopback: Ray's "no cluster" mode
    (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, read when ray is first imported) makes it use
    127.0.0.1 as the node address, where ``ray.init(_node_ip_address="127.0.0.1")`` would be
    rewritten to the machine's external address.
    """
    address = config.ray.address or os.environ.get("RAY_ADDRESS")
    if not address:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, log_to_driver=True)
        return False
    ray.init(num_cpus=config.ray.num_cpus, include_dashboard=False)
    return True


def _clean_temporaries(fs: pafs.FileSystem, layout: ShardSetLayout) -> int:
    """Delete temporary files a killed run left behind; returns how many."""
    removed = 0
    for folder in (layout.shards_dir, layout.work_dir):
        if fs.get_file_info(folder).type != pafs.FileType.Directory:
            continue
        for info in fs.get_file_info(pafs.FileSelector(folder)):
            if info.path.endswith(TMP_SUFFIX):
                fs.delete_file(info.path)
                removed += 1
    return removed


def run_pipeline(config: PipelineConfig, progress: bool = True) -> dict:
    """Run every stage over ``config.input`` into ``config.output``; return the run report.

    Videos whose result file exists for the same sample settings are skipped (resume). Raises:
        pipeline.discover.InputError: the input names no videos.
        ValueError: no output given.
    """
    if not config.input or not config.output:
        raise ValueError("both input and output are needed (config keys 'input'/'output' or --input/--output)")
    start = time.time()
    sources = discover(config.input, config.extensions)
    fs, root = resolve(config.output)
    layout = ShardSetLayout(root)
    fs.create_dir(layout.work_dir, recursive=True)
    removed = _clean_temporaries(fs, layout)
    if removed:
        log.info("removed %d temporary files left by an interrupted run", removed)
    chash = samples_hash(config)

    tasks, unreadable, seen = [], [], {}
    for source in sources:
        sfs, path = resolve(source)
        try:
            source_id = fingerprint(sfs, path)
        except OSError as err:
            unreadable.append({"source": source, "source_id": "", "status": "rejected", "stage": "discover", "reason": f"cannot read: {err}"})
            continue
        if source_id in seen:
            unreadable.append({"source": source, "source_id": source_id, "status": "rejected", "stage": "discover", "reason": f"duplicate of {seen[source_id]}"})
            continue
        seen[source_id] = source
        tasks.append(VideoTask(source, source_id))
    todo = [t for t in tasks if load_result(fs, layout, t.source_id, chash) is None]
    log.info("%d videos: %d to process, %d already done", len(tasks), len(todo), len(tasks) - len(todo))
    if not config.analyse.aesthetic_enabled:
        log.warning("aesthetic: skipped (no clip_weights / aesthetic_head_weights in the config); "
                    "every sample is marked aesthetic_status=skipped")

    if todo:
        _run_ray(config, chash, todo, progress)
    results = [load_result(fs, layout, t.source_id, chash) for t in tasks]
    return finalize(fs, layout, config, chash, [r for r in results if r], unreadable, time.time() - start)


def _run_ray(config: PipelineConfig, chash: str, todo: list[VideoTask], progress: bool) -> None:
    import ray

    started = _init_ray(config)
    try:
        _execute(config, chash, todo, progress)
    finally:
        if started:
            ray.shutdown()


def _execute(config: PipelineConfig, chash: str, todo: list[VideoTask], progress: bool) -> None:
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # one bar over videos below instead of one per operator
    ctx.execution_options.preserve_order = False

    pool, tasks = ray.data.ActorPoolStrategy, ray.data.TaskPoolStrategy
    ds = ray.data.from_items([t.to_row() for t in todo], override_num_blocks=len(todo))
    # 1:1, reads headers only: reserves no core, and two at a time are plenty
    ds = ds.map(probe_stage, fn_kwargs={"config": config}, num_cpus=0, compute=tasks(size=2))
    ds = ds.map(  # 1:1, actor pool: the TransNetV2 model loads once per actor
        DetectStage, fn_constructor_args=(config,), compute=pool(size=config.detect.num_actors),
        num_cpus=config.detect.num_cpus, num_gpus=config.detect.num_gpus,
        memory=DETECT_MEMORY_BYTES,
    )
    ds = ds.map(  # 1:1, actor pool: OCR (+ CLIP) models load once per actor; light, shares a core
        AnalyseStage, fn_constructor_args=(config,), compute=pool(size=config.analyse.num_actors), num_cpus=0.5
    )
    ds = ds.map(pack_stage, fn_kwargs={"config": config}, num_cpus=0, compute=tasks(size=2))  # 1:1, pure, quick
    ds = ds.map(  # 1:1: decode once, encode every sample, write shards + the resume marker
        RenderWriteStage, fn_constructor_args=(config, chash), compute=pool(min_size=1, max_size=2), num_cpus=0.5
    )
    with tqdm(total=len(todo), desc="videos", unit="video", disable=not progress) as bar:
        for row in ds.iter_rows():
            task = VideoTask.from_row(row)
            bar.set_postfix_str(f"{task.status}: {os.path.basename(task.source)}")
            bar.update()
