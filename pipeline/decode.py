"""Decoding source videos with PyAV: probing, and frame iteration on a time grid that survives damage.

Every stage that reads a source decodes it through :func:`iter_grid`, so all stages agree on
what "source frame ``i``" means: **the picture on screen at time ``i / fps``** of the main video
stream, ``fps`` being the stream's grid rate (:func:`grid_rate`). Each decoded frame is placed at
grid slot ``round((pts - start) · time_base · fps)`` and stays on screen until the next decoded
frame's slot, so a variable-frame-rate file is resampled by presentation time: frames of a fast
stretch that share a slot are dropped (the first is kept), a slow stretch's frame is repeated.
A constant-rate file maps one frame to one slot, as before.

Damage is told apart from variable frame rate: slots that are empty because packets in between
failed to decode (zeroed or truncated data) are filled with the last good frame and flagged as
*substituted*; slots empty only because the stream's timestamps leave them empty are not.

Which stream (:func:`main_stream`): the video stream that is not an attached picture (cover
art) with the most frames, then the largest picture; its index is kept in :class:`VideoInfo`.
Rotation: the display matrix (phone footage) is applied to every frame, so frames come out as
they are meant to be shown (rotation by multiples of 90°; flips are not applied).

Decoding is **single-threaded**: with frame threads, H.264 error concealment of a damaged file
depends on thread timing, so the same file decoded twice gave different pixels (and shards).
Parallelism comes from decoding several videos side by side.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import av
import av.codec.hwaccel
import numpy as np
import pyarrow.fs as pafs



class ProbeError(Exception):
    """The file cannot be opened as a video or has no decodable video stream."""


@dataclass(frozen=True)
class VideoInfo:
    """What a probe finds about the main video stream, from the container and its first frame.

    ``fps`` is the grid rate (:func:`grid_rate`); ``duration_s`` is the container's claim for the
    stream (seconds); ``num_frames`` is the grid slots it spans, ``round(duration_s * fps)``, or
    the container's frame count when it gives no duration. ``width``/``height``
    are the coded size (px); ``rotation`` is the display matrix's counter-clockwise rotation in
    degrees (0, 90, 180 or -90); ``stream_index`` is the container's index of the stream used.
    """

    duration_s: float
    fps: float
    num_frames: int
    width: int
    height: int
    codec: str
    sample_aspect: float = 1.0  # pixel width / height (anamorphic sources differ from 1)
    rotation: int = 0
    stream_index: int = 0

    @property
    def display_width(self) -> int:
        """Width (px) the frame is shown at: pixel aspect applied, then the rotation."""
        return self.height if self.rotation % 180 else round(self.width * self.sample_aspect)

    @property
    def display_height(self) -> int:
        """Height (px) the frame is shown at: pixel aspect applied, then the rotation."""
        return round(self.width * self.sample_aspect) if self.rotation % 180 else self.height


@dataclass
class DecodeStats:
    """Filled while :func:`iter_grid` runs: how far decoding got and what it skipped.

    ``frames``: decoded frames placed on the grid; ``errors``: packets that failed to decode;
    ``substituted``: grid slots (source frames) filled from the previous frame because of damage;
    ``last_time_s``: presentation time (s) of the last decoded frame; ``decoder``: what decoded
    the pass, ``"cpu"`` (libavcodec) or ``"nvdec"`` (the GPU's decoder, :mod:`pipeline.decode_gpu`);
    ``note``: why a pass that was to run on the GPU's decoder did not.
    """

    frames: int = 0
    errors: int = 0
    last_error: str = ""
    last_time_s: float = 0.0
    substituted: int = 0
    decoder: str = "cpu"
    note: str = ""


def open_container(
    source: str, fs: pafs.FileSystem | None = None, hwaccel: av.codec.hwaccel.HWAccel | None = None
) -> av.container.InputContainer:
    """Open ``source`` (local path, or a path on ``fs``) for demuxing; ``hwaccel`` decodes on a
    hardware device (:mod:`pipeline.decode_gpu`).

    Raises:
        ProbeError: the file cannot be opened or holds no video stream.
    """
    try:
        if fs is None or isinstance(fs, pafs.LocalFileSystem):
            container = av.open(source, mode="r", hwaccel=hwaccel)
        else:
            container = av.open(fs.open_input_file(source), mode="r", hwaccel=hwaccel)
    except (av.error.FFmpegError, OSError, ValueError) as err:
        raise ProbeError(f"cannot open: {err}") from err
    if not container.streams.video:
        container.close()
        raise ProbeError("no video stream")
    return container


def _duration_s(stream: av.video.stream.VideoStream, container: av.container.InputContainer) -> float:
    """The stream's duration (s): its own, Matroska's per-stream DURATION tag, else the container's."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    tag = stream.metadata.get("DURATION", "")
    try:
        h, m, sec = tag.split(":")
        return int(h) * 3600 + int(m) * 60 + float(sec)
    except ValueError:
        pass
    if container.duration is not None:
        return container.duration / av.time_base
    return 0.0


def main_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    """The footage: of the video streams that are not attached pictures (cover art), the one
    spanning the most frames (duration × :func:`grid_rate`, else the container's frame count),
    then the largest picture, then the first.

    Raises:
        ProbeError: every video stream is an attached picture.
    """
    streams = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    if not streams:
        raise ProbeError("no video stream besides attached pictures (cover art)")

    def size(s: av.video.stream.VideoStream) -> tuple:
        frames = round(_duration_s(s, container) * grid_rate(s)) or s.frames
        return frames, s.codec_context.width * s.codec_context.height, -s.index

    return max(streams, key=size)


def grid_rate(stream: av.video.stream.VideoStream) -> float:
    """The rate (frames/s) of a stream's source-frame grid: the lower of its average rate and
    its base rate (``r_frame_rate``, the rate all its timestamps fit).

    The average counts container ticks in files that store variable frame rate as skipped
    ticks (an AVI with a 1/600 s tick reports 600 fps for 24 fps footage), so it alone would
    make a grid of mostly repeated frames. Returns 0 when neither is known.
    """
    rates = [float(r) for r in (stream.average_rate, stream.guessed_rate) if r]
    return min(rates) if rates else 0.0


def quarter_turns(frame: av.VideoFrame) -> int:
    """Counter-clockwise quarter turns that show ``frame`` upright (its display matrix)."""
    try:
        return round(frame.rotation / 90) % 4
    except (TypeError, ValueError):  # no display matrix
        return 0


def probe(source: str, fs: pafs.FileSystem | None = None) -> VideoInfo:
    """Facts about the main video stream of ``source`` (:func:`main_stream`); decodes one frame
    to prove the stream is readable and to read its rotation.

    Raises:
        ProbeError: unopenable, no video stream, unknown frame rate, or no decodable frame.
    """
    with open_container(source, fs) as container:
        stream = main_stream(container)
        fps = grid_rate(stream)
        if not fps:
            raise ProbeError("unknown frame rate")
        duration = _duration_s(stream, container)
        num_frames = int(round(duration * fps)) if duration else stream.frames
        sar = stream.codec_context.sample_aspect_ratio
        try:
            first = next(container.decode(stream))
        except (av.error.FFmpegError, StopIteration) as err:
            raise ProbeError(f"no decodable frame: {err!r}") from err
        turns = quarter_turns(first)
        return VideoInfo(
            duration_s=duration,
            fps=fps,
            num_frames=num_frames,
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            codec=stream.codec_context.name,
            sample_aspect=float(sar) if sar else 1.0,
            rotation=(turns * 90 + 180) % 360 - 180,
            stream_index=stream.index,
        )


def frame_image(frame: av.VideoFrame, width: int | None, height: int | None) -> np.ndarray:
    """RGB uint8 ``[H, W, 3]`` of ``frame`` shown upright, scaled to ``width × height`` if given."""
    turns = quarter_turns(frame)
    if width is not None and height is not None:
        w, h = (height, width) if turns % 2 else (width, height)  # scale before turning
        image = frame.reformat(width=w, height=h, format="rgb24", interpolation="AREA").to_ndarray()
    else:
        image = frame.to_ndarray(format="rgb24")
    return np.ascontiguousarray(np.rot90(image, turns)) if turns else image


def iter_grid(
    source: str,
    fs: pafs.FileSystem | None = None,
    *,
    fps: float,
    width: int | None = None,
    height: int | None = None,
    wanted: np.ndarray | None = None,
    stats: DecodeStats | None = None,
    start_frame: int = 0,
    end_frame: int | None = None,
) -> Iterator[tuple[int, np.ndarray, bool]]:
    """Yield ``(source_frame_index, rgb uint8 [H, W, 3], substituted)`` for every grid slot.

    Slots run from ``start_frame`` to the last decoded frame's slot (or ``end_frame - 1``)
    without holes (the grid rule is in the module docstring); ``substituted`` is True where the
    slot's own picture was lost to damage. The yielded arrays are shared between slots showing
    the same frame: do not modify them.

    Args:
        fps: the grid's rate (:attr:`VideoInfo.fps`, from :func:`probe`).
        width, height: scale every yielded frame (after rotation) to this size (libswscale,
            area filter); ``None`` keeps the source size.
        wanted: sorted source frame indices to yield; others are decoded but not converted
            (cheap), and decoding stops once the last wanted index is known.
        stats: filled with frames seen, decoding errors skipped, substituted slots, last time.
        start_frame, end_frame: the source frames ``[start_frame, end_frame)`` to yield
            (``None``: to the end); a start past 0 seeks (:func:`iter_slots`).
    """
    for slot, frame, substituted, image in _iter_images(
        source, fs, fps=fps, stats=stats, start_frame=start_frame, end_frame=end_frame, wanted=wanted
    ):
        yield slot, image(width, height), substituted


def _iter_images(source, fs, *, fps, stats, start_frame, end_frame, wanted):
    """:func:`iter_slots` with a per-frame converter ``image(width, height)`` that converts
    the slot's frame once per size, however many slots show it."""
    cache: dict = {}
    shown = None
    for slot, frame, substituted in iter_slots(
        source, fs, fps=fps, stats=stats, start_frame=start_frame, end_frame=end_frame, wanted=wanted
    ):
        if frame is not shown:
            shown, cache = frame, {}

        def image(width: int | None, height: int | None, frame=frame, cache=cache) -> np.ndarray:
            if (width, height) not in cache:
                cache[(width, height)] = frame_image(frame, width, height)
            return cache[(width, height)]

        yield slot, frame, substituted, image


#: how far before a segment's first frame a seek aims (s): containers seek to the keyframe at
#: or before the target by timestamp, and a late landing is retried from further back
SEEK_MARGIN_S = (1.0, 10.0, None)


def iter_slots(
    source: str,
    fs: pafs.FileSystem | None = None,
    *,
    fps: float,
    stats: DecodeStats | None = None,
    start_frame: int = 0,
    end_frame: int | None = None,
    wanted: np.ndarray | None = None,
    hwaccel: av.codec.hwaccel.HWAccel | None = None,
    decoder: Callable[[av.video.stream.VideoStream], Callable[[av.Packet], list[av.VideoFrame]]] | None = None,
) -> Iterator[tuple[int, av.VideoFrame, bool]]:
    """Yield ``(source_frame_index, decoded frame, substituted)`` for the grid slots
    ``[start_frame, end_frame)`` (the rule of :func:`iter_grid`, without converting pixels).

    A ``start_frame`` past 0 seeks to the keyframe at or before it (less
    :data:`SEEK_MARGIN_S`), decodes from there and yields from ``start_frame`` on, so a segment
    shows the same pictures as a decode from the start (tested on H.264 in MP4, fragmented MP4
    and Matroska). If a seek lands after ``start_frame`` it is retried from further back, at
    last from the start of the file. Frames decoded before ``start_frame`` are not counted in
    ``stats``. ``hwaccel`` decodes on a hardware device (PyAV's ``HWAccel``; the GPU frame
    source, :mod:`pipeline.decode_gpu`): the slots come from the demuxer's timestamps all the same.
    ``decoder`` replaces the stream's own decoder: called with the stream once, it returns the
    function decoding one of its packets (the GPU source's NVDEC decoder opened by name).
    """
    stats = stats if stats is not None else DecodeStats()
    last = end_frame - 1 if end_frame is not None else None
    if wanted is not None:
        last = min(last, int(wanted[-1])) if last is not None else (int(wanted[-1]) if len(wanted) else -1)
    wanted_set = set(int(i) for i in wanted) if wanted is not None else None
    held: av.VideoFrame | None = None  # the frame on screen, from slot `held_slot` on
    held_slot = -1

    def flush(first: int, until: int, damaged: bool, own: bool = True) -> Iterator[tuple[int, av.VideoFrame, bool]]:
        """Yield the held frame for slots ``[first, until)``. When ``damaged``, every slot but
        the frame's own (``first``, if ``own``) is substituted."""
        for slot in range(max(first, start_frame), until if last is None else min(until, last + 1)):
            substituted = damaged and (slot > first or not own)
            stats.substituted += substituted
            if wanted_set is None or slot in wanted_set:
                yield slot, held, substituted

    with open_container(source, fs, hwaccel) as container:
        stream = main_stream(container)
        stream.codec_context.thread_count = 1  # deterministic pixels on damaged input (see top)
        time_base = float(stream.time_base)
        start = stream.start_time or 0
        decode = decoder(stream) if decoder is not None else av.Packet.decode
        if start_frame > 0:
            _seek(container, stream, start_frame, fps)
        # slots of packets that failed to decode: a hole around one is damage, not frame rate
        # (by timestamp, as the decoder outputs the frames around a hole late, after the errors)
        lost: list[int] = []
        for packet in container.demux(stream):
            try:
                frames = decode(packet)
            except av.error.FFmpegError as err:
                stats.errors += 1
                stats.last_error = str(err)
                ts = packet.pts if packet.pts is not None else packet.dts
                lost.append(held_slot + 1 if ts is None else int(round((ts - start) * time_base * fps)))
                continue
            for frame in frames:
                if frame.pts is None:
                    continue
                t = (frame.pts - start) * time_base
                slot = int(round(t * fps))
                if slot <= held_slot or slot < 0:
                    continue  # a fast stretch: this slot already shows an earlier frame
                if slot >= start_frame:
                    stats.frames += 1
                    stats.last_time_s = t
                damaged = any(held_slot < x < slot for x in lost)
                lost = [x for x in lost if x > slot]
                if held is None:
                    # slots before the first frame show it (an offset start, or leading damage)
                    held = frame
                    yield from flush(0, slot, damaged, own=False)
                else:
                    yield from flush(held_slot, slot, damaged)
                held, held_slot = frame, slot
                if last is not None and held_slot > last:
                    return
        if held is not None:
            yield from flush(held_slot, held_slot + 1, False)


def _seek(container: av.container.InputContainer, stream: av.video.stream.VideoStream, frame: int, fps: float) -> None:
    """Seek ``container`` so that decoding starts at a keyframe whose slot is at most ``frame``:
    peeks at the first decoded frame after each try and backs off (:data:`SEEK_MARGIN_S`)."""
    time_base = float(stream.time_base)
    start = stream.start_time or 0
    for margin in SEEK_MARGIN_S:
        target = 0 if margin is None else max(0.0, frame / fps - margin)
        container.seek(start + int(target / time_base), stream=stream, backward=True, any_frame=False)
        if margin is None:
            return
        first = None
        for packet in container.demux(stream):
            if packet.pts is not None and packet.is_keyframe:
                first = packet.pts
                break
        if first is not None and int(round((first - start) * time_base * fps)) <= frame:
            container.seek(start + int(target / time_base), stream=stream, backward=True, any_frame=False)
            return


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
    """:func:`iter_grid` without the substituted flag: ``(source_frame_index, rgb [H, W, 3])``."""
    for index, image, _ in iter_grid(source, fs, fps=fps, width=width, height=height, wanted=wanted, stats=stats):
        yield index, image


def analysis_size(info: VideoInfo, short_side: int) -> tuple[int, int]:
    """``(width, height)`` (px) of the fixed analysis scale for a video: its display size scaled
    so the shorter side is ``short_side`` (up or down), both sides even. The same film at any
    resolution gives the same size, so scores measured at it do not depend on the copy."""
    w, h = info.display_width, info.display_height
    scale = short_side / min(w, h)
    return max(2, 2 * round(w * scale / 2)), max(2, 2 * round(h * scale / 2))


def iter_scan_frames(
    source: str,
    fs: pafs.FileSystem | None = None,
    *,
    fps: float,
    start_frame: int,
    end_frame: int | None,
    detect_size: tuple[int, int],
    analysis_size: tuple[int, int],
    is_candidate: Callable[[int], bool],
    stats: DecodeStats | None = None,
) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
    """The CPU frame source of a segment scan (the contract is
    :class:`multishot.pipeline.scan.FrameSource`): one sequential PyAV decode of the source
    frames ``[start_frame, end_frame)`` on the grid of :func:`iter_grid`, yielding
    ``(source_frame_index, detector frame uint8 [h, w, 3] at detect_size (w, h),
    analysis frame uint8 [H, W, 3] at analysis_size (W, H) or None)``; the analysis frame is
    given where ``is_candidate(index)``. Both are RGB, upright, scaled by libswscale's area filter.
    """
    dw, dh = detect_size
    aw, ah = analysis_size
    for slot, _, _, image in _iter_images(source, fs, fps=fps, stats=stats, start_frame=start_frame,
                                          end_frame=end_frame, wanted=None):
        yield slot, image(dw, dh), (image(aw, ah) if is_candidate(slot) else None)
