"""Captioning an existing shard set into a new one: ``multishot annotate --shards IN --output OUT``.

IN is a shard set of kind samples or captioned (:mod:`dataset.shards`). OUT, of kind captioned, gets
the same shard names with every ``{key}.json`` captioned (``caption_status`` ok / failed, the
reason in ``caption_error``; failed samples are kept), a new ``index/samples.parquet`` with the
caption columns, copies of the other index tables and config, a manifest (checksums, IN's
samples_hash) and a report. A shard already present in OUT is complete (shards are written atomically) and is
skipped on a rerun, so an interrupted run resumes where it stopped, but only while the IN shard
it was captioned from is the same (its sha256, recorded in ``OUT/_work/annotate/{name}.json``
after the shard): a changed IN captioned into an old OUT redoes the changed shards, and OUT
shards IN no longer has are moved to ``OUT/_work/set_aside/``.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from tqdm import tqdm

from multishot.annotate.captioner import Captioner
from multishot.dataset.record import SampleRecord
from multishot.config import dump_yaml
from multishot.dataset.shardset import sample_row
from multishot.dataset.shards import (Manifest, ShardInfo, ShardSetLayout, common_samples_hash, read_manifest, read_shard, write_manifest, write_shard)
from multishot.dataset.storage import read_json, resolve, write_json

log = logging.getLogger(__name__)

#: the annotate config a run used, written next to its outputs (holds no credentials)
RESOLVED_CONFIG = "annotate.resolved.yaml"

#: columns of ``index/samples.parquet`` that annotation (re)writes
CAPTION_COLUMNS = ("caption_status", "caption_error", "caption_model")


def _exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type == pafs.FileType.File


def shard_names(fs: pafs.FileSystem, layout: ShardSetLayout) -> tuple[list[str], int | None]:
    """Shard names in manifest order (else sorted ``*.tar`` in ``shards/``) and the sample total if known.

    Raises:
        ValueError: IN is a latent set (no videos to caption), or its manifest is damaged.
    """
    manifest = read_manifest(fs, layout)
    if manifest is not None:
        if manifest.kind == "latents":
            raise ValueError(f"{layout.root} is a latent shard set: annotate needs the videos (a samples set)")
        return [s.name for s in manifest.shards], sum(s.num_samples for s in manifest.shards)
    listing = fs.get_file_info(pafs.FileSelector(layout.shards_dir, allow_not_found=True))
    return sorted(i.base_name for i in listing if i.base_name.endswith(".tar")), None


def _source_marker(layout: ShardSetLayout, name: str) -> str:
    return f"{layout.work_dir}/annotate/{name}.json"


def _input_sha256(fs: pafs.FileSystem, layout: ShardSetLayout, name: str, listed: dict[str, str]) -> str:
    """sha256 of IN's shard ``name``: its manifest entry's, else computed from the file."""
    if name in listed:
        return listed[name]
    digest = hashlib.sha256()
    with fs.open_input_stream(layout.shard(name)) as stream:
        while chunk := stream.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _made_from(out_fs: pafs.FileSystem, dst: ShardSetLayout, name: str, input_sha256: str) -> bool:
    """Whether OUT's shard ``name`` was captioned from the IN shard with this sha256."""
    path = _source_marker(dst, name)
    if not _exists(out_fs, path):
        return False
    try:
        marker = read_json(out_fs, path)
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("input_sha256") == input_sha256


def _set_aside_unlisted(fs: pafs.FileSystem, layout: ShardSetLayout, names: list[str]) -> None:
    """Move OUT tars that IN no longer lists to ``_work/set_aside/`` (kept, never deleted)."""
    if fs.get_file_info(layout.shards_dir).type != pafs.FileType.Directory:
        return
    keep = set(names)
    for info in fs.get_file_info(pafs.FileSelector(layout.shards_dir)):
        if info.base_name.endswith(".tar") and info.base_name not in keep:
            aside = f"{layout.work_dir}/set_aside"
            log.warning("moving %s to %s: the input set no longer has it", info.base_name, aside)
            fs.create_dir(aside, recursive=True)
            fs.move(info.path, f"{aside}/{info.base_name}")


def _read_done(fs: pafs.FileSystem, path: str) -> tuple[ShardInfo, list[SampleRecord]]:
    """ShardInfo (checksum recomputed) and records of a shard already written to OUT."""
    with fs.open_input_stream(path) as stream:
        data = stream.read()
    records = [record for record, _ in read_shard(fs, path)]
    name = path.rsplit("/", 1)[-1]
    return ShardInfo(name, hashlib.sha256(data).hexdigest(), len(data), len(records), [r.key for r in records]), records


def _samples_table(fs: pafs.FileSystem, source: ShardSetLayout, records: dict[str, tuple[str, SampleRecord]]) -> pa.Table:
    """IN's samples index with the caption columns replaced by the new records' (joined on key).

    Samples that could not be captioned at all (their shard was unreadable) keep IN's values.
    Without an IN index, the rows are built from the records (:func:`dataset.shardset.sample_row`).
    """
    if not _exists(fs, source.samples_index):
        log.warning("%s is missing; building the index from the shards' records", source.samples_index)
        table = pa.Table.from_pylist([sample_row(record, shard) for shard, record in records.values()])
    else:
        table = pq.read_table(source.samples_index, filesystem=fs)
    keys = table["key"].to_pylist()
    for column in CAPTION_COLUMNS:
        old = table[column].to_pylist() if column in table.column_names else [None] * len(keys)
        if column == "caption_status":
            old = [v or "pending" for v in old]
        new = [getattr(records[k][1], column) if k in records else v for k, v in zip(keys, old)]
        array = pa.array(new, type=pa.string())
        if column in table.column_names:
            table = table.set_column(table.column_names.index(column), column, array)
        else:
            table = table.append_column(column, array)
    return table


def _copy_if_present(in_fs: pafs.FileSystem, src: str, out_fs: pafs.FileSystem, dst: str) -> None:
    if _exists(in_fs, src):
        out_fs.create_dir(dst.rsplit("/", 1)[0], recursive=True)
        pafs.copy_files(src, dst, source_filesystem=in_fs, destination_filesystem=out_fs)


def all_failed(summary: dict) -> str | None:
    """The one-line problem when a run captioned nothing although it had samples (every sample
    failed: a wrong endpoint or key, the service down), else None."""
    if summary["samples"] and not summary["ok"]:
        first = next(iter(summary["failure_reasons"]), "unknown reason")
        return f"every sample failed ({summary['failed']} of {summary['samples']}; first reason: {first})"
    return None


def annotate_shard_set(captioner: Captioner, shards: str, output: str, *, retry_failed: bool = False) -> dict:
    """Caption every sample of the shard set at ``shards`` into a new shard set at ``output``.

    Args:
        captioner: does the captioning (its ``config.concurrency`` samples at a time).
        shards, output: shard-set roots (local paths or ``pyarrow.fs`` URIs); must differ.
        retry_failed: also redo OUT shards holding failed samples (cached replies cost nothing).

    Returns:
        The ``annotate`` section written into OUT's ``report.json``: counts of ok / failed
        samples, shards written / resumed / unreadable (with reasons), failure reasons, seconds.

    Raises:
        ValueError: ``shards`` and ``output`` are the same place.
    """
    started = time.monotonic()
    in_fs, in_root = resolve(shards)
    out_fs, out_root = resolve(output)
    if in_root.rstrip("/") == out_root.rstrip("/") and type(in_fs) is type(out_fs):
        raise ValueError("--output must differ from --shards: annotation writes a new shard set")
    src, dst = ShardSetLayout(in_root), ShardSetLayout(out_root)
    names, total = shard_names(in_fs, src)
    manifest = read_manifest(in_fs, src)
    listed = {s.name: s.sha256 for s in manifest.shards} if manifest is not None else {}
    infos: list[ShardInfo] = []
    records: dict[str, tuple[str, SampleRecord]] = {}  # key -> (shard name, captioned record)
    unreadable: dict[str, str] = {}
    written = resumed = 0

    # shard name → [(record, mp4)] → annotate (threads) → write shard → manifest / index rows
    with ThreadPoolExecutor(captioner.config.concurrency) as pool, tqdm(total=total, unit="sample", desc="annotate") as bar:
        for name in names:
            try:
                input_sha256 = _input_sha256(in_fs, src, name, listed)
            except OSError as err:
                unreadable[name] = f"{type(err).__name__}: {err}"
                log.error("skipping unreadable shard %s: %s", name, unreadable[name])
                continue
            if _exists(out_fs, dst.shard(name)) and not _made_from(out_fs, dst, name, input_sha256):
                log.warning("redoing %s: OUT's copy was not captioned from IN's current shard", name)
            elif _exists(out_fs, dst.shard(name)):
                info, done = _read_done(out_fs, dst.shard(name))
                if not (retry_failed and any(r.caption_status != "ok" for r in done)):
                    infos.append(info)
                    records.update((r.key, (name, r)) for r in done)
                    resumed += 1
                    bar.update(len(done))
                    continue
            try:
                samples = list(read_shard(in_fs, src.shard(name)))
            except (OSError, tarfile.TarError, ValueError) as err:  # pydantic's ValidationError is a ValueError
                unreadable[name] = f"{type(err).__name__}: {err}"
                log.error("skipping unreadable shard %s: %s", name, unreadable[name])
                continue

            def one(sample: tuple[SampleRecord, bytes]) -> SampleRecord:
                out = captioner.annotate(*sample)
                bar.update(1)
                return out

            captioned = list(pool.map(one, samples))
            infos.append(write_shard(out_fs, dst.shard(name), zip(captioned, (mp4 for _, mp4 in samples))))
            write_json(out_fs, _source_marker(dst, name), {"input_sha256": input_sha256})  # after the shard
            records.update((r.key, (name, r)) for r in captioned)
            written += 1
            bar.set_postfix(failed=sum(r.caption_status != "ok" for _, r in records.values()))

    _set_aside_unlisted(out_fs, dst, names)
    out_fs.create_dir(f"{out_root}/index", recursive=True)
    pq.write_table(_samples_table(in_fs, src, records), dst.samples_index, filesystem=out_fs)
    for path in ("shots_table", "rejects_table", "resolved_config"):
        _copy_if_present(in_fs, getattr(src, path), out_fs, getattr(dst, path))
    samples_hash = common_samples_hash(r for _, r in records.values())
    write_manifest(out_fs, dst, Manifest(kind="captioned", samples_hash=samples_hash, shards=infos))
    with out_fs.open_output_stream(f"{out_root}/{RESOLVED_CONFIG}") as out:
        out.write(dump_yaml(captioner.config).encode())

    statuses = collections.Counter(r.caption_status for _, r in records.values())
    reasons = collections.Counter(r.caption_error for _, r in records.values() if r.caption_error)
    summary = {
        "model": captioner.config.model,
        "prompt_version": captioner.prompt_version,
        "samples": len(records),
        "ok": statuses["ok"],
        "failed": statuses["failed"],
        "shards_written": written,
        "shards_resumed": resumed,
        "unreadable_shards": unreadable,
        "failure_reasons": dict(reasons.most_common(20)),
        "elapsed_s": round(time.monotonic() - started, 2),
    }
    report = read_json(in_fs, src.report) if _exists(in_fs, src.report) else {}
    write_json(out_fs, dst.report, {**(report if isinstance(report, dict) else {"pipeline": report}), "annotate": summary})
    return summary
