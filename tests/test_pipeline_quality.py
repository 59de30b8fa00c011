"""Samples an editor would sign off (issue 28): an edit of the bundled footage with dissolves,
fades, black, titles, lower-third text and letterbox / pillarbox bars (``tests/helpers/quality_edit.py``,
made at test time with known ground truth), through the real pipeline (TransNetV2, rapidocr,
sequential runner), checked against its truth and from the rendered samples themselves.
"""

from __future__ import annotations

import io
from typing import NamedTuple

import av
import numpy as np
import pyarrow.parquet as pq
import pytest
from quality_edit import build

from multishot.dataset.record import SampleRecord
from multishot.dataset.shards import ShardSetLayout, read_shard
from multishot.dataset.storage import resolve
from multishot.pipeline.config import PipelineConfig
from multishot.pipeline.run import run_pipeline

TOLERANCE = 4  # frames: a detected transition's span against the true one


class Sample(NamedTuple):
    record: SampleRecord
    mp4: bytes


@pytest.fixture(scope="module")
def quality_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("quality")
    edit = build(work / "in")
    config = PipelineConfig.model_validate({
        "input": str(work / "in"), "output": str(work / "out"),
        "analyse": {"analysis_short_side": 180},
        "pack": {"buckets": [{"name": "5s", "target_s": 5.0, "tolerance_s": 1.0}]},
        "render": {"width": 160, "height": 96},
        "ray": {"runner": "sequential"},
        # letterbox.mp4 and pillarbox.mp4 box one clip that the edit's meadow shot also shows:
        # near-duplicates by design (they are tests/test_dedup.py's subject, not this file's)
        "dedup": {"enabled": False},
    })
    report = run_pipeline(config, progress=False)
    layout = ShardSetLayout(str(work / "out"))
    shots = pq.read_table(layout.shots_table).to_pylist()
    samples = [Sample(*s) for tar in sorted((work / "out" / "shards").glob("*.tar")) for s in read_shard(*resolve(str(tar)))]
    return edit, layout, report, shots, samples


def _rows(shots: list[dict], name: str) -> list[dict]:
    return sorted((s for s in shots if s["source"].endswith(name)), key=lambda s: s["start_frame"])


def _decode(mp4: bytes) -> np.ndarray:
    with av.open(io.BytesIO(mp4)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def test_every_gradual_transition_is_found_with_its_span(quality_run):
    """Each true dissolve or fade (0.5-2 s) is a stretch of frames no clean shot holds (gradual
    transitions, and the black between a fade out and in), within 4 frames at both ends."""
    edit, _, _, shots, _ = quality_run
    clean = [(s["start_frame"], s["end_frame"]) for s in _rows(shots, "edit.mp4")
             if "black" not in s["reason"] and "too_short" not in s["reason"]]
    held = np.zeros(edit.truth.num_frames, bool)
    for a, b in clean:
        held[a:b] = True
    for a, b in edit.truth.gradual:
        middle = (a + b) // 2
        assert not held[middle], ((a, b), clean)
        lo, hi = middle, middle
        while lo > 0 and not held[lo - 1]:
            lo -= 1
        while hi < len(held) and not held[hi]:
            hi += 1
        assert abs(lo - a) <= TOLERANCE and abs(hi - b) <= TOLERANCE, ((a, b), (lo, hi), clean)


def test_no_sample_holds_a_transition_or_two_scenes_in_a_shot(quality_run):
    edit, _, _, _, samples = quality_run
    truth = edit.truth
    from_edit = [s for s in samples if s.record.source.endswith("edit.mp4")]
    assert from_edit, "the edit gives samples (two clean shots joined by a hard cut)"
    for sample in from_edit:
        for shot in sample.record.shots:
            a, b = shot.source_start_frame, shot.source_end_frame
            # inside one true shot, clear of every transition
            assert any(s - TOLERANCE // 2 <= a and b <= e + TOLERANCE // 2 for s, e, _, _ in truth.shots), (a, b)
            assert all(b <= ga + TOLERANCE // 2 or a >= gb - TOLERANCE // 2 for ga, gb in truth.gradual), (a, b)


def test_every_text_shot_is_removed_as_text(quality_run):
    """A title card on a near-black card, lower-third text over the picture and a title over
    the picture: each shot holding them is removed with reason text, whatever the text's area."""
    edit, _, _, shots, samples = quality_run
    rows = _rows(shots, "edit.mp4")
    for start, end, label, text in edit.truth.shots:
        if not text:
            continue
        over = [r for r in rows if r["start_frame"] < end and r["end_frame"] > start]
        assert over and all(not r["kept"] for r in over), (label, over)
        assert any("text" in r["reason"] for r in over), (label, over)
        for sample in samples:
            if sample.record.source.endswith("edit.mp4"):
                assert all(s.source_end_frame <= start or s.source_start_frame >= end for s in sample.record.shots), label


def test_fades_to_and_from_black_are_trimmed(quality_run):
    """No kept shot holds a black frame or the dark part of a fade (those frames are transitions)."""
    edit, _, _, shots, _ = quality_run
    kept = [s for s in _rows(shots, "edit.mp4") if s["kept"]]
    assert kept and all(s["black_fraction"] == 0.0 for s in kept)
    for a, b in edit.truth.gradual:
        for s in kept:
            assert s["end_frame"] <= a + TOLERANCE or s["start_frame"] >= b - TOLERANCE, ((a, b), s)


@pytest.mark.parametrize("name", ["letterbox", "pillarbox"])
def test_bars_are_found_and_cropped(quality_run, name):
    """The active area is on record (within 2 px of the truth at 320x180) and no row or column
    of the rendered samples is bars (mean luma over 24 on some frame)."""
    edit, layout, _, _, samples = quality_run
    x0, y0, x1, y1 = getattr(edit, f"{name}_area")
    (video,) = [v for v in pq.read_table(layout.videos_table).to_pylist() if v["source"].endswith(f"{name}.mp4")]
    area = video["active_area"]
    assert abs(area["x0"] * 320 - x0) <= 2 and abs(area["x1"] * 320 - x1) <= 2, area
    assert abs(area["y0"] * 180 - y0) <= 2 and abs(area["y1"] * 180 - y1) <= 2, area
    mine = [s for s in samples if s.record.source.endswith(f"{name}.mp4")]
    assert mine, "a clean 6 s shot gives a 5 s sample"
    for sample in mine:
        luma = _decode(sample.mp4).astype(np.float32) @ np.array([0.2126, 0.7152, 0.0722], np.float32)
        rows, cols = luma.mean(axis=2).max(axis=0), luma.mean(axis=1).max(axis=0)
        assert rows.min() > 24 and cols.min() > 24, (rows.min(), cols.min())


def test_report_gives_the_shot_count_distribution(quality_run, capsys):
    """The run report counts, per bucket, the samples holding each number of shots (as the
    records say), and prints it."""
    _, layout, report, _, samples = quality_run
    expected: dict[str, dict[str, int]] = {}
    for s in samples:
        by = expected.setdefault(s.record.bucket, {})
        by[str(s.record.num_shots)] = by.get(str(s.record.num_shots), 0) + 1
    assert report["samples_by_shot_count"] == expected
    assert sum(sum(c.values()) for c in expected.values()) == report["samples"] == len(samples)
    from multishot.pipeline.index import format_report

    assert "shots/sample     5s: " in format_report(report)


def _one_shot_sample(key: str, path, start: int, count: int):
    """A (record, mp4) claiming frames ``[start, start + count)`` of ``path`` are one shot (16 fps)."""
    from multishot.dataset.record import SampleRecord, Shot, num_latent_frames

    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)][start : start + count]
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=16)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        for rgb in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        out.mux(stream.encode())
    shot = Shot(index=0, source_start_frame=start, source_end_frame=start + count, source_start_s=start / 24,
                source_end_s=(start + count) / 24, start_frame=0, end_frame=count, latent_start_frame=0,
                brightness=100.0, ocr_text_ratio=0.0, aesthetic=None)
    record = SampleRecord(key=key, source=str(path), source_id="quality", bucket="5s", target_duration_s=5.0,
                          fps=16, width=frames[0].shape[1], height=frames[0].shape[0], num_frames=count,
                          num_latent_frames=num_latent_frames(count), duration_s=count / 16, cut_frames=[],
                          latent_cut_frames=[], shots=[shot], aesthetic_status="skipped", samples_hash="test")
    return record, buf.getvalue()


def test_audit_passes_the_clean_samples_and_fails_each_kind_of_bad_one(quality_run, tmp_path, capsys):
    """``multishot shards audit``: the pipeline's samples of the fixture pass (exit 0); samples cut
    from the fixture as the old pipeline kept them fail on exactly what they hold: bars, black
    frames, a title card, and a dissolve inside one annotated shot (exit 1, JSON per sample)."""
    from multishot.cli import main
    from multishot.dataset.shards import write_shard

    edit, layout, _, _, _ = quality_run
    assert main(["shards", "audit", layout.root, "-q", "--json", str(tmp_path / "good.json")]) == 0
    bad = [
        _one_shot_sample("letterboxed", edit.letterbox, 0, 81),     # bars top and bottom
        _one_shot_sample("fade_in", edit.edit, 0, 81),             # 12 black frames of 81, then a fade-in
        _one_shot_sample("dissolve", edit.edit, 30, 81),           # the meadow dissolving into the snow
        _one_shot_sample("title_card", edit.edit, 100, 81),        # ends on the "THE END" card
    ]
    fs, _ = resolve(str(tmp_path / "bad"))
    write_shard(fs, str(tmp_path / "bad" / "shards" / "bad-00000.tar"), bad)
    capsys.readouterr()
    assert main(["shards", "audit", str(tmp_path / "bad"), "-q", "--json", str(tmp_path / "bad.json")]) == 1
    import json

    found = {s["key"]: s for s in json.loads((tmp_path / "bad.json").read_text())["samples"]}
    assert found["letterboxed"]["bars"]["top"] >= 30 and found["letterboxed"]["bars"]["bottom"] >= 30
    assert any(p.startswith("bars") for p in found["letterboxed"]["problems"])
    assert found["fade_in"]["black_fraction"] >= 0.12
    assert any(p.startswith("scene change") for p in found["dissolve"]["problems"]), found["dissolve"]
    assert any("THE END" in t for _, t in found["title_card"]["text"]), found["title_card"]
    assert all(found[k]["problems"] for k in found)
    assert "4 of 4 samples fail" in capsys.readouterr().err
