"""Synthetic edits cut from real footage, with cut frames known by construction.

:func:`build`: five segments from single shots of the bundled films (shot ranges found by eye
and by TransNetV2 on the originals), scaled to one size and joined by hard cuts and one
cross-dissolve. Used to measure shot-detection precision and recall at ±2 frames.

:func:`build_montage`: a fast-cut montage of 35 segments (34 hard cuts) at 29.97 fps, many of
them shorter than a second and several in a row, as trailers and action scenes are edited.
Consecutive segments come from different films.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from multishot.pipeline.decode import iter_frames, probe

FOOTAGE = Path(__file__).resolve().parents[3] / "shared" / "footage"

#: (file, first source frame, frames): each range lies inside one shot of its film
SEGMENTS = [
    ("archive/tos_excerpt_64s_512x120_fmp4.mp4", 500, 60),
    ("archive/bbb_first60s_360p.mp4", 600, 60),
    ("archive/sintel_film_excerpt_26s.mp4", 130, 60),
    ("archive/tos_excerpt_64s_512x120_fmp4.mp4", 100, 60),
    ("archive/bbb_first60s_360p.mp4", 390, 60),
]
#: transition before segment i (i >= 1): 0 = hard cut, n > 0 = cross-dissolve of n frames
TRANSITIONS = [0, 0, 10, 0]
FPS = 24
SIZE = (320, 180)

#: shots of the films (source frames, from TransNetV2 on the originals) the montage cycles through
MONTAGE_SOURCES = [
    ("archive/tos_excerpt_64s_512x120_fmp4.mp4", [(100, 200), (210, 320), (330, 478)]),
    ("archive/bbb_first60s_360p.mp4", [(60, 283), (287, 376), (380, 551)]),
    ("archive/sintel_film_excerpt_26s.mp4", [(2, 74), (123, 317), (321, 455)]),
    ("archive/sintel_trailer_480p.mp4", [(125, 190), (336, 394), (422, 491), (573, 619), (794, 900)]),
]
#: frames of each montage segment: at 29.97 fps every one under 30 frames is under a second
MONTAGE_LENGTHS = [40, 18, 22, 45, 12, 26, 15, 50, 20, 24, 36, 14, 28, 16, 60, 25, 19, 33,
                   21, 13, 48, 27, 17, 23, 40, 15, 29, 18, 55, 22, 26, 35, 14, 20, 45]
MONTAGE_FPS = Fraction(30000, 1001)


@dataclass(frozen=True)
class SyntheticEdit:
    path: Path
    num_frames: int
    hard_cuts: list[int]  # first frame of the new shot
    dissolves: list[tuple[int, int]]  # [start, end) frames of each cross-dissolve

    @property
    def boundaries(self) -> list[float]:
        """Where each shot change is: the hard cut frame, or a dissolve's middle."""
        return sorted([float(c) for c in self.hard_cuts] + [(a + b) / 2 for a, b in self.dissolves])


def _segment(file: str, start: int, count: int) -> np.ndarray:
    path = str(FOOTAGE / file)
    info = probe(path)
    wanted = np.arange(start, start + count)
    frames = [f for _, f in iter_frames(path, fps=info.fps, width=SIZE[0], height=SIZE[1], wanted=wanted)]
    assert len(frames) == count, (file, len(frames))
    return np.stack(frames)


def build(out_dir: Path) -> SyntheticEdit:
    """Write ``synthetic_edit.mp4`` (H.264, 320×180, 24 fps) into ``out_dir``; return its truth."""
    timeline: list[np.ndarray] = []
    hard_cuts, dissolves = [], []
    for i, (file, start, count) in enumerate(SEGMENTS):
        seg = list(_segment(file, start, count))
        if i and TRANSITIONS[i - 1]:
            n = TRANSITIONS[i - 1]
            at = len(timeline) - n
            for j in range(n):
                alpha = (j + 1) / (n + 1)
                timeline[at + j] = ((1 - alpha) * timeline[at + j] + alpha * seg[j]).astype(np.uint8)
            dissolves.append((at, at + n))
            seg = seg[n:]
        elif i:
            hard_cuts.append(len(timeline))
        timeline.extend(seg)
    path = out_dir / "synthetic_edit.mp4"
    _write(timeline, path, FPS)
    return SyntheticEdit(path, len(timeline), hard_cuts, dissolves)


def montage_segments() -> list[tuple[str, int, int]]:
    """``(file, first source frame, frames)`` of each montage segment: the films in turn, from
    the film's shot with the most frames left, starting where that shot's previous segment ended."""
    left = [list(shots) for _, shots in MONTAGE_SOURCES]  # unused (start, end) of each shot
    segments = []
    for i, length in enumerate(MONTAGE_LENGTHS):
        f = i % len(MONTAGE_SOURCES)
        s = max(range(len(left[f])), key=lambda k: left[f][k][1] - left[f][k][0])
        start, end = left[f][s]
        assert start + length <= end, (MONTAGE_SOURCES[f][0], start, end, length)
        left[f][s] = (start + length, end)
        segments.append((MONTAGE_SOURCES[f][0], start, length))
    return segments


def build_montage(out_dir: Path) -> SyntheticEdit:
    """Write ``montage.mp4`` (H.264, 320×180, 29.97 fps) into ``out_dir``; return its truth.

    Each film is decoded once, up to its last segment.
    """
    segments = montage_segments()
    frames: dict[tuple[str, int], np.ndarray] = {}
    for file in {f for f, _, _ in segments}:
        path = str(FOOTAGE / file)
        wanted = np.array(sorted({s + k for f, s, n in segments if f == file for k in range(n)}))
        for index, frame in iter_frames(path, fps=probe(path).fps, width=SIZE[0], height=SIZE[1], wanted=wanted):
            frames[(file, index)] = frame
    timeline, cuts = [], []
    for file, start, length in segments:
        if timeline:
            cuts.append(len(timeline))
        timeline.extend(frames[(file, start + k)] for k in range(length))
    path = out_dir / "montage.mp4"
    _write(timeline, path, MONTAGE_FPS)
    return SyntheticEdit(path, len(timeline), cuts, [])


def _write(timeline: list[np.ndarray], path: Path, fps: int | Fraction) -> None:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = SIZE[0], SIZE[1], "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        for frame in timeline:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())
