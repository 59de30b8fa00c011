"""An edit of the bundled footage with everything an editor would not sign off, and its ground truth.

:func:`build` writes three H.264 videos (320×180, 24 fps) made with PyAV and numpy at test time:

* ``edit.mp4`` (about 28 s): single shots of Big Buck Bunny and Sintel (the Sintel film excerpt's
  letterbox bars cut off first) joined by a fade-in from black, cross-dissolves of 0.5, 1 and 2 s,
  a fade to black and back, hard cuts, a title card (white text on a near-black card), a shot
  with lower-third text over the picture and a shot with a title over the picture. Its truth:
  every shot's frames, which carry text, every gradual transition's span.
* ``letterbox.mp4`` / ``pillarbox.mp4`` (6 s each): one shot with black bars of 32 px top and
  bottom / 40 px left and right; truth: the active area in pixels.

:func:`build_static` writes ``static.mp4`` (640×360, 24 fps, about 19 s; issue 34): the bundled
footage's slowest moving shots (by ``pipeline.motion``'s score on the demo run) and a fast one,
cut hard against a held frame (a real frame of Big Buck Bunny, held 3 s) and a title card (text
on a static background, 3 s); its truth: each shot's frames and whether it moves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import av
import cv2
import numpy as np

from multishot.pipeline.decode import iter_frames, probe

FOOTAGE = Path(__file__).resolve().parents[3] / "shared" / "footage" / "archive"
FPS = 24
SIZE = (320, 180)
BBB, TRAILER, EXCERPT = "bbb_first60s_360p.mp4", "sintel_trailer_480p.mp4", "sintel_film_excerpt_26s.mp4"
TOS = "tos_excerpt_64s_512x120_fmp4.mp4"
#: rows of the Sintel film excerpt's picture (its bars cut off before scaling)
EXCERPT_ROWS = (60, 420)


@dataclass
class Truth:
    """Frames of ``edit.mp4``: each shot ``(start, end, label, text)`` half-open, and each gradual
    transition ``(start, end)`` half-open: the frames that are neither shot's alone."""

    num_frames: int = 0
    shots: list[tuple[int, int, str, bool]] = field(default_factory=list)
    gradual: list[tuple[int, int]] = field(default_factory=list)


@dataclass(frozen=True)
class QualityEdit:
    edit: Path
    truth: Truth
    letterbox: Path
    pillarbox: Path
    letterbox_area: tuple[int, int, int, int]  # (x0, y0, x1, y1) px of the picture
    pillarbox_area: tuple[int, int, int, int]


def _frames(name: str, start: int, count: int, size: tuple[int, int] = SIZE) -> list[np.ndarray]:
    path = str(FOOTAGE / name)
    info = probe(path)
    wanted = np.arange(start, start + count)
    if name == EXCERPT:  # cut the bars off, then scale
        out = [f for _, f in iter_frames(path, fps=info.fps, wanted=wanted)]
        out = [cv2.resize(f[EXCERPT_ROWS[0]:EXCERPT_ROWS[1]], size, interpolation=cv2.INTER_AREA) for f in out]
    else:
        out = [f for _, f in iter_frames(path, fps=info.fps, width=size[0], height=size[1], wanted=wanted)]
    assert len(out) == count, (name, start, len(out))
    return out


def _text(frame: np.ndarray, text: str, scale: float, y: float, band: bool = False) -> np.ndarray:
    """``frame`` with ``text`` in white, centred horizontally, its baseline at ``y`` (fraction of
    the height); ``band``: on a dark band (a lower third)."""
    frame = frame.copy()
    font = cv2.FONT_HERSHEY_DUPLEX
    (w, h), base = cv2.getTextSize(text, font, scale, 2)
    x, yb = (frame.shape[1] - w) // 2, int(y * frame.shape[0])
    if band:
        frame[yb - h - 8 : yb + base + 6] = (frame[yb - h - 8 : yb + base + 6] * 0.3).astype(np.uint8)
    cv2.putText(frame, text, (x, yb), font, scale, (255, 255, 255), 2, cv2.LINE_AA)
    return frame


class _Timeline:
    def __init__(self):
        self.frames: list[np.ndarray] = []
        self.truth = Truth()

    def shot(self, frames: list[np.ndarray], label: str, text: bool = False, dissolve: int = 0) -> None:
        """Append a shot; ``dissolve`` > 0: its first frames cross-dissolve with the last ones
        already there (a transition of that many frames)."""
        if dissolve:
            at = len(self.frames) - dissolve
            for j in range(dissolve):
                alpha = (j + 1) / (dissolve + 1)
                self.frames[at + j] = ((1 - alpha) * self.frames[at + j] + alpha * frames[j]).astype(np.uint8)
            self.truth.gradual.append((at, at + dissolve))
            s0, e0, l0, t0 = self.truth.shots[-1]
            self.truth.shots[-1] = (s0, at, l0, t0)
            frames = frames[dissolve:]
        start = len(self.frames)
        self.frames += frames
        self.truth.shots.append((start if not dissolve else start - 0, len(self.frames), label, text))

    def fade_out(self, frames: int, black: int) -> int:
        """Fade the last ``frames`` frames to black, then ``black`` black frames; returns where
        the fade starts (the last shot ends there)."""
        at = len(self.frames) - frames
        for j in range(frames):
            self.frames[at + j] = (self.frames[at + j] * (1 - (j + 1) / (frames + 1))).astype(np.uint8)
        self.frames += [np.zeros_like(self.frames[0])] * black
        s0, _, l0, t0 = self.truth.shots[-1]
        self.truth.shots[-1] = (s0, at, l0, t0)
        return at

    def fade_in(self, frames: list[np.ndarray], ramp: int, label: str, since: int) -> None:
        """A shot whose first ``ramp`` frames fade in from black; the gradual transition runs from
        ``since`` (where black or a fade out began) to the end of the ramp."""
        for j in range(ramp):
            frames[j] = (frames[j] * ((j + 1) / (ramp + 1))).astype(np.uint8)
        self.frames += frames
        self.truth.gradual.append((since, len(self.frames) - len(frames) + ramp))
        self.truth.shots.append((len(self.frames) - len(frames) + ramp, len(self.frames), label, False))


def _write(frames: list[np.ndarray], path: Path) -> Path:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        for frame in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        out.mux(stream.encode())
    return path


def _boxed(frames: list[np.ndarray], area: tuple[int, int, int, int]) -> list[np.ndarray]:
    """Each frame scaled into ``area`` (x0, y0, x1, y1) of a black 320×180 frame."""
    x0, y0, x1, y1 = area
    out = []
    for f in frames:
        canvas = np.zeros((SIZE[1], SIZE[0], 3), np.uint8)
        canvas[y0:y1, x0:x1] = cv2.resize(f, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA)
        out.append(canvas)
    return out


def build(out_dir: Path) -> QualityEdit:
    """Write the three videos into ``out_dir`` (made if missing); return them with their truth."""
    out_dir.mkdir(parents=True, exist_ok=True)
    t = _Timeline()
    black = np.zeros((SIZE[1], SIZE[0], 3), np.uint8)
    # 0.5 s of black, then a 0.5 s fade-in into Big Buck Bunny's meadow
    t.frames += [black] * 12
    t.fade_in(_frames(BBB, 100, 72), 12, "bbb_meadow", since=0)
    t.shot(_frames(EXCERPT, 140, 58), "excerpt_snow", dissolve=24)  # 1 s cross-dissolve
    card = np.full((SIZE[1], SIZE[0], 3), (18, 16, 24), np.uint8)
    t.shot([_text(card, "THE END", 1.2, 0.55)] * 40, "title_card", text=True)  # hard cut
    t.shot([_text(f, "Director Jane Smith", 0.6, 0.88, band=True) for f in _frames(BBB, 290, 50)],
           "lower_third", text=True)
    t.shot(_frames(EXCERPT, 230, 62), "excerpt_a")
    t.shot(_frames(BBB, 390, 80), "bbb_tree", dissolve=12)  # 0.5 s cross-dissolve
    since = t.fade_out(24, 12)  # 1 s fade to black, 0.5 s black
    t.fade_in(_frames(EXCERPT, 322, 132), 24, "excerpt_b", since=since)  # 1 s fade in
    t.shot(_frames(BBB, 1150, 66 + 48), "bbb_c", dissolve=48)  # 2 s cross-dissolve
    t.shot(_frames(TRAILER, 125, 64), "trailer_d")  # hard cut
    t.shot([_text(f, "BIG TITLE", 1.4, 0.5) for f in _frames(BBB, 1350, 48)], "title_over_picture", text=True)
    t.truth.num_frames = len(t.frames)
    edit = _write(t.frames, out_dir / "edit.mp4")

    clip = _frames(BBB, 120, 144)
    letter, pillar = (0, 32, 320, 148), (40, 0, 280, 180)
    letterbox = _write(_boxed(clip, letter), out_dir / "letterbox.mp4")
    pillarbox = _write(_boxed(clip, pillar), out_dir / "pillarbox.mp4")
    return QualityEdit(edit, t.truth, letterbox, pillarbox, letter, pillar)


def build_static(out_dir: Path) -> tuple[Path, list[tuple[int, int, str, bool]]]:
    """Write ``static.mp4`` into ``out_dir`` (made if missing); return it with its shots
    ``(start, end, label, moves)`` (half-open frames, hard cuts between them)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    size = (640, 360)
    shots = [
        # Big Buck Bunny's stream, 12-15.5 s: water and a slow drift (0.0053 on the demo run,
        # the slowest moving shot of the bundled footage)
        (_frames(BBB, 288, 84, size), "bbb_stream", True),
        # a frame of the meadow shot, held 3 s
        (_frames(BBB, 100, 1, size) * 72, "held_frame", False),
        # Tears of Steel, two people talking on a bridge (static camera, 0.0105 on the demo run)
        (_frames(TOS, 504, 120, size), "tos_bridge", True),
        # a title card: text on a static background
        ([_text(np.full((size[1], size[0], 3), (52, 64, 110), np.uint8), "CHAPTER ONE", 2.0, 0.55)] * 72,
         "title_card", False),
        # the Sintel film excerpt's chase: fast
        (_frames(EXCERPT, 140, 96, size), "excerpt_fast", True),
    ]
    frames, truth = [], []
    for shot, label, moves in shots:
        truth.append((len(frames), len(frames) + len(shot), label, moves))
        frames += shot
    return _write(frames, out_dir / "static.mp4"), truth
