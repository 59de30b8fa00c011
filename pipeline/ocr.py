"""OCR text boxes and the text-area ratio: the fraction of a frame covered by detected text boxes.

Text is detected and then recognised, and only boxes whose recognised text has at least
``MIN_CHARS`` characters with a recognition score of at least ``ocr_min_confidence`` count:
the detector alone fires on texture (feathers, brickwork) with scores around 0.6 on the bundled
Sintel footage, while real titles and burned-in text are read with scores above 0.95.
Backends:

* ``rapidocr`` (default): PP-OCR detection models shipped as ONNX inside the ``rapidocr``
  wheel, run by onnxruntime; works offline. On the CPU the text detector, nearly all of OCR's
  time, runs on OpenVINO instead (``ocr_runtime``, :class:`OpenVinoSession`): the same ONNX file,
  the same float32 arithmetic, the same boxes, 2-3x less CPU. On an actor given a GPU the same
  models run there through PyTorch (:mod:`pipeline.ocr_gpu`; needs ``multishot[gpu]``, else the
  CPU, saying so).
* ``paddleocr``: PaddleOCR's own detector (``pip install multishot[paddle]``); it downloads its
  models on first use, so it fails on machines without internet.

Frames are scaled down so the longest side is at most ``ocr_max_side`` (Cosmos-Curate uses 640),
and the detector scales them up only when the shorter side is below ``ocr_min_side``. rapidocr's
own default (shorter side up to 736) upscales every 480p frame ~1.5x and costs 3-4x the time; at
240 the bundled footage's burned-in text (Tears of Steel's "450Kbps" at 512x120, Sintel's title)
is still read with scores above 0.99.

:meth:`TextDetector.boxes` returns the counted boxes (:class:`TextBox`, in fractions of the frame
so they compare across scales) for the per-video overlay search (:mod:`pipeline.overlay`);
:meth:`TextDetector.ratio` is their text-area ratio.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any
from dataclasses import dataclass

import cv2
import numpy as np

from multishot.pipeline.config import AnalyseConfig


MIN_CHARS = 2
log = logging.getLogger(__name__)


def polygon_area(box: np.ndarray) -> float:
    """Area (px²) of a quadrilateral ``[4, 2]`` by the shoelace formula."""
    x, y = box[:, 0], box[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


@dataclass(frozen=True)
class TextBox:
    """A recognised text box: its quadrilateral ``[4, 2]`` as ``(x, y)`` corners in fractions of
    the frame's width and height (0..1), the text read and its recognition score."""

    quad: tuple[tuple[float, float], ...]
    text: str
    score: float

    @property
    def rect(self) -> tuple[float, float, float, float]:
        """Axis-aligned bounds ``(x0, y0, x1, y1)`` in fractions of the frame."""
        xs, ys = [p[0] for p in self.quad], [p[1] for p in self.quad]
        return min(xs), min(ys), max(xs), max(ys)

    @property
    def area(self) -> float:
        """Area as a fraction of the frame's area."""
        return polygon_area(np.asarray(self.quad, dtype=np.float64))


def boxes_ratio(boxes: Sequence[TextBox]) -> float:
    """Text-area ratio of boxes in frame fractions: their summed area, clipped to [0, 1].

    Overlapping boxes count twice; detected text boxes rarely overlap.
    """
    return min(1.0, sum(b.area for b in boxes))


class OpenVinoSession:
    """Stands in for a rapidocr ``OrtInferSession``: called with the same float32 NCHW array it
    returns the same output array, computed by OpenVINO on the CPU from the session's own ONNX
    file, in float32 (``INFERENCE_PRECISION_HINT``: on a CPU with bf16 units OpenVINO's default
    is bf16, which moves the detector's probabilities by up to 0.3) on one thread (as the
    onnxruntime session: ``TextDetector``). For the PP-OCR detector: ``[1, 3, H, W]`` (normalised,
    sides multiples of 32) → text probability map ``[1, 1, H, W]``. Everything else is the
    replaced session's. Safe to call from several threads (one inference request per thread).

    Why: on the 2-core test machine (Xeon, AVX-512, AMX; other jobs running) onnxruntime 1.32
    spends 160 CPU-ms on a 640×352 frame, OpenVINO 51 CPU-ms for the same map (max difference 0);
    every read of the demo footage's 406 candidates comes out identical
    (``benchmarks/results/pipeline/pipeline.md``).
    The recogniser gains nothing measurable (crops of a few boxes) and is left on onnxruntime.

    Raises:
        ImportError: ``openvino`` missing (with the install command).
    """

    def __init__(self, session: Any):
        try:
            import openvino
        except ImportError as err:
            raise ImportError("ocr_runtime 'openvino' needs: pip install openvino "
                              "(or set analyse.ocr_runtime: onnxruntime)") from err
        self.replaced = session
        # onnxruntime's InferenceSession keeps the path it was opened with
        self.model = openvino.Core().compile_model(session.session._model_path, "CPU", {
            "INFERENCE_NUM_THREADS": 1, "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"})
        self.local = threading.local()

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        request = getattr(self.local, "request", None)
        if request is None:
            request = self.local.request = self.model.create_infer_request()
        request.infer([inputs])
        return request.get_output_tensor().data.copy()  # the request reuses its buffer

    def __getattr__(self, name: str) -> Any:
        return getattr(self.replaced, name)


class TextDetector:
    """Text boxes in RGB frames with the configured backend.

    ``device``: where rapidocr's models run; ``None``: the GPU when the process sees one
    (``torch.cuda.is_available()``, as the shot detector), else the CPU. ``self.device`` is where
    they do run: the CPU when the GPU path cannot load (logged once, with the reason). On the
    CPU the detector runs on ``ocr_runtime`` (:class:`OpenVinoSession`, or rapidocr's onnxruntime).

    Raises:
        ImportError: ``paddleocr`` chosen but not installed, or ``ocr_runtime: openvino`` without
            ``openvino`` (with the install command).
    """

    def __init__(self, config: AnalyseConfig, device: str | None = None):
        self.config = config
        self.device = "cpu"
        if config.ocr_backend == "rapidocr":
            from rapidocr import RapidOCR

            self.engine = RapidOCR(params={
                "Global.log_level": "error",  # "no text found" is no warning
                "Det.limit_type": "min",
                "Det.limit_side_len": config.ocr_min_side,
                # ONNX Runtime's default, a spinning thread per core, doubles the CPU of a call
                # for no gain in time on a 640x150 frame (0.29 vs 0.15 CPU-s, 0.15 s either way,
                # on the 2-core machine), and takes it from the other scanning actor
                "EngineConfig.onnxruntime.intra_op_num_threads": 1,
            })
            if device is None:
                import torch

                device = "cuda" if torch.cuda.is_available() else "cpu"
            if device != "cpu":
                try:
                    from multishot.pipeline.ocr_gpu import run_on

                    run_on(self.engine, device)
                    self.device = device
                except ImportError as err:
                    log.warning("OCR runs on the CPU although %s is there: %s", device, err)
            if self.device == "cpu" and config.ocr_runtime == "openvino":
                det = self.engine._load_det_model()
                det.session = OpenVinoSession(det.session)
        elif config.ocr_backend == "paddleocr":
            try:
                from paddleocr import PaddleOCR
            except ImportError as err:
                raise ImportError("ocr_backend 'paddleocr' needs: pip install 'multishot[paddle]'") from err
            self.engine = PaddleOCR(use_textline_orientation=False)
        else:
            raise ValueError(f"no OCR backend {config.ocr_backend!r}")

    def ratio(self, frame: np.ndarray) -> float:
        """Text-area ratio of one RGB uint8 frame ``[H, W, 3]`` (see :func:`boxes_ratio`)."""
        return boxes_ratio(self.boxes(frame))

    def boxes(self, frame: np.ndarray) -> list[TextBox]:
        """The text boxes of one RGB uint8 frame ``[H, W, 3]`` that count: at least ``MIN_CHARS``
        characters read with a score of at least ``ocr_min_confidence``."""
        return counted(self.read(frame), self.config.ocr_min_confidence)

    def read(self, frame: np.ndarray) -> list[TextBox]:
        """Every text box of one RGB uint8 frame ``[H, W, 3]`` with at least ``MIN_CHARS``
        characters read, whatever its recognition score (kept in the box)."""
        h, w = frame.shape[:2]
        scale = min(1.0, self.config.ocr_max_side / max(h, w))
        if scale < 1.0:
            frame = cv2.resize(frame, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        sh, sw = frame.shape[:2]
        if self.config.ocr_backend == "rapidocr":
            out = self.engine(np.ascontiguousarray(frame[:, :, ::-1]), use_cls=False)  # expects BGR
            found = zip(out.boxes, out.txts, out.scores) if out.boxes is not None else []
        else:
            result = self.engine.predict(np.ascontiguousarray(frame[:, :, ::-1]))
            found = [(b, t, c) for r in result for b, t, c in zip(r["rec_polys"], r["rec_texts"], r["rec_scores"])]
        return [
            TextBox(tuple((float(x) / sw, float(y) / sh) for x, y in np.asarray(box)), text.strip(), float(score))
            for box, text, score in found
            if len(text.strip()) >= MIN_CHARS
        ]


def counted(boxes: Sequence[TextBox], min_confidence: float) -> list[TextBox]:
    """The boxes read with a recognition score of at least ``min_confidence``."""
    return [b for b in boxes if b.score >= min_confidence]
