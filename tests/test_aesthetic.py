"""The aesthetic stage's real loading code on a small random open_clip model saved to disk.

The real weights (OpenAI ViT-L/14 for open_clip, LAION's ``sac+logos+ava1-l14-linearMSE.pth``)
cannot be downloaded here, so the same code paths load a tiny CLIP and a random head.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from multishot.pipeline.aesthetic import AestheticHead, AestheticScorer
from multishot.pipeline.config import AnalyseConfig
from multishot.pipeline.decode import iter_frames

FOOTAGE = Path(__file__).resolve().parents[2] / "shared" / "footage"
TINY = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 64, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """(model name, CLIP weights file, head weights file) of a random tiny CLIP + LAION head."""
    from multishot.torchvision_cpu import import_torchvision

    import_torchvision()
    import open_clip

    root = tmp_path_factory.mktemp("aesthetic")
    (root / "tiny-clip-quickgelu.json").write_text(json.dumps(TINY))
    open_clip.add_model_config(root / "tiny-clip-quickgelu.json")
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-clip-quickgelu")
    torch.save(model.state_dict(), root / "clip.pt")
    torch.save(AestheticHead(TINY["embed_dim"]).state_dict(), root / "head.pth")
    return "tiny-clip-quickgelu", root / "clip.pt", root / "head.pth"


def _frames(count: int) -> list[np.ndarray]:
    path = str(FOOTAGE / "archive" / "sintel_film_excerpt_26s.mp4")
    return [f for _, f in iter_frames(path, fps=25.0, wanted=np.arange(100, 100 + 50 * count, 50))]


def test_scores_are_the_head_on_normalised_embeddings(weights):
    name, clip, head = weights
    scorer = AestheticScorer(name, clip, head)
    frames = _frames(3)
    scores = scorer.score(frames)
    assert scores.shape == (3,) and np.isfinite(scores).all()
    from PIL import Image

    with torch.inference_mode():
        batch = torch.stack([scorer.preprocess(Image.fromarray(f)) for f in frames])
        embedding = scorer.model.encode_image(batch)
        expected = scorer.head(embedding / embedding.norm(dim=-1, keepdim=True)).numpy()
        unnormalised = scorer.head(embedding).numpy()
    np.testing.assert_allclose(scores, expected, rtol=1e-5)
    assert not np.allclose(scores, unnormalised)  # the L2 normalisation is really applied


def test_missing_or_mismatched_weights_are_clear_errors(weights, tmp_path):
    name, clip, head = weights
    with pytest.raises(FileNotFoundError, match="CLIP weights not found"):
        AestheticScorer(name, tmp_path / "nope.pt", head)
    torch.save(AestheticHead(64).state_dict(), tmp_path / "wide_head.pth")
    with pytest.raises(RuntimeError, match="size mismatch"):
        AestheticScorer(name, clip, tmp_path / "wide_head.pth")


def test_scan_scores_every_shot_when_weights_are_given(weights):
    from multishot.pipeline.analyse import shot_scores
    from multishot.pipeline.config import PipelineConfig
    from multishot.pipeline.detect import DetectedShot
    from multishot.pipeline.scan import SegmentScanner

    name, clip, head = weights
    config = PipelineConfig(analyse=dict(clip_model=name, clip_weights=clip, aesthetic_head_weights=head,
                                         ocr_backend="none"))
    path = str(FOOTAGE / "archive" / "sintel_film_excerpt_26s.mp4")
    # the segment [0, 125) ends inside the video: its last shot's candidates are all scored
    result = SegmentScanner(config).scan(path, None, 25.0, 0, 125, analysis_size=(640, 360))
    by_index = {c.index: c for c in result.candidates}
    assert sorted(by_index) == [0, 13, 25, 38, 50, 63, 75, 88, 100, 113]  # 2 per second at 25 fps
    shots = [DetectedShot(0, 75, False), DetectedShot(76, 120, False)]
    scores = [shot_scores(s, by_index, sorted(by_index), config.analyse) for s in shots]
    assert all(s.aesthetic is not None and np.isfinite(s.aesthetic) for s in scores)
    with pytest.raises(ValidationError, match="together"):
        AnalyseConfig(clip_weights=clip)
