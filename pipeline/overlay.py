"""Burned-in overlays: text at one place in most shots of a video (a channel logo, a bitrate stamp).

Subtitles and titles change place and size from line to line; an overlay stays put. So an
overlay is found per video, from the OCR text boxes of its analysed shots
(:attr:`pipeline.analyse.ShotScores.text_boxes`), as a place where a box recurs:

1. Every box of every shot joins the earlier group whose first box it overlaps most, if that
   IoU is at least ``min_iou`` (axis-aligned bounds in fractions of the frame, so frames OCR'd
   at different scales compare); else it starts a group. Groups are formed in shot order,
   so the result is deterministic.
2. A group seen in at least ``min_shots`` shots and in at least ``min_shot_fraction`` of the
   shots that were OCR'd is an overlay. Its box is the median of its boxes' bounds; its text is
   the one read most often there.

A box matches an overlay when its IoU with the overlay's box is at least ``min_iou``. What
follows for each shot is ``analyse.overlay.action`` (applied by the analyse stage):

* ``record``: the overlays go in the videos table; OCR ratios and decisions are unchanged.
* ``ignore_in_ocr``: also leave the overlay's boxes out of each shot's OCR text-area ratio, so a
  stamp does not count as text while subtitles still do.
* ``reject`` (default): as ``ignore_in_ocr``, and a shot showing the overlay is removed with
  reason ``overlay``. The default, because a generative model learns what its samples show:
  a stamp in every frame of its training clips is drawn into what it generates (image models
  trained on web images reproduce stock-photo watermarks). Rejected shots stay
  on record (reason ``overlay``, the overlay in the videos table), so an archive whose films
  all carry a channel logo shows it in the run report, and ``ignore_in_ocr`` keeps them for
  a user who crops or masks the overlay downstream.

Everything here is a pure function of box lists, so any analysis pass can call it once all shots
of a video are analysed.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from multishot.pipeline.config import OverlayConfig
from multishot.pipeline.ocr import TextBox, boxes_ratio

Rect = tuple[float, float, float, float]
#: a shot's OCR'd frames, each with its text boxes
ShotBoxes = Sequence[Sequence[TextBox]]


@dataclass(frozen=True)
class Overlay:
    """Text burned in at one place of a video.

    ``rect``: ``(x0, y0, x1, y1)`` in fractions of the frame's width and height; ``text``: the
    text read there most often; ``shots``: how many of the video's OCR'd shots show it, and
    ``shot_fraction`` that count over all of them.
    """

    rect: Rect
    text: str
    shots: int
    shot_fraction: float


def iou(a: Rect, b: Rect) -> float:
    """Intersection over union of two ``(x0, y0, x1, y1)`` rectangles (0 when either is empty)."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0.0, w) * max(0.0, h)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _ious(rects: np.ndarray, rect: Rect) -> np.ndarray:
    """:func:`iou` of each row of ``rects`` ``[N, 4]`` with ``rect``."""
    w = np.minimum(rects[:, 2], rect[2]) - np.maximum(rects[:, 0], rect[0])
    h = np.minimum(rects[:, 3], rect[3]) - np.maximum(rects[:, 1], rect[1])
    inter = np.clip(w, 0, None) * np.clip(h, 0, None)
    areas = (rects[:, 2] - rects[:, 0]) * (rects[:, 3] - rects[:, 1])
    union = areas + (rect[2] - rect[0]) * (rect[3] - rect[1]) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def find_overlays(shot_boxes: Sequence[ShotBoxes], config: OverlayConfig) -> list[Overlay]:
    """The overlays of one video (the rule in the module docstring).

    Args:
        shot_boxes: per shot, the text boxes of each OCR'd frame; a shot with no OCR'd frame
            (not analysed, or none of its frames decoded) is ``()`` and does not count.
    Returns:
        Overlays, most widely seen first.
    """
    ocred = [s for s, frames in enumerate(shot_boxes) if len(frames)]
    firsts = np.zeros((0, 4))  # each group's first box's rect
    groups: list[list[tuple[int, TextBox]]] = []  # each group's (shot, box) pairs
    for s in ocred:
        for frame in shot_boxes[s]:
            for box in frame:
                # vectorised over groups: a film has thousands of boxes
                overlaps = _ious(firsts, box.rect)
                best = int(np.argmax(overlaps)) if len(groups) else -1
                if best >= 0 and overlaps[best] >= config.min_iou:
                    groups[best].append((s, box))
                else:
                    firsts = np.vstack([firsts, box.rect])
                    groups.append([(s, box)])
    overlays = []
    for members in groups:
        shots = len({s for s, _ in members})
        if shots >= config.min_shots and shots >= config.min_shot_fraction * len(ocred):
            rect = tuple(float(v) for v in np.median([b.rect for _, b in members], axis=0))
            text = collections.Counter(b.text for _, b in members).most_common(1)[0][0]
            overlays.append(Overlay(rect, text, shots, shots / len(ocred)))
    return sorted(overlays, key=lambda o: -o.shots)


def is_overlay(box: TextBox, overlays: Sequence[Overlay], min_iou: float) -> bool:
    """Whether ``box`` lies on one of ``overlays`` (IoU at least ``min_iou``)."""
    return any(iou(box.rect, o.rect) >= min_iou for o in overlays)


def shows_overlay(frames: ShotBoxes, overlays: Sequence[Overlay], min_iou: float) -> bool:
    """Whether any OCR'd frame of a shot has a box on one of ``overlays``."""
    return any(is_overlay(b, overlays, min_iou) for frame in frames for b in frame)


def ratio_without_overlays(frames: ShotBoxes, overlays: Sequence[Overlay], min_iou: float) -> float:
    """A shot's OCR text-area ratio (the largest over its OCR'd frames, as the analyse stage
    computes it) with the boxes on ``overlays`` left out; 0.0 for a shot with no OCR'd frame."""
    return max((boxes_ratio([b for b in frame if not is_overlay(b, overlays, min_iou)]) for frame in frames),
               default=0.0)
