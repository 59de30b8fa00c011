"""A synthetic edit cut from real footage, with cut frames known by construction.

Five segments from single shots of the bundled films (shot ranges found by eye and by
TransNetV2 on the originals), scaled to one size and joined by hard cuts and one
cross-dissolve. Used to measure shot-detection precision and recall at ±2 frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from multishot.pipeline.video import iter_frames, probe

FOOTAGE = Path(__file__).resolve().parents[2] / "shared" / "footage"

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
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = SIZE[0], SIZE[1], "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        for frame in timeline:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())
    return SyntheticEdit(path, len(timeline), hard_cuts, dissolves)
