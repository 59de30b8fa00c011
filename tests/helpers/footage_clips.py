"""Short clips cut from the real footage with PyAV, for pipeline tests that must stay quick."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

from multishot.pipeline.decode import iter_frames, probe

FOOTAGE = Path(__file__).resolve().parents[3] / "shared" / "footage"


def cut_clip(src: Path, start_s: float, seconds: float, dst: Path) -> Path:
    """Re-encode ``seconds`` of ``src`` from ``start_s`` (its size and frame rate) into ``dst``."""
    info = probe(str(src))
    wanted = np.arange(int(start_s * info.fps), int((start_s + seconds) * info.fps))
    dst.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(dst), "w") as out:
        stream = out.add_stream("libx264", rate=round(info.fps))
        stream.width, stream.height, stream.pix_fmt = info.width, info.height, "yuv420p"
        stream.options = {"crf": "20", "preset": "veryfast"}
        for _, frame in iter_frames(str(src), fps=info.fps, wanted=wanted):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())
    return dst


def join_clips(parts: list[tuple[str, float, float]], dst: Path, size: tuple[int, int], fps: int = 24,
               preset: str = "veryfast") -> Path:
    """Write ``(footage file under archive/, start second, seconds)`` parts one after another,
    each scaled to ``size`` (w, h), as one H.264 video at ``fps`` in ``dst`` (a long input made
    from the real footage: the joins are hard cuts; upscaling gives a 1080p copy)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(dst), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.options = {"crf": "20", "preset": preset}
        for name, start_s, seconds in parts:
            src = str(FOOTAGE / "archive" / name)
            info = probe(src)
            wanted = np.arange(int(start_s * info.fps), int((start_s + seconds) * info.fps))
            for _, frame in iter_frames(src, fps=info.fps, width=size[0], height=size[1], wanted=wanted):
                out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())
    return dst
