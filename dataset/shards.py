"""Where a shard set lives and how its tars are written and read.

A shard set is what one pipeline run writes under its output folder (local path or any
``pyarrow.fs`` URI)::

    OUT/
      shards/{source_id}-{n:05d}.tar   WebDataset tars: {key}.mp4 + {key}.json per sample
      index/samples.parquet            one row per sample (key, shard, bucket, duration, …)
      index/shots.parquet              every detected shot with its scores and decision
      index/rejects.parquet            every input video that was rejected, with the reason
      manifest.json                    shard name → sha256, bytes, sample count, keys
      report.json                      the run report
      config.resolved.yaml             the configuration the run used
      _work/                           per-video results: the unit a rerun resumes from

Shards are written under a temporary name and renamed when complete, so a reader never sees
a half-written tar (WebDataset convention; video2dataset does the same).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import BinaryIO

import pyarrow.fs as pafs
import webdataset as wds

from multishot.dataset.record import SampleRecord

TMP_SUFFIX = ".tmp"


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """A ``pyarrow.fs`` filesystem and path for a local path or URI (``s3://``, ``gs://``, …).

    Raises:
        pyarrow.ArrowInvalid: the URI's scheme is not supported by pyarrow.
    """
    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    return pafs.FileSystem.from_uri(uri)


@dataclass(frozen=True)
class ShardSetLayout:
    """Paths of a shard set's parts under ``root`` (see the module docstring)."""

    root: str

    def _join(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    @property
    def shards_dir(self) -> str:
        return self._join("shards")

    def shard(self, name: str) -> str:
        return self._join("shards", name)

    @property
    def samples_index(self) -> str:
        return self._join("index", "samples.parquet")

    @property
    def shots_table(self) -> str:
        return self._join("index", "shots.parquet")

    @property
    def rejects_table(self) -> str:
        return self._join("index", "rejects.parquet")

    @property
    def manifest(self) -> str:
        return self._join("manifest.json")

    @property
    def report(self) -> str:
        return self._join("report.json")

    @property
    def resolved_config(self) -> str:
        return self._join("config.resolved.yaml")

    @property
    def work_dir(self) -> str:
        return self._join("_work")


@dataclass
class ShardInfo:
    """What the manifest records of one shard."""

    name: str
    sha256: str
    bytes: int
    num_samples: int
    keys: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def write_tar(fs: pafs.FileSystem, path: str, samples: Iterable[dict[str, bytes | str]]) -> ShardInfo:
    """Write WebDataset samples (``{"__key__": key, ext: bytes, …}``) as one tar at ``path``, atomically.

    The tar is built in memory, written under ``path + '.<uuid>.tmp'`` and moved to ``path``;
    member mtimes are 0, so equal inputs give byte-equal tars.

    Raises:
        ValueError: a key repeats within the tar.
    """
    buf = io.BytesIO()
    keys: list[str] = []
    with wds.TarWriter(buf, mtime=0.0) as sink:
        for sample in samples:
            if sample["__key__"] in keys:
                raise ValueError(f"duplicate key {sample['__key__']} in shard {path}")
            keys.append(sample["__key__"])
            sink.write(sample)
    data = buf.getvalue()
    _write_atomic(fs, path, data)
    return ShardInfo(path.rsplit("/", 1)[-1], hashlib.sha256(data).hexdigest(), len(data), len(keys), keys)


def write_shard(fs: pafs.FileSystem, path: str, samples: Iterable[tuple[SampleRecord, bytes]]) -> ShardInfo:
    """Write ``(record, mp4 bytes)`` pairs as one WebDataset tar (``{key}.mp4`` + ``{key}.json``)
    at ``path``, atomically (:func:`write_tar`)."""
    return write_tar(fs, path, ({"__key__": r.key, "mp4": mp4, "json": r.to_json()} for r, mp4 in samples))


def _write_atomic(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write ``data`` under a temporary name beside ``path``, then move it into place."""
    tmp = f"{path}.{uuid.uuid4().hex}{TMP_SUFFIX}"
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(tmp) as out:
        out.write(data)
    fs.move(tmp, path)


#: Largest tar member a reader accepts (bytes); a 15 s 832x480 H.264 sample is a few MB.
MAX_MEMBER_BYTES = 1 << 30


class UnsafeTarError(tarfile.TarError):
    """A tar member that a reader refuses: unsafe name, link or special file, or oversized."""


def member_problem(member: tarfile.TarInfo, max_bytes: int = MAX_MEMBER_BYTES) -> str | None:
    """Why ``member`` must not be read from a shard, or ``None`` when it is a safe regular file.

    Refused (the tar-slip and tar-bomb cases of ``tarfile``'s ``data`` filter, stricter): an
    empty or absolute name (``/x``, ``C:\\x``), a ``..`` component, a backslash, a symbolic or
    hard link, any non-regular member (directory, device, FIFO), and a member larger than
    ``max_bytes``.
    """
    name = member.name
    parts = name.replace("\\", "/").split("/")
    if not name or name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return f"member {name!r}: absolute or empty name"
    if ".." in parts:
        return f"member {name!r}: '..' component in name"
    if "\\" in name:
        return f"member {name!r}: backslash in name"
    if member.issym() or member.islnk():
        return f"member {name!r}: link to {member.linkname!r}"
    if not member.isfile():
        return f"member {name!r}: not a regular file (tar type {member.type!r})"
    if member.size > max_bytes:
        return f"member {name!r}: {member.size} bytes, over the {max_bytes}-byte limit"
    return None


def iter_members(
    stream: BinaryIO, *, max_member_bytes: int = MAX_MEMBER_BYTES, read: Callable[[str], bool] = lambda name: True
) -> Iterator[tuple[str, bytes | None]]:
    """Stream a tar's members as ``(name, data)``, one at a time, refusing unsafe members.

    The tar is read front to back (``tarfile`` stream mode), so only the current member is
    held in memory. ``data`` is ``None`` for members whose name ``read`` rejects (skipped
    without buffering). Nothing is ever written to disk.

    Raises:
        UnsafeTarError: a member fails :func:`member_problem`.
        tarfile.TarError: the tar is malformed or truncated.
    """
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            problem = member_problem(member, max_member_bytes)
            if problem:
                raise UnsafeTarError(problem)
            data = None
            if read(member.name):
                data = tar.extractfile(member).read()
                if len(data) != member.size:
                    raise tarfile.ReadError(f"member {member.name!r}: unexpected end of data")
            yield member.name, data


def read_shard(
    fs: pafs.FileSystem, path: str, *, max_member_bytes: int = MAX_MEMBER_BYTES
) -> Iterator[tuple[SampleRecord, bytes]]:
    """Yield ``(record, mp4 bytes)`` from a shard written by :func:`write_shard`, streaming.

    Raises:
        UnsafeTarError: a member with an unsafe name, a link, or one over ``max_member_bytes``.
        tarfile.TarError: the tar is unreadable.
        ValueError: a sample lacks its ``.mp4`` or ``.json`` member.
        pydantic.ValidationError: a ``.json`` member does not match :class:`SampleRecord`.
    """
    with fs.open_input_stream(path) as stream:
        pending: dict[str, dict[str, bytes]] = {}
        for name, data in iter_members(stream, max_member_bytes=max_member_bytes):
            key, _, ext = name.partition(".")
            parts = pending.setdefault(key, {})
            parts[ext] = data
            if "mp4" in parts and "json" in parts:
                del pending[key]
                yield SampleRecord.from_json(parts["json"]), parts["mp4"]
        if pending:
            raise ValueError(f"{path}: incomplete samples {sorted(pending)}")


def write_json(fs: pafs.FileSystem, path: str, obj: object) -> None:
    """Write JSON atomically (temp name, then move)."""
    _write_atomic(fs, path, json.dumps(obj, indent=1, sort_keys=True).encode())


def read_json(fs: pafs.FileSystem, path: str) -> object:
    with fs.open_input_stream(path) as stream:
        return json.loads(stream.read())
