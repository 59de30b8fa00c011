"""Stage 6, rendering: cut each packed sample from its source and encode it at the training geometry.

Geometry (``render`` config; HoloCine / Wan2.2 train at 832×480, 16 fps): each source frame is
scaled, honouring its pixel aspect ratio, so that it covers the output size, then centre-cropped.
Output frame ``m`` of a shot starting at source frame ``s`` shows source frame
``s + ⌊m · source_fps / fps⌋`` (nearest-earlier resampling), which never reads past the shot's end
because the packer gives a shot at most ``duration · fps`` frames. Source frames are slots of the
source's time grid (:mod:`pipeline.decode`), so variable-frame-rate sources are resampled by
presentation time. A source whose display aspect ratio is so far from the output's that the
crop would keep less than ``min_crop_fraction`` of its width (or height) is rejected
(:func:`crop_rejection`).

All samples of one video are rendered from **one decode pass**: frames are decoded in order,
each needed frame is scaled and converted to yuv420p once, and handed to every open sample
encoder (H.264, ``crf``/``preset`` from config) that needs it. A source frame lost to damage shows the last good
frame and is counted in :attr:`Rendered.substituted` (the record's ``damaged_frames``); a sample
with more than ``max_damaged_frames`` such frames, or that the source ends before, is dropped
with a reason. Rendering is deterministic: the same source and config give the same bytes
(single-threaded decoding and x264, fixed timestamps, no wall-clock metadata; and a preset
without x264's macroblock tree: with it, the same frames gave different bytes from run to run).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction

import av
import cv2
import numpy as np
import pyarrow.fs as pafs

from multishot.pipeline.config import RenderConfig
from multishot.pipeline.picture import ActiveArea
from multishot.pipeline.decode import DecodeStats, VideoInfo, iter_grid



@dataclass
class RenderJob:
    """One sample to encode: the source frame index for each output frame, in order."""

    key: str
    source_frames: list[int]


@dataclass
class Rendered:
    """An encoded sample (``mp4`` bytes) or why it could not be made (``error``)."""

    key: str
    mp4: bytes | None
    frames: int
    substituted: int  # output frames showing an earlier frame because theirs was lost to damage
    error: str = ""


def source_frames_for_shot(start_frame: int, frames: int, source_fps: float, fps: float) -> list[int]:
    """Source frame indices of a shot's ``frames`` output frames (nearest-earlier resampling)."""
    step = source_fps / fps
    return [start_frame + int(m * step + 1e-9) for m in range(frames)]


def crop_fraction(info: VideoInfo, width: int, height: int) -> float:
    """The fraction of the source's display width (or height) a ``width × height`` crop keeps, 0-1."""
    source, target = info.display_width / info.display_height, width / height
    return min(source, target) / max(source, target)


def crop_rejection(info: VideoInfo, config: RenderConfig) -> str:
    """Why ``info``'s geometry cannot be rendered at the configured size, or ``''``.

    The source is scaled to cover the output and centre-cropped, so an aspect ratio far from the
    output's (a 2000×96 strip for 832×480) would keep a sliver of the picture, scaled up.
    """
    kept = crop_fraction(info, config.width, config.height)
    if kept >= config.min_crop_fraction:
        return ""
    w, h = info.display_width, info.display_height
    side = "width" if w * config.height > h * config.width else "height"
    return (f"aspect ratio {w / h:.2f}:1 ({w}x{h} as shown) is far from the output's "
            f"{config.width / config.height:.2f}:1: the crop would keep {kept:.0%} of the {side} "
            f"(render.min_crop_fraction {config.min_crop_fraction})")


def cover_and_crop(frame: np.ndarray, info: VideoInfo, width: int, height: int,
                   area: ActiveArea | None = None) -> np.ndarray:
    """Scale an upright RGB frame ``[h, w, 3]`` to cover ``width × height`` (pixel aspect
    honoured), centre-crop; with ``area``, only its active picture (letterbox / pillarbox bars
    cut off first, :mod:`pipeline.picture`)."""
    dw, dh = info.display_width, info.display_height
    if area is not None and not area.full:
        frame = area.crop(frame)
        dw, dh = area.size(dw, dh)
    scale = max(width / dw, height / dh)
    sw, sh = max(width, round(dw * scale)), max(height, round(dh * scale))
    interpolation = cv2.INTER_AREA if sh < frame.shape[0] else cv2.INTER_LINEAR
    scaled = cv2.resize(frame, (sw, sh), interpolation=interpolation)
    x, y = (sw - width) // 2, (sh - height) // 2
    return scaled[y : y + height, x : x + width]


def _to_yuv(frame: np.ndarray) -> np.ndarray:
    """An RGB frame ``[h, w, 3]`` (uint8) as the planes ``[h · 3/2, w]`` (uint8, ``yuv420p``)
    the encoder would convert it to itself (the same swscale call ``VideoStream.encode`` makes):
    converted once per source frame however many samples show it, each encoder taking a copy."""
    rgb = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
    return rgb.reformat(format="yuv420p").to_ndarray()


class _Encoder:
    def __init__(self, config: RenderConfig):
        self.buffer = io.BytesIO()
        self.container = av.open(self.buffer, mode="w", format="mp4")
        rate = Fraction(config.fps).limit_denominator(1001)
        # one x264 thread: parallelism comes from rendering videos side by side
        options = {"crf": str(config.crf), "preset": config.preset, "threads": "1"}
        self.stream = self.container.add_stream("libx264", rate=rate, options=options)
        self.stream.width, self.stream.height = config.width, config.height
        self.stream.pix_fmt = "yuv420p"
        self.time_base = 1 / rate
        self.frames = 0

    def add(self, yuv: np.ndarray) -> None:
        """Encode a frame of the output size as :func:`_to_yuv` gives it."""
        frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        frame.pts = self.frames  # explicit 16 fps timestamps for x264's rate control
        frame.time_base = self.time_base
        self.frames += 1
        self.container.mux(self.stream.encode(frame))

    def finish(self) -> bytes:
        self.container.mux(self.stream.encode())
        self.container.close()
        return self.buffer.getvalue()


def render_samples(
    source: str, fs: pafs.FileSystem, info: VideoInfo, jobs: list[RenderJob], config: RenderConfig, stats: DecodeStats,
    area: ActiveArea | None = None,
) -> list[Rendered]:
    """Encode every job from one decode pass over ``source``; results in the order of ``jobs``;
    ``area``: the source's active picture, the part rendered (:func:`cover_and_crop`).

    A job is dropped (``mp4 None``, ``error`` says why) when more than
    ``config.max_damaged_frames`` of its frames were lost to damage, or when the source ends first.
    """
    wanted = np.array(sorted({i for job in jobs for i in job.source_frames}))
    # per job: next output position; encoders opened lazily, closed as soon as complete
    position = [0] * len(jobs)
    substituted = [0] * len(jobs)
    encoders: dict[int, _Encoder] = {}
    results: dict[int, Rendered] = {}
    order = sorted(range(len(jobs)), key=lambda j: jobs[j].source_frames[0])
    active: list[int] = []
    next_job = 0
    # the grid yields every wanted source frame once, in order (substituted ones flagged)
    for index, frame, lost in iter_grid(source, fs, fps=info.fps, wanted=wanted, stats=stats):
        while next_job < len(order) and jobs[order[next_job]].source_frames[0] <= index:
            active.append(order[next_job])
            next_job += 1
        if not active:
            continue
        out = _to_yuv(cover_and_crop(frame, info, config.width, config.height, area))
        for j in list(active):
            needed = jobs[j].source_frames
            encoder = encoders.get(j) or encoders.setdefault(j, _Encoder(config))
            while position[j] < len(needed) and needed[position[j]] == index:
                substituted[j] += lost
                encoder.add(out)
                position[j] += 1
            if position[j] == len(needed):
                results[j] = Rendered(jobs[j].key, encoders.pop(j).finish(), len(needed), substituted[j])
                active.remove(j)
    for j, job in enumerate(jobs):
        if j in encoders:
            encoders.pop(j).container.close()
        done = results.get(j)
        if done is None:
            end = job.source_frames[-1] / info.fps
            results[j] = Rendered(job.key, None, 0, substituted[j],
                                  f"source ended at {stats.last_time_s:.2f} s, before the sample's end at {end:.2f} s")
        elif done.substituted > config.max_damaged_frames:
            results[j] = Rendered(job.key, None, done.frames, done.substituted,
                                  f"{done.substituted} of {done.frames} frames lost to damage "
                                  f"(render.max_damaged_frames {config.max_damaged_frames})")
    return [results[j] for j in range(len(jobs))]
