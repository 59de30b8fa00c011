"""The main job: discover sources, run :data:`~multishot.pipeline.stages.STAGES` over the
videos not done yet (a Ray Data chain, or in this process with ``ray.runner: sequential``), then
write the index, manifest and report over every finished video in the output folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator

import pyarrow.fs as pafs
from tqdm import tqdm

from multishot.dataset.shards import ShardSetLayout
from multishot.dataset.storage import TMP_SUFFIX, resolve, storage_error
from multishot.pipeline.config import DetectConfig, PipelineConfig
from multishot.pipeline.discover import discover, encode_uri
from multishot.pipeline.index import finalize
from multishot.pipeline.scan import RayScans
from multishot.pipeline.stages import STAGES, Stage, apply, apply_barrier, phases, run_sequential
from multishot.pipeline.source_stamp import SourceChanged, fingerprint_stamped
from multishot.pipeline.task import VideoTask
from multishot.pipeline.write import last_manifest, load_result, trusted_results

log = logging.getLogger(__name__)


class OutputError(ValueError):
    """``--output`` cannot hold a shard set (a file, under a file, not writable)."""


def compute_samples_hash(config: PipelineConfig) -> str:
    """16 hex digits of sha256 over the settings that decide the samples: every stage's
    settings except where and how wide it runs (every section's ``resources``,
    :attr:`DetectConfig.PLACEMENT`),
    and not input, output, extensions, Ray, or the captioning settings (captions of finished shards are
    added by ``multishot annotate``)."""
    parts = config.model_dump(mode="json", exclude={"input", "output", "extensions", "ray", "annotate", "probe", "caption"})
    for section in parts.values():
        if isinstance(section, dict):
            section.pop("resources", None)
    for placement in DetectConfig.PLACEMENT:
        parts["detect"].pop(placement, None)
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _prepare_output(config: PipelineConfig) -> tuple[pafs.FileSystem, ShardSetLayout]:
    """The output's filesystem and layout, its ``_work/`` created and found writable.

    Raises:
        OutputError: the output is a file, lies under a file, or cannot be written.
    """
    try:
        fs, root = resolve(config.output)
        layout = ShardSetLayout(root)
        fs.create_dir(layout.work_dir, recursive=True)
        probe_file = f"{layout.work_dir}/.writable{TMP_SUFFIX}"
        with fs.open_output_stream(probe_file) as out:
            out.write(b"")
        fs.delete_file(probe_file)
    except (OSError, ValueError) as err:
        raise OutputError(f"output {config.output!r} cannot hold a shard set: {storage_error(err)}") from None
    return fs, layout


def _as_given(output: str, fs: pafs.FileSystem, path: str) -> str:
    """A layout path in the form the user gave the output (local path, or URI with its query)."""
    if "://" not in output:
        return path
    scheme, query = output.split("://", 1)[0], output.partition("?")[2]
    return f"{scheme}://{path}" + (f"?{query}" if query else "")


def _clean_temporaries(fs: pafs.FileSystem, layout: ShardSetLayout) -> int:
    """Delete temporary files a killed run (or a full disk) left behind: in the set's root,
    ``shards/``, ``index/`` and all of ``_work/``; returns how many."""
    removed = 0
    index_dir = layout.samples_index.rsplit("/", 1)[0]
    for folder, recursive in ((layout.root, False), (layout.shards_dir, False), (index_dir, False),
                              (layout.work_dir, True)):
        if fs.get_file_info(folder).type != pafs.FileType.Directory:
            continue
        for info in fs.get_file_info(pafs.FileSelector(folder, recursive=recursive)):
            if info.type == pafs.FileType.File and info.path.endswith(TMP_SUFFIX):
                fs.delete_file(info.path)
                removed += 1
    return removed


def _tasks(sources: list[str]) -> tuple[list[VideoTask], list[dict]]:
    """One task per readable, distinct source; reject rows for the others (one bad name or
    unreadable file never stops the run)."""
    tasks, rejected, seen = [], [], {}
    for source in sources:
        try:
            sfs, path = resolve(source)
            source_id, stamp = fingerprint_stamped(sfs, path)
        except SourceChanged as err:  # being written now: not recorded, tried again next run
            rejected.append({"source": source, "source_id": "", "status": "error", "stage": "discover",
                             "reason": str(err)})
            continue
        except (OSError, ValueError) as err:
            rejected.append({"source": source, "source_id": "", "status": "rejected", "stage": "discover",
                             "reason": f"cannot read: {err}"})
            continue
        if source_id in seen:
            rejected.append({"source": source, "source_id": source_id, "status": "rejected", "stage": "discover",
                             "reason": f"duplicate of {seen[source_id]}"})
            continue
        seen[source_id] = source
        tasks.append(VideoTask(source=source, source_id=source_id, source_stamp=stamp))
    return tasks, rejected


def run_pipeline(config: PipelineConfig, progress: bool = True) -> dict:
    """Run every stage over ``config.input`` into ``config.output``; return the run report.

    Videos with a trusted result for the same sample settings are skipped (resume), except those
    that ended in ``error``. The index
    covers every finished video in the output folder, from this run or earlier ones.

    Raises:
        pipeline.discover.InputError: the input names no videos.
        OutputError: the output cannot hold a shard set.
        ValueError: no input or output given.
    """
    import time

    if not config.input or not config.output:
        raise ValueError("both input and output are needed (config keys 'input'/'output' or --input/--output)")
    start = time.time()
    config = config.model_copy(update={"output": encode_uri(config.output)})  # keys with spaces stay parseable
    fs, layout = _prepare_output(config)
    written = [layout.shards_dir, layout.work_dir, layout.samples_index.rsplit("/", 1)[0]]
    sources = discover(config.input, config.extensions, exclude=[_as_given(config.output, fs, p) for p in written])
    removed = _clean_temporaries(fs, layout)
    if removed:
        log.info("removed %d temporary files left by an interrupted run", removed)
    samples_hash = compute_samples_hash(config)
    manifest = last_manifest(fs, layout)

    tasks, unreadable = _tasks(sources)
    # a video that failed unexpectedly (status error: a bug, a full disk) is retried on a rerun
    todo = [t for t in tasks if getattr(load_result(fs, layout, t.source_id, samples_hash, manifest), "status", "error") == "error"]
    log.info("%d videos: %d to process, %d already done", len(tasks), len(todo), len(tasks) - len(todo))
    if not config.analyse.aesthetic_enabled:
        log.warning("aesthetic: skipped (no clip_weights / aesthetic_head_weights in the config); "
                    "every sample is marked aesthetic_status=skipped")
    if config.dedup.enabled:
        log.info("near-duplicates: %s", (
            f"by the CLIP image embeddings of {config.analyse.clip_weights} (cosine >= {config.dedup.min_cosine}; "
            "only as meaningful as those weights: random test weights make it meaningless), by keyframe pHash "
            "for shots of earlier results without embeddings" if config.analyse.aesthetic_enabled else
            f"by keyframe pHash (<= {config.dedup.max_distance} bits): no CLIP weights in the config"))

    finished = []
    if todo:
        runner = run_sequential(config, samples_hash, todo) if config.ray.runner == "sequential" else _run_ray(config, samples_hash, todo)
        from multishot.pipeline.progress import Throughput
        from multishot.pipeline.stage_progress import StageBars, start_board

        start_board()  # the local board (sequential); under Ray, _execute makes the job's
        speed = Throughput()
        with tqdm(total=len(todo), desc="videos", unit="video", disable=not progress) as bar, \
                StageBars([s.name for s in STAGES], len(todo), enabled=None if progress else False):
            for task in runner:
                finished.append(task)
                speed.add(task)
                bar.set_postfix_str(speed.postfix(task))
                bar.update()
    results = trusted_results(fs, layout, samples_hash, manifest, fresh={t.source_id for t in finished})
    # a video whose result could not be written (its write failed) is reported, and redone next run
    saved = {r.source_id for r in results}
    unreadable += [t.reject_row() for t in finished if t.source_id not in saved]
    status = {r.source_id: r.status for r in results}
    this_run = {"inputs": len(sources), "processed": len(todo),
                "source_s": sum(t.info.duration_s for t in finished if t.info),
                "usable": sum(status.get(t.source_id) in ("ok", "partial") for t in tasks)}
    try:
        return finalize(fs, layout, config, samples_hash, results, unreadable, time.time() - start, this_run)
    except OSError as err:  # a full disk, a lost mount: one line; every finished video is kept
        raise OutputError(f"output {config.output!r}: cannot write the index and manifest: {storage_error(err)} "
                          "(the finished videos are kept: free space and rerun)") from None


def _init_ray(config: PipelineConfig) -> bool:
    """Connect to Ray; returns True when this call started a private local Ray (to shut down).

    :func:`multishot.ray_connect.init_ray`: the cluster of ``ray.address`` /
    ``RAY_ADDRESS`` (``ray job submit``), else a new local Ray bound to 127.0.0.1 that never
    joins a cluster named in Ray's temp folder. Its processes are watched by
    :mod:`multishot.pipeline.reaper`, which ends them if this process dies without
    ``ray.shutdown`` (SIGKILL leaves Ray's dashboard and runtime-env agents running otherwise).
    """
    from multishot.ray_connect import init_ray, job_address

    import ray

    from multishot.pipeline.ray_quiet import quiet_ray, ray_logging_level

    quiet_ray()
    if ray.is_initialized():
        return False
    if not job_address(config.ray.address):
        from multishot.pipeline.reaper import watch

        watch()  # first: Ray's processes inherit the run's token from this process's environment
    return init_ray(config.ray.address, logging_level=ray_logging_level(),
                    num_cpus=config.ray.num_cpus, include_dashboard=False)


def _run_ray(config: PipelineConfig, samples_hash: str, todo: list[VideoTask]) -> Iterator[VideoTask]:
    import ray

    started = _init_ray(config)
    try:
        yield from _execute(config, samples_hash, todo)
    finally:
        if started:
            ray.shutdown()


class _ActorStage:
    """A stage that holds models, as a Ray actor: set up once, then one video per call."""

    def __init__(self, stage: Stage, config: PipelineConfig, samples_hash: str, **extra):
        self.stage, self.process = stage, stage.setup(config, samples_hash, **extra)

    def __call__(self, row: dict) -> dict:
        return apply(self.stage, self.process, VideoTask.from_row(row)).to_row()


def _task_stage(row: dict, stage: Stage, config: PipelineConfig, samples_hash: str, **extra) -> dict:
    """A stage without models, as a Ray task: its setup is cheap enough to repeat per video."""
    return apply(stage, stage.setup(config, samples_hash, **extra), VideoTask.from_row(row)).to_row()


def _execute(config: PipelineConfig, samples_hash: str, todo: list[VideoTask]) -> Iterator[VideoTask]:
    """Map :data:`STAGES` onto a Ray Data chain, one ``ds.map`` per stage, placed by its
    ``resources``; yields the finished tasks as they complete. A barrier stage cuts the chain:
    the tasks before it are gathered in the driver, it runs there over all of them, and a new
    chain starts from its result."""
    # the segment-scanning actors every video's detect task feeds, started first: loading their
    # models is most of the start-up, and runs while Ray Data is imported and set up
    scans = RayScans(config)
    import ray.data

    from multishot.pipeline.ray_quiet import quiet_ray

    quiet_ray()  # ray.data's own logger, configured at its import
    from multishot.pipeline.stage_progress import start_board

    start_board()  # the job's per-stage progress board, which the stages report to
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # one bar over videos instead of one per operator
    ctx.execution_options.preserve_order = False

    cut = phases(STAGES)
    rows = [t.to_row() for t in todo]
    for k, phase in enumerate(cut):
        if phase[0].barrier:
            tasks = apply_barrier(phase[0], phase[0].setup(config, samples_hash), [VideoTask.from_row(r) for r in rows])
            rows = [t.to_row() for t in tasks]
            continue
        ds = _chain(ray.data.from_items(rows, override_num_blocks=max(1, len(rows))), phase, config, samples_hash, scans)
        if k < len(cut) - 1:
            rows = list(ds.iter_rows())  # all videos through this part before the barrier
            if any(stage.scans for stage in phase):
                scans.close()  # every video is scanned: the scanning actors' resources go to render
            continue
        for row in ds.iter_rows():
            yield VideoTask.from_row(row)
        return
    yield from (VideoTask.from_row(r) for r in rows)  # the list ended with a barrier


def _chain(ds, stages: list[Stage], config: PipelineConfig, samples_hash: str, scans: RayScans):
    """``ds`` mapped through ``stages`` (per-video stages), each placed by its ``resources``."""
    import ray.data

    for stage in stages:
        res = stage.resources(config)
        place = {"num_cpus": res.cpus, "num_gpus": res.gpus}
        if res.memory_gib:
            place["memory"] = int(res.memory_gib * 2**30)
        if stage.scans:
            # waits on the pool: no resources of its own; twice the actors, so a video's
            # stitching never leaves an actor idle
            ds = ds.map(_task_stage, fn_kwargs={"stage": stage, "config": config, "samples_hash": samples_hash,
                                                "scans": scans},
                        compute=ray.data.TaskPoolStrategy(size=2 * res.actors), num_cpus=0)
        elif stage.actor:
            ds = ds.map(_ActorStage, fn_constructor_args=(stage, config, samples_hash),
                        compute=ray.data.ActorPoolStrategy(size=res.actors), **place)
        else:
            ds = ds.map(_task_stage, fn_kwargs={"stage": stage, "config": config, "samples_hash": samples_hash},
                        compute=ray.data.TaskPoolStrategy(size=res.actors), **place)
    return ds
