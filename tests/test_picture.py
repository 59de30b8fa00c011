"""The rules of issue 28 on hand-made inputs: active area from luma profiles, fade trimming,
a dissolve's fitted span, and which OCR boxes make a shot a title (the whole pipeline on an
edit of the real footage is tests/test_pipeline_quality.py)."""

from __future__ import annotations

import numpy as np

from multishot.pipeline.analyse import CandidateScore, shot_title_boxes
from multishot.pipeline.config import AnalyseConfig, DetectConfig
from multishot.pipeline.detect import shots_from_predictions
from multishot.pipeline.ocr import TextBox
from multishot.pipeline.picture import ActiveArea, area_from_profiles, frame_darkness, trim_fades
from multishot.pipeline.transitions import refine_span


def test_active_area_from_profiles():
    config = DetectConfig()
    rows = np.r_[np.zeros(40), np.full(280, 90.0), np.zeros(40)]  # 360 rows: 40-px bars
    cols = np.full(640, 90.0)
    area = area_from_profiles(rows, cols, config)
    # one edge row more is cut where a bar is
    assert area.pixels(640, 360) == (0, 41, 640, 319)
    # a box under half the side is not trusted (a night film), nor a bar under 1% of it
    assert area_from_profiles(np.r_[np.zeros(100), np.full(150, 90.0), np.zeros(110)], cols, config).full
    assert area_from_profiles(np.r_[np.zeros(2), np.full(358, 90.0)], cols, config).full
    # darkness is measured inside the area: black bars do not count
    frame = np.zeros((1, 360, 640, 3), np.uint8)
    frame[:, 40:320] = 120
    black, luma = frame_darkness(frame, area, 25.5)
    assert black[0] == 0.0 and abs(luma[0] - 120) < 0.5
    assert frame_darkness(frame, ActiveArea(), 25.5)[0][0] > 0.2


def test_fades_to_and_from_black_are_trimmed():
    config = DetectConfig()
    y = np.r_[np.zeros(10), np.linspace(10, 100, 10), np.full(30, 100.0), np.linspace(100, 0, 10)]
    black = y < 3
    start, end = trim_fades(0, len(y), black, y, config)
    assert 17 <= start <= 19 and 50 <= end <= 53, (start, end)  # up to 80% of the bright level
    # a shot that is dark all along is not a fade; nor one that starts bright
    flat = np.full(40, 15.0)
    assert trim_fades(0, 40, flat < 3, flat, config) == (0, 40)
    # all black: nothing left
    assert trim_fades(0, 10, np.ones(10, bool), np.zeros(10), config) == (10, 10)


def test_a_dissolves_span_is_fitted_despite_panning():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0, 255, (9, 16)), rng.uniform(0, 255, (9, 16))
    frames = []
    for t in range(120):
        drift = 0.3 * t  # a slow pan brightens both pictures a little each frame
        alpha = np.clip((t - 50 + 0.5) / 24, 0, 1)  # dissolve over frames 50..73
        frames.append(np.clip((1 - alpha) * (a + drift) + alpha * (b + drift), 0, 255))
    thumbs = np.round(np.stack(frames)).astype(np.uint8)
    # the heads saw its middle only
    assert refine_span(thumbs, 58, 66, 0, 120, 48) == (50, 74)
    single, many = np.zeros(120), np.zeros(120)
    many[58:67] = 0.35  # a many-hot-only run: a gradual transition with the second threshold
    shots = shots_from_predictions(single, many, 0.4, 24, gradual_threshold=0.3, thumbs=thumbs, window=48)
    assert [(s.start_frame, s.end_frame) for s in shots] == [(0, 50), (74, 120)]
    assert shots_from_predictions(single, many, 0.4, 24) == shots_from_predictions(single, many, 0.4, 24,
                                                                                    gradual_threshold=None)


def _box(text: str, score: float, y0: float, y1: float, x0: float = 0.3, x1: float = 0.7) -> TextBox:
    return TextBox(((x0, y0), (x1, y0), (x1, y1), (x0, y1)), text, score)


def test_titles_whatever_their_area():
    config = AnalyseConfig()
    small_title = CandidateScore(0, 120.0, (_box("COMING SOON", 0.98, 0.45, 0.52),))
    on_black = CandidateScore(12, 2.0, (_box("presents", 0.6, 0.46, 0.48),))
    tiny = CandidateScore(24, 120.0, (_box("sign", 0.99, 0.50, 0.51),))
    assert [b.text for b in shot_title_boxes([small_title], config)] == ["COMING SOON"]
    assert [b.text for b in shot_title_boxes([on_black], config)] == ["presents"]
    assert shot_title_boxes([tiny], config) == []
    # a stylised title read under 0.8 on frame after frame is text; texture read once is not
    bunny = [CandidateScore(i, 128.0, (_box("BUNKY", s, 0.12, 0.64),)) for i, s in ((0, 0.75), (12, 0.66), (24, 0.79))]
    assert len(shot_title_boxes(bunny, config)) == 3
    hill = [CandidateScore(0, 100.0, (_box("86", 0.56, 0.08, 0.99, 0.0, 1.0),)), CandidateScore(12, 100.0, ())]
    assert shot_title_boxes(hill, config) == []
