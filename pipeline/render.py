"""Stage 6, rendering: cut each packed sample from its source and encode it at the training geometry.

Geometry (``render`` config; HoloCine / Wan2.2 train at 832×480, 16 fps): each source frame is
scaled, honouring its pixel aspect ratio, so that it covers the output size, then centre-cropped.
Output frame ``m`` of a shot starting at source frame ``s`` shows source frame
``s + ⌊m · source_fps / fps⌋`` (nearest-earlier resampling), which never reads past the shot's end
because the packer gives a shot at most ``duration · fps`` frames.

All samples of one video are rendered from **one decode pass**: frames are decoded in order,
each needed frame is scaled once, and handed to every open sample encoder (H.264, yuv420p,
``crf``/``preset`` from config) that needs it. A frame lost to damage is replaced by the next
decoded one (counted); a sample the source ends before is dropped with a reason.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from fractions import Fraction

import av
import cv2
import numpy as np
import pyarrow.fs as pafs

from multishot.pipeline.config import RenderConfig
from multishot.pipeline.video import DecodeStats, VideoInfo, iter_frames

log = logging.getLogger(__name__)


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
    substituted: int  # output frames shown from a later source frame (lost to damage)
    error: str = ""


def source_frames_for_shot(start_frame: int, frames: int, source_fps: float, fps: float) -> list[int]:
    """Source frame indices of a shot's ``frames`` output frames (nearest-earlier resampling)."""
    step = source_fps / fps
    return [start_frame + int(m * step + 1e-9) for m in range(frames)]


def cover_and_crop(frame: np.ndarray, info: VideoInfo, width: int, height: int) -> np.ndarray:
    """Scale an RGB frame ``[h, w, 3]`` to cover ``width × height`` (pixel aspect honoured), centre-crop."""
    scale = max(width / info.display_width, height / info.height)
    sw, sh = max(width, round(info.display_width * scale)), max(height, round(info.height * scale))
    interpolation = cv2.INTER_AREA if sh < info.height else cv2.INTER_LINEAR
    scaled = cv2.resize(frame, (sw, sh), interpolation=interpolation)
    x, y = (sw - width) // 2, (sh - height) // 2
    return scaled[y : y + height, x : x + width]


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

    def add(self, frame: np.ndarray) -> None:
        video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        video_frame.pts = self.frames  # explicit 16 fps timestamps for x264's rate control
        video_frame.time_base = self.time_base
        self.frames += 1
        self.container.mux(self.stream.encode(video_frame))

    def finish(self) -> bytes:
        self.container.mux(self.stream.encode())
        self.container.close()
        return self.buffer.getvalue()


def render_samples(
    source: str, fs: pafs.FileSystem, info: VideoInfo, jobs: list[RenderJob], config: RenderConfig, stats: DecodeStats
) -> list[Rendered]:
    """Encode every job from one decode pass over ``source``; results in the order of ``jobs``."""
    wanted = np.array(sorted({i for job in jobs for i in job.source_frames}))
    # per job: next output position; encoders opened lazily, closed as soon as complete
    position = [0] * len(jobs)
    substituted = [0] * len(jobs)
    encoders: dict[int, _Encoder] = {}
    results: dict[int, Rendered] = {}
    order = sorted(range(len(jobs)), key=lambda j: jobs[j].source_frames[0])
    active: list[int] = []
    next_job = 0
    for index, frame in iter_frames(source, fs, fps=info.fps, wanted=wanted, stats=stats):
        while next_job < len(order) and jobs[order[next_job]].source_frames[0] <= index:
            active.append(order[next_job])
            next_job += 1
        if not active:
            continue
        out = cover_and_crop(frame, info, config.width, config.height)
        for j in list(active):
            needed = jobs[j].source_frames
            encoder = encoders.get(j) or encoders.setdefault(j, _Encoder(config))
            while position[j] < len(needed) and needed[position[j]] <= index:
                substituted[j] += needed[position[j]] < index
                encoder.add(out)
                position[j] += 1
            if position[j] == len(needed):
                results[j] = Rendered(jobs[j].key, encoders.pop(j).finish(), len(needed), substituted[j])
                active.remove(j)
    for j, job in enumerate(jobs):
        if j not in results:
            if j in encoders:
                encoders.pop(j).container.close()
            reached = stats.last_time_s
            results[j] = Rendered(
                job.key, None, 0, 0, f"source ended at {reached:.2f} s, before the sample's end (damaged file?)"
            )
    return [results[j] for j in range(len(jobs))]
