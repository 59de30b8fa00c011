"""Gradual transitions (dissolves, fades) that TransNetV2's single-frame head misses, and their extent.

TransNetV2 (Souček & Lokoč 2020, §3) has two heads: the single-frame head marks the middle of a
transition, the many-hot head all of its frames. On the bundled footage the single-frame head
stays under the 0.4 threshold on slow dissolves (the Sintel trailer's dragon → desert dissolve:
single ≤ 0.30 while many-hot reaches 0.66; Big Buck Bunny's hill → burrow dissolve: single ≤ 0.06,
many-hot 0.41), so those were kept inside one shot. Two additions, both applied by
:func:`pipeline.detect.shots_from_predictions`:

1. **Many-hot-only runs**: a run of frames whose many-hot probability exceeds
   ``detect.gradual_threshold`` (0.3) and holds no single-frame detection is a gradual
   transition too (:func:`many_only_runs`).
2. **Extent** (:func:`refine_span`): the many-hot run covers the middle of a long dissolve only
   (about a third of Big Buck Bunny's 2.7 s one). A dissolve is a linear blend ``(1 − α) A + α B``
   of the outgoing picture ``A`` and the incoming ``B``; so on small luma thumbnails (16×9 of the
   scan's 48×27 frames, :func:`thumbnails`) each frame's progress ``α_t`` is its projection on
   the line from ``A`` (frames just before the window) to ``B`` (just after), and the transition's
   span is that of the clamped ramp ``clip((t − a + ½) / (b − a), 0, 1)`` fitted to ``α_t`` by
   least squares over every ``(a, b)`` in a window of ``detect.gradual_max_s`` around it. A fade
   from or to black is the same blend with ``A`` or ``B`` black. The fit only widens the
   detected run (never shrinks it), and is not used when ``A`` and ``B`` hardly differ
   (the same scene on both sides) or the ramp does not explain ``α_t`` (residual RMS above
   ``MAX_RESIDUAL``).
"""

from __future__ import annotations

import base64

import numpy as np

THUMB = (16, 9)  # (width, height) of the luma thumbnails: 3x3 blocks of TransNetV2's 48x27 frames
MAX_RESIDUAL = 0.1  # RMS of α_t around the fitted curve above which the fit is not used
MIN_RISE = 0.5  # the fitted ramp must carry at least this much of the change from A to B
MIN_CONTRAST = 8.0  # RMS luma difference (0-255) of A and B under which there is nothing to fit
EDGE = 3  # frames averaged for A (first of the window) and B (last)

BT709 = np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)


def thumbnails(frames) -> np.ndarray:
    """Luma thumbnails ``[N, 9, 16]`` (uint8) of RGB uint8 frames ``[N, 27, 48, 3]`` (3×3 block
    means): a NumPy array, or a tensor on any device (computed there, one copy back)."""
    if isinstance(frames, np.ndarray):
        y = frames.astype(np.float32) @ BT709
        n, h, w = y.shape
        return np.round(y.reshape(n, THUMB[1], h // THUMB[1], THUMB[0], w // THUMB[0]).mean(axis=(2, 4))).astype(np.uint8)
    import torch

    y = frames.float() @ torch.as_tensor(BT709, device=frames.device)
    pooled = torch.nn.functional.adaptive_avg_pool2d(y[:, None], (THUMB[1], THUMB[0]))[:, 0]
    return pooled.round().to(torch.uint8).cpu().numpy()


def encode_thumbnails(thumbs: np.ndarray) -> str:
    """``[N, 9, 16]`` uint8 → base64 text (a segment result's JSON)."""
    return base64.b64encode(np.ascontiguousarray(thumbs, np.uint8).tobytes()).decode()


def decode_thumbnails(text: str) -> np.ndarray:
    """Inverse of :func:`encode_thumbnails`."""
    return np.frombuffer(base64.b64decode(text), np.uint8).reshape(-1, THUMB[1], THUMB[0])


def many_only_runs(single: np.ndarray, many: np.ndarray, threshold: float, gradual_threshold: float
                   ) -> list[tuple[int, int]]:
    """Inclusive ``(first, last)`` runs of ``many > gradual_threshold`` holding no frame with
    ``single > threshold``."""
    from multishot.pipeline.detect import _runs

    return [(a, b) for a, b in _runs(np.asarray(many) > gradual_threshold)
            if not (np.asarray(single[a : b + 1]) > threshold).any()]


def refine_span(thumbs: np.ndarray, first: int, last: int, lo: int, hi: int, window: int) -> tuple[int, int]:
    """The half-open span ``[a, b)`` of the gradual transition detected at frames
    ``[first, last]`` (inclusive), fitted as in the module docstring within
    ``[max(lo, centre − window), min(hi, centre + window))``; ``lo``/``hi`` bound it (the
    neighbouring transitions). Returns at least ``[first, last + 1)``."""
    centre = (first + last) // 2
    w0, w1 = max(lo, centre - window), min(hi, centre + window + 1)
    if w1 - w0 < 2 * EDGE + 4 or w0 + EDGE > first or w1 - EDGE <= last + 1:
        return first, last + 1
    x = thumbs[w0:w1].reshape(w1 - w0, -1).astype(np.float32)
    a_img, b_img = x[:EDGE].mean(axis=0), x[-EDGE:].mean(axis=0)
    d = b_img - a_img
    if np.sqrt(np.mean(d * d)) < MIN_CONTRAST:
        return first, last + 1
    alpha = (x - a_img) @ d / float(d @ d)  # [T]: progress from A to B
    t = np.arange(w1 - w0, dtype=np.float64)
    starts = np.arange(EDGE, first - w0 + 1)
    ends = np.arange(last - w0 + 1, w1 - w0 - EDGE + 1)
    a = np.repeat(starts, len(ends)).astype(np.float64)
    b = np.tile(ends, len(starts)).astype(np.float64)
    # continuous piecewise-linear α with knots at a - 1/2 and b - 1/2: drift, ramp, drift
    design = np.stack([np.ones((len(a), len(t))), np.broadcast_to(t, (len(a), len(t))),
                       np.maximum(t[None] - a[:, None] + 0.5, 0), np.maximum(t[None] - b[:, None] + 0.5, 0)], axis=2)
    gram = design.transpose(0, 2, 1) @ design + 1e-9 * np.eye(4)
    coef = np.linalg.solve(gram, (design.transpose(0, 2, 1) @ alpha.astype(np.float64))[..., None])[..., 0]
    residual = np.sqrt(np.mean(((design @ coef[..., None])[..., 0] - alpha) ** 2, axis=1))
    k = int(np.argmin(residual))
    ramp = coef[k, 1] + coef[k, 2]  # α per frame inside the span
    outside = max(abs(coef[k, 1]), abs(coef[k, 1] + coef[k, 2] + coef[k, 3]))
    if residual[k] > MAX_RESIDUAL or ramp * (b[k] - a[k]) < MIN_RISE or ramp < 2 * outside:
        return first, last + 1
    return min(first, w0 + int(a[k])), max(last + 1, w0 + int(b[k]))
