"""Stage 7, writing: one video's rendered samples → WebDataset shards, then its result file.

Shards of a video are named ``{source_id}-{n:05d}.tar`` (at most ``max_samples_per_shard``
samples each, samples in key order), so a rerun of the same video writes the same names and
bytes. Each tar is written under a temporary name and renamed when complete
(:func:`dataset.shards.write_shard`). The per-video result file ``_work/{source_id}.json`` is
written last, atomically: it is the marker a rerun trusts to skip the video. A run killed
between a shard's rename and the marker redoes the video and overwrites the same shards.
"""

from __future__ import annotations

import pyarrow.fs as pafs

from multishot.dataset.record import SampleRecord
from multishot.dataset.shards import ShardSetLayout, read_json, write_json, write_shard
from multishot.pipeline.sample import index_row
from multishot.pipeline.task import VideoTask


def shard_name(source_id: str, n: int) -> str:
    return f"{source_id}-{n:05d}.tar"


def write_samples(
    task: VideoTask, samples: list[tuple[SampleRecord, bytes]], fs: pafs.FileSystem, layout: ShardSetLayout, per_shard: int
) -> None:
    """Write ``(record, mp4)`` pairs of ``task`` as shards; fills ``task.shards`` and ``task.index_rows``."""
    samples = sorted(samples, key=lambda pair: pair[0].key)
    for n, start in enumerate(range(0, len(samples), per_shard)):
        chunk = samples[start : start + per_shard]
        name = shard_name(task.source_id, n)
        info = write_shard(fs, layout.shard(name), chunk)
        task.shards.append(info.to_dict())
        task.index_rows.extend(index_row(record, name) for record, _ in chunk)


def result_path(layout: ShardSetLayout, source_id: str) -> str:
    return f"{layout.work_dir}/{source_id}.json"


def save_result(task: VideoTask, fs: pafs.FileSystem, layout: ShardSetLayout, samples_hash: str) -> None:
    """Write the per-video result (the resume marker) atomically."""
    write_json(fs, result_path(layout, task.source_id), {"samples_hash": samples_hash, **task.result()})


def load_result(fs: pafs.FileSystem, layout: ShardSetLayout, source_id: str, samples_hash: str) -> dict | None:
    """The saved result of a video processed with these sample settings, or None (not done,
    or other settings)."""
    path = result_path(layout, source_id)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    result = read_json(fs, path)
    return result if result.get("samples_hash") == samples_hash else None
