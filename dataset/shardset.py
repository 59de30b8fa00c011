"""Reading a whole shard set for inspection: listing, summaries, and finding one sample.

The ``{key}.json`` records inside the shards are authoritative; the Parquet index
(``index/samples.parquet``) is the fast path for listing and for finding which shard holds a
key. Without an index, listing scans the shards' JSON members (mp4 members are skipped
without being buffered). Shards are streamed one member at a time through
:func:`dataset.shards.iter_members`, so a shard set of any size is read in bounded memory.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from tqdm import tqdm

from multishot.dataset.record import SampleRecord
from multishot.dataset.shards import MAX_MEMBER_BYTES, ShardSetLayout, iter_members, read_json, resolve

log = logging.getLogger(__name__)

#: Columns of a listing row, in display order (units: seconds, frames; scores as in ``Shot``).
ROW_COLUMNS = (
    "key",
    "shard",
    "source",
    "bucket",
    "duration_s",
    "num_frames",
    "num_shots",
    "caption_status",
    "aesthetic_mean",
    "ocr_text_ratio_max",
    "brightness_mean",
)
#: Index columns without which listing falls back to reading the shards' JSON.
INDEX_REQUIRED = ("key", "shard", "bucket", "duration_s", "num_frames", "num_shots", "caption_status")


def sample_row(record: SampleRecord, shard: str) -> dict:
    """The listing row of ``record`` (see :data:`ROW_COLUMNS`), computed from its shots.

    ``aesthetic_mean`` is ``None`` when no shot was scored.
    """
    aesthetics = [s.aesthetic for s in record.shots if s.aesthetic is not None]
    return {
        "key": record.key,
        "shard": shard,
        "source": record.source,
        "bucket": record.bucket,
        "duration_s": record.duration_s,
        "num_frames": record.num_frames,
        "num_shots": record.num_shots,
        "caption_status": record.caption_status,
        "aesthetic_mean": statistics.fmean(aesthetics) if aesthetics else None,
        "ocr_text_ratio_max": max(s.ocr_text_ratio for s in record.shots),
        "brightness_mean": statistics.fmean(s.brightness for s in record.shots),
    }


@dataclass
class ShardSet:
    """A shard set at ``root`` on ``fs`` (layout: :class:`dataset.shards.ShardSetLayout`)."""

    fs: pafs.FileSystem
    layout: ShardSetLayout
    max_member_bytes: int = MAX_MEMBER_BYTES
    progress: bool = True

    @classmethod
    def open(cls, uri: str, **kwargs) -> ShardSet:
        """Open a local folder or ``pyarrow.fs`` URI.

        Raises:
            FileNotFoundError: ``uri`` has no ``shards/`` folder.
        """
        fs, root = resolve(uri)
        shard_set = cls(fs, ShardSetLayout(root), **kwargs)
        if fs.get_file_info(shard_set.layout.shards_dir).type != pafs.FileType.Directory:
            raise FileNotFoundError(f"{uri}: no shards/ folder, not a shard set")
        return shard_set

    def exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type == pafs.FileType.File

    def has_index(self) -> bool:
        return self.exists(self.layout.samples_index)

    def manifest(self) -> dict | None:
        """``manifest.json`` parsed, or ``None`` when absent."""
        return read_json(self.fs, self.layout.manifest) if self.exists(self.layout.manifest) else None

    def table(self, path: str) -> pa.Table | None:
        """A Parquet table of the set (e.g. ``layout.shots_table``), or ``None`` when absent."""
        return pq.read_table(path, filesystem=self.fs) if self.exists(path) else None

    def shard_files(self) -> list[str]:
        """Names of the ``*.tar`` files in ``shards/`` (sorted; temporary files excluded)."""
        selector = pafs.FileSelector(self.layout.shards_dir)
        infos = self.fs.get_file_info(selector)
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(".tar"))

    def shard_names(self) -> list[str]:
        """The shards to read: the manifest's list when there is one, else the folder's tars."""
        manifest = self.manifest()
        if manifest is not None:
            return [s["name"] for s in manifest["shards"]]
        return self.shard_files()

    def progress_bar(self, items: list[str], desc: str) -> tqdm:
        """``tqdm`` over shard names (off when ``progress`` is false or there is one shard)."""
        return tqdm(items, desc=desc, unit="shard", disable=not self.progress or len(items) < 2)

    def records(self) -> Iterator[tuple[str, SampleRecord]]:
        """Every ``(shard name, record)`` from the shards' JSON members; mp4s are skipped unread.

        Raises:
            dataset.shards.UnsafeTarError, tarfile.TarError, pydantic.ValidationError: a
            damaged shard (``multishot shards verify`` lists every such problem).
        """
        for name in self.progress_bar(self.shard_names(), "reading records"):
            with self.fs.open_input_stream(self.layout.shard(name)) as stream:
                for member, data in iter_members(
                    stream, max_member_bytes=self.max_member_bytes, read=lambda n: n.endswith(".json")
                ):
                    if data is not None:
                        yield name, SampleRecord.from_json(data)

    def rows(self) -> Iterator[dict]:
        """Listing rows (:data:`ROW_COLUMNS`), streamed: from the index (read in record
        batches) when it has every :data:`INDEX_REQUIRED` column, else from the shards' JSON
        (logged). Optional summary columns missing from the index come out as ``None``.
        """
        names = pq.read_schema(self.layout.samples_index, filesystem=self.fs).names if self.has_index() else []
        missing = [c for c in INDEX_REQUIRED if c not in names]
        if missing:
            log.warning(
                "index/samples.parquet %s; listing from the shards' JSON",
                "lacks " + ", ".join(missing) if names else "missing",
            )
            yield from (sample_row(record, shard) for shard, record in self.records())
            return
        with self.fs.open_input_file(self.layout.samples_index) as f:
            index = pq.ParquetFile(f)
            present = [c for c in ROW_COLUMNS if c in names]
            for batch in index.iter_batches(columns=present):
                for row in batch.to_pylist():
                    yield {c: row.get(c) for c in ROW_COLUMNS}

    def locate(self, key: str) -> list[str]:
        """Shards that may hold ``key``: the index's or manifest's answer, else every shard."""
        if self.has_index():
            if {"key", "shard"} <= set(pq.read_schema(self.layout.samples_index, filesystem=self.fs).names):
                rows = pq.read_table(
                    self.layout.samples_index, filesystem=self.fs, columns=["shard"], filters=[("key", "=", key)]
                )
                if rows.num_rows:
                    return list(dict.fromkeys(rows.column("shard").to_pylist()))
        manifest = self.manifest()
        if manifest is not None:
            shards = [s["name"] for s in manifest["shards"] if key in s.get("keys", [])]
            if shards:
                return shards
        return self.shard_names()

    def sample(self, key: str) -> tuple[SampleRecord, bytes]:
        """The record and mp4 bytes of sample ``key``, streaming only the shard(s) that hold it.

        Raises:
            KeyError: no shard holds ``key``.
            dataset.shards.UnsafeTarError, tarfile.TarError, pydantic.ValidationError: the
            shard holding it is damaged.
        """
        prefix = f"{key}."
        for name in self.progress_bar(self.locate(key), f"looking for {key}"):
            parts: dict[str, bytes] = {}
            with self.fs.open_input_stream(self.layout.shard(name)) as stream:
                for member, data in iter_members(
                    stream, max_member_bytes=self.max_member_bytes, read=lambda n: n.startswith(prefix)
                ):
                    if data is None:
                        continue
                    parts[member[len(prefix) :]] = data
                    if "json" in parts and "mp4" in parts:
                        return SampleRecord.from_json(parts["json"]), parts["mp4"]
        raise KeyError(f"no sample {key!r} in {self.layout.root}")
