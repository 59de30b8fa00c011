"""rapidocr's models run through PyTorch (:mod:`pipeline.ocr_gpu`, the GPU nodes' OCR) against
onnxruntime, rapidocr's own engine, on the same inputs. Run here on the CPU: the conversion is
what is ours; ``benchmarks/pipeline_gpu.py`` checks the same boxes on a GPU.

* The SAME-padding rewrite on small graphs (odd and even kernels, SAME_LOWER, pooling) equals
  onnxruntime's padding; stride-2 and dilated SAME nodes are refused.
* The bundled detector and recogniser converted give onnxruntime's outputs.
* Whole frames of the bundled footage (Tears of Steel's "450Kbps" stamp, upscaled to 1080p as an
  archive's copy) give the same boxes, texts and scores either way.
* The CPU's text detector on OpenVINO (:class:`pipeline.ocr.OpenVinoSession`) reads exactly what
  onnxruntime reads.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from multishot.pipeline.config import AnalyseConfig
from multishot.pipeline.ocr import TextDetector
from multishot.pipeline.ocr_gpu import explicit_same_padding, onnx_module, run_on
from multishot.pipeline.decode import iter_frames, probe

FOOTAGE = Path(__file__).resolve().parents[2] / "shared" / "footage"
TOS = FOOTAGE / "archive" / "tos_excerpt_64s_512x120_fmp4.mp4"


def _onnxruntime(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _same_padded(op: str, auto_pad: str, kernel: list[int], strides: list[int], dilations: list[int]) -> onnx.ModelProto:
    """A one-node graph ``[1, 3, H, W] -> [1, C, H, W]`` with ``auto_pad`` and random weights."""
    attrs = {"kernel_shape": kernel, "strides": strides, "auto_pad": auto_pad}
    inputs, initializers = ["x"], []
    if op == "Conv":
        weight = np.random.default_rng(0).standard_normal((4, 3, *kernel)).astype(np.float32)
        initializers.append(numpy_helper.from_array(weight, "w"))
        inputs.append("w")
        attrs["dilations"] = dilations
    node = helper.make_node(op, inputs, ["y"], **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "h", "w"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])


@pytest.mark.parametrize("op, auto_pad, kernel, dilations", [
    ("Conv", "SAME_UPPER", [2, 2], [1, 1]),  # what the PP-OCR models hold
    ("Conv", "SAME_UPPER", [3, 2], [1, 1]),
    ("Conv", "SAME_LOWER", [2, 4], [1, 1]),
    ("MaxPool", "SAME_UPPER", [2, 2], [1, 1]),
    ("MaxPool", "SAME_LOWER", [3, 2], [1, 1]),
])
def test_same_padding_rewrite_equals_onnxruntime(op, auto_pad, kernel, dilations):
    x = np.random.default_rng(1).standard_normal((1, 3, 13, 10)).astype(np.float32)
    model = _same_padded(op, auto_pad, kernel, [1, 1], dilations)
    expected = _onnxruntime(model, x)
    with torch.no_grad():
        converted = onnx_module(model)(torch.from_numpy(x)).numpy()  # rewrites the model in place
    assert not any(a.name == "auto_pad" for a in model.graph.node[0].attribute)
    np.testing.assert_allclose(_onnxruntime(model, x), expected, rtol=0, atol=1e-6)
    assert converted.shape == expected.shape == (1, 4 if op == "Conv" else 3, 13, 10)
    np.testing.assert_allclose(converted, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("strides, dilations", [([2, 2], [1, 1]), ([1, 1], [2, 1])])
def test_same_padding_with_a_stride_or_dilation_is_refused(strides, dilations):
    with pytest.raises(ValueError, match=re.escape(f"strides {strides} and dilations {dilations}; only stride 1")):
        explicit_same_padding(_same_padded("Conv", "SAME_UPPER", [3, 3], strides, dilations))


@pytest.fixture(scope="module")
def detectors() -> tuple[TextDetector, TextDetector]:
    """rapidocr as configured by the pipeline: on onnxruntime, and through PyTorch (on the CPU)."""
    onnx_runtime = TextDetector(AnalyseConfig(ocr_runtime="onnxruntime"), device="cpu")
    pytorch = TextDetector(AnalyseConfig(ocr_runtime="onnxruntime"), device="cpu")
    run_on(pytorch.engine, "cpu")
    return onnx_runtime, pytorch


@pytest.mark.parametrize("part, shape", [("det", (1, 3, 96, 224)), ("rec", (3, 3, 48, 320))])
def test_bundled_models_converted_equal_onnxruntime(detectors, part, shape):
    onnx_runtime, pytorch = detectors
    model = {"det": pytorch.engine.text_det, "rec": pytorch.engine.text_rec}[part]
    assert type(model.session).__name__ == "TorchSession"
    path = model.session.replaced.session._model_path
    x = np.random.default_rng(2).uniform(-1, 1, shape).astype(np.float32)
    expected = _onnxruntime(onnx.load(path), x)
    with torch.no_grad():
        got = onnx_module(path)(torch.from_numpy(x)).numpy()
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-4)
    np.testing.assert_allclose(model.session(x), expected, rtol=0, atol=2e-4)


def test_text_boxes_through_pytorch_equal_onnxruntime(detectors):
    """Frames of Tears of Steel at 1080p (its "450Kbps" stamp in every frame): the same boxes."""
    import cv2

    onnx_runtime, pytorch = detectors
    info = probe(str(TOS))
    frames = [cv2.resize(frame, (1920, 450)) for _, frame in
              iter_frames(str(TOS), fps=info.fps, wanted=np.arange(0, info.num_frames, 150))]
    read = 0
    for frame in frames:
        expected, got = onnx_runtime.boxes(frame), pytorch.boxes(frame)
        assert [b.text for b in got] == [b.text for b in expected]
        for a, b in zip(got, expected):
            np.testing.assert_allclose(a.quad, b.quad, rtol=0, atol=2e-3)
            assert abs(a.score - b.score) < 1e-3
        read += sum(b.text == "450Kbps" for b in expected)
    assert read >= len(frames) - 1, read  # the stamp is read: the comparison is not of empty lists


def test_detector_runs_where_asked():
    assert TextDetector(AnalyseConfig()).device == "cpu"  # no GPU here
    # on the CPU the text detector runs on OpenVINO unless onnxruntime is asked for; the
    # recogniser stays on onnxruntime (pipeline/ocr.py)
    engine = TextDetector(AnalyseConfig(), device="cpu").engine
    assert type(engine._load_det_model().session).__name__ == "OpenVinoSession"
    assert type(engine._load_rec_model().session).__name__ == "OrtInferSession"
    engine = TextDetector(AnalyseConfig(ocr_runtime="onnxruntime"), device="cpu").engine
    assert type(engine._load_det_model().session).__name__ == "OrtInferSession"


def test_openvino_detector_reads_what_onnxruntime_reads():
    """Frames of the bundled footage with text (Tears of Steel's stamp, title and credits, the
    Sintel trailer's cards) and without: OpenVINO's detector (float32) gives onnxruntime's
    boxes, texts and scores exactly."""
    frames = []
    for name, seconds in [("tos_excerpt_64s_512x120_fmp4.mp4", (1.0, 15.0, 61.0)),
                          ("sintel_trailer_480p.mp4", (10.5, 42.0, 49.0, 3.0))]:
        info = probe(str(FOOTAGE / "archive" / name))
        frames += [f for _, f in iter_frames(str(FOOTAGE / "archive" / name), fps=info.fps,
                                             wanted=np.array([int(s * info.fps) for s in seconds]))]
    openvino = TextDetector(AnalyseConfig(), device="cpu")
    onnx_runtime = TextDetector(AnalyseConfig(ocr_runtime="onnxruntime"), device="cpu")
    reads = [(openvino.read(f), onnx_runtime.read(f)) for f in frames]
    assert all(got == expected for got, expected in reads)
    texts = {b.text for _, expected in reads for b in expected}
    assert "450Kbps" in texts and len(texts) >= 5, texts  # the comparison is not of empty lists


def test_gpu_asked_without_onnx2torch_stays_on_the_cpu_and_says_so(monkeypatch, caplog):
    """A GPU actor on an install without ``multishot[gpu]``: OCR runs on onnxruntime, logged."""
    import logging

    monkeypatch.setitem(sys.modules, "onnx2torch", None)  # import onnx2torch raises ImportError
    caplog.set_level(logging.WARNING)
    detector = TextDetector(AnalyseConfig(), device="cuda")
    assert detector.device == "cpu"
    assert type(detector.engine._load_det_model().session).__name__ == "OpenVinoSession"
    (record,) = [r for r in caplog.records if "OCR runs on the CPU" in r.message]
    assert "cuda" in record.message and "multishot[gpu]" in record.message
