"""Stage 8, writing: one video's rendered samples → WebDataset shards, then its resume marker.

Shards of a video are named ``{source_id}-{samples_hash}-{n:05d}.tar`` (at most
``max_samples_per_shard`` samples each, samples in key order), so a rerun of the same video with
the same settings writes the same names, and a rerun with other settings never overwrites a
finished shard in place (the old ones are set aside when the new index is written). Each
tar is written under a temporary name and renamed when complete, or on object storage uploaded
whole in one request (:func:`dataset.storage.write_bytes`). The per-video result file
``_work/{source_id}.json`` is written last, the same way: it is the marker a rerun trusts to
skip the video, and only while the shards it lists exist with the size (and, where the
manifest lists them, the sha256) it records (:func:`load_result`). A run killed between a
shard's write and the marker redoes the video and overwrites the same shards.
"""

from __future__ import annotations

import logging

import pyarrow.fs as pafs
from pydantic import ValidationError

from multishot.dataset.shards import ManifestError, ShardSetLayout, read_manifest, write_shard
from multishot.dataset.storage import read_json, write_json
from multishot.pipeline.sample import index_row
from multishot.pipeline.task import VideoTask

log = logging.getLogger(__name__)


def shard_name(source_id: str, n: int, samples_hash: str) -> str:
    return f"{source_id}-{samples_hash}-{n:05d}.tar"


def shard_source_id(name: str) -> str:
    """The ``source_id`` a shard name belongs to (inverse of :func:`shard_name`; also for the
    ``{source_id}-{n:05d}.tar`` names of older sets)."""
    return name.split("-", 1)[0]


def shard_settings(name: str) -> str | None:
    """The ``samples_hash`` in a shard's name, or None for the settings-free names of older sets."""
    parts = name.removesuffix(".tar").split("-")
    return parts[1] if len(parts) == 3 else None


def write_samples(task: VideoTask, fs: pafs.FileSystem, layout: ShardSetLayout, per_shard: int) -> None:
    """Write ``task.rendered`` as shards named with ``task.samples_hash``; fills ``task.shards``
    and ``task.index_rows`` and empties ``task.rendered`` (the bytes are in the tars now)."""
    samples = sorted(((r.record, r.mp4) for r in task.rendered), key=lambda pair: pair[0].key)
    for n, start in enumerate(range(0, len(samples), per_shard)):
        chunk = samples[start : start + per_shard]
        name = shard_name(task.source_id, n, task.samples_hash)
        info = write_shard(fs, layout.shard(name), chunk)
        task.shards.append(info.to_dict())
        task.index_rows.extend(index_row(record, name) for record, _ in chunk)
    task.rendered = []


def result_path(layout: ShardSetLayout, source_id: str) -> str:
    return f"{layout.work_dir}/{source_id}.json"


def save_result(task: VideoTask, fs: pafs.FileSystem, layout: ShardSetLayout) -> None:
    """Write the per-video result (the resume marker) atomically; ``task.samples_hash`` is set."""
    write_json(fs, result_path(layout, task.source_id), task.model_dump(mode="json", exclude={"rendered"}))


def read_result(fs: pafs.FileSystem, path: str) -> VideoTask | None:
    """The result file at ``path``, or None when it is unreadable (then it is redone)."""
    try:
        return VideoTask.model_validate(read_json(fs, path))
    except (OSError, ValueError, ValidationError) as err:
        log.warning("ignoring result file %s: %s", path, str(err).splitlines()[0])
        return None


def shards_problem(fs: pafs.FileSystem, layout: ShardSetLayout, task: VideoTask, manifest: dict[str, dict]) -> str | None:
    """Why ``task``'s marker cannot be trusted, or None: a shard it lists is missing, has
    another size, or has another sha256 than ``manifest`` (name → entry of the last manifest)."""
    for shard in task.shards:
        info = fs.get_file_info(layout.shard(shard["name"]))
        if info.type != pafs.FileType.File:
            return f"shard {shard['name']} is missing"
        if info.size != shard["bytes"]:
            return f"shard {shard['name']} has {info.size} bytes, its result says {shard['bytes']}"
        listed = manifest.get(shard["name"])
        if listed is not None and listed.get("sha256") != shard["sha256"]:
            return f"shard {shard['name']} differs from the manifest's"
    return None


def load_result(
    fs: pafs.FileSystem, layout: ShardSetLayout, source_id: str, samples_hash: str, manifest: dict[str, dict]
) -> VideoTask | None:
    """The trusted result of a video made with these settings, or None (not done, other
    settings, or its shards are not as it says: see :func:`shards_problem`)."""
    path = result_path(layout, source_id)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    task = read_result(fs, path)
    if task is None or task.samples_hash != samples_hash:
        return None
    problem = shards_problem(fs, layout, task, manifest)
    if problem:
        log.warning("redoing %s: %s", task.name, problem)
        return None
    return task


def last_manifest(fs: pafs.FileSystem, layout: ShardSetLayout) -> dict[str, dict]:
    """Shard name → entry of the manifest the last finished run wrote ({} when none is readable)."""
    try:
        manifest = read_manifest(fs, layout)
    except ManifestError as err:
        log.warning("ignoring unreadable %s: %s", layout.manifest, err)
        return {}
    return {} if manifest is None else {s.name: s.to_dict() for s in manifest.shards}


def trusted_results(
    fs: pafs.FileSystem, layout: ShardSetLayout, samples_hash: str, manifest: dict[str, dict], fresh: set[str]
) -> list[VideoTask]:
    """Every trusted result in ``_work/`` made with these settings, whichever run made it: the
    videos the index describes (an output folder gathers the films of every run into it).
    Results of the ``fresh`` source ids (written by this run, after ``manifest``) are checked
    against the disk only."""
    if fs.get_file_info(layout.work_dir).type != pafs.FileType.Directory:
        return []
    results = []
    for info in fs.get_file_info(pafs.FileSelector(layout.work_dir)):
        name = info.path.rsplit("/", 1)[-1]
        if info.type == pafs.FileType.File and name.endswith(".json"):
            source_id = name[: -len(".json")]
            task = load_result(fs, layout, source_id, samples_hash, {} if source_id in fresh else manifest)
            if task is not None:
                results.append(task)
    return sorted(results, key=lambda t: t.source_id)
