"""Every detected shot on record: a fast-cut montage of real footage at 29.97 fps through the real
pipeline (TransNetV2, sequential runner), and its index/shots.parquet against the montage's cuts.

Before too-short shots had rows, 14 of the montage's 34 cuts (those between two shots under
``detect.min_shot_s``) appeared nowhere in the table.
"""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from synthetic_edit import MONTAGE_FPS, build_montage

from multishot.dataset.shards import ShardSetLayout, read_shard
from multishot.dataset.storage import resolve
from multishot.pipeline.config import PipelineConfig
from multishot.pipeline.run import run_pipeline


@pytest.fixture(scope="module")
def montage_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("montage")
    montage = build_montage(work)
    config = PipelineConfig.model_validate({
        "input": str(montage.path), "output": str(work / "out"),
        "analyse": {"frames_per_shot": 1, "ocr_backend": "none"},
        "pack": {"buckets": [{"name": "1s", "target_s": 1.0, "tolerance_s": 0.3}]},
        "render": {"width": 64, "height": 48},
        "ray": {"runner": "sequential"},
    })
    report = run_pipeline(config, progress=False)
    return montage, ShardSetLayout(str(work / "out")), report


def test_every_true_cut_is_a_shot_boundary_in_the_table(montage_run):
    montage, layout, report = montage_run
    shots = pq.read_table(layout.shots_table).to_pylist()
    assert len(shots) == report["shots_found"]
    bounds = {s["start_frame"] for s in shots} | {s["end_frame"] for s in shots}
    assert [c for c in montage.hard_cuts if c not in bounds] == []
    # a quarter of the cuts or more lie only between too-short shots: dropping those rows loses them
    kept_bounds = {f for s in shots if s["reason"] != "too_short" for f in (s["start_frame"], s["end_frame"])}
    assert len([c for c in montage.hard_cuts if c not in kept_bounds]) >= len(montage.hard_cuts) // 4


def test_too_short_shots_and_transitions_are_recorded(montage_run):
    montage, layout, report = montage_run
    shots = pq.read_table(layout.shots_table).to_pylist()
    min_frames = round(1.0 * float(MONTAGE_FPS))  # detect.min_shot_s: 1.0
    for s in shots:
        short = s["end_frame"] - s["start_frame"] < min_frames
        assert (s["reason"] == "too_short") == short, s
        if short:
            assert s["kept"] is False and s["brightness"] is None and s["ocr_text_ratio"] is None
    assert report["shots_removed_by_reason"]["too_short"] == sum(s["reason"] == "too_short" for s in shots) >= 10
    # the rows tile the video: each shot starts where the previous one ended, through a hard cut
    assert shots[0]["start_frame"] == 0 and shots[0]["transition"] is None
    for previous, s in zip(shots, shots[1:]):
        assert s["start_frame"] == previous["end_frame"]
        transition = (s["transition"], s["transition_start_frame"], s["transition_end_frame"])
        assert transition == ("cut", s["start_frame"], s["start_frame"])
        assert s["transition_start_s"] == pytest.approx(s["start_frame"] / float(MONTAGE_FPS))
        assert s["gap_before"] is False
    assert shots[-1]["end_frame"] == montage.num_frames


def test_samples_hold_kept_shots_only(montage_run):
    """A too-short shot is never packed and still breaks adjacency: here every kept shot lies
    between too-short ones, so each sample is one kept shot."""
    montage, layout, report = montage_run
    shots = pq.read_table(layout.shots_table).to_pylist()
    kept = [(s["start_frame"], s["end_frame"]) for s in shots if s["kept"]]
    fs, _ = resolve(layout.root)
    records = [record for shard in sorted(set(pq.read_table(layout.samples_index).column("shard").to_pylist()))
               for record, _ in read_shard(fs, layout.shard(shard))]
    assert len(records) == report["samples"] > 0
    for record in records:
        assert record.num_shots == 1
        (shot,) = record.shots
        assert any(a <= shot.source_start_frame and shot.source_end_frame <= b for a, b in kept), shot
    videos = pq.read_table(layout.videos_table).to_pylist()
    assert [(v["status"], v["shots"], v["shots_kept"], v["overlays"]) for v in videos] == [
        ("ok", len(shots), len(kept), [])
    ]


def test_a_video_of_too_short_shots_is_on_record_and_not_analysed(tmp_path):
    """PySceneDetect with a 60 s minimum: its one scene is too short, recorded, never decoded again."""
    from footage_clips import FOOTAGE

    from multishot.pipeline.stages import STAGES, run_sequential
    from multishot.pipeline.task import VideoTask

    config = PipelineConfig.model_validate({"output": str(tmp_path), "detect": {"backend": "content", "min_shot_s": 60}})
    stages = [s for s in STAGES if s.name in ("probe", "detect", "analyse", "pack")]
    source = FOOTAGE / "archive" / "sintel_film_excerpt_26s.mp4"
    (task,) = run_sequential(config, "test", [VideoTask(source=str(source), source_id="0")], stages)
    rows = task.shot_rows()
    assert task.status == "ok" and rows and task.samples == []
    assert all(r["reason"] == "too_short" and not r["kept"] and r["brightness"] is None for r in rows)
    assert "analyse" not in task.decode  # no decode pass for nothing to analyse
