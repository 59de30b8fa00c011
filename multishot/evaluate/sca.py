"""Shot Cut Accuracy (SCA), HoloCine (arXiv 2510.20822) appendix A.1.

Cuts detected in a generated video are matched one-to-one with the requested cuts; the
normalised shot discrepancy is ``NSD = (E_matched + E_penalty) / F_total`` and
``SCA = exp(-NSD)``. The paper gives neither the matching algorithm nor the penalty and no
public code implements SCA, so both are chosen here:

* **Cut frame.** A cut is the first frame of the new shot (0-based pixel frame), as the
  sample record's ``cut_frames`` (``dataset/record.py``) and HoloCine's ``shot_cut_frames``
  define it. A detected gradual transition becomes one cut at the middle of the frames that
  belong to no shot (:func:`cuts_from_shots`).
* **Penalty: the frames a cut puts into the wrong shot.** That is what ``E_matched`` already
  measures for a matched cut (a cut shifted by ``d`` frames moves ``d`` frames to the wrong
  shot), and it prices missed and extra cuts in the same unit. A **missed** cut merges the two
  requested shots around it: the frames of the shorter one end up in the wrong shot, so it costs
  ``min(a, b)`` frames for neighbouring requested shots of ``a`` and ``b`` frames
  (:func:`missed_cost`). An **extra** cut at frame ``c`` inside the requested shot
  ``[s, e)`` splits off its shorter side, ``min(c - s, e - c)`` frames (:func:`extra_cost`).
  ``E_penalty`` sums these, so NSD approximates the fraction of frames shown in a shot other
  than the one the prompt asked for (additively: several errors in one shot are each counted),
  whatever the frame rate and length of the video. For HoloCine's evenly spaced layouts a miss
  costs one mean shot length, ``F_total / (K + 1)``.
* **Matching.** The minimum-cost partial one-to-one matching (Hungarian algorithm,
  ``scipy.optimize.linear_sum_assignment`` on the matrix augmented with a "missed" column per
  requested cut and an "extra" row per detected cut): a requested and a detected cut are paired
  only when that is cheaper than counting one missed and one extra cut. A cut shifted by ``d``
  therefore costs ``d`` as long as it stays nearer its own position than the neighbouring shot's
  far side (``d`` up to half that shot), so SCA falls with every frame of shift there; farther,
  it is priced as a miss plus an extra. SCA is 1.0 exactly when the detected cuts equal the
  requested ones.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np


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
        penalty_error: frames put into the wrong shot by the missed and extra cuts.
    """

    sca: float
    nsd: float
    matched: list[tuple[int, int]]
    missed: list[int]
    extra: list[int]
    matched_error: float
    penalty_error: float

    def to_dict(self) -> dict:
        return asdict(self)


def _edges(requested: Sequence[int], num_frames: int) -> list[int]:
    return [0, *sorted(requested), num_frames]


def missed_cost(cut: int, requested: Sequence[int], num_frames: int) -> int:
    """Frames a missed requested ``cut`` puts into the wrong shot: the shorter of the two
    requested shots it separates."""
    edges = _edges(requested, num_frames)
    j = edges.index(cut)
    return min(cut - edges[j - 1], edges[j + 1] - cut)


def extra_cost(cut: int, requested: Sequence[int], num_frames: int) -> int:
    """Frames an extra detected ``cut`` puts into the wrong shot: the shorter side it splits off
    the requested shot ``[s, e)`` containing it (0 when it falls on a requested cut)."""
    edges = _edges(requested, num_frames)
    j = bisect.bisect_right(edges, cut) - 1
    return min(cut - edges[j], edges[j + 1] - cut)


def shot_cut_accuracy(detected: Sequence[int], requested: Sequence[int], num_frames: int) -> SCAResult:
    """SCA of ``detected`` cut frames against ``requested`` ones in a video of ``num_frames`` frames.

    Cut frames are the first frames of new shots, in pixel frames (module docstring).

    Raises:
        ValueError: ``num_frames < 1``; a cut outside ``[1, num_frames)`` (frame 0 starts the
            first shot and is no cut); a cut listed twice.
    """
    from scipy.optimize import linear_sum_assignment

    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    for name, cuts in (("detected", detected), ("requested", requested)):
        bad = [c for c in cuts if not 1 <= c < num_frames]
        if bad:
            raise ValueError(f"{name} cuts {bad} lie outside the video's {num_frames} frames")
        if len(set(cuts)) != len(cuts):
            raise ValueError(f"{name} cuts {sorted(cuts)} list a frame twice")
    req = sorted(int(c) for c in requested)
    det = sorted(int(c) for c in detected)
    k, m = len(req), len(det)
    # rows: requested cuts, then one "extra" row per detected cut; columns: detected cuts, then
    # one "missed" column per requested cut. A real cut may only pair with its own dummy.
    forbidden = 1e18
    cost = np.zeros((k + m, m + k))
    cost[:k, :m] = np.abs(np.asarray(req, dtype=np.float64)[:, None] - np.asarray(det, dtype=np.float64)[None, :])
    cost[:k, m:] = np.full((k, k), forbidden)
    cost[:k, m:][np.diag_indices(k)] = [missed_cost(c, req, num_frames) for c in req]
    cost[k:, :m] = np.full((m, m), forbidden)
    cost[k:, :m][np.diag_indices(m)] = [extra_cost(c, req, num_frames) for c in det]
    rows, cols = linear_sum_assignment(cost)
    matched, missed, extra = [], [], []
    for r, c in zip(rows, cols):
        if r < k and c < m:
            matched.append((req[r], det[c]))
        elif r < k:
            missed.append(req[r])
        elif c < m:
            extra.append(det[c])
    matched.sort()
    matched_error = float(sum(abs(a - b) for a, b in matched))
    penalty_error = float(sum(missed_cost(c, req, num_frames) for c in missed)
                          + sum(extra_cost(c, req, num_frames) for c in extra))
    nsd = (matched_error + penalty_error) / num_frames
    return SCAResult(math.exp(-nsd), nsd, matched, sorted(missed), sorted(extra), matched_error, penalty_error)


def cuts_from_shots(shots: Sequence) -> list[int]:
    """Cut frames of detected shots (``pipeline.detect.DetectedShot``, half-open frame ranges).

    A hard cut is the next shot's first frame. Across a gradual transition (frames between
    ``previous.end_frame`` and ``shot.start_frame`` that belong to no shot) the cut is the
    middle frame of the transition, ``(previous.end_frame + shot.start_frame) // 2``.
    """
    return [(prev.end_frame + shot.start_frame) // 2 for prev, shot in zip(shots, shots[1:])]
