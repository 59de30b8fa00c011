"""The main job on real footage: stages, bad inputs, shard contents, report.

The heavy end-to-end run is the session fixture ``pipeline_run`` (tests/conftest.py): the real
pipeline over ../shared/footage/archive plus ../shared/footage/bad, once per test session.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from multishot.dataset.shards import ShardSetLayout, read_shard
from multishot.dataset.storage import resolve
from multishot.config import ConfigError, load_config
from multishot.pipeline.config import DetectConfig, PipelineConfig
from multishot.pipeline.detect import SceneDetectDetector, TransNetV2Detector, shots_from_predictions
from multishot.pipeline.discover import InputError, discover
from multishot.pipeline.ocr import TextBox, boxes_ratio, polygon_area
from multishot.pipeline.render import source_frames_for_shot
from multishot.pipeline.decode import DecodeStats, ProbeError, probe
from synthetic_edit import build as build_synthetic_edit

FOOTAGE = Path(__file__).resolve().parents[2] / "shared" / "footage"
REPO = Path(__file__).resolve().parents[1]
BAD = sorted(p.name for p in (FOOTAGE / "bad").glob("*.mp4"))


# ---- detection -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic_edit(tmp_path_factory):
    return build_synthetic_edit(tmp_path_factory.mktemp("edit"))


def _boundaries(shots) -> list[float]:
    """Detected shot changes: a hard cut's frame, or the middle of a dropped transition."""
    return [(a.end_frame + b.start_frame) / 2 for a, b in zip(shots, shots[1:])]


def _precision_recall(found: list[float], truth: list[float], tolerance: float = 2.0) -> tuple[float, float]:
    matched, used = 0, set()
    for t in truth:
        hit = next((i for i, f in enumerate(found) if i not in used and abs(f - t) <= tolerance), None)
        if hit is not None:
            used.add(hit)
            matched += 1
    return (matched / len(found) if found else 0.0), matched / len(truth)


def test_transnetv2_finds_hard_cuts_and_dissolve(synthetic_edit):
    detector = TransNetV2Detector(DetectConfig(min_shot_s=0.5))
    stats = DecodeStats()
    shots = detector.detect(str(synthetic_edit.path), resolve(str(synthetic_edit.path))[0], 24.0, stats)
    precision, recall = _precision_recall(_boundaries(shots), synthetic_edit.boundaries)
    assert (precision, recall) == (1.0, 1.0), (_boundaries(shots), synthetic_edit.boundaries)
    # hard cuts leave the shots adjacent; the dissolve's frames belong to no shot
    (a, b) = synthetic_edit.dissolves[0]
    gradual = [s for s in shots if s.gap_before]
    assert len(gradual) == 1 and gradual[0].start_frame >= b - 2
    assert all(x.end_frame == y.start_frame for x, y in zip(shots, shots[1:]) if not y.gap_before)
    assert stats.frames == synthetic_edit.num_frames
    # the transitions on record: hard cuts at the true cut frames, the dissolve's span around the true one
    from multishot.pipeline.detect import transition_before

    transitions = [transition_before(shots, i) for i in range(1, len(shots))]
    cuts = [t.start_frame for t in transitions if t.kind == "cut"]
    assert len(cuts) == len(synthetic_edit.hard_cuts)
    assert all(abs(c - t) <= 2 for c, t in zip(cuts, synthetic_edit.hard_cuts)), cuts
    (dissolve,) = [t for t in transitions if t.kind == "gradual"]
    assert dissolve.start_frame <= a + 2 and dissolve.end_frame >= b - 2, (dissolve, (a, b))


def test_pyscenedetect_content_finds_hard_cuts(synthetic_edit):
    detector = SceneDetectDetector(DetectConfig(backend="content", min_shot_s=0.5))
    shots = detector.detect(str(synthetic_edit.path), resolve(str(synthetic_edit.path))[0], 24.0, DecodeStats())
    found = _boundaries(shots)
    _, hard_recall = _precision_recall(found, [float(c) for c in synthetic_edit.hard_cuts])
    assert hard_recall == 1.0, found


def test_shots_from_predictions_rule():
    single = np.zeros(100)
    many = np.zeros(100)
    single[29] = many[29] = 0.9  # hard cut: shot 0 ends after frame 29
    single[60:62] = 0.8  # gradual transition, many-hot covers 57..64
    many[57:65] = 0.9
    shots = shots_from_predictions(single, many, threshold=0.4, min_shot_frames=5)
    assert [(s.start_frame, s.end_frame, s.gap_before) for s in shots] == [
        (0, 30, False), (30, 57, False), (65, 100, True)
    ]


def test_shots_from_predictions_keeps_every_shot_and_transition():
    """Hand-made probabilities: a gradual transition at the start, a 3-frame shot in the middle,
    a dissolve, and a fade-out into the last frame; every shot and transition is on record."""
    from multishot.pipeline.detect import Transition, transition_before

    single, many = np.zeros(120), np.zeros(120)
    single[2] = 0.9  # fade-in: many-hot covers 0..4, so frames 0..4 belong to no shot
    many[0:5] = 0.9
    single[[29, 32]] = many[[29, 32]] = 0.9  # hard cuts after frames 29 and 32: shot 30..33 is short
    single[60] = 0.7  # dissolve, many-hot 57..64
    many[57:65] = 0.9
    single[80] = many[80] = 0.9  # hard cut, then a 2-frame shot, then a fade-out to the end
    single[[82, 83]] = 0.6
    many[82:120] = 0.8
    shots = shots_from_predictions(single, many, threshold=0.4, min_shot_frames=5)
    assert [(s.start_frame, s.end_frame, s.gap_before, s.too_short) for s in shots] == [
        (5, 30, True, False), (30, 33, False, True), (33, 57, False, False), (65, 81, True, False),
        (81, 82, False, True),
    ]
    assert [transition_before(shots, i) for i in range(len(shots))] == [
        Transition("gradual", 0, 5), Transition("cut", 30, 30), Transition("cut", 33, 33),
        Transition("gradual", 57, 65), Transition("cut", 81, 81),
    ]
    # the fade-out into the end is the frames after the last shot
    assert shots[-1].end_frame == 82
    # the packer's adjacency is what dropping the short shots gave: 5..30, 33..57 and 65..81
    # are separate runs (a removed shot or a gradual transition lies between each pair)
    from multishot.pipeline.pack import PackShot, runs

    packed = runs([PackShot(i, s.start_frame, s.end_frame, not s.too_short, s.gap_before) for i, s in enumerate(shots)])
    assert [[p.index for p in run] for run in packed] == [[0], [2], [3]]


# ---- small parts -----------------------------------------------------------------------------


def test_probe_real_and_broken():
    info = probe(str(FOOTAGE / "archive" / "tos_excerpt_64s_512x120_fmp4.mp4"))
    assert (info.width, info.height, info.fps) == (512, 120, 24.0)
    assert info.num_frames == 1536  # the container says 0 frames: derived from the duration
    assert info.display_width == 288  # pixel aspect 9:16
    for name in ("corrupt_zero_bytes.mp4", "corrupt_random_bytes.mp4", "corrupt_truncated_moovatend_sintel.mp4"):
        with pytest.raises(ProbeError):
            probe(str(FOOTAGE / "bad" / name))


def test_text_area_ratio():
    box = np.array([[0, 0], [10, 0], [10, 5], [0, 5]], dtype=float)
    assert polygon_area(box) == 50
    # a 10x5 box in a 20x10 frame, twice: boxes in fractions of the frame
    quad = tuple((x / 20, y / 10) for x, y in box)
    assert boxes_ratio([TextBox(quad, "ab", 0.9)] * 2) == 0.5
    assert boxes_ratio([TextBox(quad, "ab", 0.9)]) == 0.25 and boxes_ratio([]) == 0.0


def test_resampling_never_reads_past_the_shot():
    frames = source_frames_for_shot(100, 16, source_fps=24.0, fps=16.0)
    assert frames[0] == 100 and frames[-1] < 100 + 24 and frames == sorted(frames)
    assert source_frames_for_shot(0, 4, source_fps=12.0, fps=16.0) == [0, 0, 1, 2]


def test_discover_forms(tmp_path):
    archive = FOOTAGE / "archive"
    by_folder = discover(str(archive), [".mp4"])
    assert len(by_folder) == 4
    assert discover(str(archive / "*.mp4"), [".mp4"]) == by_folder
    listing = tmp_path / "list.txt"
    listing.write_text("# films\n" + "\n".join(by_folder[:2]) + "\n")
    assert discover(str(listing), [".mp4"]) == by_folder[:2]
    import pyarrow as pa

    pq.write_table(pa.table({"path": by_folder[2:]}), tmp_path / "m.parquet")
    assert discover(str(tmp_path / "m.parquet"), [".mp4"]) == by_folder[2:]
    # a folder is walked by real path (../shared may be a link)
    assert discover("file://" + str(archive.resolve()), [".mp4"]) == ["file://" + p for p in by_folder]
    with pytest.raises(InputError, match="does not exist"):
        discover(str(tmp_path / "nope"), [".mp4"])


def test_config_errors_name_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("detect:\n  treshold: 0.5\nrender:\n  width: 833\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad, PipelineConfig)
    assert "detect.treshold" in str(err.value) and "render.width" in str(err.value)
    assert load_config(REPO / "configs" / "pipeline" / "demo.yaml", PipelineConfig).render.width == 832


# ---- the whole run on real footage (session fixture) -------------------------------------------


def test_every_bad_file_is_rejected_or_processed_up_to_the_damage(pipeline_run):
    out, report = pipeline_run
    rejects = pq.read_table(ShardSetLayout(out).rejects_table).to_pylist()
    by_name = {Path(r["source"]).name: r for r in rejects}
    assert set(BAD) <= set(by_name), by_name
    for name in BAD:
        assert by_name[name]["status"] in ("rejected", "partial") and by_name[name]["reason"], by_name[name]
    for name in ("corrupt_zero_bytes.mp4", "corrupt_random_bytes.mp4", "corrupt_truncated_moovatend_sintel.mp4"):
        assert by_name[name]["status"] == "rejected" and by_name[name]["stage"] == "probe"
    assert "decoding stopped at 31" in by_name["corrupt_truncated_faststart_bbb.mp4"]["reason"]
    assert "undecodable packets" in by_name["corrupt_zeroed_middle_bbb.mp4"]["reason"]
    # the good films went through, and the damaged ones still gave shots up to the damage, which
    # the filter keeps (they are removed as duplicates of the intact Big Buck Bunny's: tests/test_dedup.py)
    assert report["videos_by_status"]["ok"] == 4 and "error" not in report["videos_by_status"]
    truncated = [s for s in pq.read_table(ShardSetLayout(out).shots_table).to_pylist()
                 if Path(s["source"]).name == "corrupt_truncated_faststart_bbb.mp4"]
    assert any(s["reason"] in ("", "duplicate") and s["brightness"] is not None for s in truncated)
    assert max(s["end_s"] for s in truncated) < 31.5


def test_shards_hold_valid_samples(pipeline_run):
    out, report = pipeline_run
    layout = ShardSetLayout(out)
    fs, _ = resolve(out)
    manifest = json.loads(Path(layout.manifest).read_text())
    index = pq.read_table(layout.samples_index).to_pylist()
    keys = []
    for shard in manifest["shards"]:
        path = Path(layout.shard(shard["name"]))
        with tarfile.open(path) as tar:
            names = tar.getnames()
        assert all(n.count(".") == 1 for n in names)  # key has no dots; one extension
        for record, mp4 in read_shard(fs, str(path)):
            keys.append(record.key)
            assert record.width == 832 and record.height == 480 and record.fps == 16
            assert record.num_frames % 4 == 1 and all(c % 4 == 1 for c in record.cut_frames)
            assert record.caption_status == "pending" and record.aesthetic_status == "skipped"
            assert 1 <= record.num_shots <= 13
            assert mp4[4:8] == b"ftyp"
    assert len(keys) == len(set(keys)) == len(index) == report["samples"] > 0
    assert {r["key"] for r in index} == set(keys)
    # 60 s needs a long run of kept, adjacent shots: the footage has one (Big Buck Bunny) at most
    assert {"5s", "15s"} <= set(report["samples_per_bucket"]) <= {"5s", "15s", "60s"}
    assert not list(Path(layout.shards_dir).glob("*.tmp"))


def test_shots_table_keeps_every_decision(pipeline_run):
    out, report = pipeline_run
    shots = pq.read_table(ShardSetLayout(out).shots_table).to_pylist()
    assert len(shots) == report["shots_found"] > 30
    assert sum(s["kept"] for s in shots) == report["shots_kept"]
    assert all((s["reason"] == "") == s["kept"] for s in shots)
    # the Sintel trailer's title card is text; the Tears of Steel bitrate stamp is a burned-in
    # overlay (the default action rejects the shots that show it), found in no other film
    text = {Path(s["source"]).name for s in shots if "text" in s["reason"]}
    assert "sintel_trailer_480p.mp4" in text
    overlay = {Path(s["source"]).name for s in shots if "overlay" in s["reason"]}
    assert overlay == {"tos_excerpt_64s_512x120_fmp4.mp4"}
    videos = {Path(v["source"]).name: v for v in pq.read_table(ShardSetLayout(out).videos_table).to_pylist()}
    assert [o["text"] for o in videos["tos_excerpt_64s_512x120_fmp4.mp4"]["overlays"]] == ["450Kbps"]
    assert all(v["overlays"] == [] for name, v in videos.items() if not name.startswith("tos_"))
    assert sum(v["shots"] for v in videos.values()) == len(shots)
    assert all(s["aesthetic"] is None for s in shots)


def test_report_and_verify(pipeline_run, capsys):
    out, report = pipeline_run
    saved = json.loads(Path(ShardSetLayout(out).report).read_text())
    assert saved["samples"] == report["samples"] and saved["realtime_factor"] > 0
    assert saved["aesthetic"].startswith("skipped")
    # the scan (detect + analyse) and the render decode once each; a video without samples (Tears
    # of Steel: every shot shows its overlay) is not rendered
    alive = report["videos_by_status"]["ok"] + report["videos_by_status"].get("partial", 0)
    rendered = len({r["source"] for r in pq.read_table(ShardSetLayout(out).samples_index).to_pylist()})
    assert rendered < alive
    assert saved["decode_passes_per_video"] == pytest.approx((2 * rendered + (alive - rendered)) / alive)
    # no GPU here: every pass ran on libavcodec, and with no GPU asked for there is no fallback to note
    assert "detect: cpu" in saved["decoders"] and all(k.endswith(": cpu") for k in saved["decoders"])
    assert saved["decoder_notes"] == []
    from multishot.cli import main

    assert main(["shards", "verify", out, "-q"]) == 0


def test_rerun_skips_finished_videos(pipeline_run):
    out, report = pipeline_run
    from multishot.config import load_config as load
    from multishot.pipeline.run import run_pipeline

    listing = Path(out).parent / "inputs.txt"
    config = load(REPO / "configs" / "pipeline" / "demo.yaml", PipelineConfig, {"input": str(listing), "output": out})
    again = run_pipeline(config, progress=False)
    assert again["samples"] == report["samples"]
    assert again["stage_seconds"] == report["stage_seconds"]  # nothing was processed again
    assert again["realtime_factor"] is None and report["realtime_factor"] > 0  # no speed claimed for a resume
    assert report["shots_removed"] == report["shots_found"] - report["shots_kept"]


def test_training_loader_reads_the_pipeline_shards(footage_shards):
    """The contract between the halves: the training loader reads what the pipeline wrote."""
    from multishot.dataset.loader import DataConfig, TrainLoader

    config = DataConfig(shards=[footage_shards], num_frames=33, height=48, width=80, batch_size=1,
                        shuffle_buffer=1, num_workers=0, uncaptioned="placeholder")
    batch = next(iter(TrainLoader(config)))
    assert tuple(batch.video.shape) == (1, 3, 33, 48, 80)
    assert -1.0 <= float(batch.video.min()) and float(batch.video.max()) <= 1.0
    assert batch.prompts[0].startswith("[global caption]")
    assert batch.prompts[0].count("[shot cut]") == len(batch.cut_frames[0])
    assert all(c % 4 == 1 and c < 33 for c in batch.cut_frames[0])


def test_samples_hash_ignores_placement_but_not_stage_settings():
    from multishot.pipeline.run import compute_samples_hash

    demo = REPO / "configs" / "pipeline" / "demo.yaml"
    base = compute_samples_hash(load_config(demo, PipelineConfig))
    moved = load_config(demo, PipelineConfig, {"detect": {"resources": {"actors": 1, "cpus": 1.0}, "batch_windows": 2},
                                               "render": {"resources": {"gpus": 1}}, "output": "/elsewhere",
                                               "annotate": {"concurrency": 1}, "ray": {"runner": "sequential"}})
    assert compute_samples_hash(moved) == base  # a rerun with other placement still resumes
    assert compute_samples_hash(load_config(demo, PipelineConfig, {"detect": {"threshold": 0.5}})) != base
    assert compute_samples_hash(load_config(demo, PipelineConfig, {"render": {"fps": 24}})) != base


def test_result_of_a_video_that_failed_before_analysis():
    """A video whose analysis failed still leaves a readable result: shots unscored, not kept."""
    from multishot.pipeline.detect import DetectedShot
    from multishot.pipeline.task import ShotRow, VideoTask

    task = VideoTask(source="/x/film.mp4", source_id="0123456789abcdef")
    task.shots = [ShotRow(shot=DetectedShot(0, 30, False))]
    task.fail("analyse", "RuntimeError: boom", status="error")
    (shot,) = VideoTask.from_row(task.to_row()).shot_rows()
    assert shot["kept"] is False and shot["reason"] == "not analysed" and shot["brightness"] is None
