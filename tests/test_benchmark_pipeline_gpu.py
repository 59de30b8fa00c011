"""``benchmarks/pipeline_gpu.py``'s pieces that decide what its GPU figures mean, on the CPU: the
checks switched off by ``--checks off`` are real config keys and really stop their work in the
scan; the Ray part's copies of the input are distinct sources to the pipeline yet the same
pictures; what the checks cost is computed from the on and off runs as documented. (Its
plumbing end to end: ``--device cpu``; its figures are measured on a GPU.)"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
pipeline_gpu = pytest.importorskip("pipeline_gpu")

SINTEL = REPO / "demo" / "footage" / "sintel_film_excerpt_26s.mp4"  # letterboxed
WEIGHTS = ("ViT-B-32-quickgelu", Path("clip.pt"), Path("head.pth"))  # named only, never loaded here


def test_checks_off_switch_off_what_they_name():
    """``checks="off"`` sets the keys of :data:`CHECKS_OFF` (validated by the config model), and a
    scan with them finds no bars and measures no motion, where the defaults do both."""
    from multishot.pipeline.decode import analysis_size, probe
    from multishot.pipeline.picture import detect_active_area
    from multishot.pipeline.scan import SegmentScanner

    on = pipeline_gpu.pipeline_config(WEIGHTS, decoder="cpu", checks="on")
    off = pipeline_gpu.pipeline_config(WEIGHTS, decoder="cpu", checks="off")
    for section, keys in pipeline_gpu.CHECKS_OFF.items():
        for key, value in keys.items():
            assert getattr(getattr(off, section), key) == value != getattr(getattr(on, section), key)
    info = probe(str(SINTEL))
    size = analysis_size(info, 360)
    found = []
    for config in (on, off):
        config = config.model_copy(update={"analyse": config.analyse.model_copy(
            update={"ocr_backend": "none", "clip_weights": None, "aesthetic_head_weights": None})})
        area = detect_active_area(str(SINTEL), None, info, config.detect, 360)
        result = SegmentScanner(config).scan(str(SINTEL), None, info.fps, 0, 60, analysis_size=size, area=area)
        found.append((area.full, [c.motion for c in result.candidates]))
    (full_on, motion_on), (full_off, motion_off) = found
    assert not full_on and full_off  # Sintel's bars found with the checks on only
    assert any(m is not None for m in motion_on) and all(m is None for m in motion_off)


def test_copies_are_distinct_sources_of_the_same_pictures(tmp_path):
    from multishot.pipeline.decode import iter_scan_frames, probe
    from multishot.pipeline.run import _tasks

    copies = pipeline_gpu.distinct_copies(str(SINTEL), tmp_path / "in", 2)
    tasks, rejected = _tasks([str(SINTEL)] + [str(c) for c in copies])
    assert len({t.source_id for t in tasks}) == 3 and not rejected
    assert pipeline_gpu.distinct_copies(str(SINTEL), tmp_path / "in", 2) == copies  # kept, not redone
    info = probe(str(copies[1]))
    assert (info.num_frames, info.fps) == (probe(str(SINTEL)).num_frames, probe(str(SINTEL)).fps)

    def frames(path):
        return np.stack([f for _, f, _ in iter_scan_frames(str(path), None, fps=info.fps, start_frame=0, end_frame=None,
                                                           detect_size=(48, 27), analysis_size=(64, 36),
                                                           is_candidate=lambda i: False)])

    np.testing.assert_array_equal(frames(copies[1]), frames(SINTEL))


def test_checks_cost_from_the_on_and_off_runs():
    runs = [{"processes": 6, "checks": "on", "frames": 48_000, "fps": 2_400.0, "realtime_factor": 100.0, "cpu_s": 160.0},
            {"processes": 6, "checks": "off", "frames": 48_000, "fps": 3_000.0, "realtime_factor": 125.0, "cpu_s": 120.0},
            {"processes": 4, "checks": "on", "frames": 1, "fps": 1.0, "realtime_factor": 1.0}]  # no "off": no row
    (row,) = pipeline_gpu.checks_cost(runs)
    assert row["processes"] == 6 and row["realtime_lost_pct"] == 20.0
    assert row["gpu_ms_per_video_s"] == pytest.approx(2.0)  # 1/100 - 1/125 s of the GPU per second of video
    assert (row["cpu_s_per_video_s_on"], row["cpu_s_per_video_s_off"]) == (0.08, 0.06)  # 2,000 s of video
    assert row["cpu_ms_per_video_s"] == pytest.approx(20.0)


def test_each_check_alone_off_sets_its_keys_and_gets_its_share():
    """``no_<name>`` switches off that check's keys alone (the union of them all is ``off``), and
    ``checks_cost`` gives its share as on minus that run."""
    on = pipeline_gpu.pipeline_config(WEIGHTS, decoder="cpu", checks="on")
    merged = {"detect": {}, "analyse": {}}
    for name, (section, keys) in pipeline_gpu.CHECK_SWITCHES.items():
        alone = pipeline_gpu.pipeline_config(WEIGHTS, decoder="cpu", checks=f"no_{name}")
        for other_section in ("detect", "analyse"):
            for key, value in pipeline_gpu.CHECKS_OFF[other_section].items():
                expected = keys[key] if other_section == section and key in keys else getattr(getattr(on, other_section), key)
                assert getattr(getattr(alone, other_section), key) == expected
        merged[section].update(keys)
    assert merged == pipeline_gpu.CHECKS_OFF
    runs = [{"processes": 6, "checks": "on", "frames": 48_000, "fps": 2_400.0, "realtime_factor": 100.0, "cpu_s": 160.0},
            {"processes": 6, "checks": "off", "frames": 48_000, "fps": 3_000.0, "realtime_factor": 125.0, "cpu_s": 120.0},
            {"processes": 6, "checks": "no_ocr_every", "frames": 24_000, "fps": 2_500.0, "realtime_factor": 104.1667,
             "cpu_s": 70.0}]
    (row,) = pipeline_gpu.checks_cost(runs)
    (share,) = row["by_check"]
    assert share["check"] == "ocr_every" and share["realtime_lost_pct"] == 4.0
    assert share["gpu_ms_per_video_s"] == pytest.approx(0.4, abs=0.01)  # 1/100 - 1/104.17 s per second of video
    assert share["cpu_ms_per_video_s"] == pytest.approx(10.0)  # 0.08 - 0.07 CPU-s (1,000 s of video)

