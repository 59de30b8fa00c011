"""The numbers a run ends with say what they mean (issue 31): the pipeline report's realtime
factor covers only the videos this run processed (a resume says so instead), sample seconds are
given per bucket (buckets overlap), removed shots are counted once however many reasons they
have; ``eval`` keeps generated and real videos apart in its overall rows; the training bar shows
no MFU on a CPU."""

from __future__ import annotations

from pathlib import Path

import torch

from multishot.config import load_config
from multishot.evaluate.report import origin, overall, overall_by_origin, table
from multishot.pipeline.config import PipelineConfig
from multishot.pipeline.index import format_report, summary
from multishot.trainer.metrics import progress_postfix

REPO = Path(__file__).resolve().parents[1]


def _shot(kept: bool, reason: str = "") -> dict:
    return {"kept": kept, "reason": reason}


def _report(processed: int, processed_s: float | None) -> dict:
    config = load_config(REPO / "configs/pipeline/demo.yaml", PipelineConfig)
    shots = [_shot(True), _shot(False, "too_dark,text"), _shot(False, "too_dark"), _shot(False, "too_short")]
    samples = [{"bucket": "5s", "duration_s": 5.0, "num_shots": 2, "caption_status": "pending"},
               {"bucket": "5s", "duration_s": 4.5, "num_shots": 1, "caption_status": "pending"},
               {"bucket": "15s", "duration_s": 15.0, "num_shots": 3, "caption_status": "pending"}]
    report = summary(config, [], [], samples, shots, wall_s=10.0, processed_s=processed_s)
    return {**report, "this_run": {"inputs": 2, "processed": processed, "usable": 2}}


def test_removed_shots_counted_once_and_reasons_labelled():
    report = _report(2, 40.0)
    assert report["shots_removed"] == 3 and report["shots_found"] == 4 and report["shots_kept"] == 1
    assert report["shots_removed_by_reason"] == {"too_dark": 2, "text": 1, "too_short": 1}  # 4 reasons, 3 shots
    text = format_report(report)
    assert "4 found, 1 kept, 3 removed; reasons (a shot may have several): text 1, too_dark 2, too_short 1" in text


def test_sample_seconds_per_bucket_not_summed_across_buckets():
    report = _report(2, 40.0)
    assert report["sample_seconds_per_bucket"] == {"5s": 9.5, "15s": 15.0}
    assert "samples per bucket 5s 9.5 s, 15s 15.0 s (buckets overlap" in format_report(report)


def test_realtime_factor_covers_this_runs_videos_only():
    fresh = _report(2, 40.0)
    assert fresh["realtime_factor"] == 4.0  # 40 s of footage processed in 10 s
    assert "4.00× realtime over the 2 videos processed in this run" in format_report(fresh)
    resumed = _report(0, 0.0)  # every video was done before: no speed to speak of
    assert resumed["realtime_factor"] is None
    assert "(resumed: nothing processed)" in format_report(resumed)


def _result(name: str, where: str, sca: float) -> dict:
    return {"video": f"/x/{name}.mp4", "requested_cuts": [20], "detected_cuts": [20], "origin": where,
            "metrics": {"sca": sca}, "skipped": {}}


def test_eval_overall_keeps_generated_and_real_apart():
    assert origin({"checkpoints": {}, "prompt": "p"}) == "generated"
    assert origin({"source": "a.mp4", "shots": [], "key": "k"}) == "real"
    assert origin(None) == "unknown" and origin({"cut_frames": [20]}) == "unknown"
    results = [_result("gen_a", "generated", 0.5), _result("gen_b", "generated", 0.7),
               _result("real_a", "real", 1.0)]
    by_origin = overall_by_origin(results)
    assert by_origin["generated"]["sca"] == {"mean": 0.6, "videos": 2}
    assert by_origin["real"]["sca"] == {"mean": 1.0, "videos": 1}
    rows = table(results, overall(results)).splitlines()
    assert [r.split()[:3] for r in rows if r.startswith("overall")] == [
        ["overall", "generated", "(2)"], ["overall", "real", "(1)"]]
    assert not any(r.split()[0] == "overall" and len(r.split()) == 2 for r in rows)  # no mixed mean
    only_generated = table(results[:2], overall(results[:2])).splitlines()
    assert only_generated[-1].split()[0] == "overall" and only_generated[-1].split()[1] == "0.6000"


def test_training_bar_has_no_mfu_on_cpu():
    metrics = {"loss": 0.25, "mfu": 0.0001, "step_time_s": 1.5}
    assert progress_postfix(metrics, torch.device("cpu")) == {"loss": "0.2500", "step": "1.50s"}
    assert progress_postfix(metrics, torch.device("cuda", 0)) == {"loss": "0.2500", "mfu": "0.0%"}
