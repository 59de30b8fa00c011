"""``multishot shards verify``: check a shard set of any kind end to end and list every problem.

Checks, in one streaming pass per shard (each shard's bytes are read once: hashed, untarred
and decoded together, one sample in memory at a time):

* ``manifest.json`` is a manifest (:class:`dataset.shards.Manifest`; its ``kind`` says which
  members a sample holds) and lists exactly the ``*.tar`` files in ``shards/`` (no stray or
  missing shards, no left-over temporary files); each shard's sha256, size, sample count and
  keys match;
* every tar reads to its end; every member is a safe regular file (no absolute name, ``..``,
  link, or oversized member: :func:`dataset.shards.member_problem`) named ``{key}.{ext}``
  with a valid key and an extension of the set's kind, and every key has all its members,
  once in the whole set;
* every ``.json`` is a valid :class:`~dataset.record.SampleRecord` whose key is its member's,
  with ``duration_s == num_frames / fps``; in a captioned set none is still ``pending``;
* every ``.mp4`` decodes without an FFmpeg error, with the frame count, size and frame rate
  its JSON claims; every ``.safetensors`` holds latents [C, F_lat, H_lat, W_lat] of the
  frames it says were encoded (at most the record's) and a [L, D] context;
* ``index/samples.parquet`` has one row per sample, in the right shard, agreeing with the JSON
  (latent sets have no index).

Problems are collected, never raised (the readers' handler records them), so one run reports
all of them.
"""

from __future__ import annotations

import hashlib
import tarfile
from collections import Counter
from dataclasses import dataclass
from typing import BinaryIO

import pyarrow as pa
import pyarrow.fs as pafs

from multishot.dataset.frames import check_mp4
from multishot.dataset.latents import LatentSample
from multishot.dataset.record import KEY_PATTERN, SampleRecord, num_latent_frames
from multishot.dataset.shards import (KIND_MEMBERS, BadRecordError, ManifestError, ShardInfo, ShardKind, UnsafeTarError, iter_samples, member_key, parse_record)
from multishot.dataset.storage import TMP_SUFFIX
from multishot.dataset.shardset import ShardSet

#: Index columns compared with the JSON record when present (same-named record attributes).
INDEX_FIELDS = ("source", "source_id", "bucket", "num_frames", "num_shots", "caption_status")


def index_fields(record: SampleRecord) -> dict:
    """What the index check needs of a record (kept per sample instead of the whole record)."""
    return {f: getattr(record, f) for f in (*INDEX_FIELDS, "duration_s")}


#: Largest number of FFmpeg errors quoted per sample.
MAX_QUOTED_ERRORS = 3


@dataclass(frozen=True)
class Problem:
    """One thing wrong: ``where`` is a path under the set root, ``shard:key`` for a sample."""

    where: str
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


class _HashingReader:
    """A read-only stream that hashes (sha256) and counts the bytes passing through it."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.sha256 = hashlib.sha256()
        self.bytes = 0

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.sha256.update(data)
        self.bytes += len(data)
        return data

    def drain(self, chunk: int = 1 << 20) -> None:
        while self.read(chunk):
            pass


def check_record(record: SampleRecord, kind: ShardKind, where: str) -> list[Problem]:
    """Problems of one parsed record in a set of ``kind``: duration arithmetic, caption state."""
    problems = []
    if abs(record.duration_s - record.num_frames / record.fps) > 0.5 / record.fps:
        problems.append(
            Problem(where, f"duration_s {record.duration_s} != num_frames/fps {record.num_frames / record.fps:.4f}")
        )
    if kind == "captioned" and record.caption_status == "pending":
        problems.append(Problem(where, "caption_status 'pending' in a captioned set"))
    return problems


def check_mp4_member(record: SampleRecord, mp4: bytes, where: str) -> list[Problem]:
    """Problems of a sample's mp4 against its JSON (decoded with PyAV)."""
    problems = []
    found = check_mp4(mp4)
    if found.errors:
        quoted = "; ".join(found.errors[:MAX_QUOTED_ERRORS])
        more = len(found.errors) - MAX_QUOTED_ERRORS
        problems.append(
            Problem(where, f"mp4 does not decode cleanly: {quoted}" + (f" (+{more} more)" if more > 0 else ""))
        )
    if found.num_frames != record.num_frames:
        problems.append(Problem(where, f"json claims {record.num_frames} frames, mp4 decodes to {found.num_frames}"))
    if found.width and (found.width, found.height) != (record.width, record.height):
        problems.append(
            Problem(where, f"json claims {record.width}x{record.height}, mp4 is {found.width}x{found.height}")
        )
    if found.fps and abs(found.fps - record.fps) > 0.01:
        problems.append(Problem(where, f"json claims {record.fps} fps, mp4 runs at {found.fps:g} fps"))
    return problems


def check_latents_member(record_json: bytes, tensors: bytes, where: str) -> list[Problem]:
    """Problems of a sample's ``.safetensors`` member (:class:`dataset.latents.LatentSample`)."""
    try:
        sample = LatentSample.from_members(record_json, tensors)
    except Exception as err:  # noqa: BLE001 - any parse failure of the member is the problem reported
        return [Problem(where, f"safetensors unreadable ({type(err).__name__}: {err})")]
    problems = []
    shape = tuple(sample.latents.shape)
    try:
        frames = num_latent_frames(sample.num_frames)
    except ValueError as err:
        return [Problem(where, f"safetensors metadata: {err}")]
    if len(shape) != 4 or shape[1] != frames:
        problems.append(Problem(where, f"latents {list(shape)}: expected [C, {frames}, H, W] for {sample.num_frames} frames"))
    if sample.num_frames > sample.record.num_frames:
        problems.append(Problem(where, f"{sample.num_frames} frames encoded, the record has {sample.record.num_frames}"))
    if sample.context.ndim != 2:
        problems.append(Problem(where, f"context {list(sample.context.shape)}: expected [L, D]"))
    return problems


def verify_shard(
    shard_set: ShardSet, name: str, expected: ShardInfo | None, kind: ShardKind, *, decode: bool = True
) -> tuple[dict[str, dict], list[Problem]]:
    """Stream shard ``name`` once; return its valid samples (key → :func:`index_fields`) and
    every problem found. ``expected``: the shard's manifest entry, or ``None``.
    ``decode=False`` skips decoding the mp4s.
    """
    where = f"shards/{name}"
    extensions = KIND_MEMBERS[kind]
    records: dict[str, dict] = {}
    problems: list[Problem] = []

    def record_problem(exn: Exception) -> bool:  # verify's handler: note it, go on
        if isinstance(exn, tarfile.TarError) and not isinstance(exn, UnsafeTarError):
            problems.append(Problem(where, f"unreadable tar after {reader.bytes} bytes: {exn}"))
        else:
            problems.append(Problem(where, str(exn)))
        return True

    def select(member: str) -> bool:  # a badly named member is a problem, never read
        key, ext = member_key(member)
        if key is None or not KEY_PATTERN.match(key):
            problems.append(Problem(where, f"member {member!r}: key {key!r} does not match {KEY_PATTERN.pattern}"))
            return False
        if ext not in extensions:
            problems.append(Problem(where, f"member {member!r}: unexpected extension "
                                           f"({kind} shards hold {', '.join('.' + e for e in extensions)})"))
            return False
        return True

    with shard_set.fs.open_input_stream(shard_set.layout.shard(name)) as stream:
        reader = _HashingReader(stream)
        for sample in iter_samples(reader, url=where, max_member_bytes=shard_set.max_member_bytes,
                                   select=select, handler=record_problem):
            key = sample["__key__"]
            missing = [e for e in extensions if e not in sample]
            if missing:
                problems.append(Problem(f"{where}:{key}", f"sample lacks its {missing} member"))
                continue
            try:
                record = parse_record(sample["json"], key)
            except BadRecordError as err:
                problems.append(Problem(f"{where}:{key}", err.problem))
                continue
            problems += check_record(record, kind, f"{where}:{key}")
            if "mp4" in extensions and decode:
                problems += check_mp4_member(record, sample["mp4"], f"{where}:{key}")
            if "safetensors" in extensions:
                problems += check_latents_member(sample["json"], sample["safetensors"], f"{where}:{key}")
            if key in records:
                problems.append(Problem(f"{where}:{key}", "key appears twice in the shard"))
            records[key] = index_fields(record)
        reader.drain()
    if expected is not None:
        if reader.sha256.hexdigest() != expected.sha256:
            problems.append(Problem(where, f"sha256 {reader.sha256.hexdigest()} differs from the manifest's"))
        if reader.bytes != expected.bytes:
            problems.append(Problem(where, f"{reader.bytes} bytes, manifest says {expected.bytes}"))
        if sorted(expected.keys) != sorted(records):
            missing = sorted(set(expected.keys) - set(records))
            extra = sorted(set(records) - set(expected.keys))
            problems.append(
                Problem(where, f"valid samples differ from the manifest's keys: missing {missing}, extra {extra}")
            )
        if expected.num_samples != len(expected.keys):
            problems.append(Problem("manifest.json", f"{name}: num_samples disagrees with its keys"))
    return records, problems


def _check_manifest(shard_set: ShardSet) -> tuple[dict[str, ShardInfo | None], ShardKind, list[Problem]]:
    """Shard name → manifest entry (``None`` for unlisted files), the set's kind, and problems
    of the listing."""
    problems = []
    files = shard_set.shard_files()
    try:
        manifest = shard_set.manifest()
    except ManifestError as err:
        manifest = None
        problems.append(Problem("manifest.json", str(err).removeprefix("manifest.json: ")))
    entries: dict[str, ShardInfo | None] = {}
    if manifest is None:
        if not problems:
            problems.append(Problem("manifest.json", "missing: shard checksums cannot be checked"))
    else:
        for entry in manifest.shards:
            if entry.name in entries:
                problems.append(Problem("manifest.json", f"{entry.name} listed twice"))
            entries[entry.name] = entry
        problems += [Problem(f"shards/{n}", "listed in the manifest but missing") for n in entries if n not in files]
        problems += [Problem(f"shards/{n}", "not listed in the manifest") for n in files if n not in entries]
    for name in files:
        entries.setdefault(name, None)
    root = shard_set.layout.root.rstrip("/")
    for folder in (root, shard_set.layout.shards_dir, root + "/index"):  # where atomic writes land
        if shard_set.fs.get_file_info(folder).type != pafs.FileType.Directory:
            continue
        problems += [
            Problem(i.path[len(root) + 1:], "left-over temporary file (an interrupted write?)")
            for i in shard_set.fs.get_file_info(pafs.FileSelector(folder))
            if i.base_name.endswith(TMP_SUFFIX)
        ]
    kind = manifest.kind if manifest is not None else shard_set.sniff_kind()
    return {n: e for n, e in entries.items() if n in files}, kind, problems


def check_index(index: pa.Table | None, found: dict[str, list[tuple[str, dict]]]) -> list[Problem]:
    """Problems between ``index/samples.parquet`` and the samples ``found`` (key → [(shard,
    :func:`index_fields`)], one entry per shard holding the key)."""
    where = "index/samples.parquet"
    if index is None:
        return [Problem(where, "missing")]
    if "key" not in index.column_names:
        return [Problem(where, "has no 'key' column")]
    problems = []
    rows = index.to_pylist()
    counts = Counter(r["key"] for r in rows)
    problems += [Problem(where, f"key {k!r} has {n} rows") for k, n in counts.items() if n > 1]
    problems += [
        Problem(where, f"key {k!r} is in no shard (or its sample is invalid)") for k in counts if k not in found
    ]
    problems += [
        Problem(f"shards/{s}:{k}", "sample missing from the index")
        for k, v in found.items()
        for s, _ in v
        if k not in counts
    ]
    for row in rows:
        if row["key"] not in found:
            continue
        shard, record = found[row["key"]][0]
        if "shard" in row and row["shard"] != shard:
            problems.append(Problem(where, f"key {row['key']!r} says shard {row['shard']!r}, it is in {shard!r}"))
        for column in INDEX_FIELDS:
            if column in row and row[column] != record[column]:
                problems.append(
                    Problem(where, f"key {row['key']!r}: {column} {row[column]!r}, json says {record[column]!r}")
                )
        if "duration_s" in row and abs(row["duration_s"] - record["duration_s"]) > 1e-3:
            problems.append(
                Problem(where, f"key {row['key']!r}: duration_s {row['duration_s']}, json says {record['duration_s']}")
            )
    return problems


def verify(shard_set: ShardSet, *, decode: bool = True) -> list[Problem]:
    """Every problem of the shard set (empty when it is sound), shards streamed one at a time.

    ``decode=False`` skips decoding the mp4s (the slow part; about as long as a decode pass).
    """
    entries, kind, problems = _check_manifest(shard_set)
    found: dict[str, list[tuple[str, dict]]] = {}
    for name in shard_set.progress_bar(list(entries), "verifying"):
        records, shard_problems = verify_shard(shard_set, name, entries[name], kind, decode=decode)
        problems += shard_problems
        for key, record in records.items():
            found.setdefault(key, []).append((name, record))
    problems += [
        Problem(f"shards/{v[0][0]}:{k}", f"key also in {', '.join(s for s, _ in v[1:])}")
        for k, v in found.items()
        if len(v) > 1
    ]
    if kind == "latents" and not shard_set.has_index():
        return problems  # precompute writes no index
    try:
        index = shard_set.table(shard_set.layout.samples_index)
    except (pa.ArrowInvalid, OSError) as err:
        return problems + [Problem("index/samples.parquet", f"unreadable: {err}")]
    return problems + check_index(index, found)
