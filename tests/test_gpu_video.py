"""The GPU decoding path's parts that run without a GPU, on real footage.

* NV12 → RGB with area scaling (the code GPU frames go through) against libswscale, on NV12
  planes exported by PyAV's DLPack as the GPU path reads them, and against the standards' values.
* The GPU frame source's grid, index, seek and candidate logic (run on CPU tensors) against the
  CPU frame source, on a clean and a damaged file; TransNetV2 on tensors equals it on arrays.
* The fallback: a GPU asked for on a machine without CUDA scans on the CPU, says so once in the
  log and records it in the segment's decode record.

GPU frames ≈ CPU frames and the same shots on the footage are checked on a GPU by
``benchmarks/pipeline_gpu.py``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from multishot.pipeline.config import DetectConfig, PipelineConfig
from multishot.pipeline.gpu_video import GpuFrameSource, choose_frame_source, gpu_decoder_status, nv12_to_rgb, yuv_matrix
from multishot.pipeline.video import DecodeStats, _image, iter_scan_frames

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
@pytest.mark.parametrize("size", [(48, 27), None])  # TransNetV2's input; a frame at the source size
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


@pytest.mark.parametrize("path, start, end", [(TOS, 0, 400), (TOS, 700, 1100), (DAMAGED, 500, None)])
def test_gpu_frame_source_keeps_the_cpu_grid(path, start, end):
    """Every slot of a segment (from the start, after a seek, across the damage of a file with
    256 KiB zeroed, to the end) with its index and pictures as the CPU frame source gives them."""
    def candidate(i: int) -> bool:
        return i % 37 == 0

    kwargs = dict(fps=24.0, start_frame=start, end_frame=end, detect_size=(48, 27), analysis_size=(64, 36),
                  is_candidate=candidate)
    stats, cpu_stats = DecodeStats(), DecodeStats()
    got = list(GpuFrameSource("cpu")(path, None, stats=stats, **kwargs))
    want = list(iter_scan_frames(path, None, stats=cpu_stats, **kwargs))
    assert [i for i, _, _ in got] == [i for i, _, _ in want] == list(range(start, start + len(want)))
    assert all(torch.equal(small, torch.from_numpy(ref)) for (_, small, _), (_, ref, _) in zip(got, want))
    assert [i for i, _, a in got if a is not None] == [i for i, _, a in want if a is not None]
    assert all(np.array_equal(a, b) for (_, _, a), (_, _, b) in zip(got, want) if a is not None)
    assert (stats.frames, stats.errors, stats.substituted) == (cpu_stats.frames, cpu_stats.errors, cpu_stats.substituted)
    assert stats.decoder == "cpu" and stats.note == ""


def test_transnetv2_on_tensors_equals_on_arrays():
    """The scan hands TransNetV2 CUDA tensors on a GPU: the windowing on tensors is the one on arrays."""
    from multishot.pipeline.detect import TransNetV2Detector

    frames = np.stack([f for _, f, _ in iter_scan_frames(TOS, None, fps=24.0, start_frame=300, end_frame=560,
                                                         detect_size=(48, 27), analysis_size=(2, 2),
                                                         is_candidate=lambda i: False)])
    detector = TransNetV2Detector(DetectConfig(window=100, batch_windows=2))
    arrays = detector.predict(frames[25:235], frames[:25], frames[235:])
    tensors = detector.predict(torch.from_numpy(frames[25:235]), torch.from_numpy(frames[:25]), torch.from_numpy(frames[235:]))
    assert arrays[0].shape == (210,)
    np.testing.assert_array_equal(arrays[0], tensors[0])
    np.testing.assert_array_equal(arrays[1], tensors[1])


def test_no_cuda_falls_back_to_the_cpu_and_says_so(caplog):
    """A scan asked to run on a GPU on this CPU-only machine: the CPU frame source runs, the log
    says so once, and the segment's decode record says which decoder ran and why."""
    from multishot.pipeline.gpu_video import _warned
    from multishot.pipeline.scan import SegmentScanner

    assert not torch.cuda.is_available()
    assert gpu_decoder_status() == "no CUDA device"
    caplog.set_level(logging.WARNING)
    _warned.clear()
    config = PipelineConfig(detect={"resources": {"gpus": 1}}, analyse={"ocr_backend": "none"})
    for _ in range(2):
        source, note = choose_frame_source(config.detect)
        assert source is iter_scan_frames and "sees no CUDA device" in note
    assert sum("sees no CUDA device" in r.message for r in caplog.records) == 1
    result = SegmentScanner(config).scan(TOS, None, 24.0, 0, 200, analysis_size=(64, 36))
    assert result.stats.decoder == "cpu" and "sees no CUDA device" in result.stats.note
    # no GPU asked for, or the CPU decoder chosen: a plain CPU scan, nothing to report
    assert choose_frame_source(DetectConfig()) == (iter_scan_frames, "")
    assert choose_frame_source(DetectConfig(decoder="cpu", resources={"gpus": 1})) == (iter_scan_frames, "")


def test_gpu_node_config_loads():
    from multishot.config import load_config

    config = load_config(Path(__file__).resolve().parents[1] / "configs" / "pipeline" / "gpu_node.yaml", PipelineConfig)
    assert config.detect.resources.gpus > 0 and config.detect.decoder == "auto"


def test_run_report_says_the_gpu_was_not_used(tmp_path):
    """The whole run (sequential runner) with a GPU asked for on this machine: it completes on the
    CPU, and report.json says which decoder ran and why not the GPU's."""
    import json

    from multishot.dataset.shards import ShardSetLayout
    from multishot.pipeline.run import run_pipeline

    config = PipelineConfig(
        input=str(FOOTAGE / "archive" / "sintel_film_excerpt_26s.mp4"), output=str(tmp_path / "out"),
        ray={"runner": "sequential"}, analyse={"ocr_backend": "none"}, detect={"resources": {"gpus": 1}},
        # no sample fits a 200 s bucket: nothing to render, the test stays short
        pack={"buckets": [{"name": "long", "target_s": 200, "tolerance_s": 1}]},
    )
    report = run_pipeline(config, progress=False)
    saved = json.loads(Path(ShardSetLayout(str(tmp_path / "out")).report).read_text())
    assert report["shots_found"] > 0 and saved["decoders"] == {"detect: cpu": 1}
    assert saved["decoder_notes"] == ["detect: a GPU was asked for (detect.resources.gpus) but this worker sees no CUDA device"]
