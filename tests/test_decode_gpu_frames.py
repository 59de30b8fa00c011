"""The GPU frame source's frames against the CPU frame source's, on a CUDA GPU (``pytest -m gpu``
on a GPU machine; skipped without CUDA).

What ``tests/test_decode_gpu.py`` cannot check on the CPU: NVDEC's own pictures (libavcodec's
NVDEC hwaccel, and FFmpeg's cuvid decoder with NVDEC's scaler) converted on the GPU give the
CPU path's frames (libavcodec, libswscale's area filter) on the same grid: the 48×27 detector
frames and the analysis frames of the candidates, on a 1080p input made from the bundled
footage (the GPU node's case). Formerly the ``frame_check`` part of
``benchmarks/pipeline_gpu.py``, with the same thresholds: mean absolute difference under 3
levels of 255 for the 48×27 frames and under 4 for the analysis frames.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from multishot.pipeline.config import PipelineConfig
from multishot.pipeline.decode import DecodeStats, analysis_size, iter_frames, iter_scan_frames, probe
from multishot.pipeline.decode_gpu import GpuFrameSource

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (NVDEC)")]

#: the bundled footage (in the repository, so the test runs on a GPU machine without ../shared)
DEMO = Path(__file__).resolve().parents[1] / "demo" / "footage" / "sintel_trailer_480p.mp4"
FRAMES = 480  # 20 s at 24 fps: ten candidates, several shots
SIZE = (1920, 1080)


@pytest.fixture(scope="module")
def input_1080p(tmp_path_factory) -> str:
    """The first ``FRAMES`` frames of the Sintel trailer upscaled to 1920×1080 at 24 fps (x264)."""
    path = tmp_path_factory.mktemp("gpu_frames") / "sintel_1080p.mp4"
    info = probe(str(DEMO))
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = *SIZE, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "20"}
        for i, (_, frame) in enumerate(iter_frames(str(DEMO), fps=info.fps, width=SIZE[0], height=SIZE[1],
                                                   wanted=np.arange(FRAMES))):
            picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
            picture.pts, picture.time_base = i, Fraction(1, 24)
            out.mux(stream.encode(picture))
        out.mux(stream.encode())
    return str(path)


def _frames(source, path: str) -> tuple[list, DecodeStats]:
    """``(index, 48×27 frame, analysis frame or None)`` of the whole input from ``source`` (a
    frame source), every 48th frame a candidate; and the pass's decode record."""
    info = probe(path)
    stats = DecodeStats()
    frames = list(source(path, None, fps=info.fps, start_frame=0, end_frame=None, detect_size=(48, 27),
                         analysis_size=analysis_size(info, PipelineConfig().analyse.analysis_short_side),
                         is_candidate=lambda i: i % 48 == 0, stats=stats))
    return frames, stats


@pytest.mark.parametrize("nvdec_scale", [False, True], ids=["hwaccel", "nvdec_scaled"])
def test_gpu_frames_match_the_cpu_frames(input_1080p, nvdec_scale):
    cpu, _ = _frames(iter_scan_frames, input_1080p)
    gpu, stats = _frames(GpuFrameSource("cuda", nvdec_scale=nvdec_scale), input_1080p)
    assert stats.decoder == "nvdec", stats.note  # else this would compare the CPU with itself
    assert [i for i, _, _ in gpu] == [i for i, _, _ in cpu] == list(range(FRAMES))
    small = torch.stack([f for _, f, _ in gpu]).cpu().numpy().astype(np.int16) - np.stack([f for _, f, _ in cpu])
    assert np.abs(small).mean() < 3.0, f"48×27: mean |diff| {np.abs(small).mean():.2f}, bias {small.mean((0, 1, 2))}"
    candidates = list(range(0, FRAMES, 48))
    assert [i for i, _, a in gpu if a is not None] == [i for i, _, a in cpu if a is not None] == candidates
    big = (np.stack([a for _, _, a in gpu if a is not None]).astype(np.int16)
           - np.stack([a for _, _, a in cpu if a is not None]))
    assert np.abs(big).mean() < 4.0, f"analysis frames: mean |diff| {np.abs(big).mean():.2f}"
