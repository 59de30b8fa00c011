"""Shot Cut Accuracy (SCA), HoloCine (arXiv 2510.20822) appendix A.1.

Cuts detected in a generated video are matched one-to-one with the requested cuts; the
normalised shot discrepancy is ``NSD = (E_matched + E_penalty) / F_total`` and
``SCA = exp(-NSD)``. The paper gives neither the matching algorithm nor the penalty and no
public code implements SCA, so both are chosen here:

* **Cut frame.** A cut is the first frame of the new shot (0-based pixel frame), as the
  sample record's ``cut_frames`` (``dataset/record.py``) and HoloCine's ``shot_cut_frames``
  define it. A detected gradual transition becomes one cut at the middle of the frames that
  belong to no shot (:func:`cuts_from_shots`).
* **Penalty.** A missed or an extra cut costs ``PENALTY_SHOTS`` mean requested shot lengths,
  ``F_total / (K + 1)`` frames for ``K`` requested cuts. Why: a cut's error is the number of
  frames it puts into the wrong shot. A cut shifted by ``d`` frames misplaces ``d`` frames; a
  missed cut merges two shots, so a whole shot's frames (on average ``F_total / (K + 1)``) end
  up in the wrong shot, and an extra cut splits one off. Tying the penalty to the shot length
  makes NSD independent of the frame rate and length of the video, as the normalisation by
  ``F_total`` intends.
* **Matching.** The minimum-cost partial one-to-one matching (Hungarian algorithm,
  ``scipy.optimize.linear_sum_assignment`` on the matrix augmented with a "missed" column per
  requested cut and an "extra" row per detected cut). A pair is therefore matched only when its
  deviation is below two penalties (one miss plus one extra); a cut shifted farther counts as a
  miss plus an extra. So the total error is non-decreasing in every shift and SCA is 1.0 exactly
  when the detected cuts equal the requested ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

#: a missed or an extra cut costs this many mean requested shot lengths, F_total / (K + 1)
PENALTY_SHOTS = 1.0


@dataclass(frozen=True)
class SCAResult:
    """SCA of one video; frame quantities are pixel frames.

    Attributes:
        sca: ``exp(-nsd)`` in (0, 1].
        nsd: normalised shot discrepancy ``(matched_error + penalty_error) / num_frames``.
        matched: ``(requested, detected)`` cut frame pairs.
        missed: requested cuts with no detected partner.
        extra: detected cuts with no requested partner.
        matched_error: sum of ``|detected - requested|`` over matched pairs (frames).
        penalty_error: ``penalty_frames * (len(missed) + len(extra))`` (frames).
        penalty_frames: the cost of one missed or extra cut (frames).
    """

    sca: float
    nsd: float
    matched: list[tuple[int, int]]
    missed: list[int]
    extra: list[int]
    matched_error: float
    penalty_error: float
    penalty_frames: float

    def to_dict(self) -> dict:
        return asdict(self)


def penalty_frames(num_requested: int, num_frames: int) -> float:
    """Frames one missed or extra cut costs: ``PENALTY_SHOTS * num_frames / (num_requested + 1)``."""
    return PENALTY_SHOTS * num_frames / (num_requested + 1)


def shot_cut_accuracy(detected: Sequence[int], requested: Sequence[int], num_frames: int) -> SCAResult:
    """SCA of ``detected`` cut frames against ``requested`` ones in a video of ``num_frames`` frames.

    Cut frames are the first frames of new shots, in pixel frames (module docstring).

    Raises:
        ValueError: ``num_frames < 1``, or a cut outside ``[1, num_frames)`` (frame 0 starts
            the first shot and is no cut).
    """
    from scipy.optimize import linear_sum_assignment

    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    for name, cuts in (("detected", detected), ("requested", requested)):
        bad = [c for c in cuts if not 1 <= c < num_frames]
        if bad:
            raise ValueError(f"{name} cuts {bad} lie outside the video's {num_frames} frames")
    req = np.asarray(sorted(int(c) for c in requested), dtype=np.float64)
    det = np.asarray(sorted(int(c) for c in detected), dtype=np.float64)
    k, m = len(req), len(det)
    p = penalty_frames(k, num_frames)
    # rows: requested cuts, then one "extra" row per detected cut; columns: detected cuts, then
    # one "missed" column per requested cut. A real cut may only pair with its own dummy.
    forbidden = 1e18
    cost = np.zeros((k + m, m + k))
    cost[:k, :m] = np.abs(req[:, None] - det[None, :])
    cost[:k, m:] = np.where(np.eye(k, dtype=bool), p, forbidden)
    cost[k:, :m] = np.where(np.eye(m, dtype=bool), p, forbidden)
    rows, cols = linear_sum_assignment(cost)
    matched, missed, extra = [], [], []
    for r, c in zip(rows, cols):
        if r < k and c < m:
            matched.append((int(req[r]), int(det[c])))
        elif r < k:
            missed.append(int(req[r]))
        elif c < m:
            extra.append(int(det[c]))
    matched.sort()
    matched_error = float(sum(abs(a - b) for a, b in matched))
    penalty_error = p * (len(missed) + len(extra))
    nsd = (matched_error + penalty_error) / num_frames
    return SCAResult(math.exp(-nsd), nsd, matched, sorted(missed), sorted(extra), matched_error, penalty_error, p)


def cuts_from_shots(shots: Sequence) -> list[int]:
    """Cut frames of detected shots (``pipeline.detect.DetectedShot``, half-open frame ranges).

    A hard cut is the next shot's first frame. Across a gradual transition (frames between
    ``previous.end_frame`` and ``shot.start_frame`` that belong to no shot) the cut is the
    middle frame of the transition, ``(previous.end_frame + shot.start_frame) // 2``.
    """
    return [(prev.end_frame + shot.start_frame) // 2 for prev, shot in zip(shots, shots[1:])]
