"""The segment scan: one decode per segment for detection and analysis, stitched exactly,
resumed from finished segments, and scored at a fixed analysis scale.

Inputs are made at test time from the real footage: clips joined into one longer video (hard
cuts at the joins), and a 1080p upscale of a clip, both with PyAV.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import yaml

from footage_clips import FOOTAGE, join_clips
from multishot.dataset.shards import ShardSetLayout
from multishot.pipeline.analyse import is_candidate, pick_candidates
from multishot.pipeline.config import PipelineConfig
from multishot.pipeline.detect import DetectedShot, TransNetV2Detector, shots_from_predictions, shots_of
from multishot.pipeline.scan import (LocalScans, ScanJob, SegmentScanner, SegmentStore, plan_segments,
                                     stitch, stitch_picture)
from multishot.pipeline.decode import analysis_size, iter_frames, probe

REPO = Path(__file__).resolve().parents[1]
#: about 30 s from three films, several shots each (tiny frames keep TransNetV2's input the same
#: and OCR cheap)
PARTS = [
    ("sintel_trailer_480p.mp4", 14.0, 9.0),
    ("tos_excerpt_64s_512x120_fmp4.mp4", 30.0, 9.0),
    ("sintel_film_excerpt_26s.mp4", 4.0, 9.0),
    ("bbb_first60s_360p.mp4", 25.0, 4.0),
]


#: the whole bundled footage, film after film: 202 s, 4,880 frames at 24 fps; in this order
#: every join is a visible cut (the trailer starts and ends in black, Tears of Steel starts and ends nearly
#: black, Big Buck Bunny opens on one bright frame then black)
WHOLE = [(name, 0.0, probe(str(FOOTAGE / "archive" / name)).duration_s) for name in
         ("bbb_first60s_360p.mp4", "tos_excerpt_64s_512x120_fmp4.mp4", "sintel_film_excerpt_26s.mp4",
          "sintel_trailer_480p.mp4")]


@pytest.fixture(scope="module")
def joined(tmp_path_factory) -> Path:
    return join_clips(PARTS, tmp_path_factory.mktemp("joined") / "clips" / "joined.mp4", (320, 180))


def _joins(parts: list[tuple[str, float, float]]) -> list[int]:
    """First frame of each part after the first in a video joined from ``parts`` (parts keep
    their frame count: :func:`footage_clips.join_clips`)."""
    counts = []
    for name, start, seconds in parts:
        info = probe(str(FOOTAGE / "archive" / name))
        end = min(int((start + seconds) * info.fps), info.num_frames)
        counts.append(end - int(start * info.fps))
    return np.cumsum(counts)[:-1].tolist()


def _config(**detect) -> PipelineConfig:
    # analysis at 180 px and OCR of one pick a shot keep OCR cheap (OCR of every candidate is
    # tested in test_pipeline_quality.py); 150-frame units let a short video hold many segments
    return PipelineConfig(detect={"batch_windows": 1, **detect},
                          analyse={"analysis_short_side": 180, "ocr_every_candidate": False})


def test_candidates_and_picks():
    assert [i for i in range(50) if is_candidate(i, 24.0, 2.0)] == [0, 12, 24, 36, 48]
    # 29.97 fps: a candidate in every half second, on the same frames whatever the segment
    assert sum(is_candidate(i, 30000 / 1001, 2.0) for i in range(3000)) == 201
    candidates = [0, 12, 24, 36, 48, 60]
    # centres of thirds of [10, 50): 16.7, 30, 43.3 → nearest candidates 12, 24 (tie: earlier), 48
    assert pick_candidates(DetectedShot(10, 50, False), candidates, 3) == [12, 24, 48]
    assert pick_candidates(DetectedShot(1, 11, False), candidates, 3) == []
    assert pick_candidates(DetectedShot(40, 55, False), candidates, 3) == [48]


def test_segments_stitch_to_the_unsplit_run(tmp_path):
    """The whole bundled footage joined into one 202 s video, scanned in 30 s segments on their
    own (as different actors would), gives the predictions, candidate scores and shots of a scan
    of the whole video."""
    path = str(join_clips(WHOLE, tmp_path / "whole.mp4", (320, 180)))
    info = probe(path)
    assert info.num_frames > 4800
    config = _config(segment_s=30.0)
    size = analysis_size(info, config.analyse.analysis_short_side)
    scanner = SegmentScanner(config)
    whole = scanner.scan(path, None, info.fps, 0, None, analysis_size=size)
    segments = plan_segments(info.num_frames, info.fps, config)
    assert len(segments) >= 6 and all(s.start_frame % 150 == 0 for s in segments)
    parts = [scanner.scan(path, None, info.fps, s.start_frame, s.end_frame, analysis_size=size) for s in segments]
    single, many, candidates, stats = stitch(parts)
    np.testing.assert_array_equal(single, whole.single)  # bit for bit: the same windows and batches
    np.testing.assert_array_equal(many, whole.many)
    assert stats.frames == len(whole.single) == info.num_frames
    # brightness of every candidate, OCR of every one a shot can pick, equal; and the motion
    # from the candidate before, also across each segment's start (pipeline/motion.py)
    whole_by_index = {c.index: c for c in whole.candidates}
    assert [c.index for c in candidates] == sorted(whole_by_index)
    assert sum(c.motion is None for c in candidates) == 1  # frame 0's
    for c in candidates:
        w = whole_by_index[c.index]
        assert c.brightness == w.brightness
        assert c.motion == w.motion, c.index
        assert w.text_boxes is None or c.text_boxes == w.text_boxes, c.index
        assert w.ocr_text_ratio is None or c.ocr_text_ratio == w.ocr_text_ratio, c.index
    # the OCR'd candidates keep their text boxes (the overlay search reads them), also through
    # the segment's resume file: Tears of Steel's bitrate stamp is read
    texts = {b.text for c in candidates for b in c.text_boxes or ()}
    assert "450Kbps" in texts, texts
    store = SegmentStore(pafs.LocalFileSystem(), str(tmp_path / "segments"))
    store.save(segments[0], parts[0])
    assert store.load(segments[0]) == parts[0]
    threshold = config.detect.threshold
    shots = shots_from_predictions(single, many, threshold, 24)
    assert shots == shots_from_predictions(np.array(whole.single), np.array(whole.many), threshold, 24)
    # the per-frame darkness and thumbnails stitch to the unsplit run's too, and so do the shots
    # with many-hot-only gradual transitions and their fitted spans (pipeline/transitions.py)
    black, luma, thumbs = stitch_picture(parts)
    whole_black, whole_luma, whole_thumbs = stitch_picture([whole])
    np.testing.assert_array_equal(black, whole_black)
    np.testing.assert_array_equal(luma, whole_luma)
    np.testing.assert_array_equal(thumbs, whole_thumbs)
    assert len(thumbs) == info.num_frames
    assert shots_of(config.detect, single, many, info.fps, thumbs) == shots_of(
        config.detect, np.array(whole.single), np.array(whole.many), info.fps, whole_thumbs)
    # every join of two films is a shot boundary
    edges = {s.start_frame for s in shots} | {s.end_frame for s in shots}
    for join in _joins(WHOLE):
        assert edges & {join - 1, join, join + 1}, (join, sorted(e for e in edges if abs(e - join) < 200))


def test_sessions_scan_segments_at_once_with_the_same_results(joined, tmp_path):
    """``detect.sessions: 3``: three segments at a time in threads sharing one scanner (on a
    GPU, three NVDEC sessions), their picks OCR'd by two shared threads (``ocr_threads``),
    give each segment the result a lone scan with one OCR thread gives, in order."""
    path = str(joined)
    info = probe(path)
    config = _config(segment_s=6.0, sessions=3, ocr_threads=2)
    size = analysis_size(info, config.analyse.analysis_short_side)
    segments = plan_segments(info.num_frames, info.fps, config)[:4]
    jobs = [ScanJob(path, info.fps, s, size, str(tmp_path), str(tmp_path / "segments"))
            for s in segments]
    threaded = list(LocalScans(config).run(jobs))
    scanner = SegmentScanner(_config(segment_s=6.0))
    alone = [scanner.scan(path, None, info.fps, s.start_frame, s.end_frame, analysis_size=size)
             for s in segments]
    cost = {"cpu_s", "wall_s", "peak_rss_mib"}  # what the scan cost, not what it found

    def what(results):
        return [r.model_dump(exclude=cost) for r in results]

    assert what(threaded) == what(alone)
    store = SegmentStore(pafs.LocalFileSystem(), str(tmp_path / "segments"))
    assert what(store.load(s) for s in segments) == what(alone)


def test_windows_keep_the_reference_predictions(joined):
    """200-frame windows (stride 150) give the shots of the reference's 100-frame windows
    (stride 50) on the joined footage, with each frame through the network 1.33× instead of 2×."""
    info = probe(str(joined))
    frames = np.stack([f for _, f in iter_frames(str(joined), fps=info.fps, width=48, height=27)])
    shots = {}
    for window in (100, 200):
        detector = TransNetV2Detector(_config(window=window).detect)
        single, many = detector.predict(frames)
        shots[window] = shots_from_predictions(single, many, 0.4, 24)
    assert [s.start_frame for s in shots[200]] == [s.start_frame for s in shots[100]]


def _command(config: Path, clips: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "multishot", "pipeline", "run", "--config", str(config),
            "--input", str(clips), "--output", str(out), "--no-progress"]


def test_killed_run_resumes_from_finished_segments(joined, tmp_path):
    """SIGKILL mid-scan, then rerun (Ray, two scanning actors): the finished segments are not
    scanned again, and the shots and samples equal those of an uninterrupted run."""
    config = yaml.safe_load((REPO / "configs/pipeline/demo.yaml").read_text())
    config.update(input=None, output=None)
    config["detect"].update(segment_s=6.0, batch_windows=1)
    config["pack"]["buckets"] = [{"name": "5s", "target_s": 5, "tolerance_s": 1}]
    config["render"].update(width=320, height=192)
    config["ray"] = {"num_cpus": 2}
    config_path = tmp_path / "job.yaml"
    config_path.write_text(yaml.safe_dump(config))
    clips = joined.parent

    reference = tmp_path / "reference"
    subprocess.run(_command(config_path, clips, reference), check=True, timeout=600, capture_output=True)

    out = tmp_path / "killed"
    proc = subprocess.Popen(_command(config_path, clips, out), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    segments = out / "_work" / "segments"
    finished = []
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not finished:
        finished = [p for p in segments.rglob("*.json")] if segments.exists() else []
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = {p: p.stat().st_mtime_ns for p in segments.rglob("*.json")}
    total = len(list((reference / "_work" / "segments").rglob("*.json")))
    assert 1 <= len(done) < total, (len(done), total)

    subprocess.run(_command(config_path, clips, out), check=True, timeout=600, capture_output=True)
    assert all(p.stat().st_mtime_ns == t for p, t in done.items()), "a finished segment was scanned again"
    assert len(list(segments.rglob("*.json"))) == total

    def table(root: Path, name: str, columns: list[str]) -> list[dict]:
        rows = pq.read_table(getattr(ShardSetLayout(str(root)), name)).select(columns).to_pylist()
        return sorted(rows, key=lambda r: tuple(map(str, r.values())))

    shot_columns = ["start_frame", "end_frame", "brightness", "ocr_text_ratio", "reason"]
    assert table(out, "shots_table", shot_columns) == table(reference, "shots_table", shot_columns)
    assert table(out, "samples_index", ["key"]) == table(reference, "samples_index", ["key"])
    assert table(out, "samples_index", ["key"])


def test_scores_do_not_depend_on_the_source_resolution(tmp_path):
    """Big Buck Bunny at 360p and its 1080p upscale: the same shots, scores and samples (the
    1080p copy used to read a text-free shot as 27.6 % text and lose its sample)."""
    from multishot.pipeline.run import run_pipeline

    # the title (frames 598-751 of the film), the hill -> burrow dissolve and 8 s of the burrow
    # (a text-free shot: the 5 s samples); before issue 28's checks the part was 20-36 s, which
    # now gives no sample (a title, a "presents" line and the dissolve)
    part = [("bbb_first60s_360p.mp4", 26.0, 16.0)]
    copies = {"360p": (640, 360), "1080p": (1920, 1080)}
    reports, shots = {}, {}
    for name, size in copies.items():
        clip = join_clips(part, tmp_path / name / "in" / "bbb.mp4", size, preset="ultrafast")
        out = tmp_path / name / "out"
        config = PipelineConfig(input=str(clip.parent), output=str(out), ray={"runner": "sequential"},
                                pack={"buckets": [{"name": "5s", "target_s": 5, "tolerance_s": 1}]},
                                render={"width": 320, "height": 192})
        reports[name] = run_pipeline(config, progress=False)
        shots[name] = pq.read_table(ShardSetLayout(str(out)).shots_table).to_pylist()
    low, high = shots["360p"], shots["1080p"]
    assert [(s["start_frame"], s["end_frame"], s["reason"]) for s in low] == \
        [(s["start_frame"], s["end_frame"], s["reason"]) for s in high]
    for a, b in zip(low, high):
        assert abs(a["brightness"] - b["brightness"]) < 1.0
        # both read the title alike: with OCR on every candidate the ratio is the largest of ~30
        # frames' reads, and the title shot's differs by 0.011 (0.287 vs 0.276, 4%) between the
        # copies (one pick a shot: under 0.002); the decisions above are the same
        assert abs(a["ocr_text_ratio"] - b["ocr_text_ratio"]) <= 0.002 + 0.05 * max(a["ocr_text_ratio"], b["ocr_text_ratio"])
    assert reports["360p"]["samples"] == reports["1080p"]["samples"] > 0
    assert reports["360p"]["samples_per_bucket"] == reports["1080p"]["samples_per_bucket"]


def test_every_candidate_ocr_reads_the_analysed_shots_and_no_other(joined):
    """With ``ocr_every_candidate`` (the default) the scan OCRs every candidate of every shot the
    analyse stage scores (too-short shots and fades excluded, as it trims them) and no other; it
    trims fades on the very per-frame values the detect stage reads back from the result."""
    from multishot.pipeline.analyse import shot_scores
    from multishot.pipeline.stages import _trim_black

    config = PipelineConfig(detect={"batch_windows": 1}, analyse={"analysis_short_side": 180})
    info = probe(str(joined))
    size = analysis_size(info, config.analyse.analysis_short_side)
    scanner, seen = SegmentScanner(config), {}
    pickable = scanner._pickable

    def spy(*args, **kwargs):
        seen.update(black=kwargs["black"], luma=kwargs["luma"])
        return pickable(*args, **kwargs)

    scanner._pickable = spy
    result = scanner.scan(str(joined), None, info.fps, 0, None, analysis_size=size)
    black, luma, thumbs = stitch_picture([result])
    # equal bits: a fade's trim compares luma with a level, so a rounding apart can move it
    assert np.array_equal(seen["black"], black) and np.array_equal(seen["luma"], luma)
    assert seen["black"].dtype == black.dtype and seen["luma"].dtype == luma.dtype
    shots = shots_of(config.detect, np.array(result.single), np.array(result.many), info.fps, thumbs)
    rows = [r for r in _trim_black(shots, black, luma, config, info.fps) if not r.shot.too_short]
    by_index = {c.index: c for c in result.candidates}
    order = sorted(by_index)
    inside = set()
    for row in rows:
        shot_scores(row.shot, by_index, order, config.analyse)  # raises where a candidate was not read
        inside |= {i for i in order if row.shot.start_frame <= i < row.shot.end_frame}
    read = {c.index for c in result.candidates if c.text_boxes is not None}
    assert read == inside
    assert len(read) < len(order), "every candidate lies in an analysed shot: nothing tested"


def test_closed_ray_scans_give_their_resources_back():
    """The scanning actors hold their reserved CPUs until closed (the run closes them once every
    video is scanned, so the renders get those cores); after :meth:`RayScans.close` Ray has them
    back."""
    import ray

    from multishot.pipeline.scan import RayScans
    from multishot.ray_connect import init_ray

    assert init_ray(num_cpus=2, include_dashboard=False)
    try:
        config = PipelineConfig(analyse={"ocr_backend": "none"},
                                detect={"resources": {"actors": 1, "cpus": 1, "memory_gib": 0}})
        scans = RayScans(config)
        ray.get(scans.actors[0].__ray_ready__.remote())

        def free_cpus(expected: float) -> float:
            deadline = time.monotonic() + 60
            while (free := ray.available_resources().get("CPU", 0.0)) != expected and time.monotonic() < deadline:
                time.sleep(0.5)
            return free

        assert free_cpus(1.0) == 1.0
        scans.close()
        assert free_cpus(2.0) == 2.0
    finally:
        ray.shutdown()
