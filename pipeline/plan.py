"""``multishot pipeline run --dry-run``: which input videos a run would process or skip, and why,
without starting Ray or writing anything.

The decisions are those of :func:`pipeline.run.run_pipeline`: the same discovery (the output's
own folders excluded), the same source identity (:func:`pipeline.task.fingerprint`: one read of
each file), and the same resume test as :func:`pipeline.write.load_result` (a result in
``OUTPUT/_work/`` made with these sample settings whose shards are on disk as it says), spelled
out as a reason per video.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow.fs as pafs

from multishot.dataset.shards import ShardSetLayout
from multishot.dataset.storage import resolve
from multishot.pipeline.config import PipelineConfig
from multishot.pipeline.discover import discover, encode_uri
from multishot.pipeline.write import last_manifest, read_result, result_path, shards_problem

#: what a run would do with a video
ACTIONS = ("process", "skip", "reject")


@dataclass(frozen=True)
class PlannedVideo:
    """One input video: ``action`` (one of :data:`ACTIONS`) and the reason, in words."""

    source: str
    source_id: str
    action: str
    reason: str


def plan_run(config: PipelineConfig) -> list[PlannedVideo]:
    """What :func:`~pipeline.run.run_pipeline` would do with each input video of ``config``.

    Raises:
        pipeline.discover.InputError: the input names no videos.
        ValueError: no input or output given.
    """
    from multishot.pipeline.run import _as_given, _tasks, compute_samples_hash

    if not config.input or not config.output:
        raise ValueError("both input and output are needed (config keys 'input'/'output' or --input/--output)")
    output = encode_uri(config.output)
    fs, root = resolve(output)
    layout = ShardSetLayout(root)
    written = [layout.shards_dir, layout.work_dir, layout.samples_index.rsplit("/", 1)[0]]
    sources = discover(config.input, config.extensions, exclude=[_as_given(output, fs, p) for p in written])
    tasks, rejected = _tasks(sources)
    samples_hash = compute_samples_hash(config)
    manifest = last_manifest(fs, layout) if fs.get_file_info(layout.manifest).type == pafs.FileType.File else {}
    plan = [PlannedVideo(r["source"], r["source_id"], "reject", f"{r['stage']}: {r['reason']}") for r in rejected]
    for task in tasks:
        action, reason = _decide(fs, layout, task.source_id, samples_hash, manifest)
        plan.append(PlannedVideo(task.source, task.source_id, action, reason))
    return plan


def _decide(fs: pafs.FileSystem, layout: ShardSetLayout, source_id: str, samples_hash: str,
            manifest: dict[str, dict]) -> tuple[str, str]:
    path = result_path(layout, source_id)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return "process", "new: no result in the output folder"
    task = read_result(fs, path)
    if task is None:
        return "process", "its result file is unreadable"
    if task.samples_hash != samples_hash:
        return "process", f"settings changed: done with samples_hash {task.samples_hash}, now {samples_hash}"
    problem = shards_problem(fs, layout, task, manifest)
    if problem:
        return "process", f"its result cannot be trusted: {problem}"
    if task.status == "error":
        return "process", f"retry: the last run ended in error at {task.stage or '?'}: {task.reason}"
    samples = sum(len(s.get("keys", [])) for s in task.shards)
    detail = f"{samples} samples in {len(task.shards)} shards" if task.status in ("ok", "partial") \
        else f"{task.stage}: {task.reason}"
    return "skip", f"done ({task.status}, {detail})"


def format_plan(plan: list[PlannedVideo]) -> str:
    """One line per video (``ACTION  NAME  REASON``) and a count line."""
    width = max([len(p.source.rsplit("/", 1)[-1]) for p in plan] + [4])
    lines = [f"{p.action:<8} {p.source.rsplit('/', 1)[-1]:<{width}}  {p.reason}" for p in plan]
    counts = {a: sum(p.action == a for p in plan) for a in ACTIONS}
    lines.append(f"{len(plan)} videos: {counts['process']} to process, {counts['skip']} to skip, "
                 f"{counts['reject']} rejected (dry run: nothing started or written)")
    return "\n".join(lines)
