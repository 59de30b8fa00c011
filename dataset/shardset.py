"""Reading a whole shard set of any kind (samples, captioned, latents) for inspection:
listing, summaries, and finding one sample.

The ``{key}.json`` records inside the shards are authoritative; the Parquet index
(``index/samples.parquet``) is the fast path for listing and for finding which shard holds a
key. Without an index (latent sets have none), listing scans the shards' JSON members; the
other members are streamed past without being buffered (:func:`dataset.shards.read_samples`),
so a shard set of any size is read in bounded memory.
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
from multishot.dataset.shards import (MAX_MEMBER_BYTES, Manifest, ShardError, ShardKind, ShardSetLayout, member_key, parse_record, read_manifest, read_samples)
from multishot.dataset.storage import resolve

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
    """A shard set at ``root`` on ``fs`` (layout and kinds: :mod:`dataset.shards`).

    Readers raise on a damaged shard (webdataset's re-raise handler): ``UnsafeTarError`` or
    ``tarfile.TarError`` (the tar), ``ShardError`` (a member repeats, a bad ``{key}.json``,
    a bad manifest); ``multishot shards verify`` lists every such problem instead.
    """

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

    def manifest(self) -> Manifest | None:
        """``manifest.json`` (older sets' shapes upgraded), or ``None`` when absent.

        Raises:
            dataset.shards.ManifestError: it is not a manifest.
        """
        return read_manifest(self.fs, self.layout)

    def kind(self) -> ShardKind:
        """The manifest's kind, else :meth:`sniff_kind`."""
        manifest = self.manifest()
        return manifest.kind if manifest is not None else self.sniff_kind()

    def sniff_kind(self) -> ShardKind:
        """The kind of a set without a manifest: ``latents`` when the first sample has a
        ``.safetensors`` member, else ``samples``. Reads member names, and JSON members only."""
        for name in self.shard_files():
            extensions: set[str] = set()

            def note(member: str) -> bool:
                extensions.add(member_key(member)[1])
                return member.endswith(".json")

            # the first sample comes out once the second's JSON (or the end) is reached, so by
            # then every member of the first sample has been named
            for _ in read_samples(self.fs, self.layout.shard(name), max_member_bytes=self.max_member_bytes,
                                  select=note):
                break
            if extensions:
                return "latents" if "safetensors" in extensions else "samples"
        return "samples"

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
            return [s.name for s in manifest.shards]
        return self.shard_files()

    def progress_bar(self, items: list[str], desc: str) -> tqdm:
        """``tqdm`` over shard names (off when ``progress`` is false or there is one shard)."""
        return tqdm(items, desc=desc, unit="shard", disable=not self.progress or len(items) < 2)

    def records(self) -> Iterator[tuple[str, SampleRecord]]:
        """Every ``(shard name, record)`` from the shards' JSON members; other members are
        streamed past unread."""
        for name in self.progress_bar(self.shard_names(), "reading records"):
            for sample in read_samples(self.fs, self.layout.shard(name), max_member_bytes=self.max_member_bytes,
                                       select=lambda n: n.endswith(".json")):
                yield name, parse_record(sample["json"], sample["__key__"])

    def rows(self) -> Iterator[dict]:
        """Listing rows (:data:`ROW_COLUMNS`), streamed: from the index (read in record
        batches) when it has every :data:`INDEX_REQUIRED` column, else from the shards' JSON
        (logged, except for a latent set, which has no index by design). Optional summary
        columns missing from the index come out as ``None``.
        """
        names = pq.read_schema(self.layout.samples_index, filesystem=self.fs).names if self.has_index() else []
        missing = [c for c in INDEX_REQUIRED if c not in names]
        if missing:
            if names or self.kind() != "latents":
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
            shards = [s.name for s in manifest.shards if key in s.keys]
            if shards:
                return shards
        return self.shard_names()

    def sample(self, key: str, *, json_only: bool = False) -> tuple[SampleRecord, dict[str, bytes]]:
        """The record and members (``{ext: bytes}``, the ``json`` included) of sample ``key``,
        streaming only the shard(s) that hold it; ``json_only`` reads the ``{key}.json``
        member alone and streams past the others (a 1 GB video costs no memory).

        Raises:
            KeyError: no shard holds ``key``.
            dataset.shards.ShardError: the sample has no ``.json`` member, or a bad one.
        """
        wanted = (lambda n: n == f"{key}.json") if json_only else (lambda n: member_key(n)[0] == key)
        for name in self.progress_bar(self.locate(key), f"looking for {key}"):
            for sample in read_samples(self.fs, self.layout.shard(name), max_member_bytes=self.max_member_bytes,
                                       select=wanted):
                if "json" not in sample:
                    raise ShardError(f"shards/{name}: sample {key} has no .json member")
                members = {k: v for k, v in sample.items() if not k.startswith("__")}
                return parse_record(sample["json"], key), members
        raise KeyError(f"no sample {key!r} in {self.layout.root}")
