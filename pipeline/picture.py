"""The picture itself: its active area (letterbox / pillarbox bars), black frames and fades to black.

**Active area** (:func:`detect_active_area`), as FFmpeg's ``cropdetect`` finds it: on
``detect.crop_samples`` frames spread over the video (the keyframe at or before each of the
times ``(k + 0.5) / n`` of its duration: one keyframe decode each, no run-up), at the analysis
scale, a row (column) belongs to the picture when its mean BT.709 luma exceeds
``detect.crop_limit`` (0-255; cropdetect's default ``limit`` is 24) on at least one sampled frame;
the active area is the box from the first to the last such row and column, less one edge row
(column) where a bar is cut (it mixes bar and picture at this scale). Bars thinner than
``detect.crop_min_bar`` of the side are not cropped (encoders' edge rows); a box under half of
either side (a dark film whose samples are mostly night) is not trusted and the full frame is
kept. The box is in fractions of the upright display frame (:class:`ActiveArea`), so it applies
at any scale: the render crops to it before its cover + centre crop, the scan measures
brightness, darkness and OCR inside it, and it is recorded in ``videos.parquet``.

**Black frames** (:func:`darkness`), as FFmpeg's ``blackdetect``: a frame is black when at least
``detect.black_picture_ratio`` (blackdetect's ``picture_black_ratio_th``, 0.98) of its active
area's pixels have luma at or below ``detect.black_pixel_threshold`` (blackdetect's ``pixel_black_th``
0.10, of 255: 25.5). Measured on every decoded frame at the shot detector's 48×27 scale (the
scan already makes it), so the whole video is covered at no decoding cost.

**Fades to and from black** (:func:`trim_fades`): a shot whose first frame is black, or darker
than ``FADE_START`` (0.4) of its bright level (the darker part of the fade went to a gradual
transition before it), starts with a fade-in; its leading black frames, then the frames of the
ramp up to the first whose mean luma reaches ``detect.fade_level`` of the shot's bright level
(the 90th percentile of the luma of its frames that are not black), are trimmed off (they belong
to no shot: a gradual transition before it). A shot ending on a black frame (or that dark) is
trimmed the same way from its end. A shot left with less than ``detect.min_shot_s`` is rejected
with reason ``black``, as is a shot whose remaining frames are more than
``filter.max_black_fraction`` black (:mod:`pipeline.filter`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import av
import numpy as np
import pyarrow.fs as pafs

from multishot.pipeline.config import DetectConfig
from multishot.pipeline.detect import DetectedShot
from multishot.pipeline.decode import VideoInfo, frame_image, analysis_size, main_stream, open_container

BT709 = np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)
#: a shot starting (ending) below this fraction of its bright level starts (ends) with a fade
#: even when its first (last) frame is not black (the rest of the fade went to a transition)
FADE_START = 0.4


@dataclass(frozen=True)
class ActiveArea:
    """The active picture: ``[x0, x1) × [y0, y1)`` in fractions (0..1) of the upright display
    frame's width and height. ``(0, 0, 1, 1)``: no bars."""

    x0: float = 0.0
    y0: float = 0.0
    x1: float = 1.0
    y1: float = 1.0

    @property
    def full(self) -> bool:
        return (self.x0, self.y0, self.x1, self.y1) == (0.0, 0.0, 1.0, 1.0)

    def pixels(self, width: int, height: int) -> tuple[int, int, int, int]:
        """``(x0, y0, x1, y1)`` in pixels of a ``width × height`` frame (at least 1 px each way)."""
        x0, y0 = int(round(self.x0 * width)), int(round(self.y0 * height))
        x1, y1 = int(round(self.x1 * width)), int(round(self.y1 * height))
        return x0, y0, max(x0 + 1, x1), max(y0 + 1, y1)

    def crop(self, frame: np.ndarray) -> np.ndarray:
        """The active area of a frame ``[H, W, ...]`` (a view)."""
        if self.full:
            return frame
        x0, y0, x1, y1 = self.pixels(frame.shape[1], frame.shape[0])
        return frame[y0:y1, x0:x1]

    def size(self, width: int, height: int) -> tuple[int, int]:
        """``(w, h)`` of the active area of a ``width × height`` frame (px)."""
        x0, y0, x1, y1 = self.pixels(width, height)
        return x1 - x0, y1 - y0


def luma(frames: np.ndarray) -> np.ndarray:
    """BT.709 luma ``Y'`` (0-255, float32) of RGB uint8 frames ``[..., 3]`` → ``[...]``."""
    return frames.astype(np.float32) @ BT709


def area_from_profiles(rows: np.ndarray, cols: np.ndarray, config: DetectConfig) -> ActiveArea:
    """The active area from the per-row ``[H]`` and per-column ``[W]`` brightest mean luma over
    the sampled frames (the rule in the module docstring)."""
    def span(profile: np.ndarray) -> tuple[float, float]:
        n = len(profile)
        lit = np.flatnonzero(profile > config.crop_limit)
        if not len(lit):
            return 0.0, 1.0
        a, b = int(lit[0]), int(lit[-1]) + 1
        # a cut bar loses one more row: the edge row mixes bar and picture at this scale
        a = a + 1 if a >= config.crop_min_bar * n else 0
        b = b - 1 if n - b >= config.crop_min_bar * n else n
        if b - a < n / 2:
            return 0.0, 1.0
        return a / n, b / n

    y0, y1 = span(rows)
    x0, x1 = span(cols)
    return ActiveArea(x0, y0, x1, y1)


def detect_active_area(source: str, fs: pafs.FileSystem | None, info: VideoInfo, config: DetectConfig,
                       short_side: int = 360) -> ActiveArea:
    """The video's active picture area (rule in the module docstring), measured on frames scaled
    to a shorter side of ``short_side`` px; the full frame when
    ``detect.crop_samples`` is 0 or no sampled frame decodes.

    Raises:
        pipeline.video.ProbeError: the file cannot be opened.
    """
    if config.crop_samples == 0:
        return ActiveArea()
    width, height = analysis_size(info, short_side)
    rows, cols = np.zeros(height, np.float32), np.zeros(width, np.float32)
    with open_container(source, fs) as container:
        stream = main_stream(container)
        stream.codec_context.skip_frame = "NONKEY"
        start = stream.start_time or 0
        seen = set()
        for k in range(config.crop_samples):
            target = (k + 0.5) / config.crop_samples * info.duration_s
            try:
                container.seek(start + int(target / float(stream.time_base)), stream=stream, backward=True)
                frame = next(container.decode(stream), None)
            except (av.error.FFmpegError, StopIteration):
                continue
            if frame is None or frame.pts in seen:
                continue
            seen.add(frame.pts)
            y = luma(frame_image(frame, width, height))
            rows = np.maximum(rows, y.mean(axis=1))
            cols = np.maximum(cols, y.mean(axis=0))
    return area_from_profiles(rows, cols, config) if seen else ActiveArea()


def darkness(frame: np.ndarray, area: ActiveArea, pixel_threshold: float) -> tuple[float, float]:
    """``(black pixel fraction, mean luma)`` of an RGB uint8 frame ``[h, w, 3]``'s active area:
    the fraction of its pixels with luma at or below ``pixel_threshold`` (0-255), and its mean
    luma (0-255)."""
    y = luma(area.crop(frame))
    return float(np.mean(y <= pixel_threshold)), float(y.mean())


def frame_darkness(frames, area: ActiveArea, pixel_threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Per frame, ``(black pixel fraction [N], mean luma [N])`` (float32, NumPy) of the active
    area of RGB uint8 frames ``[N, h, w, 3]``: a NumPy array, or a tensor on any device (the GPU
    frame source's; computed there, one copy back)."""
    if isinstance(frames, np.ndarray):
        y = luma(area.crop(frames.transpose(1, 2, 0, 3))).transpose(2, 0, 1)  # [N, h', w']
        return (y <= pixel_threshold).mean(axis=(1, 2)).astype(np.float32), y.mean(axis=(1, 2)).astype(np.float32)
    import torch

    x0, y0, x1, y1 = area.pixels(frames.shape[2], frames.shape[1])
    y = frames[:, y0:y1, x0:x1].float() @ torch.as_tensor(BT709, device=frames.device)
    return (y <= pixel_threshold).float().mean(dim=(1, 2)).cpu().numpy(), y.mean(dim=(1, 2)).cpu().numpy()


def black_frames(black_ratio: np.ndarray, config: DetectConfig) -> np.ndarray:
    """Which frames are black ``[N]`` bool, from each frame's black pixel fraction ``[N]``."""
    return np.asarray(black_ratio) >= config.black_picture_ratio


def trimmed_shot(shot: DetectedShot, black: np.ndarray, mean_luma: np.ndarray, config: DetectConfig,
                 shortest: int) -> tuple[DetectedShot, bool]:
    """``(shot, too_little)``: ``shot`` less its fades (:func:`trim_fades`; frames indexed as
    ``black``/``mean_luma``), its ``gap_before`` set when its start moved; or the shot unchanged
    and ``too_little`` True when less than ``shortest`` frames would be left."""
    start, end = trim_fades(shot.start_frame, shot.end_frame, black, mean_luma, config)
    if end - start < shortest:
        return shot, True
    if (start, end) == (shot.start_frame, shot.end_frame):
        return shot, False
    return replace(shot, start_frame=start, end_frame=end, gap_before=shot.gap_before or start > shot.start_frame), False


def trim_fades(start: int, end: int, black: np.ndarray, mean_luma: np.ndarray, config: DetectConfig) -> tuple[int, int]:
    """The shot ``[start, end)`` (source frames) less its fades from and to black (rule in the
    module docstring); ``black``/``mean_luma`` are the video's per-frame values ``[N]``. Returns
    ``(start, end)``, possibly empty (``start >= end``): nothing but black and fades."""
    b, y = black[start:end], mean_luma[start:end]
    n = end - start
    if n == 0:
        return start, end
    if b.all():
        return end, end
    bright = float(np.percentile(y[~b], 90))
    level = config.fade_level * bright
    lo, hi = 0, n
    if b[0] or y[0] < FADE_START * bright:
        while lo < n and (b[lo] or y[lo] < level):
            lo += 1
    if b[-1] or y[-1] < FADE_START * bright:
        while hi > lo and (b[hi - 1] or y[hi - 1] < level):
            hi -= 1
    return start + lo, start + hi
