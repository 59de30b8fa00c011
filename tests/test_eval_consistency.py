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
from multishot.evaluate.consistency import character_pairs, inter_shot_similarity, vbench_consistency
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
    """``{"clip_model", "clip_weights", "dino_weights"}`` of random tiny models on disk."""
    from multishot.torchvision_cpu import import_torchvision

    import_torchvision()
    import open_clip
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    root = tmp_path_factory.mktemp("eval_models")
    (root / "tiny-eval-clip.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(root / "tiny-eval-clip.json")
    torch.manual_seed(0)
    torch.save(open_clip.create_model("tiny-eval-clip").state_dict(), root / "clip.pt")
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                             image_size=56, patch_size=14)).save_pretrained(root / "dino")
    BitImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 56, "width": 56},
                      image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]).save_pretrained(root / "dino")
    return {"clip_model": "tiny-eval-clip", "clip_weights": root / "clip.pt", "dino_weights": root / "dino"}


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


def test_vbench_consistency_is_vbench_loop():
    """Our vectorised formula equals VBench's per-frame loop (vbench/subject_consistency.py)."""
    torch.manual_seed(0)
    e = torch.nn.functional.normalize(torch.randn(9, 16), dim=-1)
    total = 0.0
    for i in range(1, len(e)):
        sim_pre = max(0.0, torch.nn.functional.cosine_similarity(e[i - 1:i], e[i:i + 1]).item())
        sim_fir = max(0.0, torch.nn.functional.cosine_similarity(e[:1], e[i:i + 1]).item())
        total += (sim_pre + sim_fir) / 2
    assert vbench_consistency(e) == pytest.approx(total / (len(e) - 1), abs=1e-6)
    assert vbench_consistency(e[:1].repeat(5, 1)) == pytest.approx(1.0, abs=1e-6)
    assert character_pairs(["[character1] runs", "[character2]", "[character2] and [character1]"]) == [(0, 2), (1, 2)]
    assert inter_shot_similarity(e[:1]) is None  # one shot: no pair


def test_every_metric_in_range_with_small_random_models(weights, videos):
    result = Evaluator(EvalConfig(**weights, frames_per_shot=6)).evaluate(videos["three_shots"], [20, 40], PROMPT)
    assert set(result["metrics"]) == set(METRICS) and result["skipped"] == {}
    assert result["num_frames"] == 60 and result["requested_cuts"] == [20, 40]
    m = result["metrics"]
    assert 0 < m["sca"] <= 1
    for name in ("intra_shot_clip", "intra_shot_dino"):
        assert 0 <= m[name] <= 1 + 1e-6
    for name in ("inter_shot_clip", "text_clip_global", "text_clip_shot"):
        assert -1 - 1e-6 <= m[name] <= 1 + 1e-6
    # shots 1 and 3 (both name [character1]) hold the same frames: their similarity is 1
    assert m["inter_shot_clip_same_character"] == pytest.approx(1.0, abs=1e-3)
    assert m["inter_shot_clip"] < m["inter_shot_clip_same_character"]


def test_identical_frames_are_fully_consistent(weights, videos):
    result = Evaluator(EvalConfig(**weights)).evaluate(videos["still"], [], None)
    assert result["metrics"]["sca"] == 1.0 and result["detected_cuts"] == []
    assert result["metrics"]["intra_shot_clip"] == pytest.approx(1.0, abs=1e-4)
    assert result["metrics"]["intra_shot_dino"] == pytest.approx(1.0, abs=1e-4)
    assert set(result["skipped"]) == {"inter_shot_clip", "inter_shot_clip_same_character",
                                      "text_clip_global", "text_clip_shot"}  # one shot, no prompt


def test_metrics_without_weights_are_skipped_not_numbers(videos):
    result = Evaluator(EvalConfig()).evaluate(videos["three_shots"], None, PROMPT)
    assert result["metrics"] == {} and result["sca"] is None
    assert result["skipped"]["sca"] == "no requested cut frames"
    assert result["skipped"]["intra_shot_dino"] == "no dino_weights in the config"
    assert result["skipped"]["text_clip_shot"] == "no clip_weights in the config"


def test_cli_reads_cuts_beside_each_mp4_and_writes_json(weights, videos, tmp_path, capsys):
    config = tmp_path / "eval.yaml"
    config.write_text(f"clip_model: {weights['clip_model']}\nclip_weights: {weights['clip_weights']}\n"
                      "frames_per_shot: 4\n")
    report = tmp_path / "report.json"
    assert multishot_main(["eval", str(videos["root"]), "--config", str(config), "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert "three_shots.mp4" in out and "overall" in out and "skipped intra_shot_dino" in out
    data = json.loads(report.read_text())
    (video,) = data["videos"]
    assert video["requested_cuts"] == [20, 40] and "text_clip_shot" in video["metrics"]
    assert data["overall"]["sca"]["videos"] == 1 and data["overall"]["intra_shot_dino"]["mean"] is None
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
