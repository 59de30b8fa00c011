"""Tests of ``multishot shards …`` on a shard set built from the real footage in ../shared/footage.

The set is made here (real decode with PyAV, real H.264 encode, ``write_shard``, Parquet index,
manifest) in the layout ``dataset/shards.py`` documents: each sample joins shots taken from
different moments of a Blender film (© Blender Foundation, CC-BY 3.0), so its cuts are real.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import tarfile
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from multishot.dataset.frames import check_mp4
from multishot.dataset.record import SampleRecord, Shot, latent_cut_frame, num_latent_frames
from multishot.dataset.shards import (Manifest, ShardSetLayout, UnsafeTarError, read_shard, write_manifest, write_shard)
from multishot.dataset.storage import resolve, write_json
from multishot.dataset.shardset import ShardSet
from multishot.dataset.verify import verify
from multishot.cli import main

FOOTAGE = Path(__file__).resolve().parents[2] / "shared" / "footage"
FPS = 16
WIDTH, HEIGHT = 416, 240

# (key, film, [(source start s, output frames), ...], captions or None); frame totals are 4k+1.
SAMPLES = [
    ("sintel-a", "sintel_film_excerpt_26s.mp4", [(1.0, 12), (6.0, 12), (11.0, 9)], None),
    (
        "sintel-b",
        "sintel_film_excerpt_26s.mp4",
        [(15.0, 20), (19.0, 9)],
        (
            "A girl on a cliff top above a ruined city at dusk.",
            [
                "She stands beside a stone statue, the city behind her.",
                "Her silhouette and the statue against a pink sky.",
            ],
        ),
    ),
    ("bbb-a", "bbb_first60s_360p.mp4", [(20.0, 17)], None),
]
SHARDS = {"sintel-00000.tar": ["sintel-a", "sintel-b"], "bbb-00000.tar": ["bbb-a"]}


def _decode(path: Path, until_s: float) -> tuple[list[np.ndarray], float]:
    """RGB frames (scaled to WIDTH x HEIGHT) of ``path`` up to ``until_s`` and the source fps."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate)
        frames = []
        for frame in container.decode(stream):
            if len(frames) > until_s * fps:
                break
            frames.append(frame.to_ndarray(format="rgb24", width=WIDTH, height=HEIGHT))
    return frames, fps


def _encode(frames: list[np.ndarray]) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.options = {"preset": "ultrafast"}
        for array in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
        out.mux(stream.encode())
    return buf.getvalue()


def _sample(key, film, spans, captions) -> tuple[SampleRecord, bytes]:
    source = FOOTAGE / "archive" / film
    decoded, source_fps = _decode(source, max(s for s, _ in spans) + 2)
    frames, shots, start = [], [], 0
    for index, (start_s, count) in enumerate(spans):
        picks = [round((start_s + j / FPS) * source_fps) for j in range(count)]
        clip = [decoded[i] for i in picks]
        luma = np.mean([f @ np.array([0.2126, 0.7152, 0.0722]) for f in clip])
        frames += clip
        shots.append(
            Shot(
                index=index,
                source_start_frame=picks[0],
                source_end_frame=picks[-1] + 1,
                source_start_s=picks[0] / source_fps,
                source_end_s=(picks[-1] + 1) / source_fps,
                start_frame=start,
                end_frame=start + count,
                latent_start_frame=0 if start == 0 else latent_cut_frame(start),
                brightness=float(luma),
                ocr_text_ratio=0.0,
                aesthetic=None,
                caption=captions[1][index] if captions else "",
            )
        )
        start += count
    cuts = [s.start_frame for s in shots[1:]]
    record = SampleRecord(
        key=key,
        source=str(source),
        source_id=film.split("_")[0],
        bucket="2s",
        target_duration_s=2.0,
        fps=FPS,
        width=WIDTH,
        height=HEIGHT,
        num_frames=start,
        num_latent_frames=num_latent_frames(start),
        duration_s=start / FPS,
        cut_frames=cuts,
        latent_cut_frames=[latent_cut_frame(c) for c in cuts],
        shots=shots,
        aesthetic_status="skipped",
        caption_status="ok" if captions else "pending",
        caption_model="test-model" if captions else None,
        global_caption=captions[0] if captions else "",
        samples_hash="test",
    )
    return record, _encode(frames)


def _write_index(layout: ShardSetLayout, placed: list[tuple[str, SampleRecord]]) -> None:
    fs, _ = resolve(layout.root)
    rows = []
    for shard, r in placed:
        rows.append(
            {
                "key": r.key,
                "shard": shard,
                "source": r.source,
                "source_id": r.source_id,
                "bucket": r.bucket,
                "duration_s": r.duration_s,
                "num_frames": r.num_frames,
                "num_shots": r.num_shots,
                "caption_status": r.caption_status,
                "aesthetic_status": r.aesthetic_status,
                "aesthetic_mean": None,
                "ocr_text_ratio_max": max(s.ocr_text_ratio for s in r.shots),
                "brightness_mean": float(np.mean([s.brightness for s in r.shots])),
            }
        )
    Path(layout.samples_index).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), layout.samples_index)
    shots = [
        {
            "source": r.source,
            "source_id": r.source_id,
            "shot_index": s.index,
            "start_frame": s.source_start_frame,
            "end_frame": s.source_end_frame,
            "start_s": s.source_start_s,
            "end_s": s.source_end_s,
            "brightness": s.brightness,
            "ocr_text_ratio": s.ocr_text_ratio,
            "aesthetic": s.aesthetic,
            "kept": True,
            "reason": "",
        }
        for _, r in placed
        for s in r.shots
    ]
    shots.append({**shots[0], "shot_index": 98, "brightness": 3.0, "kept": False, "reason": "too_dark"})
    shots.append(
        {
            **shots[0],
            "shot_index": 99,
            "brightness": 9.0,
            "ocr_text_ratio": 0.4,
            "kept": False,
            "reason": "too_dark,text",
        }
    )
    pq.write_table(pa.Table.from_pylist(shots), layout.shots_table)
    rejects = [
        {"source": str(FOOTAGE / "bad" / name), "stage": "probe", "reason": f"cannot open: {name}"}
        for name in ("corrupt_zero_bytes.mp4", "corrupt_random_bytes.mp4")
    ]
    pq.write_table(pa.Table.from_pylist(rejects), layout.rejects_table)


def _rewrite_shard(root: Path, name: str, samples: list[tuple[SampleRecord, bytes]]) -> None:
    """Rewrite shard ``name`` with ``samples`` and update its manifest entry (sha256 stays true)."""
    layout = ShardSetLayout(str(root))
    fs, _ = resolve(str(root))
    info = write_shard(fs, layout.shard(name), samples)
    manifest = json.loads(Path(layout.manifest).read_text())
    manifest["shards"] = [info.to_dict() if s["name"] == name else s for s in manifest["shards"]]
    write_json(fs, layout.manifest, manifest)


@pytest.fixture(scope="module")
def good_set(tmp_path_factory) -> Path:
    """A sound shard set of 3 real samples in 2 shards (layout of ``dataset/shards.py``)."""
    root = tmp_path_factory.mktemp("shardset")
    layout = ShardSetLayout(str(root))
    fs, _ = resolve(str(root))
    samples = {spec[0]: _sample(*spec) for spec in SAMPLES}
    infos, placed = [], []
    for name, keys in SHARDS.items():
        infos.append(write_shard(fs, layout.shard(name), [samples[k] for k in keys]))
        placed += [(name, samples[k][0]) for k in keys]
    write_manifest(fs, layout, Manifest(kind="samples", samples_hash="test", shards=infos))
    _write_index(layout, placed)
    return root


@pytest.fixture
def copy_set(good_set, tmp_path) -> Path:
    """A writable copy of the good set, for tests that damage it."""
    return Path(shutil.copytree(good_set, tmp_path / "set"))


def _problems(root: Path) -> list[str]:
    return [str(p) for p in verify(ShardSet.open(str(root), progress=False))]


def _shards(args: list[str], capsys) -> tuple[int, str, str]:
    """Run ``multishot shards ARGS -q``; return exit code, stdout, stderr."""
    code = main(["shards", *args, "-q"])
    out, err = capsys.readouterr()
    return code, out, err


def _member_offsets(shard: Path) -> dict[str, tuple[int, int]]:
    with tarfile.open(shard) as tar:
        return {m.name: (m.offset_data, m.size) for m in tar.getmembers()}


# ---- verify ----------------------------------------------------------------------------------


def test_verify_passes_on_good_shards(good_set, capsys):
    assert _problems(good_set) == []
    code, out, err = _shards(["verify", f"file://{good_set}"], capsys)  # a pyarrow.fs URI
    assert code == 0 and out == "" and "no problems" in err


def test_verify_catches_flipped_byte_inside_mp4(copy_set, capsys):
    shard = copy_set / "shards" / "sintel-00000.tar"
    start, size = _member_offsets(shard)["sintel-b.mp4"]
    data = bytearray(shard.read_bytes())
    mp4 = bytes(data[start : start + size])
    mdat, moov = mp4.find(b"mdat"), mp4.find(b"moov")
    assert 0 < mdat < moov  # flip bytes in the coded pictures, not the container index
    positions = [mdat + (moov - mdat) * k // 8 for k in range(1, 8)]

    # H.264 conceals much damage; the decode check sees most single-byte flips, not all.
    flagged = []
    for pos in positions:
        damaged = bytearray(mp4)
        damaged[pos] ^= 0xFF
        flagged.append(bool(check_mp4(bytes(damaged)).errors))
    assert check_mp4(mp4).errors == [] and sum(flagged) >= 4, flagged

    # The manifest's sha256 catches every flip; a flip the decoder notices is named too.
    pos = positions[flagged.index(True)]
    data[start + pos] ^= 0xFF
    shard.write_bytes(bytes(data))
    problems = _problems(copy_set)
    assert any(p.startswith("shards/sintel-00000.tar: sha256") for p in problems)
    assert any(p.startswith("shards/sintel-00000.tar:sintel-b: mp4 does not decode cleanly: h264") for p in problems)
    assert not any("sintel-a" in p or "bbb" in p for p in problems)
    code, out, _ = _shards(["verify", str(copy_set)], capsys)
    assert code == 1 and out.splitlines() == problems

    data[start + pos] ^= 0xFF  # restore, then flip one the decoder does not notice, if any
    if not all(flagged):
        data[start + positions[flagged.index(False)]] ^= 0xFF
        shard.write_bytes(bytes(data))
        problems = _problems(copy_set)
        assert any("sha256" in p for p in problems) and not any("sintel-b" in p for p in problems)


def test_verify_catches_truncated_tar(copy_set, capsys):
    shard = copy_set / "shards" / "sintel-00000.tar"
    data = shard.read_bytes()
    cut = _member_offsets(shard)["sintel-b.mp4"][0] + 1000  # inside sintel-b's mp4
    shard.write_bytes(data[:cut])

    problems = _problems(copy_set)
    assert any("shards/sintel-00000.tar: unreadable tar" in p for p in problems)
    assert f"shards/sintel-00000.tar: {cut} bytes, manifest says {len(data)}" in problems
    assert any("sha256" in p for p in problems)
    assert "index/samples.parquet: key 'sintel-b' is in no shard (or its sample is invalid)" in problems
    assert not any("sintel-a" in p for p in problems)  # the sample before the cut is intact
    code, out, err = _shards(["verify", str(copy_set)], capsys)
    assert code == 1 and f"{len(problems)} problems" in err


def test_verify_catches_json_that_disagrees_with_its_video(copy_set, good_set):
    fs, _ = resolve(str(good_set))
    samples = list(read_shard(fs, str(good_set / "shards" / "sintel-00000.tar")))
    (record, mp4), other = samples
    # Claim 4 frames fewer than the mp4 has: still a valid record (4k+1 frames, shots tiling it).
    last = record.shots[-1].model_copy(update={"end_frame": record.num_frames - 4})
    lying = record.model_copy(
        update={
            "shots": [*record.shots[:-1], last],
            "num_frames": record.num_frames - 4,
            "num_latent_frames": num_latent_frames(record.num_frames - 4),
            "duration_s": (record.num_frames - 4) / FPS,
        }
    )
    SampleRecord.model_validate(lying.model_dump())  # the JSON itself passes the schema
    _rewrite_shard(copy_set, "sintel-00000.tar", [(lying, mp4), other])

    problems = _problems(copy_set)
    where = "shards/sintel-00000.tar:sintel-a"
    assert f"{where}: json claims 29 frames, mp4 decodes to 33" in problems
    assert "index/samples.parquet: key 'sintel-a': num_frames 33, json says 29" in problems
    assert not any("sha256" in p for p in problems)  # the manifest was updated: only the lie shows


def test_verify_catches_json_that_breaks_the_schema(copy_set):
    shard = copy_set / "shards" / "bbb-00000.tar"
    with tarfile.open(shard) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    broken = json.loads(members["bbb-a.json"])
    broken["num_frames"] = 18  # not 4k+1
    members["bbb-a.json"] = json.dumps(broken).encode()
    _write_tar(shard, list(members.items()))

    problems = _problems(copy_set)
    assert any(p.startswith("shards/bbb-00000.tar:bbb-a: json does not match SampleRecord") for p in problems)


def _write_tar(path: Path, members: list[tuple[str, bytes]], extra: list[tarfile.TarInfo] = ()) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra:
            tar.addfile(info)


def test_verify_and_readers_refuse_member_named_dotdot_evil(copy_set, tmp_path, capsys):
    shard = copy_set / "shards" / "bbb-00000.tar"
    with tarfile.open(shard) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    _write_tar(shard, [("../evil", b"#!/bin/sh\necho pwned\n"), *members])
    _rewrite_manifest_entry(copy_set, "bbb-00000.tar")

    problems = _problems(copy_set)
    assert "shards/bbb-00000.tar: member '../evil': '..' component in name" in problems
    assert not any("sha256" in p for p in problems)

    fs, _ = resolve(str(copy_set))
    with pytest.raises(UnsafeTarError, match=r"'\.\./evil': '\.\.' component"):
        list(read_shard(fs, str(shard)))
    out_dir = tmp_path / "out" / "inner"
    code, _, err = _shards(["export", str(copy_set), "bbb-a", "-o", str(out_dir)], capsys)
    assert code == 2 and "'../evil'" in err and "multishot shards verify" in err
    assert not (tmp_path / "out" / "evil").exists() and not out_dir.exists()


def _rewrite_manifest_entry(root: Path, name: str) -> None:
    """Make the manifest's checksum and size of shard ``name`` match the file as it is now."""
    import hashlib

    data = (root / "shards" / name).read_bytes()
    manifest_path = root / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for entry in manifest["shards"]:
        if entry["name"] == name:
            entry.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    manifest_path.write_text(json.dumps(manifest))


def _link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.mark.parametrize(
    ("members", "extra", "message"),
    [
        ([("/etc/evil.json", b"{}")], [], "absolute or empty name"),
        ([("ok/../../evil.json", b"{}")], [], "'..' component"),
        ([], [_link("k.mp4", "/etc/passwd", tarfile.SYMTYPE)], "link to '/etc/passwd'"),
        ([], [_link("k.json", "../outside", tarfile.LNKTYPE)], "link to '../outside'"),
        ([], [_link("k.fifo", "", tarfile.FIFOTYPE)], "not a regular file"),
        ([("k.mp4", b"x" * 4096)], [], "over the 1024-byte limit"),
    ],
)
def test_hostile_tar_members_are_refused(tmp_path, members, extra, message):
    path = tmp_path / "hostile.tar"
    _write_tar(path, members, extra)
    fs, _ = resolve(str(tmp_path))
    with pytest.raises(UnsafeTarError, match=re.escape(message)):
        list(read_shard(fs, str(path), max_member_bytes=1024))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hostile.tar"]  # nothing was written


# ---- ls / show / export / stats ----------------------------------------------------------------


def _keys(out: str) -> list[str]:
    return [json.loads(line)["key"] for line in out.splitlines()]


def test_ls_filters_and_json(good_set, capsys):
    code, out, _ = _shards(["ls", str(good_set), "--json"], capsys)
    assert code == 0 and _keys(out) == ["sintel-a", "sintel-b", "bbb-a"]
    assert json.loads(out.splitlines()[0])["num_shots"] == 3
    assert _keys(_shards(["ls", str(good_set), "--json", "--where", "num_shots>=2"], capsys)[1]) == [
        "sintel-a",
        "sintel-b",
    ]
    assert _keys(_shards(["ls", str(good_set), "--json", "--where", "caption_status=pending"], capsys)[1]) == [
        "sintel-a",
        "bbb-a",
    ]
    where = ["--where", "bucket=2s", "--where", "duration_s<2"]
    assert _keys(_shards(["ls", str(good_set), "--json", *where], capsys)[1]) == ["sintel-b", "bbb-a"]
    code, out, _ = _shards(["ls", str(good_set)], capsys)
    assert out.splitlines()[0].split()[:3] == ["key", "bucket", "duration_s"] and len(out.splitlines()) == 4
    code, _, err = _shards(["ls", str(good_set), "--where", "shots>2"], capsys)
    assert code == 2 and "unknown field 'shots'" in err and "num_shots" in err


def test_ls_without_index_reads_the_shards(copy_set, capsys):
    def listing() -> list[dict]:
        return [json.loads(line) for line in _shards(["ls", str(copy_set), "--json"], capsys)[1].splitlines()]

    with_index = listing()
    index = pq.read_table(copy_set / "index" / "samples.parquet")
    pq.write_table(index.select(["key", "shard", "num_shots"]), copy_set / "index" / "samples.parquet")
    partial = listing()  # too few columns: read from the shards' JSON instead
    shutil.rmtree(copy_set / "index")
    for without in (partial, listing()):
        assert [r["key"] for r in without] == [r["key"] for r in with_index]
        for a, b in zip(with_index, without):
            assert {k: a[k] for k in ("shard", "num_frames", "num_shots", "caption_status", "duration_s")} == {
                k: b[k] for k in ("shard", "num_frames", "num_shots", "caption_status", "duration_s")
            }
            assert b["brightness_mean"] == pytest.approx(a["brightness_mean"])
    code, out, _ = _shards(["show", str(copy_set), "bbb-a"], capsys)  # found through the manifest
    assert code == 0 and "bbb-a" in out


def test_show_prints_prompt_or_pending_state(good_set, capsys):
    fs, _ = resolve(str(good_set))
    record = next(r for r, _ in read_shard(fs, str(good_set / "shards" / "sintel-00000.tar")) if r.key == "sintel-b")
    code, out, _ = _shards(["show", str(good_set), "sintel-b"], capsys)
    assert code == 0
    assert out.rstrip().endswith(record.prompt())
    assert record.prompt().startswith("[global caption] A girl on a cliff") and "[shot cut]" in record.prompt()
    assert "shot_cut_frames   [20]" in out and "latent cut frames [5]" in out
    code, out, _ = _shards(["show", str(good_set), "sintel-a"], capsys)
    assert "PENDING" in out and "[global caption]" not in out and "shot_cut_frames   [12, 24]" in out
    code, _, err = _shards(["show", str(good_set), "nope"], capsys)
    assert code == 2 and "no sample 'nope'" in err


def test_export_writes_mp4_and_prompt(good_set, tmp_path, capsys):
    fs, _ = resolve(str(good_set))
    shard = {r.key: (r, mp4) for r, mp4 in read_shard(fs, str(good_set / "shards" / "sintel-00000.tar"))}
    code, out, _ = _shards(["export", str(good_set), "sintel-b", "-o", str(tmp_path / "b")], capsys)
    assert code == 0 and len(out.splitlines()) == 3
    record, mp4 = shard["sintel-b"]
    assert (tmp_path / "b" / "sintel-b.mp4").read_bytes() == mp4
    assert (tmp_path / "b" / "sintel-b.txt").read_text().strip() == record.prompt()
    assert SampleRecord.from_json((tmp_path / "b" / "sintel-b.json").read_bytes()) == record
    code, _, err = _shards(["export", str(good_set), "sintel-a", "-o", str(tmp_path / "a")], capsys)
    assert code == 0 and "no prompt written" in err
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["sintel-a.json", "sintel-a.mp4"]

    (tmp_path / "c").mkdir()  # a planted link must not redirect the write outside the folder
    (tmp_path / "c" / "sintel-a.mp4").symlink_to(tmp_path / "outside.mp4")
    code, _, err = _shards(["export", str(good_set), "sintel-a", "-o", str(tmp_path / "c")], capsys)
    assert code == 2 and "symbolic link" in err and not (tmp_path / "outside.mp4").exists()


def test_listing_a_truncated_shard_without_index_fails_loudly(copy_set, capsys):
    # ls reads only the JSON members and skips the videos by seeking: a cut inside a skipped
    # video must still be noticed, not end the listing quietly one sample short
    shard = copy_set / "shards" / "sintel-00000.tar"
    data = shard.read_bytes()
    shard.write_bytes(data[: _member_offsets(shard)["sintel-b.mp4"][0] + 1000])
    shutil.rmtree(copy_set / "index")
    code, out, err = _shards(["ls", str(copy_set), "--json"], capsys)
    assert code == 2 and err.count("\n") == 1 and "unexpected end of data" in err and "sintel-b" not in out


def test_stats_totals_and_plot(good_set, tmp_path, capsys):
    png = tmp_path / "stats.png"
    code, out, _ = _shards(["stats", str(good_set), "--json", "--plot", str(png)], capsys)
    summary = json.loads(out)
    assert code == 0
    assert (summary["samples"], summary["shots"]) == (3, 6)
    assert summary["hours"] == pytest.approx((33 + 29 + 17) / FPS / 3600)
    assert summary["shots_per_sample"] == {"1": 1, "2": 1, "3": 1}
    assert summary["caption_status"] == {"ok": 1, "pending": 2}
    assert summary["shot_rejections"] == {"too_dark": 2, "text": 1}
    assert summary["scores"]["brightness"]["kept"]["n"] == 6 and summary["scores"]["aesthetic"]["kept"] is None
    assert summary["scores"]["brightness"]["rejected"] == {"n": 2, "min": 3.0, "median": 6.0, "max": 9.0}
    assert summary["video_rejections"] == {"probe: cannot open": 2}
    with Image.open(png) as image:
        assert image.size == (1500, 850)
        assert len(np.unique(np.asarray(image.convert("RGB")).reshape(-1, 3), axis=0)) > 50  # not a blank canvas


# ---- sheet -------------------------------------------------------------------------------------


def test_sheet_has_one_row_per_shot_showing_that_shot(good_set, tmp_path, capsys):
    from multishot.dataset.sheet import GAP, RULE_COLOUR, plan_sheet

    png = tmp_path / "sheet.png"
    code, _, err = _shards(["sheet", str(good_set), "sintel-a", "-o", str(png), "--frames", "3"], capsys)
    assert code == 0 and "3 shots" in err
    fs, _ = resolve(str(good_set))
    record, mp4 = next(
        (r, m) for r, m in read_shard(fs, str(good_set / "shards" / "sintel-00000.tar")) if r.key == "sintel-a"
    )
    layout = plan_sheet(record, frames_per_shot=3)
    image = np.asarray(Image.open(png).convert("RGB"))
    assert image.shape[:2] == (layout.height, layout.width)
    assert layout.height == layout.row_tops[0] + record.num_shots * layout.row_height + 12

    # Count the rows from the pixels: full-width grey rules, one above each shot's row.
    rules = [y for y in range(image.shape[0]) if (image[y] == RULE_COLOUR).all()]
    assert rules == layout.row_tops and len(rules) == record.num_shots == 3

    # Each row shows its own shot: its middle thumbnail matches that shot's frame best.
    with av.open(io.BytesIO(mp4)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    size = (layout.thumb_width, layout.thumb_height)
    x = 12 + layout.thumb_width + GAP
    for row, (top, frames) in enumerate(zip(layout.row_tops, layout.frames)):
        y = top + GAP // 2 + 1
        crop = image[y + 20 : y + layout.thumb_height, x : x + layout.thumb_width].astype(float)  # below the label
        errors = []
        for other in layout.frames:
            ref = np.asarray(Image.fromarray(decoded[other[1]]).resize(size))[20:].astype(float)
            errors.append(np.abs(crop - ref).mean())
        assert int(np.argmin(errors)) == row and errors[row] < 8, errors
        assert record.shots[row].start_frame <= frames[1] < record.shots[row].end_frame


# ---- every kind of shard set -------------------------------------------------------------------


def _read_all(root: Path) -> dict[str, tuple[str, SampleRecord, bytes]]:
    """key → (shard name, record, mp4) of a samples set."""
    fs, _ = resolve(str(root))
    return {r.key: (name, r, mp4) for name in SHARDS for r, mp4 in read_shard(fs, str(root / "shards" / name))}


@pytest.fixture(scope="module")
def captioned_set(good_set, tmp_path_factory) -> Path:
    """The good set as ``multishot annotate`` leaves it: every record ok or failed, kind captioned
    (written with annotate's writers: ``write_shard`` + a captioned ``Manifest``)."""
    root = tmp_path_factory.mktemp("captioned")
    layout = ShardSetLayout(str(root))
    fs, _ = resolve(str(root))
    samples = _read_all(good_set)
    captioned = {
        "sintel-a": samples["sintel-a"][1].model_copy(update={"caption_status": "failed", "caption_error": "blocked"}),
        "sintel-b": samples["sintel-b"][1],
        "bbb-a": samples["bbb-a"][1].model_copy(update={
            "caption_status": "ok", "caption_model": "test-model", "global_caption": "A rabbit in a meadow.",
            "shots": [samples["bbb-a"][1].shots[0].model_copy(update={"caption": "The rabbit yawns."})]}),
    }
    infos = [write_shard(fs, layout.shard(name), [(captioned[k], samples[k][2]) for k in keys])
             for name, keys in SHARDS.items()]
    write_manifest(fs, layout, Manifest(kind="captioned", samples_hash="test", shards=infos))
    _write_index(layout, [(samples[k][0], captioned[k]) for keys in SHARDS.values() for k in keys])
    return root


def _latent_samples(good_set: Path, num_frames: int = 17) -> dict[str, list]:
    """shard name → LatentSamples of the good set's records: random latents and context of
    the shapes ``multishot precompute`` writes (16 channels, 64×64 pixels → 8×8 latents)."""
    import torch

    from multishot.dataset.latents import LatentSample
    from multishot.dataset.loader import PLACEHOLDER_CAPTION
    from multishot.dataset.record import build_prompt

    samples = _read_all(good_set)
    generator = torch.Generator().manual_seed(0)
    out = {}
    for name, keys in SHARDS.items():
        out[name] = []
        for key in keys:
            record = samples[key][1]
            prompt = record.prompt() if record.caption_status == "ok" else build_prompt(PLACEHOLDER_CAPTION, ["shot 1"])
            latents = torch.randn(16, num_latent_frames(num_frames), 8, 8, generator=generator)
            context = torch.randn(5, 32, generator=generator)
            out[name].append(LatentSample(record, latents, context, prompt, num_frames, 64, 64))
    return out


@pytest.fixture(scope="module")
def latent_set(good_set, tmp_path_factory) -> Path:
    """The good set as ``multishot precompute`` writes it: its writer (``write_latent_shard``)
    and manifest (kind latents), no index."""
    from multishot.dataset.latents import write_latent_shard

    root = tmp_path_factory.mktemp("latents")
    layout = ShardSetLayout(str(root))
    fs, _ = resolve(str(root))
    infos = [write_latent_shard(fs, layout.shard(name), samples) for name, samples in _latent_samples(good_set).items()]
    write_manifest(fs, layout, Manifest(kind="latents", samples_hash="test", shards=infos))
    return root


@pytest.mark.parametrize("kind", ["samples", "captioned", "latents"])
def test_ls_stats_verify_show_work_on_every_kind(kind, good_set, captioned_set, latent_set, capsys):
    root = {"samples": good_set, "captioned": captioned_set, "latents": latent_set}[kind]
    assert ShardSet.open(str(root)).kind() == kind
    code, out, _ = _shards(["ls", str(root), "--json"], capsys)
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [r["key"] for r in rows] == ["sintel-a", "sintel-b", "bbb-a"]
    assert [r["num_shots"] for r in rows] == [3, 2, 1] and {r["shard"] for r in rows} == set(SHARDS)
    expected_status = ["failed", "ok", "ok"] if kind == "captioned" else ["pending", "ok", "pending"]
    assert [r["caption_status"] for r in rows] == expected_status

    code, out, _ = _shards(["stats", str(root), "--json"], capsys)
    summary = json.loads(out)
    assert code == 0 and (summary["samples"], summary["shots"]) == (3, 6)
    assert summary["hours"] == pytest.approx((33 + 29 + 17) / FPS / 3600)

    code, out, err = _shards(["verify", str(root)], capsys)
    assert (code, out) == (0, "") and "no problems" in err
    code, out, _ = _shards(["show", str(root), "sintel-b"], capsys)
    assert code == 0 and "shot_cut_frames   [20]" in out and "samples_hash      test" in out


def test_verify_checks_what_each_kind_holds(good_set, captioned_set, latent_set, tmp_path):
    from multishot.dataset.latents import write_latent_shard

    # a captioned set may not hold a sample still pending
    captioned = Path(shutil.copytree(captioned_set, tmp_path / "captioned"))
    samples = _read_all(good_set)
    _rewrite_shard(captioned, "bbb-00000.tar", [samples["bbb-a"][1:]])
    assert _problems(captioned) == ["shards/bbb-00000.tar:bbb-a: caption_status 'pending' in a captioned set",
                                    "index/samples.parquet: key 'bbb-a': caption_status 'ok', json says 'pending'"]

    # latents whose frame count disagrees with the frames they say were encoded
    latents = Path(shutil.copytree(latent_set, tmp_path / "latents"))
    layout, (fs, _) = ShardSetLayout(str(latents)), resolve(str(latents))
    sample = _latent_samples(good_set)["bbb-00000.tar"][0]
    sample.latents = sample.latents[:, :3]
    info = write_latent_shard(fs, layout.shard("bbb-00000.tar"), [sample])
    manifest = json.loads(Path(layout.manifest).read_text())
    manifest["shards"] = [info.to_dict() if s["name"] == info.name else s for s in manifest["shards"]]
    write_json(fs, layout.manifest, manifest)
    assert _problems(latents) == ["shards/bbb-00000.tar:bbb-a: latents [16, 3, 8, 8]: expected [C, 5, H, W] for 17 frames"]

    # an mp4 member in a latent set is not its kind's
    _write_tar(latents / "shards" / "extra.tar", [("bbb-a.json", samples["bbb-a"][1].to_json()),
                                                   ("bbb-a.mp4", samples["bbb-a"][2])])
    problems = _problems(latents)
    assert "shards/extra.tar: not listed in the manifest" in problems
    assert "shards/extra.tar: member 'bbb-a.mp4': unexpected extension (latents shards hold .json, .safetensors)" in problems
    assert "shards/extra.tar:bbb-a: sample lacks its ['safetensors'] member" in problems


def test_verify_reports_a_member_repeated_within_its_sample(copy_set):
    shard = copy_set / "shards" / "bbb-00000.tar"
    with tarfile.open(shard) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    _write_tar(shard, [*members, members[-1]])
    _rewrite_manifest_entry(copy_set, "bbb-00000.tar")
    assert _problems(copy_set) == [f"shards/bbb-00000.tar: member {members[-1][0]!r} appears twice in its sample"]


def test_sheet_of_a_latent_set_says_why_not(latent_set, tmp_path, capsys):
    code, out, err = _shards(["sheet", str(latent_set), "sintel-a", "-o", str(tmp_path / "s.png")], capsys)
    assert code == 2 and err.count("\n") == 1 and "no .mp4 member" in err and not (tmp_path / "s.png").exists()


def test_export_of_a_latent_sample_writes_its_members(latent_set, good_set, tmp_path, capsys):
    code, out, _ = _shards(["export", str(latent_set), "sintel-b", "-o", str(tmp_path)], capsys)
    assert code == 0 and sorted(p.name for p in tmp_path.iterdir()) == [
        "sintel-b.json", "sintel-b.safetensors", "sintel-b.txt"]
    from safetensors.torch import load_file

    assert load_file(tmp_path / "sintel-b.safetensors")["latents"].shape == (16, 5, 8, 8)
    assert SampleRecord.from_json((tmp_path / "sintel-b.json").read_bytes()) == _read_all(good_set)["sintel-b"][1]


def test_manifests_and_records_of_older_sets_still_read(tmp_path, good_set):
    from multishot.dataset.shards import read_manifest

    info = {"name": "a.tar", "sha256": "0" * 64, "bytes": 10, "num_samples": 1, "keys": ["a"]}
    layout, (fs, _) = ShardSetLayout(str(tmp_path)), resolve(str(tmp_path))
    for old, kind in [({"samples_hash": "h", "shards": [info]}, "samples"),  # the pipeline's
                      ({"shards": [info]}, "captioned"),  # annotate's
                      ({"a.tar": info}, "latents")]:  # precompute's
        write_json(fs, layout.manifest, old)
        manifest = read_manifest(fs, layout)
        assert manifest.kind == kind and [s.name for s in manifest.shards] == ["a.tar"]
    record = json.loads(_read_all(good_set)["bbb-a"][1].to_json())
    record["config_hash"] = record.pop("samples_hash")  # the record's name for it before
    assert SampleRecord.model_validate(record).samples_hash == "test"


def test_a_bad_manifest_is_one_line(copy_set, capsys):
    (copy_set / "manifest.json").write_text(json.dumps({"version": 1, "kind": "videos", "shards": []}))
    shutil.rmtree(copy_set / "index")  # the manifest is then what says where a key is
    code, _, err = _shards(["show", str(copy_set), "bbb-a"], capsys)
    assert code == 2 and err.count("\n") == 1 and "manifest.json: kind:" in err
    assert _problems(copy_set)[0].startswith("manifest.json: kind: Input should be 'samples', 'captioned' or 'latents'")


# ---- item 12: bad JSON, export targets, show of a big sample -----------------------------------


def _break_json(root: Path) -> None:
    """Make bbb-a's JSON break the schema (num_frames not 4k+1), manifest kept true."""
    shard = root / "shards" / "bbb-00000.tar"
    with tarfile.open(shard) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    broken = json.loads(members["bbb-a.json"])
    broken["num_frames"] = 18
    members["bbb-a.json"] = json.dumps(broken).encode()
    _write_tar(shard, list(members.items()))
    _rewrite_manifest_entry(root, "bbb-00000.tar")


def test_invalid_json_is_one_line_naming_the_sample(copy_set, tmp_path, capsys):
    _break_json(copy_set)
    shutil.rmtree(copy_set / "index")  # ls reads the shards' JSON
    for args in (["ls", str(copy_set)], ["show", str(copy_set), "bbb-a"],
                 ["export", str(copy_set), "bbb-a", "-o", str(tmp_path / "out")]):
        code, _, err = _shards(args, capsys)
        assert code == 2 and err.count("\n") == 1, (args, err)
        assert err.startswith(f"multishot shards {args[0]}: sample bbb-a: json does not match SampleRecord: "
                              "Value error, num_frames must be 4k+1, got 18"), err
    assert not (tmp_path / "out").exists()


def test_export_refuses_to_overwrite_unless_forced(good_set, tmp_path, capsys):
    out = tmp_path / "out"
    assert _shards(["export", str(good_set), "bbb-a", "-o", str(out)], capsys)[0] == 0
    (out / "bbb-a.mp4").write_bytes(b"mine")
    code, _, err = _shards(["export", str(good_set), "bbb-a", "-o", str(out)], capsys)
    assert code == 2 and err.count("\n") == 1 and "exists; pass --force" in err
    assert (out / "bbb-a.mp4").read_bytes() == b"mine"
    code, _, _ = _shards(["export", str(good_set), "bbb-a", "-o", str(out), "--force"], capsys)
    assert code == 0 and (out / "bbb-a.mp4").read_bytes() == _read_all(good_set)["bbb-a"][2]

    # -o naming a file, and a folder where a member's file would go: clear errors, nothing written
    code, _, err = _shards(["export", str(good_set), "bbb-a", "-o", str(out / "bbb-a.json")], capsys)
    assert code == 2 and err.count("\n") == 1 and "is a file; export writes into a folder" in err
    (tmp_path / "other" / "sintel-a.mp4").mkdir(parents=True)
    code, _, err = _shards(["export", str(good_set), "sintel-a", "-o", str(tmp_path / "other")], capsys)
    assert code == 2 and err.count("\n") == 1 and "sintel-a.mp4 is a folder" in err
    assert [p.name for p in (tmp_path / "other").iterdir()] == ["sintel-a.mp4"]


def _sparse_tar(path: Path, big_member: str, big_bytes: int, members: list[tuple[str, bytes]]) -> None:
    """A tar whose first member is ``big_bytes`` of zeros left as a hole in a sparse file (so
    the test writes almost nothing), followed by ``members``."""
    with open(path, "wb") as f:
        info = tarfile.TarInfo(big_member)
        info.size = big_bytes
        f.write(info.tobuf(format=tarfile.GNU_FORMAT))
        f.seek(big_bytes + (-big_bytes % tarfile.BLOCKSIZE), io.SEEK_CUR)
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            f.write(info.tobuf(format=tarfile.GNU_FORMAT) + data + b"\0" * (-len(data) % tarfile.BLOCKSIZE))
        f.write(b"\0" * tarfile.RECORDSIZE)


def test_show_of_a_900_mib_sample_reads_its_json_alone(good_set, tmp_path, capsys):
    import tracemalloc

    record = _read_all(good_set)["bbb-a"][1]
    root = tmp_path / "big"
    (root / "shards").mkdir(parents=True)
    big = 900 << 20
    _sparse_tar(root / "shards" / "big.tar", "bbb-a.mp4", big, [("bbb-a.json", record.to_json())])
    assert (root / "shards" / "big.tar").stat().st_blocks * 512 < 1 << 20  # sparse: the test stays small

    tracemalloc.start()
    try:
        code, out, _ = _shards(["show", str(root), "bbb-a", "--json"], capsys)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert code == 0 and SampleRecord.model_validate_json(out) == record
    assert peak < 16 << 20, f"show held {peak >> 20} MiB for a sample with a {big >> 20} MiB member"
