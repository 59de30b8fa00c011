"""Writing generated frames as mp4 (H.264 through PyAV, as the pipeline's render stage does)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

#: x264 quality of generated videos (the render stage's default, visually lossless)
CRF = 18


def write_mp4(frames: np.ndarray, path: str | Path, fps: float) -> None:
    """Encode ``frames`` ``[F, H, W, 3]`` uint8 RGB at ``fps`` into ``path`` (yuv420p, x264).

    Raises:
        ValueError: not a ``[F, H, W, 3]`` uint8 array, or an odd width / height (yuv420p).
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be [F, H, W, 3] uint8, got {frames.shape} {frames.dtype}")
    if frames.shape[1] % 2 or frames.shape[2] % 2:
        raise ValueError(f"yuv420p needs an even size, got {frames.shape[2]}×{frames.shape[1]}")
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=rate, options={"crf": str(CRF)})
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts, frame.time_base = i, 1 / rate  # explicit timestamps for x264's rate control
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
