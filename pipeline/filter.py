"""Stage 4, filtering: each shot's scores against the thresholds in config → kept, or why not.

Every shot and every decision is kept in ``index/shots.parquet``, kept or not. Reasons:
``undecodable`` (none of its sampled frames decoded), ``too_dark``, ``too_bright``, ``text``
(OCR text-area ratio above ``max_ocr_text_ratio``), ``low_aesthetic`` (only when scored),
``static`` (motion under ``min_motion``, :mod:`pipeline.motion`; only when measured).
A shot failing several tests carries all their reasons, comma-separated. Reasons from
elsewhere: ``too_short`` (detection: shorter than ``detect.min_shot_s``, never analysed),
``black`` (detection: more than ``max_black_fraction`` of its frames black, or nothing but black
and fades once those are trimmed: :mod:`pipeline.picture`), ``overlay`` (the analyse stage,
:mod:`pipeline.overlay`), and ``text`` also for a title or credit on any OCR'd frame whatever its
area (:func:`pipeline.analyse.title_boxes`, applied with the overlay rule).
"""

from __future__ import annotations

from multishot.pipeline.analyse import ShotScores
from multishot.pipeline.config import FilterConfig


def decide(scores: ShotScores, config: FilterConfig) -> str:
    """``''`` when the shot is kept, else its comma-separated reasons (see the module docstring)."""
    if scores.brightness is None:
        return "undecodable"
    reasons = []
    if scores.brightness < config.min_brightness:
        reasons.append("too_dark")
    if scores.brightness > config.max_brightness:
        reasons.append("too_bright")
    if scores.ocr_text_ratio is not None and scores.ocr_text_ratio > config.max_ocr_text_ratio:
        reasons.append("text")
    if scores.aesthetic is not None and scores.aesthetic < config.min_aesthetic:
        reasons.append("low_aesthetic")
    if scores.motion is not None and scores.motion < config.min_motion:
        reasons.append("static")
    return ",".join(reasons)
