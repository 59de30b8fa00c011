"""Static shots (issue 34): each shot's motion from optical flow between its candidate frames
(``pipeline/motion.py``), recorded in ``shots.parquet``; shots under ``filter.min_motion`` are
removed as ``static``. A held frame and a title card through the real pipeline (local Ray,
TransNetV2, rapidocr, DIS), beside the bundled footage's slowest moving shots; and the whole
bundled footage (the session's demo run): nothing with a picture that moves is removed as static.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from quality_edit import BBB, FOOTAGE, build_static

from multishot.dataset.shards import ShardSetLayout
from multishot.pipeline.analyse import CandidateScore, ShotScores, is_candidate, previous_candidate, shot_scores
from multishot.pipeline.config import AnalyseConfig, FilterConfig, PipelineConfig
from multishot.pipeline.decode import iter_frames
from multishot.pipeline.detect import DetectedShot
from multishot.pipeline.filter import decide
from multishot.pipeline.motion import FlowMeter, shot_motion


@pytest.fixture(scope="module")
def meadow() -> np.ndarray:
    """A frame of Big Buck Bunny, ``[360, 640, 3]``."""
    [(_, frame)] = list(iter_frames(str(FOOTAGE / BBB), fps=24.0, wanted=np.array([1000])))
    return frame


@pytest.mark.parametrize("shift", [0, 1, 3, 12])
def test_a_pair_measures_its_translation_in_shorter_sides_a_second(meadow, shift):
    """A 500×300 window of a real frame moved ``shift`` px between candidates 12 frames apart at
    24 fps moves ``shift / 300`` of the shorter side per half second (within 2 %)."""
    meter = FlowMeter(24.0)
    assert meter.measure(0, meadow[20:320, 60:560]) is None  # a first frame has no pair
    score = meter.measure(12, meadow[20:320, 60 - shift:560 - shift])
    assert score == pytest.approx(shift / 300 * 2, rel=0.02, abs=1e-4)


def test_the_pair_before_a_segment_is_the_candidate_before_it():
    """The candidate before frame ``index`` on the grid of 2 a second at 23.976 fps (11 or 12
    frames apart), and none before frame 0."""
    fps = 24000 / 1001
    grid = [i for i in range(200) if is_candidate(i, fps, 2.0)]
    for k in range(1, len(grid)):
        for index in range(grid[k - 1] + 1, grid[k] + 1):
            assert previous_candidate(index, fps, 2.0) == grid[k - 1]
    assert previous_candidate(0, fps, 2.0) is None


def test_a_shot_takes_the_median_of_its_own_pairs_and_is_static_under_the_threshold():
    """The pair into a shot's first candidate starts in the shot before and is left out; one
    moving pair (a flash, a late movement) does not make a held shot move; unmeasured: kept."""
    motions = {0: None, 12: 0.5, 24: 0.0, 36: 0.001, 48: 0.4, 60: 0.0}  # a cut at 12
    candidates = {i: CandidateScore(i, 100.0, motion=m) for i, m in motions.items()}
    config = AnalyseConfig(ocr_backend="none")
    scores = shot_scores(DetectedShot(12, 72, False), candidates, sorted(candidates), config)
    # the median of 0.0, 0.001, 0.4, 0.0; with the 0.5 into the shot it would be 0.001
    assert scores.motion == pytest.approx(0.0005)
    assert shot_motion([None, None]) is None
    limits = FilterConfig()
    assert decide(scores, limits) == "static"
    assert decide(ShotScores(100.0, 0.0, None, motion=0.01), limits) == ""
    assert decide(ShotScores(100.0, 0.0, None, motion=None), limits) == ""
    assert decide(scores, FilterConfig(min_motion=0.0)) == ""


@pytest.fixture(scope="module")
def static_run(tmp_path_factory):
    """``static.mp4`` (tests/helpers/quality_edit.py) through the real pipeline on a local Ray."""
    from multishot.pipeline.run import run_pipeline

    work = tmp_path_factory.mktemp("motion")
    path, truth = build_static(work / "in")
    config = PipelineConfig.model_validate({
        "input": str(work / "in"), "output": str(work / "out"),
        "pack": {"buckets": [{"name": "5s", "target_s": 5.0, "tolerance_s": 1.0}]},
        "render": {"width": 160, "height": 96},
        "ray": {"num_cpus": 2},
    })
    run_pipeline(config, progress=False)
    shots = pq.read_table(ShardSetLayout(str(work / "out")).shots_table).to_pylist()
    return truth, sorted(shots, key=lambda s: s["start_frame"])


def test_a_held_frame_and_a_title_card_are_static_and_moving_shots_pass(static_run):
    """The held frame is removed for being static and nothing else; the title card as static
    (and text); the footage's slowest moving shots (Big Buck Bunny's stream, a static camera on
    people talking) and a fast one are not static, their motion on record above the threshold."""
    truth, shots = static_run
    limit = FilterConfig().min_motion
    for start, end, label, moves in truth:
        # the detected shots lying mostly inside the true one
        rows = [s for s in shots if min(s["end_frame"], end) - max(s["start_frame"], start)
                > (s["end_frame"] - s["start_frame"]) / 2 and "too_short" not in s["reason"]]
        assert rows, (label, shots)
        for row in rows:
            if moves:
                assert "static" not in row["reason"] and row["motion"] >= limit, (label, row)
            else:
                assert "static" in row["reason"].split(",") and row["motion"] < limit, (label, row)
        if label == "held_frame":
            assert [r["reason"] for r in rows] == ["static"], rows
        if label == "title_card":
            assert all("text" in r["reason"].split(",") for r in rows), rows


def test_no_shot_of_the_bundled_footage_with_a_moving_picture_is_static(pipeline_run):
    """The demo config on all of ``shared/footage/archive`` (the session's Ray run): the shots
    removed as static are titles, credits and black (also removed as text, black or too dark);
    every other measured shot moves above the threshold."""
    out, _ = pipeline_run
    shots = pq.read_table(ShardSetLayout(out).shots_table).to_pylist()
    measured = [s for s in shots if s["motion"] is not None]
    assert len(measured) >= 30, len(measured)
    static = [s for s in measured if "static" in s["reason"].split(",")]
    assert static, "the Sintel trailer's closing credits are still"
    for s in static:
        assert {"text", "black", "too_dark"} & set(s["reason"].split(",")), (Path(s["source"]).name, s)
    assert all(s["motion"] >= FilterConfig().min_motion for s in measured if s not in static)
