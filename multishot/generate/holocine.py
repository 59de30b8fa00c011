"""HoloCine's inference inputs as its users write them (github yihao-meng/HoloCine,
``HoloCine_inference_full_attention.py``, commit ab32068):

* **structured mode** (``prepare_multishot_inputs``, lines 15–62): a global caption and a list of
  shot captions become ``"[global caption] {G} [per shot caption] {S0} [shot cut] {S1} …"``,
  with ``" This scene contains N shots."`` appended to ``G`` unless it already says
  ``"This scene contains"``; the frame count and every given cut are moved to the nearest
  ``4t + 1`` (Python's ``round``), the cuts de-duplicated, sorted and kept inside
  ``(0, frames)``; without cuts they are spread evenly.
* **raw mode** (``run_inference``, lines 131–154): the prompt as given; the frame count and each
  cut moved to ``4t + 1`` one by one (no sorting), and HoloCine prints the corrected values.

Where HoloCine prints a correction we log a warning naming the old and new values. One
difference: a raw prompt without cuts gets no shot layout in HoloCine (its pipeline then skips the
shot masks); we spread the cuts evenly as the structured mode does, so the shots stay masked.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from multishot.dataset.record import CUT_TAG, GLOBAL_TAG, PER_SHOT_TAG
from multishot.model.layout import enforce_4t_plus_1

log = logging.getLogger(__name__)

#: the sentence HoloCine appends to a structured global caption
SCENE_SENTENCE = "This scene contains {n} shots."


def structured_prompt(global_caption: str, shot_captions: list[str]) -> str:
    """HoloCine's prompt from a global caption and shot captions (module docstring).

    Raises:
        ValueError: no shot caption, or ``num_frames`` below 1.
    """
    if not shot_captions:
        raise ValueError("the structured mode needs at least one shot caption")
    if "This scene contains" not in global_caption:
        global_caption = global_caption.strip() + " " + SCENE_SENTENCE.format(n=len(shot_captions))
    per_shot = f" {CUT_TAG} ".join(shot_captions)
    return f"{GLOBAL_TAG} {global_caption} {PER_SHOT_TAG} {per_shot}"


@dataclass
class HoloCineInputs:
    """What HoloCine's helper hands its pipeline: ``prompt``, ``num_frames`` (4t+1) and
    ``cut_frames`` (4t+1 pixel frames where shots 2… start; None: not given, raw mode), plus the
    corrections made (``"num_frames 240 -> 241"``, …)."""

    prompt: str
    num_frames: int
    cut_frames: list[int] | None
    corrections: list[str] = field(default_factory=list)


def structured_inputs(global_caption: str, shot_captions: list[str], num_frames: int,
                      cut_frames: list[int] | None = None) -> HoloCineInputs:
    """HoloCine's ``prepare_multishot_inputs`` (module docstring), corrections recorded and logged.

    Raises:
        ValueError: no shot caption.
    """
    prompt = structured_prompt(global_caption, shot_captions)
    frames = enforce_4t_plus_1(_at_least_one(num_frames))
    if cut_frames:
        cuts = [enforce_4t_plus_1(f) for f in cut_frames]
    else:  # HoloCine's auto-calculated cuts
        step = frames / len(shot_captions)
        cuts = [enforce_4t_plus_1(round(i * step)) for i in range(1, len(shot_captions))]
    cuts = [f for f in sorted(set(cuts)) if 0 < f < frames]
    corrections = _corrections(num_frames, frames, cut_frames or None, cuts if cut_frames else None)
    return HoloCineInputs(prompt, frames, cuts, corrections)


def raw_inputs(prompt: str, num_frames: int, cut_frames: list[int] | None = None) -> HoloCineInputs:
    """HoloCine's raw-string mode (module docstring): frames and each cut moved to ``4t + 1``.

    Raises:
        ValueError: ``num_frames`` below 1 (nothing to round).
    """
    frames = enforce_4t_plus_1(_at_least_one(num_frames))
    cuts = None if cut_frames is None else [enforce_4t_plus_1(f) for f in cut_frames]
    return HoloCineInputs(prompt, frames, cuts, _corrections(num_frames, frames, cut_frames, cuts))


def _at_least_one(num_frames: int) -> int:
    """``num_frames`` if it is a frame count HoloCine's rounding applies to (>= 1).

    Raises:
        ValueError: 0 or fewer frames (rounding 0 up to 1 would hide the mistake).
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be 4k+1, got {num_frames} (a video has at least 1 frame)")
    return num_frames


def _corrections(frames_in: int, frames: int, cuts_in: list[int] | None, cuts: list[int] | None) -> list[str]:
    out = []
    if frames_in != frames:
        out.append(f"num_frames {frames_in} -> {frames}")
    if cuts_in is not None and list(cuts_in) != cuts:
        out.append(f"cut_frames {list(cuts_in)} -> {cuts}")
    for line in out:
        log.warning("HoloCine rounding (frames and cuts are 4t+1): %s", line)
    return out
