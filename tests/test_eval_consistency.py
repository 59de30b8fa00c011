"""`multishot eval`'s consistency metrics and CLI with small random CLIP / DINOv2 models saved to a
temp dir and loaded by the real code (no weights can be downloaded here), on clips cut from the
real footage (../shared/footage, CC-BY Blender Foundation)."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from multishot.cli import main as multishot_main
from multishot.evaluate.config import EvalConfig
from multishot.evaluate.video import METRICS, Evaluator
from multishot.pipeline.decode import iter_frames

FOOTAGE = Path(__file__).resolve().parents[2] / "shared" / "footage" / "archive"
FPS, SIZE = 16, (128, 72)
#: open_clip config of a tiny CLIP; the text tower keeps CLIP's BPE vocabulary (49408 tokens)
TINY_CLIP = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 64, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
PROMPT = ("[global caption] [character1], a girl, and [character2], a rabbit, in Blender films. "
          "This scene contains 3 shots. [per shot caption] [character1] walks. [shot cut] "
          "[character2] eats. [shot cut] [character1] looks back.")


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict:
    """EvalConfig keys of random tiny models on disk, one per column's architecture: DINO v1
    (transformers ViT), CLIP (open_clip, for background and aesthetic) + LAION's linear head,
    ViCLIP (VBench's layout) and DINOv2."""
    from multishot.torchvision_cpu import import_torchvision

    import_torchvision()
    import open_clip
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model, ViTConfig, ViTModel

    from multishot.evaluate.consistency import LinearAestheticHead
    from tiny_eval_models import tiny_viclip_state

    root = tmp_path_factory.mktemp("eval_models")
    (root / "tiny-eval-clip.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(root / "tiny-eval-clip.json")
    torch.manual_seed(0)
    torch.save(open_clip.create_model("tiny-eval-clip").state_dict(), root / "clip.pt")
    torch.save(LinearAestheticHead(TINY_CLIP["embed_dim"]).state_dict(), root / "head.pth")
    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                       image_size=224, patch_size=16), add_pooling_layer=False).save_pretrained(root / "dino_v1")
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                             image_size=56, patch_size=14)).save_pretrained(root / "dino")
    BitImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 56, "width": 56},
                      image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]).save_pretrained(root / "dino")
    torch.save({"model": tiny_viclip_state()}, root / "viclip.pth")
    clip = {"model": "tiny-eval-clip", "weights": root / "clip.pt"}
    return {"dino_v1_weights": root / "dino_v1", "background_clip_model": clip["model"],
            "background_clip_weights": clip["weights"], "aesthetic_clip_model": clip["model"],
            "aesthetic_clip_weights": clip["weights"], "aesthetic_head_weights": root / "head.pth",
            "viclip_weights": root / "viclip.pth", "dinov2_weights": root / "dino"}


def _frames(name: str, start_frame: int, count: int) -> list[np.ndarray]:
    wanted = np.arange(start_frame, start_frame + count)
    return [f for _, f in iter_frames(str(FOOTAGE / name), fps=24.0, width=SIZE[0], height=SIZE[1], wanted=wanted)]


def _write_mp4(path: Path, frames: list[np.ndarray]) -> Path:
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = SIZE[0], SIZE[1], "yuv420p"
        for rgb in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        out.mux(stream.encode())
    return path


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    """``three_shots``: Sintel / Big Buck Bunny / Sintel again (the first shot's frames), 20 frames
    each, hard cuts at 20 and 40, with a JSON beside it; ``still``: one frame held for 24 frames."""
    root = tmp_path_factory.mktemp("eval_videos")
    sintel = _frames("sintel_film_excerpt_26s.mp4", 75, 20)
    bunny = _frames("bbb_first60s_360p.mp4", 960, 20)
    three = _write_mp4(root / "three_shots.mp4", sintel + bunny + sintel)
    (root / "three_shots.json").write_text(json.dumps({"cut_frames": [20, 40], "prompt": PROMPT}))
    (root / "still").mkdir()  # its own folder: the CLI test evaluates every mp4 of root
    still = _write_mp4(root / "still" / "still.mp4", [sintel[0]] * 24)
    return {"three_shots": three, "still": still, "root": root}


def test_every_column_in_range_with_small_random_models(weights, videos):
    result = Evaluator(EvalConfig(**weights, dinov2_frames_per_shot=6)).evaluate(videos["three_shots"], [20, 40], PROMPT)
    assert set(result["metrics"]) == set(METRICS) and result["skipped"] == {}
    assert result["num_frames"] == 60 and result["requested_cuts"] == [20, 40]
    m = result["metrics"]
    assert 0 < m["sca"] <= 1
    for name in ("subject_consistency", "background_consistency"):
        assert 0 <= m[name] <= 1 + 1e-6
        sims, count = result["pooled"][name]
        assert m[name] == pytest.approx(sims / count) and count == 60 - len(result["detected_cuts"]) - 1
    for name in ("semantic_global", "semantic_shot"):
        assert -1 - 1e-6 <= m[name] <= 1 + 1e-6
    assert np.isfinite(m["aesthetic"])
    # shots 1 and 3 (the only pair naming a common [characterK]) hold the same frames, equal up to
    # x264's coding of them at different places in the stream
    assert m["inter_shot_viclip"] == pytest.approx(1.0, abs=1e-2)
    assert m["inter_shot_dinov2"] == pytest.approx(1.0, abs=1e-2)


def test_identical_frames_are_fully_consistent(weights, videos):
    result = Evaluator(EvalConfig(**weights)).evaluate(videos["still"], [], None)
    assert result["metrics"]["sca"] == 1.0 and result["detected_cuts"] == []
    assert result["metrics"]["subject_consistency"] == pytest.approx(1.0, abs=1e-4)
    assert result["metrics"]["background_consistency"] == pytest.approx(1.0, abs=1e-4)
    assert result["skipped"] == {name: "no prompt" for name in (
        "inter_shot_viclip", "inter_shot_dinov2", "semantic_global", "semantic_shot")}


def test_metrics_without_weights_are_skipped_not_numbers(videos):
    result = Evaluator(EvalConfig()).evaluate(videos["three_shots"], None, PROMPT)
    assert result["metrics"] == {} and result["sca"] is None
    assert result["skipped"]["sca"] == "no requested cut frames"
    assert result["skipped"]["subject_consistency"] == "no dino_v1_weights in the config"
    assert result["skipped"]["semantic_shot"] == "no viclip_weights in the config"
    assert set(result["skipped"]) == set(METRICS)


def test_overall_pools_vbench_columns_frame_weighted():
    from multishot.evaluate.report import overall

    results = [{"metrics": {"subject_consistency": 0.5, "aesthetic": 0.4}, "pooled": {"subject_consistency": [5.0, 10]}},
               {"metrics": {"subject_consistency": 1.0, "aesthetic": 0.6}, "pooled": {"subject_consistency": [30.0, 30]}}]
    summary = overall(results)
    assert summary["subject_consistency"]["mean"] == pytest.approx(35 / 40)  # VBench: sim / cnt
    assert summary["aesthetic"]["mean"] == pytest.approx(0.5)  # VBench: mean over videos
    assert summary["sca"] == {"mean": None, "videos": 0}


def test_cli_reads_cuts_beside_each_mp4_and_writes_json(weights, videos, tmp_path, capsys):
    config = tmp_path / "eval.yaml"
    config.write_text(f"background_clip_model: {weights['background_clip_model']}\n"
                      f"background_clip_weights: {weights['background_clip_weights']}\n"
                      f"viclip_weights: {weights['viclip_weights']}\n")
    report = tmp_path / "report.json"
    assert multishot_main(["eval", str(videos["root"]), "--config", str(config), "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert "three_shots.mp4" in out and "overall" in out and "skipped subject_consistency" in out
    data = json.loads(report.read_text())
    (video,) = data["videos"]
    assert video["requested_cuts"] == [20, 40] and "semantic_shot" in video["metrics"]
    assert data["overall"]["sca"]["videos"] == 1 and data["overall"]["subject_consistency"]["mean"] is None
    # --cuts overrides the JSON for every video
    assert multishot_main(["eval", str(videos["three_shots"]), "--cuts", "30", "--json", str(report)]) == 0
    assert json.loads(report.read_text())["videos"][0]["requested_cuts"] == [30]


@pytest.mark.parametrize("args, message", [
    (["nowhere/"], "nowhere/ does not exist"),
    (["{three}", "--cuts", "20,x"], "--cuts takes comma-separated frame numbers"),
    (["{three}", "--cuts", "500"], "outside the video's 60 frames"),
    (["{three}", "--config", "{bad}"], "clip_weightz"),
])
def test_cli_bad_input_is_one_line_and_exit_2(videos, tmp_path, capsys, args, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text("clip_weightz: x\n")
    args = [a.format(three=videos["three_shots"], bad=bad) for a in args]
    assert multishot_main(["eval", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
