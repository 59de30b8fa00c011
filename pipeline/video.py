"""Decoding source videos with PyAV: probing, and frame iteration that survives damage.

Every stage that reads a source decodes it through :func:`iter_frames`, so all stages agree on
what "source frame ``i``" means: ``i = round((pts - start) * time_base * fps)``, the frame's
presentation time on the stream's nominal frame grid. Decoding errors inside a file (zeroed or
truncated data) are counted and skipped, so a damaged file is processed up to (and past) the
damage instead of failing the run.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import av
import numpy as np
import pyarrow.fs as pafs

log = logging.getLogger(__name__)


class ProbeError(Exception):
    """The file cannot be opened as a video or has no decodable video stream."""


@dataclass(frozen=True)
class VideoInfo:
    """What a probe finds: container facts, before any frame is decoded.

    ``duration_s`` is the container's claim (seconds); ``num_frames`` is ``round(duration_s * fps)``
    when the container reports no frame count (fragmented MP4 reports 0).
    """

    duration_s: float
    fps: float
    num_frames: int
    width: int
    height: int
    codec: str
    sample_aspect: float = 1.0  # pixel width / height (anamorphic sources differ from 1)

    @property
    def display_width(self) -> int:
        """Width (px) the frame is meant to be shown at: ``width * sample_aspect``."""
        return round(self.width * self.sample_aspect)


@dataclass
class DecodeStats:
    """Filled while :func:`iter_frames` runs: how far decoding got and what it skipped."""

    frames: int = 0
    errors: int = 0
    last_error: str = ""
    last_time_s: float = 0.0


def open_container(source: str, fs: pafs.FileSystem | None = None) -> av.container.InputContainer:
    """Open ``source`` (local path, or a path on ``fs``) for demuxing.

    Raises:
        ProbeError: the file cannot be opened or holds no video stream.
    """
    try:
        if fs is None or isinstance(fs, pafs.LocalFileSystem):
            container = av.open(source, mode="r")
        else:
            container = av.open(fs.open_input_file(source), mode="r")
    except (av.error.FFmpegError, OSError, ValueError) as err:
        raise ProbeError(f"cannot open: {err}") from err
    if not container.streams.video:
        container.close()
        raise ProbeError("no video stream")
    return container


def probe(source: str, fs: pafs.FileSystem | None = None) -> VideoInfo:
    """Container-level facts of ``source``; decodes one frame to prove the stream is readable.

    Raises:
        ProbeError: unopenable, no video stream, unknown frame rate, or no decodable frame.
    """
    with open_container(source, fs) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        if not rate:
            raise ProbeError("unknown frame rate")
        fps = float(rate)
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            duration = 0.0
        num_frames = stream.frames or int(round(duration * fps))
        sar = stream.codec_context.sample_aspect_ratio
        try:
            next(container.decode(stream))
        except (av.error.FFmpegError, StopIteration) as err:
            raise ProbeError(f"no decodable frame: {err!r}") from err
        return VideoInfo(
            duration_s=duration,
            fps=fps,
            num_frames=num_frames,
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            codec=stream.codec_context.name,
            sample_aspect=float(sar) if sar else 1.0,
        )


def iter_frames(
    source: str,
    fs: pafs.FileSystem | None = None,
    *,
    fps: float,
    width: int | None = None,
    height: int | None = None,
    wanted: np.ndarray | None = None,
    stats: DecodeStats | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(source_frame_index, rgb uint8 [H, W, 3])`` in presentation order.

    Args:
        fps: the stream's nominal frame rate (from :func:`probe`), defines frame indices.
        width, height: scale every yielded frame to this size (libswscale, area filter);
            ``None`` keeps the source size.
        wanted: sorted source frame indices to convert; other frames are decoded but not
            converted (cheap), and decoding stops after the last wanted index.
        stats: filled with frames seen, decoding errors skipped, and the last time reached.

    Decoding errors are skipped per packet (counted in ``stats``); a damaged file yields the
    frames that decode. Frames whose index repeats (duplicate timestamps) are dropped.
    """
    stats = stats if stats is not None else DecodeStats()
    last_wanted = int(wanted[-1]) if wanted is not None and len(wanted) else None
    wanted_set = set(int(i) for i in wanted) if wanted is not None else None
    with open_container(source, fs) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        time_base = float(stream.time_base)
        start = stream.start_time or 0
        previous = -1
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.error.FFmpegError as err:
                stats.errors += 1
                stats.last_error = str(err)
                continue
            for frame in frames:
                if frame.pts is None:
                    continue
                t = (frame.pts - start) * time_base
                index = int(round(t * fps))
                if index <= previous:
                    continue
                previous = index
                stats.frames += 1
                stats.last_time_s = t
                if last_wanted is not None and index > last_wanted:
                    return
                if wanted_set is not None and index not in wanted_set:
                    continue
                if width is not None and height is not None:
                    frame = frame.reformat(width=width, height=height, format="rgb24", interpolation="AREA")
                    yield index, frame.to_ndarray()
                else:
                    yield index, frame.to_ndarray(format="rgb24")
