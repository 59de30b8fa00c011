"""The GPU decoding path's parts that run without a GPU, on real footage.

* NV12 → RGB with area scaling (the code GPU frames go through) against libswscale, on NV12
  planes exported by PyAV's DLPack as the GPU path reads them, and against the standards' values.
* The frame source's grid and index logic (shared with the CPU path) on a clean and a damaged file.
* The fallback: a GPU asked for on a machine without CUDA runs on the CPU, says so once in the
  log and records it per video; the tensor path of the analyser gives the CPU path's scores.

GPU frames ≈ CPU frames and same shots on the footage are checked on a GPU by
``benchmarks/pipeline_gpu.py``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from multishot.pipeline.config import AnalyseConfig, DetectConfig
from multishot.pipeline.gpu_video import FrameSource, gpu_decoder_status, nv12_to_rgb, yuv_matrix
from multishot.pipeline.video import DecodeStats, _image, iter_frames
from test_aesthetic import weights  # noqa: F401  (fixture: a tiny random CLIP + LAION head on disk)

FOOTAGE = Path(__file__).resolve().parents[2] / "shared" / "footage"
BBB = str(FOOTAGE / "archive" / "bbb_first60s_360p.mp4")  # untagged colour (BT.601 by default)
TOS = str(FOOTAGE / "archive" / "tos_excerpt_64s_512x120_fmp4.mp4")
DAMAGED = str(FOOTAGE / "bad" / "corrupt_zeroed_middle_bbb.mp4")


def _decoded(path: str, index: int) -> av.VideoFrame:
    with av.open(path) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i == index:
                return frame
    raise AssertionError("short file")


@pytest.mark.parametrize("path", [BBB, TOS])
@pytest.mark.parametrize("size", [(48, 27), None])  # TransNetV2's input; analysis at the source size
def test_nv12_conversion_matches_libswscale(path, size):
    frame = _decoded(path, 100)
    size = size or (frame.width, frame.height)
    nv12 = frame.reformat(format="nv12")  # the layout NVDEC hands over, here in host memory
    y = torch.from_dlpack(nv12.planes[0].__dlpack__())
    uv = torch.from_dlpack(nv12.planes[1].__dlpack__())
    assert y.shape == (frame.height, frame.width) and uv.shape == (frame.height // 2, frame.width // 2, 2)
    ours = nv12_to_rgb(y, uv, *size, colorspace=frame.colorspace).numpy().astype(np.int16)
    ref = _image(frame, *size).astype(np.int16)  # the CPU path: libswscale, area filter
    assert ours.shape == ref.shape == (size[1], size[0], 3)
    diff = ours - ref
    # the filters differ at edges (up to ~30 levels on single pixels); on the whole picture the
    # two agree to within a couple of levels and carry no colour cast
    assert np.abs(diff).mean() < 3.0
    assert np.all(np.abs(diff.reshape(-1, 3).mean(axis=0)) < 2.0)
    # the wrong matrix is measurably worse: the test can tell BT.601 from BT.709
    other = 1 if frame.colorspace != 1 else 2
    wrong = nv12_to_rgb(y, uv, *size, colorspace=other).numpy().astype(np.int16) - ref
    assert np.abs(wrong).mean() > np.abs(diff).mean()


@pytest.mark.parametrize("colorspace, red", [(1, (63, 102, 240)), (2, (81, 90, 240))])
def test_yuv_matrix_gives_the_standards_primaries(colorspace, red):
    """Limited-range code values of pure red (ITU-R BT.709 / BT.601), white and black."""
    m, offset = yuv_matrix(colorspace, full_range=False)
    for yuv, rgb in [(red, (255, 0, 0)), ((235, 128, 128), (255, 255, 255)), ((16, 128, 128), (0, 0, 0))]:
        np.testing.assert_allclose((m @ torch.tensor(yuv, dtype=torch.float32) + offset).numpy(), rgb, atol=2.0)
    m_full, offset_full = yuv_matrix(colorspace, full_range=True)
    np.testing.assert_allclose((m_full @ torch.tensor([255.0, 128, 128]) + offset_full).numpy(), [255] * 3, atol=1e-3)


@pytest.mark.parametrize("path, fps", [(TOS, 24.0), (DAMAGED, 24.0)])
def test_frame_source_keeps_the_cpu_grid(path, fps):
    """Every slot, its index and its pictures as :func:`iter_frames` gives them, also across the
    damage of a file with 256 KiB zeroed (holes filled by repeating)."""
    analysis_wanted = np.array([0, 7, 300, 301, 1200])
    stats, cpu_stats = DecodeStats(), DecodeStats()
    got = list(FrameSource("cpu").frames(path, None, fps=fps, analysis=(64, 36), analysis_wanted=analysis_wanted,
                                         stats=stats))
    want = list(iter_frames(path, fps=fps, width=48, height=27, stats=cpu_stats))
    assert [i for i, _, _ in got] == [i for i, _ in want] == list(range(len(want)))
    assert all(torch.equal(small, torch.from_numpy(ref)) for (_, small, _), (_, ref) in zip(got, want))
    made = {i: a for i, _, a in got if a is not None}
    assert sorted(made) == [i for i in analysis_wanted if i < len(want)]
    big = dict(iter_frames(path, fps=fps, width=64, height=36, wanted=analysis_wanted))
    assert all(torch.equal(made[i], torch.from_numpy(big[i])) for i in made)
    assert (stats.frames, stats.errors, stats.substituted) == (cpu_stats.frames, cpu_stats.errors, cpu_stats.substituted)
    assert stats.decoder == "cpu" and stats.note == "no GPU given to this worker"


def test_frame_source_converts_each_decoded_frame_once():
    """A picture repeated on the grid (a slow stretch, damage) is converted once per size; only
    wanted slots are converted."""
    wanted = np.array([5, 6, 9])
    got = list(FrameSource("cpu").frames(DAMAGED, None, fps=24.0, small=None, analysis=(32, 18),
                                         analysis_wanted=wanted, wanted=wanted))
    assert [(i, s) for i, s, _ in got] == [(5, None), (6, None), (9, None)]
    assert all(a.shape == (18, 32, 3) and a.dtype == torch.uint8 for _, _, a in got)


def test_no_cuda_falls_back_to_the_cpu_and_says_so(caplog):
    """Detection asked to run on a GPU on this CPU-only machine: the CPU path runs, the log says
    so once, and each video's decode record says which decoder ran and why."""
    from multishot.pipeline.detect import TransNetV2Detector

    assert not torch.cuda.is_available()
    assert gpu_decoder_status() == "no CUDA device"
    detector = TransNetV2Detector(DetectConfig(resources={"gpus": 1}))
    caplog.set_level(logging.WARNING)
    records = []
    for _ in range(2):
        stats = DecodeStats()
        frames = detector.frames(TOS, None, 24.0, stats)
        records.append(stats)
        assert isinstance(frames, np.ndarray) and frames.shape[1:] == (27, 48, 3)
    assert all(r.decoder == "cpu" and "no CUDA device" in r.note for r in records)
    # said once per process (the detector was made before capturing, so at most that once)
    assert sum("no CUDA device" in r.message for r in caplog.records) <= 1
    plain = TransNetV2Detector(DetectConfig())  # no GPU asked for: no fallback to report
    stats = DecodeStats()
    plain.frames(TOS, None, 24.0, stats)
    assert (stats.decoder, stats.note) == ("cpu", "")


def test_fallback_warning_is_logged_once(caplog):
    from multishot.pipeline import detect

    caplog.set_level(logging.WARNING)
    detect._warned.discard("probe message")
    for _ in range(3):
        detect._warn_once("probe message")
    assert [r.message for r in caplog.records].count("probe message: running on the CPU") == 1


def test_tensor_path_of_the_analyser_equals_the_cpu_path(weights):
    """The analyser's GPU code (frames as tensors, brightness on the device, CLIP batched across
    shots on tensors) run on CPU tensors gives the NumPy path's scores."""
    from multishot.pipeline.analyse import ShotAnalyser
    from multishot.pipeline.detect import DetectedShot

    name, clip, head = weights
    config = AnalyseConfig(frames_per_shot=3, ocr_frames_per_shot=1, clip_model=name, clip_weights=clip,
                           aesthetic_head_weights=head)
    shots = [DetectedShot(0, 300, False), DetectedShot(300, 700, True), DetectedShot(720, 1500, False)]
    cpu = ShotAnalyser(config).analyse(TOS, None, 24.0, shots, DecodeStats())
    stats = DecodeStats()
    tensors = ShotAnalyser(config, source=FrameSource("cpu")).analyse(TOS, None, 24.0, shots, stats)
    assert len(tensors) == len(cpu) == 3
    for a, b in zip(tensors, cpu):
        assert a.brightness == pytest.approx(b.brightness, rel=1e-5)
        assert a.ocr_text_ratio == pytest.approx(b.ocr_text_ratio)
        # CLIP's transform on a tensor (torchvision) vs on a PIL image: the same to ~1e-5 in cosine
        assert a.aesthetic == pytest.approx(b.aesthetic, rel=1e-2, abs=1e-3)
    assert any(s.ocr_text_ratio > 0 for s in cpu)  # the "450Kbps" overlay is read on both paths
    assert stats.decoder == "cpu"


def test_gpu_node_config_loads():
    from multishot.config import load_config
    from multishot.pipeline.config import PipelineConfig

    config = load_config(Path(__file__).resolve().parents[1] / "configs" / "pipeline" / "gpu_node.yaml", PipelineConfig)
    assert config.detect.resources.gpus > 0 and config.analyse.resources.gpus > 0
    assert config.detect.decoder == "auto"
