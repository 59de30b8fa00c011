"""Decoding a sample's mp4 (the ``{key}.mp4`` bytes of a shard) strictly, for inspection.

A rendered sample is constant-rate, so "frame ``i``" is simply the ``i``-th decoded frame.
Unlike source decoding (``pipeline/decode.py``, which skips damage to salvage footage), this
module reports damage: FFmpeg's H.264 decoder conceals most bitstream errors and only *logs*
them ("error while decoding MB …"), so every error-level log line during decoding is
captured and returned as a decoding error.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import av
import av.logging
import numpy as np


@dataclass
class Mp4Check:
    """What decoding a whole sample mp4 found.

    ``num_frames`` counts decoded frames; ``width``/``height`` are pixels and ``fps`` the
    average frame rate of the video stream (0 when it cannot be opened); ``errors`` lists
    FFmpeg errors (exceptions and error logs).
    """

    num_frames: int = 0
    width: int = 0
    height: int = 0
    fps: float = 0.0
    errors: list[str] = field(default_factory=list)


@contextmanager
def _capture_ffmpeg_errors() -> Iterator[list]:
    """Capture FFmpeg's error-level log lines (``(level, name, message)``) while the block runs.

    The FFmpeg log settings are process-wide: the level is raised to ERROR and PyAV's
    suppression of repeated lines is turned off for the block (else the same damage in a
    second file goes unreported), both restored after. Lines from decoder threads are
    captured too (``local=False``), so do not decode in other threads while checking.
    """
    level, skip_repeated = av.logging.get_level(), av.logging.get_skip_repeated()
    av.logging.set_level(av.logging.ERROR)
    av.logging.set_skip_repeated(False)
    try:
        with av.logging.Capture(local=False) as logs:
            yield logs
    finally:
        av.logging.set_level(level)
        av.logging.set_skip_repeated(skip_repeated)


def check_mp4(data: bytes) -> Mp4Check:
    """Decode every frame of ``data`` (an mp4 file's bytes) and report count, size and errors.

    Never raises on bad video: unopenable files, missing video streams and decoder errors all
    land in ``Mp4Check.errors``.
    """
    result = Mp4Check()
    with _capture_ffmpeg_errors() as logs:
        try:
            with av.open(io.BytesIO(data), mode="r") as container:
                if not container.streams.video:
                    result.errors.append("no video stream")
                    return result
                stream = container.streams.video[0]
                result.width, result.height = stream.codec_context.width, stream.codec_context.height
                result.fps = float(stream.average_rate or 0)
                for _ in container.decode(stream):
                    result.num_frames += 1
        except (av.error.FFmpegError, OSError, ValueError) as err:
            result.errors.append(f"{type(err).__name__}: {err}")
    result.errors += [f"{name}: {message.strip()}" for level, name, message in logs if level <= av.logging.ERROR]
    return result


def frames_at(data: bytes, indices: list[int], *, height: int | None = None) -> dict[int, np.ndarray]:
    """RGB frames ``uint8 [H, W, 3]`` of ``data`` at the given 0-based frame indices.

    Decoding stops after the largest index. With ``height``, frames are scaled to that many
    rows, width keeping the aspect ratio (rounded to even). Indices past the end are absent
    from the result.

    Raises:
        av.error.FFmpegError: the mp4 cannot be opened or decoded.
    """
    wanted = set(indices)
    last = max(wanted, default=-1)
    found: dict[int, np.ndarray] = {}
    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.video[0]
        for i, frame in enumerate(container.decode(stream)):
            if i > last:
                break
            if i in wanted:
                if height is not None:
                    width = max(2, round(frame.width * height / frame.height / 2) * 2)
                    frame = frame.reformat(width=width, height=height)
                found[i] = frame.to_ndarray(format="rgb24")
    return found
