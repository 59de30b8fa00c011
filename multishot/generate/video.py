"""Writing generated frames as mp4 (H.264 through PyAV, as the pipeline's render stage does)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

#: x264 quality of generated videos (visually lossless)
CRF = 18
#: x264 options besides the CRF: libx264's default preset without its macroblock tree, which
#: encoded the same frames to different bytes from run to run (pipeline/render.py), so a video
#: changes only when its frames do
X264_PARAMS = "mbtree=0"


class Mp4Writer:
    """An mp4 written as frames arrive (streaming generation): ``write`` batches of
    ``[F, H, W, 3]`` uint8 RGB frames of one size, then ``close`` (or use it as a context
    manager). The encoder opens on the first batch, which fixes the size.

    Raises (from ``write``):
        ValueError: not a ``[F, H, W, 3]`` uint8 array, an odd width / height (yuv420p), or a
            size other than the first batch's.
    """

    def __init__(self, path: str | Path, fps: float):
        self.path, self.rate = Path(path), Fraction(fps).limit_denominator(1001)
        self.container = None
        self.stream = None
        #: frames written so far
        self.frames = 0

    def write(self, frames: np.ndarray) -> None:
        import av  # here, not at module level: a stream that writes no mp4 needs no encoder

        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be [F, H, W, 3] uint8, got {frames.shape} {frames.dtype}")
        if frames.shape[1] % 2 or frames.shape[2] % 2:
            raise ValueError(f"yuv420p needs an even size, got {frames.shape[2]}×{frames.shape[1]}")
        if self.container is None:
            self.container = av.open(str(self.path), mode="w", format="mp4")
            self.stream = self.container.add_stream("libx264", rate=self.rate,
                                                    options={"crf": str(CRF), "x264-params": X264_PARAMS})
            self.stream.width, self.stream.height = frames.shape[2], frames.shape[1]
            self.stream.pix_fmt = "yuv420p"
        elif (frames.shape[1], frames.shape[2]) != (self.stream.height, self.stream.width):
            raise ValueError(f"frames of {frames.shape[2]}×{frames.shape[1]} after "
                             f"{self.stream.width}×{self.stream.height}")
        for rgb in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            # explicit timestamps for x264's rate control
            frame.pts, frame.time_base = self.frames, 1 / self.rate
            self.container.mux(self.stream.encode(frame))
            self.frames += 1

    def close(self) -> None:
        """Flush the encoder and finish the file (nothing is written without frames)."""
        if self.container is not None:
            self.container.mux(self.stream.encode())
            self.container.close()
            self.container = None

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_mp4(frames: np.ndarray, path: str | Path, fps: float) -> None:
    """Encode ``frames`` ``[F, H, W, 3]`` uint8 RGB at ``fps`` into ``path`` (yuv420p, x264).

    Raises:
        ValueError: not a ``[F, H, W, 3]`` uint8 array, or an odd width / height (yuv420p).
    """
    with Mp4Writer(path, fps) as writer:
        writer.write(frames)
