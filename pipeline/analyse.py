"""Stage 3, shot analysis: brightness, OCR text-area ratio and aesthetic score per shot.

Nothing here decodes. The segment scan (:mod:`pipeline.scan`) decodes each video once and
scores **candidate frames** as it goes: the source frames on a fixed grid of
``candidates_per_s`` per second (:func:`is_candidate`), each scaled to the **fixed analysis
scale** (shorter side ``analysis_short_side`` px, :func:`pipeline.decode.analysis_size`), so a
score does not depend on which copy (360p, 1080p) of a film is read. Only the per-frame scores
are kept (:class:`CandidateScore`). After detection each shot's scores come from its
**picks**: the candidates inside the shot nearest the centres of ``frames_per_shot`` equal
parts of it (:func:`pick_candidates`).

* brightness: mean BT.709 luma ``Y' = 0.2126 R' + 0.7152 G' + 0.0722 B'`` over the picks,
  0-255 (on the gamma-encoded values, as video luma is defined).
* OCR text-area ratio: the largest ratio over the first ``ocr_frames_per_shot`` picks
  (see :mod:`pipeline.ocr`); their text boxes are kept for the per-video overlay search
  (:mod:`pipeline.overlay`).
* aesthetic: the mean LAION score of the picks (see :mod:`pipeline.aesthetic`), or ``None``
  when the config gives no weights; the run then reports ``aesthetic: skipped``.
* motion: the median optical-flow motion between consecutive candidates of the shot, every
  candidate, not only the picks (see :mod:`pipeline.motion`), or ``None`` with
  ``motion_backend: none``.

A shot holding no candidate (shorter than ``1 / candidates_per_s`` seconds) gets no scores.
"""

from __future__ import annotations

import bisect

from dataclasses import dataclass

import numpy as np

from multishot.pipeline.config import AnalyseConfig
from multishot.pipeline.detect import DetectedShot
from multishot.pipeline.motion import shot_motion
from multishot.pipeline.ocr import TextBox, boxes_ratio, counted


BT709 = np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)


@dataclass(frozen=True)
class ShotScores:
    """Scores of one shot; all ``None`` when it holds no candidate frame.

    ``text_boxes``: the counted text boxes (score at least ``ocr_min_confidence``) of each
    OCR'd frame (one tuple per frame): the first ``ocr_frames_per_shot`` picks, or with
    ``ocr_every_candidate`` every candidate in the shot.
    ``title_boxes``: the boxes of those frames that make it a title or credit whatever their
    area (:func:`title_boxes`).
    """

    brightness: float | None
    ocr_text_ratio: float | None
    aesthetic: float | None
    text_boxes: tuple[tuple[TextBox, ...], ...] = ()
    title_boxes: tuple[TextBox, ...] = ()
    motion: float | None = None  # 1/s (pipeline.motion); None also for a shot under two candidates


@dataclass(frozen=True)
class CandidateScore:
    """Scores of one candidate frame (source frame ``index``). ``text_boxes`` (the counted OCR
    boxes, :meth:`pipeline.ocr.TextDetector.boxes`) and ``aesthetic`` are ``None`` where they
    were not measured: the scan measures them only on frames that can be a shot's pick (see
    :mod:`pipeline.scan`), or not at all when disabled. ``motion``: the optical-flow motion from
    the previous candidate to this one (``1/s``, :class:`pipeline.motion.FlowMeter`), None for
    the video's first candidate and with ``motion_backend: none``; a shot uses it only when the
    previous candidate is inside it too."""

    index: int
    brightness: float
    text_boxes: tuple[TextBox, ...] | None = None  # every box read, whatever its score
    aesthetic: float | None = None
    motion: float | None = None
    phash: str | None = None  # the frame's perceptual hash (pipeline.dedup.keyframe_hash)
    # the L2-normalised CLIP image embedding the aesthetic head read (base64 float16,
    # pipeline.dedup.pack_embedding); None where no aesthetic score was measured
    embedding: str | None = None

    @property
    def ocr_text_ratio(self) -> float | None:
        """The frame's text-area ratio (:func:`pipeline.ocr.boxes_ratio`), None when not OCR'd."""
        return None if self.text_boxes is None else boxes_ratio(self.text_boxes)


def is_candidate(index: int, fps: float, per_s: float) -> bool:
    """Whether source frame ``index`` is a candidate: the first frame of each ``1 / per_s``
    second interval of the grid (frame 0 is one). A function of the index alone, so every
    segment of a video agrees on it."""
    return index == 0 or int(index * per_s / fps) != int((index - 1) * per_s / fps)


def previous_candidate(index: int, fps: float, per_s: float) -> int | None:
    """The candidate before source frame ``index`` (:func:`is_candidate`), None for ``index`` 0.
    A segment scan decodes from it, so the motion pair across the segment's start is measured as
    in an unsplit scan (:mod:`pipeline.scan`)."""
    if index <= 0:
        return None
    i = index - 1
    while i > 0 and not is_candidate(i, fps, per_s):
        i -= 1
    return i


def pick_candidates(shot: DetectedShot, candidates: list[int], count: int) -> list[int]:
    """The candidate frames (sorted source frame indices) a shot is scored on: for each centre
    ``start + (k + 0.5) · length / count`` of ``count`` equal parts of the shot, the nearest
    candidate inside ``[start_frame, end_frame)`` (the earlier on a tie); distinct, sorted.

    Args:
        candidates: every candidate index of the video, sorted.
    """
    lo = bisect.bisect_left(candidates, shot.start_frame)
    hi = bisect.bisect_left(candidates, shot.end_frame)
    inside = candidates[lo:hi]
    if not inside:
        return []
    length = shot.end_frame - shot.start_frame
    picks = set()
    for k in range(count):
        centre = shot.start_frame + (k + 0.5) * length / count
        j = bisect.bisect_left(inside, centre)
        near = [c for c in inside[max(0, j - 1) : j + 1]]
        picks.add(min(near, key=lambda c: (abs(c - centre), c)))
    return sorted(picks)


def mean_luma(frame: np.ndarray) -> float:
    """Mean BT.709 luma (0-255) of an RGB uint8 frame ``[H, W, 3]``."""
    return float(frame.reshape(-1, 3).mean(axis=0) @ BT709)


class FrameScorer:
    """Holds the OCR engine and (when weights are configured) the aesthetic model; one per
    scanning actor. Scores analysis-scale frames; the scan decides which."""

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

    def text_boxes(self, frame: np.ndarray) -> tuple[TextBox, ...] | None:
        """Every text box read in an RGB frame ``[H, W, 3]`` (whatever its recognition score:
        :meth:`pipeline.ocr.TextDetector.read`), or None when OCR is off."""
        return None if self.text is None else tuple(self.text.read(frame))

    def aesthetic_scores(self, frames: list[np.ndarray]) -> list[tuple[float, np.ndarray] | None]:
        """``(LAION score, L2-normalised CLIP image embedding [D] float32)`` of each RGB frame
        ``[H, W, 3]`` (one CLIP forward for both), or Nones when aesthetic scoring is off."""
        if self.aesthetic is None or not frames:
            return [None] * len(frames)
        # batches of 16: a segment edge may hold hundreds of candidates
        found = []
        for i in range(0, len(frames), 16):
            scores, embeddings = self.aesthetic.score_and_embed(frames[i : i + 16])
            found += [(float(s), e) for s, e in zip(scores, embeddings)]
        return found


def title_boxes(candidate: CandidateScore, config: AnalyseConfig) -> list[TextBox]:
    """The boxes of an OCR'd candidate that mark a title card or credit, whatever their total
    area: a box read with at least ``ocr_min_confidence`` and at least ``title_min_height`` of
    the picture's height tall, or any box read with at least ``dark_text_min_confidence`` on a
    near-black frame (mean luma under ``dark_frame_luma``: text on black). On the bundled
    footage every title, "presents" line and credit read so is one (heights 0.044-0.53), while
    the detector's reads of texture score under 0.6 ("86" over a whole hill of Big Buck Bunny
    at 0.56): why bright frames keep the confidence threshold."""
    found = []
    for box in candidate.text_boxes or ():
        x0, y0, x1, y1 = box.rect
        if box.score >= config.ocr_min_confidence and y1 - y0 >= config.title_min_height:
            found.append(box)
        elif candidate.brightness < config.dark_frame_luma and box.score >= config.dark_text_min_confidence:
            found.append(box)
    return found


def shot_title_boxes(read: list[CandidateScore], config: AnalyseConfig) -> list[TextBox]:
    """The title and credit boxes of a shot's OCR'd candidates ``read`` (in frame order): those
    of :func:`title_boxes`, and **persistent text** whatever its confidence: a box at least
    ``title_min_height`` tall read with at least ``persistent_text_min_confidence`` whose place
    (IoU ≥ 0.5) holds such a box on the previous or next OCR'd candidate too. Why: the scan keeps
    candidates as JPEG (quality 95), and Big Buck Bunny's stylised title, read at 0.93 on the
    decoded frame, reads 0.66-0.79 on every candidate after it; the detector's reads of texture
    flicker from frame to frame (the "86" over Big Buck Bunny's hill, 0.56, on one frame)."""
    from multishot.pipeline.overlay import iou

    found = [b for p in read for b in title_boxes(p, config)]
    tall = [[b for b in p.text_boxes or () if b.score >= config.persistent_text_min_confidence
             and b.rect[3] - b.rect[1] >= config.title_min_height] for p in read]
    for k, boxes in enumerate(tall):
        neighbours = [b for j in (k - 1, k + 1) if 0 <= j < len(tall) for b in tall[j]]
        found += [b for b in boxes if b not in found and any(iou(b.rect, c.rect) >= 0.5 for c in neighbours)]
    return found


def shot_scores(shot: DetectedShot, candidates: dict[int, CandidateScore], order: list[int],
                config: AnalyseConfig) -> ShotScores:
    """A shot's scores from its picks (rules in the module docstring).

    Args:
        candidates: the video's candidate scores by source frame index.
        order: ``sorted(candidates)``.

    Raises:
        RuntimeError: a pick lacks an OCR or aesthetic score the config asks for (the scan
            measures every possible pick: a broken invariant, not bad input).
    """
    picks = [candidates[i] for i in pick_candidates(shot, order, config.frames_per_shot)]
    if not picks:
        return ShotScores(None, None, None)
    lo, hi = bisect.bisect_left(order, shot.start_frame), bisect.bisect_left(order, shot.end_frame)
    inside = [candidates[i] for i in order[lo:hi]]
    ocr, boxes, titles = None, (), ()
    if config.ocr_backend != "none" and config.ocr_frames_per_shot > 0:
        read = picks[: config.ocr_frames_per_shot]
        if config.ocr_every_candidate:
            read = inside
        if any(p.text_boxes is None for p in read):
            raise RuntimeError(f"shot {shot}: a pick has no OCR score")
        boxes = tuple(tuple(counted(p.text_boxes, config.ocr_min_confidence)) for p in read)
        titles = tuple(shot_title_boxes(read, config))
        ocr = max(boxes_ratio(b) for b in boxes)
    aesthetic = None
    if config.aesthetic_enabled:
        if any(p.aesthetic is None for p in picks):
            raise RuntimeError(f"shot {shot}: a pick has no aesthetic score")
        aesthetic = float(np.mean([p.aesthetic for p in picks]))
    # the first candidate's pair starts before the shot
    return ShotScores(float(np.mean([p.brightness for p in picks])), 0.0 if ocr is None else ocr, aesthetic, boxes,
                      titles, shot_motion([c.motion for c in inside[1:]]))
