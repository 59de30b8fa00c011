"""Stage 3, shot analysis: brightness, OCR text-area ratio and aesthetic score per shot.

All three come from **one decode pass** over the source: ``frames_per_shot`` frames are picked
evenly inside each shot (at the centres of equal parts), decoded in one sequential sweep, and
scored as they arrive, so memory holds one shot's frames at a time.

* brightness: mean BT.709 luma ``Y' = 0.2126 R' + 0.7152 G' + 0.0722 B'`` over the sampled
  frames, 0-255 (on the gamma-encoded values, as video luma is defined).
* OCR text-area ratio: the largest ratio over the first ``ocr_frames_per_shot`` sampled frames
  (see :mod:`pipeline.ocr`); their text boxes are kept for the per-video overlay search
  (:mod:`pipeline.overlay`).
* aesthetic: the mean LAION score of the sampled frames (see :mod:`pipeline.aesthetic`), or
  ``None`` when the config gives no weights; the run then reports ``aesthetic: skipped``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow.fs as pafs

from multishot.pipeline.config import AnalyseConfig
from multishot.pipeline.detect import DetectedShot
from multishot.pipeline.ocr import TextBox, boxes_ratio
from multishot.pipeline.video import DecodeStats, iter_frames


BT709 = np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)


@dataclass(frozen=True)
class ShotScores:
    """Scores of one shot; all ``None`` when none of its sampled frames decoded.

    ``text_boxes``: the counted text boxes of each OCR'd frame (one tuple per frame).
    """

    brightness: float | None
    ocr_text_ratio: float | None
    aesthetic: float | None
    text_boxes: tuple[tuple[TextBox, ...], ...] = ()


def sample_indices(shot: DetectedShot, count: int) -> list[int]:
    """``count`` source frame indices at the centres of ``count`` equal parts of the shot."""
    length = shot.end_frame - shot.start_frame
    picks = {shot.start_frame + int((k + 0.5) * length / count) for k in range(count)}
    return sorted(picks)


def mean_luma(frame: np.ndarray) -> float:
    """Mean BT.709 luma (0-255) of an RGB uint8 frame ``[H, W, 3]``."""
    return float(frame.reshape(-1, 3).mean(axis=0) @ BT709)


class ShotAnalyser:
    """Holds the OCR engine and (when weights are configured) the aesthetic model; one per actor."""

    def __init__(self, config: AnalyseConfig):
        self.config = config
        self.text = None
        if config.ocr_backend != "none" and config.ocr_frames_per_shot > 0:
            from multishot.pipeline.ocr import TextDetector

            self.text = TextDetector(config)
        self.aesthetic = None
        if config.aesthetic_enabled:
            from multishot.pipeline.aesthetic import AestheticScorer

            self.aesthetic = AestheticScorer(config.clip_model, config.clip_weights, config.aesthetic_head_weights)

    def analyse(
        self, source: str, fs: pafs.FileSystem, fps: float, shots: list[DetectedShot], stats: DecodeStats
    ) -> list[ShotScores]:
        """Scores for each of ``shots`` (in order) from one decode pass over ``source``."""
        owner: dict[int, int] = {}
        for s, shot in enumerate(shots):
            for index in sample_indices(shot, self.config.frames_per_shot):
                owner.setdefault(index, s)
        scores: list[ShotScores | None] = [None] * len(shots)
        pending: dict[int, list[np.ndarray]] = {}
        wanted = np.array(sorted(owner))
        for index, frame in iter_frames(source, fs, fps=fps, wanted=wanted, stats=stats):
            s = owner[index]
            for done in [d for d in pending if d < s]:
                scores[done] = self._score(pending.pop(done))
            pending.setdefault(s, []).append(frame)
        for done, frames in pending.items():
            scores[done] = self._score(frames)
        return [s if s is not None else ShotScores(None, None, None) for s in scores]

    def _score(self, frames: list[np.ndarray]) -> ShotScores:
        brightness = float(np.mean([mean_luma(f) for f in frames]))
        ocr, boxes = None, ()
        if self.text is not None:
            boxes = tuple(tuple(self.text.boxes(f)) for f in frames[: self.config.ocr_frames_per_shot])
            ocr = max(boxes_ratio(list(b)) for b in boxes)
        aesthetic = None
        if self.aesthetic is not None:
            aesthetic = float(np.mean(self.aesthetic.score(frames)))
        return ShotScores(brightness, 0.0 if ocr is None else ocr, aesthetic, boxes)
