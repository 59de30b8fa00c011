"""The shard format: where a shard set's parts live, its manifest, and its tars' layout.

This module is the one owner of the format: the pipeline, ``multishot annotate``,
``multishot precompute``, the shards CLI and the training loader all write and read shard sets
through it. A shard set is one folder (local path or any ``pyarrow.fs`` URI)::

    OUT/
      shards/{name}.tar                WebDataset tars, per sample the members of its kind (below)
      manifest.json                    Manifest: the set's kind, samples_hash, per shard its
                                       sha256, bytes, sample count and keys
      index/samples.parquet            one row per sample (key, shard, bucket, duration, …)
      index/shots.parquet              every detected shot with its scores and decision
      index/videos.parquet             every video with a result: status, shot counts, overlays
      index/rejects.parquet            every input video that was rejected, with the reason
      report.json                      the run report
      config.resolved.yaml             the pipeline configuration the samples were made with
      _work/                           per-video results: the unit a pipeline rerun resumes from

Kinds (``Manifest.kind``) and the tar members of one sample (``{key}.{ext}``):

    samples     {key}.json + {key}.mp4          written by ``multishot pipeline``
    captioned   {key}.json + {key}.mp4          ``multishot annotate``: every record captioned
                                                (caption_status ok or failed)
    latents     {key}.json + {key}.safetensors  ``multishot precompute`` (dataset.latents); no index/

``{key}.json`` is always the :class:`~dataset.record.SampleRecord`. Tars are written under a
temporary name and renamed when complete, or on an object store (no rename) uploaded whole in
one request, so a reader never sees a half-written tar (WebDataset convention; video2dataset
does the same). Reading streams a tar front to back:
tar members → safety checks (:func:`member_problem`) → webdataset's ``group_by_keys`` →
``{"__key__", "__url__", ext: bytes}`` samples, one member in memory at a time, members a
reader does not select streamed past unread. Each consumer passes a webdataset-style
``handler`` (called with the exception; returns True to go on, False to stop, or raises).
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Annotated, BinaryIO, Literal

import pyarrow.fs as pafs
import pydantic
from pydantic import BaseModel, ConfigDict, Field

from multishot.dataset.names import check_relative_name, relative_name_problem
from multishot.dataset.record import SampleRecord
from multishot.dataset.storage import read_json, write_bytes, write_json
from multishot.errors import UsageError

ShardKind = Literal["samples", "captioned", "latents"]
#: The members of one sample, by kind (the extension after the key's first dot).
KIND_MEMBERS: dict[str, tuple[str, ...]] = {
    "samples": ("json", "mp4"),
    "captioned": ("json", "mp4"),
    "latents": ("json", "safetensors"),
}
#: Version of manifest.json's shape; readers also accept the unversioned shapes of older sets.
MANIFEST_VERSION = 1

Handler = Callable[[Exception], bool]


def reraise_exception(exn: Exception) -> bool:
    """The default handler: re-raise (webdataset's ``handlers.reraise_exception``). Defined here
    and webdataset imported where used, so that importing this module does not import webdataset
    and torch with it: 1.2 s of CPU in every pipeline worker that only reads and writes JSON."""
    raise exn


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
        """``shards/{name}``; ``name`` (read from a manifest, index or result file) must stay
        inside ``shards/`` (:func:`dataset.names.check_relative_name`, raises UnsafeNameError)."""
        return self._join("shards", check_relative_name(name, "shard"))

    @property
    def samples_index(self) -> str:
        return self._join("index", "samples.parquet")

    @property
    def shots_table(self) -> str:
        return self._join("index", "shots.parquet")

    @property
    def videos_table(self) -> str:
        return self._join("index", "videos.parquet")

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


# ---- manifest ------------------------------------------------------------------------------


@dataclass
class ShardInfo:
    """What the manifest records of one shard: its file name, sha256 (hex) and size (bytes) of
    the whole tar, and its sample keys in tar order."""

    name: Annotated[str, pydantic.AfterValidator(lambda n: check_relative_name(n, "shard"))]
    sha256: str
    bytes: int
    num_samples: int
    keys: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


class Manifest(BaseModel):
    """``manifest.json``: what a shard set holds.

    ``samples_hash`` is the hash of the pipeline settings that decided the samples
    (``pipeline.run.compute_samples_hash``; every record carries it too); annotate and
    precompute pass it on. ``None`` when the set mixes samples made with different settings.
    """

    model_config = ConfigDict(extra="forbid")

    version: int = MANIFEST_VERSION
    kind: ShardKind
    samples_hash: str | None = None
    shards: list[ShardInfo] = Field(default_factory=list)

    @pydantic.field_validator("version")
    @classmethod
    def _known_version(cls, version: int) -> int:
        if version != MANIFEST_VERSION:
            raise ValueError(f"manifest version {version}, this code reads {MANIFEST_VERSION}")
        return version

    @property
    def members(self) -> tuple[str, ...]:
        """The member extensions of one sample of this kind (:data:`KIND_MEMBERS`)."""
        return KIND_MEMBERS[self.kind]


class ShardError(ValueError):
    """A shard set is damaged (the message says where and how; ``multishot shards verify``
    lists every such problem)."""


class ManifestError(ShardError, UsageError):
    """``manifest.json`` is not valid JSON or not a manifest (or names a shard outside the
    set); the message names the problem. A user's input: commands report it in one line."""


def write_manifest(fs: pafs.FileSystem, layout: ShardSetLayout, manifest: Manifest) -> None:
    """Write ``manifest.json`` of the set at ``layout`` atomically."""
    write_json(fs, layout.manifest, manifest.model_dump(mode="json"))


def common_samples_hash(records: Iterable[SampleRecord]) -> str | None:
    """The ``samples_hash`` all ``records`` share, or ``None`` when they differ (or are none)."""
    hashes = {r.samples_hash for r in records}
    return hashes.pop() if len(hashes) == 1 else None


def _upgrade(obj: object) -> object:
    """The unversioned manifests of older sets, as :class:`Manifest` input.

    Pipeline: ``{"samples_hash", "shards": [...]}``; annotate: ``{"shards": [...]}``;
    precompute: ``{name: shard info}``.
    """
    if not isinstance(obj, dict) or "version" in obj:
        return obj
    if "shards" in obj and set(obj) <= {"shards", "samples_hash"}:
        return {"kind": "samples" if "samples_hash" in obj else "captioned", **obj}
    if obj and all(isinstance(v, dict) and "sha256" in v for v in obj.values()):
        return {"kind": "latents", "shards": list(obj.values())}
    return obj


def read_manifest(fs: pafs.FileSystem, layout: ShardSetLayout) -> Manifest | None:
    """The set's ``manifest.json``, or ``None`` when there is none.

    Raises:
        ManifestError: it is not JSON or not a manifest (message: the first bad key).
    """
    if fs.get_file_info(layout.manifest).type != pafs.FileType.File:
        return None
    try:
        obj = read_json(fs, layout.manifest)
    except ValueError as err:
        raise ManifestError(f"manifest.json: not valid JSON: {err}") from None
    try:
        return Manifest.model_validate(_upgrade(obj))
    except pydantic.ValidationError as err:
        raise ManifestError(f"manifest.json: {validation_summary(err)}") from None


def validation_summary(err: pydantic.ValidationError, limit: int = 3) -> str:
    """One line of a validation error: ``where: what`` (``what`` alone for a whole-model check)
    for its first ``limit`` errors."""
    return "; ".join(
        (f"{'.'.join(map(str, e['loc']))}: " if e["loc"] else "") + e["msg"] for e in err.errors()[:limit]
    )


# ---- writing -------------------------------------------------------------------------------


def write_tar(
    fs: pafs.FileSystem, path: str, samples: Iterable[dict[str, bytes | str]], kind: ShardKind
) -> ShardInfo:
    """Write WebDataset samples (``{"__key__": key, ext: bytes, …}``) as one tar at ``path``, atomically.

    Every sample holds exactly the members of ``kind`` (:data:`KIND_MEMBERS`). The tar is
    built in memory and written with :func:`write_bytes` (a temporary name and a rename, or one
    upload on an object store); member mtimes are 0, so equal inputs give byte-equal tars.

    Raises:
        ValueError: a key repeats within the tar, or a sample's members are not its kind's.
    """
    buf = io.BytesIO()
    keys: list[str] = []
    import webdataset as wds  # here, not at the top: see reraise_exception

    with wds.TarWriter(buf, mtime=0.0) as sink:
        for sample in samples:
            key = sample["__key__"]
            if key in keys:
                raise ValueError(f"duplicate key {key} in shard {path}")
            members = sorted(k for k in sample if not k.startswith("__"))
            if members != sorted(KIND_MEMBERS[kind]):
                raise ValueError(f"sample {key}: members {members}, a {kind} shard holds {list(KIND_MEMBERS[kind])}")
            keys.append(key)
            sink.write(sample)
    data = buf.getvalue()
    write_bytes(fs, path, data)
    return ShardInfo(path.rsplit("/", 1)[-1], hashlib.sha256(data).hexdigest(), len(data), len(keys), keys)


def write_shard(fs: pafs.FileSystem, path: str, samples: Iterable[tuple[SampleRecord, bytes]]) -> ShardInfo:
    """Write ``(record, mp4 bytes)`` pairs as one shard of a samples or captioned set
    (``{key}.json`` + ``{key}.mp4``) at ``path``, atomically (:func:`write_tar`)."""
    return write_tar(fs, path, ({"__key__": r.key, "mp4": mp4, "json": r.to_json()} for r, mp4 in samples), "samples")


# ---- reading -------------------------------------------------------------------------------

#: Largest tar member a reader accepts (bytes); a 15 s 832x480 H.264 sample is a few MB.
MAX_MEMBER_BYTES = 1 << 30


class UnsafeTarError(tarfile.TarError):
    """A tar member that a reader refuses: unsafe name, link or special file, or oversized."""


class BadRecordError(ShardError):
    """A ``{key}.json`` member that is not a valid record of its key; the message is one line,
    ``sample {key}: {problem}``."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"sample {key}: {problem}")
        self.key, self.problem = key, problem


def member_problem(member: tarfile.TarInfo, max_bytes: int = MAX_MEMBER_BYTES) -> str | None:
    """Why ``member`` must not be read from a shard, or ``None`` when it is a safe regular file.

    Refused (the tar-slip and tar-bomb cases of ``tarfile``'s ``data`` filter, stricter): an
    empty or absolute name (``/x``, ``C:\\x``), a ``..`` component, a backslash, a symbolic or
    hard link, any non-regular member (directory, device, FIFO), and a member larger than
    ``max_bytes``.
    """
    name = member.name
    problem = relative_name_problem(name)
    if problem is not None:
        return f"member {name!r}: {problem}"
    if member.issym() or member.islnk():
        return f"member {name!r}: link to {member.linkname!r}"
    if not member.isfile():
        return f"member {name!r}: not a regular file (tar type {member.type!r})"
    if member.size > max_bytes:
        return f"member {name!r}: {member.size} bytes, over the {max_bytes}-byte limit"
    return None


def member_key(name: str) -> tuple[str | None, str | None]:
    """``(key, extension)`` of a member name, by WebDataset's rule (``base_plus_ext``): the key
    ends at the first dot of the file name (``a/b.c.json`` → ``('a/b', 'c.json')``)."""
    from webdataset.tariterators import base_plus_ext

    return base_plus_ext(name)


def iter_members(
    stream: BinaryIO,
    *,
    url: str = "",
    max_member_bytes: int = MAX_MEMBER_BYTES,
    select: Callable[[str], bool] = lambda name: True,
    handler: Handler = reraise_exception,
) -> Iterator[dict]:
    """Stream a tar's members as webdataset file samples ``{"fname", "data", "__url__"}``.

    The tar is read front to back, so only the current member is held in memory; members whose
    name ``select`` rejects are skipped unread (a seek where ``stream`` can seek) and not yielded.
    Nothing is ever written to disk. This stands in for ``webdataset.tar_file_expander``,
    which skips links and special files silently and reads a member of any size into memory,
    with no way to see a member's header before it does.

    Errors go to ``handler``: a member failing :func:`member_problem` as
    :class:`UnsafeTarError` (True: skip that member), a truncated or malformed tar as
    ``tarfile.TarError`` (the rest of the tar is lost either way).
    """
    # A seekable file (a local shard) is read in random-access mode, so skipping a member is a
    # seek; a stream (object storage, verify's hashing reader) is read through, 10 KiB at a time.
    seekable = getattr(stream, "seekable", lambda: False)()
    try:
        with tarfile.open(fileobj=stream, mode="r:" if seekable else "r|") as tar:
            for member in tar:
                tar.members = []  # tarfile would otherwise keep every header (webdataset does this too)
                problem = member_problem(member, max_member_bytes)
                if problem:
                    if handler(UnsafeTarError(problem)):
                        continue
                    return
                if not select(member.name):
                    continue
                data = tar.extractfile(member).read()
                if len(data) != member.size:
                    raise tarfile.ReadError(f"member {member.name!r}: unexpected end of data")
                yield {"fname": member.name, "data": data, "__url__": url}
            # random-access mode ends quietly where a skipped member runs past the end of the
            # file (it finds no next header); the next header's offset tells
            size = stream.seek(0, io.SEEK_END) if seekable else None
            if size is not None and tar.offset > size:
                raise tarfile.ReadError(f"unexpected end of data: the tar ends at byte {size}, inside a member")
    except UnsafeTarError:
        raise  # raised by the handler itself
    except tarfile.TarError as err:
        handler(err)


def iter_samples(
    stream: BinaryIO,
    *,
    url: str = "",
    max_member_bytes: int = MAX_MEMBER_BYTES,
    select: Callable[[str], bool] = lambda name: True,
    handler: Handler = reraise_exception,
) -> Iterator[dict]:
    """Stream a tar's samples: :func:`iter_members` → webdataset's ``group_by_keys``.

    Yields ``{"__key__": key, "__url__": url, ext: bytes, …}`` per run of consecutive members
    with the same key (:func:`member_key`; extensions lower-cased), in tar order. A sample may
    lack members (a consumer checks them against its kind); a key that comes back after another
    key yields a second sample. ``handler`` gets the member errors of :func:`iter_members` and
    ``group_by_keys``' ``ValueError`` for a member that repeats within a sample (True: that
    member is dropped).
    """
    members = iter_members(stream, url=url, max_member_bytes=max_member_bytes, select=select, handler=handler)
    from webdataset.tariterators import group_by_keys

    return group_by_keys(members, keys=member_key, handler=lambda exn: handler(_repeated_member(exn)))


def _repeated_member(exn: Exception) -> Exception:
    """``group_by_keys``' error for a member that repeats in its sample, as one clean line.

    webdataset raises ``ValueError("{name}: duplicate file name in tar file …")`` and appends
    (stream, url) to its ``args``; anything else passes with its first argument only.
    """
    first = str(exn.args[0]) if exn.args else repr(exn)
    name, sep, _ = first.partition(": duplicate file name")
    if sep:
        return ShardError(f"member {name!r} appears twice in its sample")
    exn.args = (first,)
    return exn


def open_shard(fs: pafs.FileSystem, path: str) -> BinaryIO:
    """A binary stream of the tar at ``path``: Python's own file object for a local file (a
    pyarrow stream left open in a suspended generator aborts DataLoader workers at exit once
    PyAV has decoded in them), else pyarrow's input stream."""
    if isinstance(fs, pafs.LocalFileSystem):
        return open(path, "rb")
    return fs.open_input_stream(path)


def read_samples(
    fs: pafs.FileSystem, path: str, *, handler: Handler = reraise_exception, **kwargs
) -> Iterator[dict]:
    """:func:`iter_samples` of the tar at ``path`` (``kwargs``: ``max_member_bytes``, ``select``)."""
    with open_shard(fs, path) as stream:
        yield from iter_samples(stream, url=path, handler=handler, **kwargs)


def parse_record(data: bytes, key: str) -> SampleRecord:
    """The record of sample ``key`` from its ``{key}.json`` member.

    Raises:
        BadRecordError: not a valid :class:`SampleRecord`, or one of another key.
    """
    try:
        record = SampleRecord.from_json(data)
    except pydantic.ValidationError as err:
        raise BadRecordError(key, f"json does not match SampleRecord: {validation_summary(err)}") from None
    if record.key != key:
        raise BadRecordError(key, f"json key {record.key!r} differs from its member name")
    return record


def read_shard(
    fs: pafs.FileSystem, path: str, *, max_member_bytes: int = MAX_MEMBER_BYTES
) -> Iterator[tuple[SampleRecord, bytes]]:
    """Yield ``(record, mp4 bytes)`` from a samples or captioned shard, streaming.

    Raises:
        UnsafeTarError: a member with an unsafe name, a link, or one over ``max_member_bytes``.
        tarfile.TarError: the tar is unreadable.
        ShardError: a sample lacks its ``.mp4`` or ``.json`` member, or a member repeats;
            (``BadRecordError``) a ``.json`` member is not a valid record of its key.
    """
    for sample in read_samples(fs, path, max_member_bytes=max_member_bytes):
        key = sample["__key__"]
        missing = [ext for ext in KIND_MEMBERS["samples"] if ext not in sample]
        if missing:
            raise ShardError(f"{path}: sample {key} lacks its {missing} member")
        yield parse_record(sample["json"], key), sample["mp4"]
