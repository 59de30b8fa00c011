"""Odd but legal video files made at test time from the real footage (../shared/footage).

Each writer takes RGB frames cut from Big Buck Bunny and writes them as an archive would hold
them: rotated phone footage (display matrix), a cover picture as the first video stream,
variable frame rate (explicit timestamps), other codecs and containers, odd and tiny sizes.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

FOOTAGE = Path(__file__).resolve().parents[3] / "shared" / "footage"
BBB = FOOTAGE / "archive" / "bbb_first60s_360p.mp4"
SINTEL = FOOTAGE / "archive" / "sintel_film_excerpt_26s.mp4"


def footage(path: Path, start_s: float, count: int, size: tuple[int, int]) -> list[np.ndarray]:
    """``count`` consecutive frames of ``path`` from ``start_s`` on, as RGB ``[h, w, 3]`` at ``size`` (w, h)."""
    frames = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        container.seek(int(start_s / stream.time_base), stream=stream)
        for frame in container.decode(stream):
            if frame.time < start_s - 1e-6:
                continue
            frames.append(frame.to_ndarray(format="rgb24", width=size[0], height=size[1]))
            if len(frames) == count:
                return frames
    raise ValueError(f"{path.name} has fewer than {count} frames after {start_s} s")


def two_shots(size: tuple[int, int], seconds: float = 3.0, fps: int = 24) -> list[np.ndarray]:
    """``seconds`` of footage with one hard cut in the middle: Big Buck Bunny, then Sintel."""
    half = int(seconds * fps / 2)
    return footage(BBB, 20.0, half, size) + footage(SINTEL, 8.0, half, size)


def write_video(
    path: Path,
    frames: list[np.ndarray],
    *,
    codec: str = "libx264",
    rate: float = 24,
    pix_fmt: str = "yuv420p",
    times_s: list[float] | None = None,
    rotation: int | None = None,
    cover: np.ndarray | None = None,
    options: dict | None = None,
) -> Path:
    """Encode ``frames`` to ``path`` (container from the suffix).

    Args:
        times_s: presentation time (s) of each frame (variable frame rate), else ``i / rate``.
        rotation: display-matrix rotation (degrees counter-clockwise) stored on the stream.
        cover: a picture written as a 5-frame video stream *before* the footage's stream.
    """
    with av.open(str(path), mode="w") as out:
        if cover is not None:
            pic = out.add_stream("libx264", rate=1)
            pic.height, pic.width = cover.shape[:2]
            pic.pix_fmt = "yuv420p"
        stream = out.add_stream(codec, rate=Fraction(rate).limit_denominator(1001), options=options or {})
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = pix_fmt
        time_base = Fraction(1, 6000)
        stream.time_base = stream.codec_context.time_base = time_base
        if rotation is not None:
            stream.set_display_rotation(rotation)
        if cover is not None:
            for i in range(5):
                frame = av.VideoFrame.from_ndarray(cover, format="rgb24")
                frame.pts = i
                out.mux(pic.encode(frame))
            out.mux(pic.encode())
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            t = times_s[i] if times_s is not None else i / rate
            frame.pts = round(t / time_base)
            frame.time_base = time_base
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


def alternating_times(seconds: float, fast: int = 60, slow: int = 12) -> list[float]:
    """Presentation times of a clip alternating one second at ``fast`` fps, one at ``slow`` fps."""
    times, t, second = [], 0.0, 0
    while t < seconds:
        rate = fast if second % 2 == 0 else slow
        for k in range(rate):
            if second + k / rate < seconds:
                times.append(second + k / rate)
        second += 1
        t = second
    return times


def zero_middle(path: Path, out: Path, fraction: float = 0.4, length: int = 4096) -> Path:
    """A copy of ``path`` with ``length`` bytes zeroed at ``fraction`` of its size (damage)."""
    data = bytearray(path.read_bytes())
    at = int(len(data) * fraction)
    data[at : at + length] = bytes(len(data[at : at + length]))
    out.write_bytes(bytes(data))
    return out
