"""``multishot shards verify``: check a shard set end to end and list every problem found.

Checks, in one streaming pass per shard (each shard's bytes are read once: hashed, untarred
and decoded together, one sample in memory at a time):

* the manifest lists exactly the ``*.tar`` files in ``shards/`` (no stray or missing shards,
  no left-over temporary files) and each shard's sha256, size, sample count and keys match;
* every tar reads to its end; every member is a safe regular file (no absolute name, ``..``,
  link, or oversized member: :func:`dataset.shards.member_problem`) named ``{key}.mp4`` or
  ``{key}.json`` with a valid key, and every key has both members, once in the whole set;
* every ``.json`` is a valid :class:`~dataset.record.SampleRecord` whose key is its member's;
* every ``.mp4`` decodes without an FFmpeg error, with the frame count, size and frame rate
  its JSON claims, and ``duration_s == num_frames / fps``;
* ``index/samples.parquet`` has one row per sample, in the right shard, agreeing with the JSON.

Problems are collected, never raised, so one run reports all of them.
"""

from __future__ import annotations

import hashlib
import tarfile
from collections import Counter
from dataclasses import dataclass
from typing import BinaryIO

import pyarrow as pa
import pyarrow.fs as pafs
import pydantic

from multishot.dataset.frames import check_mp4
from multishot.dataset.record import KEY_PATTERN, SampleRecord
from multishot.dataset.shards import TMP_SUFFIX, member_problem
from multishot.dataset.shardset import ShardSet

#: Members a shard may hold per sample (see ``dataset.shards.write_shard``).
MEMBER_EXTENSIONS = ("mp4", "json")
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


def check_sample(record: SampleRecord, mp4: bytes, where: str, *, decode: bool = True) -> list[Problem]:
    """Problems of one parsed sample: duration arithmetic, and (``decode``) its mp4 against its JSON."""
    problems = []
    if abs(record.duration_s - record.num_frames / record.fps) > 0.5 / record.fps:
        problems.append(
            Problem(where, f"duration_s {record.duration_s} != num_frames/fps {record.num_frames / record.fps:.4f}")
        )
    if not decode:
        return problems
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


def _parse_record(data: bytes, key: str, where: str) -> tuple[SampleRecord | None, list[Problem]]:
    try:
        record = SampleRecord.from_json(data)
    except pydantic.ValidationError as err:
        errors = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'record'}: {e['msg']}" for e in err.errors()[:3])
        return None, [Problem(where, f"json does not match SampleRecord: {errors}")]
    if record.key != key:
        return None, [Problem(where, f"json key {record.key!r} differs from its member name")]
    return record, []


def verify_shard(
    shard_set: ShardSet, name: str, expected: dict | None, *, decode: bool = True
) -> tuple[dict[str, dict], list[Problem]]:
    """Stream shard ``name`` once; return its valid samples (key → :func:`index_fields`) and
    every problem found.

    ``expected`` is the shard's manifest entry (``ShardInfo.to_dict()``) or ``None``.
    """
    where = f"shards/{name}"
    records: dict[str, dict] = {}
    members: Counter[str] = Counter()
    pending: dict[str, dict[str, bytes]] = {}
    problems: list[Problem] = []
    with shard_set.fs.open_input_stream(shard_set.layout.shard(name)) as stream:
        reader = _HashingReader(stream)
        try:
            with tarfile.open(fileobj=reader, mode="r|") as tar:
                for member in tar:
                    refused = member_problem(member, shard_set.max_member_bytes)
                    key, _, ext = member.name.partition(".")
                    if not refused and not KEY_PATTERN.match(key):
                        refused = f"member {member.name!r}: key {key!r} does not match {KEY_PATTERN.pattern}"
                    if not refused and ext not in MEMBER_EXTENSIONS:
                        refused = f"member {member.name!r}: unexpected extension (shards hold .mp4 and .json)"
                    if refused:
                        problems.append(Problem(where, refused))
                        continue  # never read: tarfile skips its data
                    members[member.name] += 1
                    parts = pending.setdefault(key, {})
                    parts[ext] = tar.extractfile(member).read()
                    if len(parts[ext]) != member.size:
                        raise tarfile.ReadError(f"member {member.name!r}: unexpected end of data")
                    if len(parts) < len(MEMBER_EXTENSIONS):
                        continue
                    del pending[key]
                    record, found = _parse_record(parts["json"], key, f"{where}:{key}")
                    problems += found
                    if record is not None:
                        problems += check_sample(record, parts["mp4"], f"{where}:{key}", decode=decode)
                        if key in records:
                            problems.append(Problem(f"{where}:{key}", "key appears twice in the shard"))
                        records[key] = index_fields(record)
        except tarfile.TarError as err:
            problems.append(Problem(where, f"unreadable tar after {reader.bytes} bytes: {err}"))
        reader.drain()
    problems += [Problem(where, f"member {m!r} appears {n} times") for m, n in members.items() if n > 1]
    problems += [
        Problem(f"{where}:{k}", f"sample lacks its {sorted(set(MEMBER_EXTENSIONS) - set(p))} member")
        for k, p in pending.items()
    ]
    if expected is not None:
        if reader.sha256.hexdigest() != expected.get("sha256"):
            problems.append(Problem(where, f"sha256 {reader.sha256.hexdigest()} differs from the manifest's"))
        if reader.bytes != expected.get("bytes"):
            problems.append(Problem(where, f"{reader.bytes} bytes, manifest says {expected.get('bytes')}"))
        if sorted(expected.get("keys", [])) != sorted(records):
            missing = sorted(set(expected.get("keys", [])) - set(records))
            extra = sorted(set(records) - set(expected.get("keys", [])))
            problems.append(
                Problem(where, f"valid samples differ from the manifest's keys: missing {missing}, extra {extra}")
            )
        if expected.get("num_samples") != len(expected.get("keys", [])):
            problems.append(Problem("manifest.json", f"{name}: num_samples disagrees with its keys"))
    return records, problems


def _check_manifest(shard_set: ShardSet) -> tuple[dict[str, dict | None], list[Problem]]:
    """Shard name → manifest entry (``None`` for unlisted files), and problems of the listing."""
    problems = []
    files = shard_set.shard_files()
    try:
        manifest = shard_set.manifest()
    except ValueError as err:
        manifest = None
        problems.append(Problem("manifest.json", f"not valid JSON: {err}"))
    entries: dict[str, dict | None] = {}
    if manifest is None:
        if not problems:
            problems.append(Problem("manifest.json", "missing: shard checksums cannot be checked"))
    elif not isinstance(manifest, dict) or not all(
        isinstance(e, dict) and "name" in e for e in manifest.get("shards", [])
    ):
        problems.append(Problem("manifest.json", 'not {"shards": [{"name": …, "sha256": …}, …]}'))
    else:
        for entry in manifest["shards"]:
            if entry["name"] in entries:
                problems.append(Problem("manifest.json", f"{entry['name']} listed twice"))
            entries[entry["name"]] = entry
        problems += [Problem(f"shards/{n}", "listed in the manifest but missing") for n in entries if n not in files]
        problems += [Problem(f"shards/{n}", "not listed in the manifest") for n in files if n not in entries]
    for name in files:
        entries.setdefault(name, None)
    problems += [
        Problem(f"shards/{i.base_name}", "left-over temporary file (an interrupted write?)")
        for i in shard_set.fs.get_file_info(pafs.FileSelector(shard_set.layout.shards_dir))
        if i.base_name.endswith(TMP_SUFFIX)
    ]
    return {n: e for n, e in entries.items() if n in files}, problems


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
    entries, problems = _check_manifest(shard_set)
    found: dict[str, list[tuple[str, dict]]] = {}
    for name in shard_set.progress_bar(list(entries), "verifying"):
        records, shard_problems = verify_shard(shard_set, name, entries[name], decode=decode)
        problems += shard_problems
        for key, record in records.items():
            found.setdefault(key, []).append((name, record))
    problems += [
        Problem(f"shards/{v[0][0]}:{k}", f"key also in {', '.join(s for s, _ in v[1:])}")
        for k, v in found.items()
        if len(v) > 1
    ]
    try:
        index = shard_set.table(shard_set.layout.samples_index)
    except (pa.ArrowInvalid, OSError) as err:
        return problems + [Problem("index/samples.parquet", f"unreadable: {err}")]
    return problems + check_index(index, found)
