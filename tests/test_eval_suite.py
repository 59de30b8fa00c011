"""`multishot eval --suite`: the benchmark prompts, generated on CPU with the tiny random models
and scored with small random eval models (columns without weights reported as skipped)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from multishot.cli import main as multishot_main
from multishot.evaluate.suite import load_suite

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "benchmarks" / "prompts" / "holocine_protocol.jsonl"
TINY_CLIP = {
    "embed_dim": 32, "quick_gelu": True,
    "vision_cfg": {"image_size": 64, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def test_the_suite_is_holocine_s_protocol():
    requests = load_suite(SUITE)
    assert len(requests) == 100 and len({r.name for r in requests}) == 100
    shots = sorted(len(r.cut_frames) + 1 for r in requests)
    assert shots[0] == 2 and shots[-1] == 13
    for r in requests:
        assert r.num_frames == 241 and r.prompt.startswith("[global caption] ")
        assert f"This scene contains {len(r.cut_frames) + 1} shots." in r.prompt
        assert r.prompt.count("[shot cut]") == len(r.cut_frames) and "[character1]" in r.prompt
        assert all((c - 1) % 4 == 0 for c in r.cut_frames) and r.extra == {}  # nothing needed rounding
    assert [r.name for r in load_suite(SUITE, limit=3)] == [r.name for r in requests[:3]]


@pytest.fixture
def tiny_suite(tmp_path) -> Path:
    items = [{"name": "two_friends", "global_caption": "a scene with [character1] and [character2]",
              "shot_captions": ["a shot of [character1]", "the shot", "a video of [character1]"],
              "num_frames": 17, "cut_frames": [5, 13]},
             {"name": "one_cut", "global_caption": "a scene", "shot_captions": ["a shot", "the shot"],
              "num_frames": 17, "cut_frames": [9]}]
    path = tmp_path / "suite.jsonl"
    path.write_text("".join(json.dumps(i) + "\n" for i in items))
    return path


@pytest.fixture
def eval_config(tmp_path) -> Path:
    from multishot.torchvision_cpu import import_torchvision

    import_torchvision()
    import open_clip
    from tiny_eval_models import tiny_viclip_state

    (tmp_path / "tiny-suite-clip.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(tmp_path / "tiny-suite-clip.json")
    torch.manual_seed(0)
    torch.save(open_clip.create_model("tiny-suite-clip").state_dict(), tmp_path / "clip.pt")
    torch.save({"model": tiny_viclip_state()}, tmp_path / "viclip.pth")
    config = tmp_path / "eval.yaml"
    config.write_text(f"background_clip_model: tiny-suite-clip\nbackground_clip_weights: {tmp_path / 'clip.pt'}\n"
                      f"viclip_weights: {tmp_path / 'viclip.pth'}\n")
    return config


def test_suite_generates_on_cpu_then_reads_the_folder(tiny_suite, eval_config, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # tiny_cpu's random_weights folder is relative to the run
    videos, report, md = tmp_path / "videos", tmp_path / "report.json", tmp_path / "report.md"
    args = ["eval", "--suite", str(tiny_suite), "--videos", str(videos), "--config", str(eval_config),
            "--json", str(report), "--markdown", str(md)]
    assert multishot_main([*args, "--generate", str(ROOT / "configs/generate/tiny_cpu.yaml")]) == 0
    assert sorted(p.name for p in videos.iterdir()) == ["one_cut.json", "one_cut.mp4", "two_friends.json", "two_friends.mp4"]
    first = json.loads(report.read_text())
    prompts = {p["name"]: p for p in first["prompts"]}
    assert prompts["two_friends"]["requested_cuts"] == [5, 13]
    assert set(prompts["two_friends"]["metrics"]) == {"sca", "inter_shot_viclip", "background_consistency",
                                                      "semantic_global", "semantic_shot"}
    assert prompts["one_cut"]["skipped"]["inter_shot_viclip"] == "no two shots name the same [characterK]"
    assert prompts["one_cut"]["skipped"]["subject_consistency"] == "no dino_v1_weights in the config"
    assert first["overall"]["sca"]["videos"] == 2 and first["overall"]["aesthetic"]["mean"] is None
    table = md.read_text()
    assert re.search(r"^\| two_friends \| 3 \| \d\.\d{4} \|", table, re.M)
    assert "| **mean** (2 prompts) |" in table and "Aesthetic skipped: no aesthetic_clip_weights" in table
    # again without --generate: the folder's videos are read, not remade, and score the same
    stamps = {p.name: p.stat().st_mtime_ns for p in videos.iterdir()}
    capsys.readouterr()
    assert multishot_main(args) == 0
    assert {p.name: p.stat().st_mtime_ns for p in videos.iterdir()} == stamps
    assert json.loads(report.read_text())["prompts"] == first["prompts"]
    assert "two_friends.mp4" in capsys.readouterr().out


def test_suite_without_its_videos_is_one_line_and_exit_2(tiny_suite, tmp_path, capsys):
    assert multishot_main(["eval", "--suite", str(tiny_suite), "--videos", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no video for 2 suite prompts (two_friends, one_cut)" in err
    assert multishot_main(["eval", "--suite", str(tiny_suite)]) == 2
    assert "--videos DIR" in capsys.readouterr().err
    assert multishot_main(["eval", "--suite", str(tmp_path / "nope.jsonl"), "--videos", str(tmp_path)]) == 2
    assert "nope.jsonl" in capsys.readouterr().err


def test_whole_suite_from_a_folder_of_videos(tmp_path, capsys):
    """Every prompt of the suite scored from a folder: synthetic 241-frame videos whose shots are
    real footage frames (a different one per shot, slowly panning) with hard cuts exactly at the
    targets. No weights: SCA is scored, every other column is reported as skipped. The cuts are
    detected with PySceneDetect's content detector (a real detector, fast on 24,000 frames of a
    busy CPU; TransNetV2's SCA on real samples is tests/test_eval_sca.py's)."""
    import av
    import numpy as np

    from multishot.pipeline.decode import iter_frames

    footage = ROOT.parent / "shared" / "footage" / "archive"
    pool = []
    for name, step in (("sintel_trailer_480p.mp4", 37), ("bbb_first60s_360p.mp4", 53)):
        pool += [f for _, f in iter_frames(str(footage / name), fps=24.0, width=96, height=54,
                                           wanted=np.arange(40, 40 + 16 * step, step))]
    videos = tmp_path / "videos"
    videos.mkdir()
    requests = load_suite(SUITE)
    for k, r in enumerate(requests):
        edges = [0, *r.cut_frames, r.num_frames]
        with av.open(str(videos / f"{r.name}.mp4"), "w") as out:
            stream = out.add_stream("libx264", rate=16)
            stream.width, stream.height, stream.pix_fmt = 64, 36, "yuv420p"
            for shot, (a, b) in enumerate(zip(edges, edges[1:])):
                still = pool[(7 * k + 5 * shot) % len(pool)]
                for i in range(b - a):
                    x = min(i // 2, 96 - 64)  # a slow pan inside the 96-px frame
                    frame = np.ascontiguousarray(still[9:45, x:x + 64])
                    out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            out.mux(stream.encode())
    report, config = tmp_path / "report.json", tmp_path / "eval.yaml"
    config.write_text("detect: {backend: content, min_shot_s: 0.0}\n")
    assert multishot_main(["eval", "--suite", str(SUITE), "--videos", str(videos), "--config", str(config),
                           "--json", str(report), "--markdown", str(tmp_path / "report.md")]) == 0
    data = json.loads(report.read_text())
    assert len(data["prompts"]) == len(requests) == 100 and data["overall"]["sca"]["videos"] == 100
    assert all(set(p["metrics"]) == {"sca"} and len(p["skipped"]) == 7 for p in data["prompts"])
    scores = [p["metrics"]["sca"] for p in data["prompts"]]
    print("SCA per prompt:", [round(s, 4) for s in scores], "mean", round(data["overall"]["sca"]["mean"], 4))
    assert data["overall"]["sca"]["mean"] >= 0.9, scores
    assert (tmp_path / "report.md").read_text().count("\n| ") >= 101
