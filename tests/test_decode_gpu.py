"""The GPU decoding path's parts that run without a GPU, on real footage.

* NV12 → RGB with area scaling (the code GPU frames go through) against libswscale, on NV12
  planes exported by PyAV's DLPack as the GPU path reads them, and against the standards' values.
* Batched conversion (:class:`PictureBatch`) equals converting each picture alone: BT.601 /
  BT.709 / BT.2020, limited and full range, 8 and 10 bits, odd sizes, every rotation.
* The GPU frame source's grid, index, seek, batching and candidate logic (run on CPU tensors)
  against the CPU frame source, on a clean, a damaged and a rotated file; TransNetV2 on tensors
  equals it on arrays.
* A stream's decoder opened by name and fed the demuxer's packets (as NVDEC's cuvid decoders
  are) gives the stream's own decoder's frames on the same grid; where a cuvid decoder cannot
  open, the reason is given and the hwaccel path runs.
* The fallback: a GPU asked for on a machine without CUDA scans on the CPU, says so once in the
  log and records it in the segment's decode record.

Not testable without a GPU (``tests/test_decode_gpu_frames.py`` and ``benchmarks/pipeline_gpu.py``
check them on one): NVDEC's own frames and scaler, DLPack views of CUDA surfaces, stream
ordering between FFmpeg and PyTorch.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from multishot.pipeline.config import DetectConfig, PipelineConfig
from multishot.pipeline.decode_gpu import (
    CuvidUnavailable,
    GpuFrameSource,
    PictureBatch,
    choose_frame_source,
    gpu_decoder_status,
    nv12_to_rgb,
    nvdec_size,
    UntilFirstFrame,
    open_by_name,
    open_cuvid,
    yuv_matrix,
)
from multishot.pipeline.decode import DecodeStats, frame_image, iter_scan_frames, iter_slots, open_container, main_stream

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
    ref = frame_image(frame, *size).astype(np.int16)  # the CPU path: libswscale, area filter
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


@lru_cache(maxsize=None)
def _pictures(path: str, indices: tuple[int, ...], size: tuple[int, int] | None, fmt: str
              ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(y, uv)`` planes of decoded pictures repacked as ``fmt`` (nv12 / p010le) at ``size``."""
    wanted, out = set(indices), []
    with av.open(path) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in wanted:
                w, h = size or (frame.width, frame.height)
                nv = frame.reformat(width=w, height=h, format=fmt)
                out.append((torch.from_dlpack(nv.planes[0].__dlpack__()).clone(),
                            torch.from_dlpack(nv.planes[1].__dlpack__()).clone()))
    return out


@pytest.mark.parametrize("path, size, fmt", [(BBB, None, "nv12"), (TOS, (95, 53), "nv12"), (BBB, (161, 91), "p010le")])
@pytest.mark.parametrize("colorspace, full_range", [(2, False), (1, True), (9, False)])
def test_batched_conversion_equals_each_picture_alone(path, size, fmt, colorspace, full_range):
    """Five different pictures in one batch, converted together at TransNetV2's size (odd height)
    and at an odd analysis size, every rotation: each equals its own conversion (within 1 level
    of 255, from float rounding of other kernel shapes), and rows pick their own pictures."""
    pictures = _pictures(path, (10, 200, 400, 700, 900), size, fmt)
    for turns in range(4):
        batch = PictureBatch(8, torch.device("cpu"))
        rows = [batch.add(y, uv, colorspace, full_range, turns) for y, uv in pictures]
        assert rows == [0, 1, 2, 3, 4]
        for width, height in [(48, 27), (63, 37)]:
            together = batch.convert(width, height).numpy().astype(np.int16)
            assert together.shape == (5, height, width, 3)
            for k, (y, uv) in enumerate(pictures):
                w, h = (height, width) if turns % 2 else (width, height)
                alone = torch.rot90(nv12_to_rgb(y, uv, w, h, colorspace, full_range), turns, dims=(0, 1))
                assert np.abs(together[k] - alone.numpy()).max() <= 1
            picked = batch.convert(width, height, rows=[3, 0]).numpy().astype(np.int16)
            assert np.abs(picked - together[[3, 0]]).max() <= 1
        # the pictures differ, so a mix-up of rows would show
        assert np.abs(together[0] - together[1]).mean() > 5


def test_batch_holds_one_layout():
    (y, uv), (y2, uv2) = _pictures(BBB, (5,), None, "nv12") + _pictures(BBB, (5,), (320, 180), "nv12")
    batch = PictureBatch(2, torch.device("cpu"))
    batch.add(y, uv, 1, False, 0)
    assert batch.accepts(y, uv, 1, False, 0)
    assert not batch.accepts(y2, uv2, 1, False, 0)  # another size
    assert not batch.accepts(y, uv, 1, True, 0) and not batch.accepts(y, uv, 2, False, 0)  # another colour
    assert not batch.accepts(y, uv, 1, False, 1)  # another rotation
    batch.add(y, uv, 1, False, 0)
    with pytest.raises(ValueError, match="does not fit"):
        batch.add(y, uv, 1, False, 0)  # full
    batch.clear()
    assert batch.add(y2, uv2, 2, True, 3) == 0 and batch.convert(48, 27).shape == (1, 27, 48, 3)
    with pytest.raises(ValueError, match="at least one"):
        PictureBatch(0, torch.device("cpu"))


def _scan_kwargs(start: int, end: int | None, analysis_size=(64, 36)) -> dict:
    return dict(fps=24.0, start_frame=start, end_frame=end, detect_size=(48, 27), analysis_size=analysis_size,
                is_candidate=lambda i: i % 37 == 0)


@pytest.mark.parametrize("path, start, end", [(TOS, 0, 400), (TOS, 700, 1100), (DAMAGED, 500, None)])
def test_gpu_frame_source_keeps_the_cpu_grid(path, start, end):
    """Every slot of a segment (from the start, after a seek, across the damage of a file with
    256 KiB zeroed, to the end) with its index and candidates as the CPU frame source gives them,
    pictures converted in batches of 5 (batch edges fall inside runs of repeated slots) within
    a few levels of libswscale's."""
    stats, cpu_stats = DecodeStats(), DecodeStats()
    got = list(GpuFrameSource("cpu", batch=5)(path, None, stats=stats, **_scan_kwargs(start, end)))
    want = list(iter_scan_frames(path, None, stats=cpu_stats, **_scan_kwargs(start, end)))
    assert [i for i, _, _ in got] == [i for i, _, _ in want] == list(range(start, start + len(want)))
    small = torch.stack([s for _, s, _ in got]).numpy().astype(np.int16) - np.stack([s for _, s, _ in want])
    assert np.abs(small).mean() < 4.0
    assert [i for i, _, a in got if a is not None] == [i for i, _, a in want if a is not None]
    big = np.stack([a for _, _, a in got if a is not None]).astype(np.int16) - np.stack([a for _, _, a in want if a is not None])
    assert np.abs(big).mean() < 4.0
    assert (stats.frames, stats.errors, stats.substituted) == (cpu_stats.frames, cpu_stats.errors, cpu_stats.substituted)
    assert stats.decoder == "cpu" and stats.note == ""


@pytest.mark.parametrize("rotation", [-90, 180])
def test_batched_frame_source_equals_per_picture_on_rotated_footage(tmp_path, rotation):
    """Phone footage with a display matrix: batches of 7 give the per-picture source's frames
    (batch of 1), upright as the CPU source shows them."""
    from odd_inputs import BBB as BBB_PATH, footage, write_video

    path = str(write_video(tmp_path / "phone.mp4", footage(BBB_PATH, 20.0, 30, (96, 54)), rotation=rotation))
    size = (54, 96) if rotation % 180 else (96, 54)
    kwargs = _scan_kwargs(0, None, analysis_size=size)
    one = list(GpuFrameSource("cpu", batch=1)(path, None, stats=DecodeStats(), **kwargs))
    seven = list(GpuFrameSource("cpu", batch=7)(path, None, stats=DecodeStats(), **kwargs))
    cpu = list(iter_scan_frames(path, None, stats=DecodeStats(), **kwargs))
    assert [i for i, _, _ in one] == [i for i, _, _ in seven] == [i for i, _, _ in cpu] == list(range(30))
    for (_, s1, a1), (_, s7, a7), (_, sc, ac) in zip(one, seven, cpu):
        assert np.abs(s1.numpy().astype(np.int16) - s7.numpy()).max() <= 1
        assert s1.shape == sc.shape == (27, 48, 3) and np.abs(s1.numpy().astype(np.int16) - sc).mean() < 4.0
        assert (a1 is None) == (a7 is None) == (ac is None)
        if a1 is not None:
            assert a1.shape == ac.shape == (size[1], size[0], 3)
            assert np.abs(a1.astype(np.int16) - a7).max() <= 1 and np.abs(a1.astype(np.int16) - ac).mean() < 4.0


@pytest.mark.parametrize("path, start, end", [(TOS, 700, 1100), (DAMAGED, 500, 900)])
def test_a_decoder_opened_by_name_keeps_the_grid(path, start, end):
    """NVDEC's cuvid decoders are opened by name and fed the demuxer's packets (:func:`open_cuvid`):
    the same plumbing with libavcodec's H.264 decoder gives the stream's own decoder's slots and
    pictures, after a seek and across damage (parameter sets from the container, timestamps in
    the stream's time base)."""
    def named(stream):
        return open_by_name(stream, "h264", None, {}).decode

    def pictures(decoder):
        stats = DecodeStats()
        out = [(slot, frame.to_ndarray(format="rgb24"), substituted) for slot, frame, substituted
               in iter_slots(path, None, fps=24.0, stats=stats, start_frame=start, end_frame=end, decoder=decoder)]
        return out, (stats.frames, stats.errors, stats.substituted)

    (got, got_stats), (want, want_stats) = pictures(named), pictures(None)
    assert [(i, s) for i, _, s in got] == [(i, s) for i, _, s in want] == [(i, s) for i, _, s in want]
    assert len(got) == (end - start) and got_stats == want_stats
    assert all(np.array_equal(a, b) for (_, a, _), (_, b, _) in zip(got, want))


@pytest.mark.parametrize("failure", ["error", "no picture"])
def test_a_decoder_failing_before_its_first_picture_hands_over_without_loss(failure, caplog):
    """NVDEC refuses some streams only once it parses them: the packets given so far are
    replayed into the stream's own decoder, so a segment (after a seek) loses no picture. Here
    the refusing decoder is HEVC's fed H.264 (fails on the first packet) or H.264 with 8 frame
    threads (no picture for 8 packets) held to 3 packets."""
    from multishot.pipeline import decode_gpu

    def refusing(stream):
        if failure == "error":
            ctx = av.CodecContext.create("hevc", "r")
        else:
            ctx = av.CodecContext.create("h264", "r")
            ctx.extradata = stream.codec_context.extradata
            ctx.thread_type, ctx.thread_count = "FRAME", 8
        wrapped = UntilFirstFrame(ctx.decode, stream.codec_context.decode, f"{failure} decoder")
        wrapped.MAX_HELD_PACKETS = 3
        return wrapped

    def pictures(decoder):
        stats = DecodeStats()
        out = [(slot, frame.to_ndarray(format="rgb24")) for slot, frame, _
               in iter_slots(TOS, None, fps=24.0, stats=stats, start_frame=700, end_frame=900, decoder=decoder)]
        return out, (stats.frames, stats.errors, stats.substituted)

    caplog.set_level(logging.WARNING)
    decode_gpu._warned.clear()
    (got, got_stats), (want, want_stats) = pictures(refusing), pictures(None)
    assert [i for i, _ in got] == [i for i, _ in want] == list(range(700, 900)) and got_stats == want_stats
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(got, want))
    why = "failed before its first picture" if failure == "error" else "no picture after 3 packets"
    assert sum(why in r.message for r in caplog.records) == 1


def test_nvdec_size_is_the_analysis_scale_before_rotation():
    assert nvdec_size((1920, 1080), (640, 360), 0) == (640, 360)
    assert nvdec_size((1920, 1080), (360, 640), 1) == (640, 360)  # portrait display of landscape pictures
    assert nvdec_size((640, 360), (640, 360), 0) is None  # already at the analysis scale
    assert nvdec_size((512, 120), (1536, 360), 0) is None  # NVDEC is not asked to upscale
    assert nvdec_size((1440, 1080), (640, 360), 0) == (640, 360)  # anamorphic: to the display aspect


def test_cuvid_unavailable_falls_back_to_the_streams_decoder(tmp_path, caplog):
    """Where FFmpeg's cuvid decoder cannot open (here: no CUDA; or a codec NVDEC has no decoder
    for), the reason is raised, the frame source's decoder falls back to the stream's own
    (libavcodec's, with NVDEC as hwaccel on a GPU) and logs it once."""
    from multishot.pipeline import decode_gpu
    from odd_inputs import BBB as BBB_PATH, footage, write_video

    with open_container(TOS) as container:
        stream = main_stream(container)
        with pytest.raises(CuvidUnavailable, match="h264_cuvid does not open"):
            open_cuvid(stream, torch.device("cuda:0"), (64, 36))
        caplog.set_level(logging.WARNING)
        decode_gpu._warned.clear()
        decoder = GpuFrameSource("cuda:0", nvdec_scale=True)._cuvid_decoder((64, 36), 0, colour := {})
        for _ in range(2):
            assert decoder(stream) == stream.codec_context.decode and colour == {}
    assert sum("NVDEC's scaler is not used" in r.message for r in caplog.records) == 1
    ffv1 = str(write_video(tmp_path / "ffv1.mkv", footage(BBB_PATH, 20.0, 3, (64, 36)), codec="ffv1"))
    with open_container(ffv1) as container:
        with pytest.raises(CuvidUnavailable, match="no NVDEC decoder for ffv1"):
            open_cuvid(main_stream(container), torch.device("cuda:0"), None)


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
    from multishot.pipeline.decode_gpu import _warned
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
    assert config.detect.sessions > 1 and not config.detect.nvdec_scale


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


def test_nvdec_scale_is_placement():
    """Which decoder path runs is recorded per video, not hashed: a rerun with or without NVDEC's
    scaler resumes from the same samples and segment results."""
    from multishot.pipeline.run import compute_samples_hash
    from multishot.pipeline.scan import scan_hash

    plain, scaled = PipelineConfig(), PipelineConfig(detect={"nvdec_scale": True})
    assert compute_samples_hash(plain) == compute_samples_hash(scaled) and scan_hash(plain) == scan_hash(scaled)
    assert scan_hash(plain) != scan_hash(PipelineConfig(detect={"threshold": 0.5}))


def test_scan_through_the_gpu_frame_source_runs_every_check():
    """The segment scan fed by the GPU frame source (here on CPU tensors: the same code, NVDEC
    aside) measures what the CPU scan measures, on a letterboxed film (Sintel, bars top and
    bottom): the active area is applied (every frame's darkness and mean luma, the candidates'
    brightness, inside it), per-frame darkness and luma thumbnails of every frame (black frames,
    fades, gradual transitions' spans), each candidate's motion from the one before (DIS) and its
    perceptual hash, within the frames' small conversion differences."""
    from multishot.pipeline.config import FilterConfig
    from multishot.pipeline.decode import analysis_size, probe
    from multishot.pipeline.picture import ActiveArea, detect_active_area
    from multishot.pipeline.scan import SegmentScanner
    from multishot.pipeline.transitions import decode_thumbnails

    path = str(FOOTAGE / "archive" / "sintel_film_excerpt_26s.mp4")
    info = probe(path)
    config = PipelineConfig(analyse={"ocr_backend": "none"})
    assert config.analyse.motion_backend == "dis"
    area = detect_active_area(path, None, info, config.detect, config.analyse.analysis_short_side)
    assert area.y0 > 0.1 and area.y1 < 0.9  # the bars were found
    size = analysis_size(info, config.analyse.analysis_short_side)

    def scan(source, area=area):
        return SegmentScanner(config, frame_source=source).scan(path, None, info.fps, 0, 250, analysis_size=size, area=area)

    cpu, gpu = scan(iter_scan_frames), scan(GpuFrameSource("cpu", batch=16))
    assert len(gpu.black) == len(gpu.luma) == len(cpu.black) == 250
    assert np.abs(np.subtract(gpu.luma, cpu.luma)).mean() < 3.0
    assert np.abs(np.subtract(gpu.black, cpu.black)).max() < 0.1
    thumbs = decode_thumbnails(gpu.thumbs).astype(np.int16)
    assert thumbs.shape == (250, 9, 16) and np.abs(thumbs - decode_thumbnails(cpu.thumbs)).mean() < 3.0
    assert [c.index for c in gpu.candidates] == [c.index for c in cpu.candidates] and len(gpu.candidates) == 20
    threshold = FilterConfig().min_motion
    for g, c in zip(gpu.candidates, cpu.candidates):
        assert abs(g.brightness - c.brightness) < 3.0
        assert (g.motion is None) == (c.motion is None) == (g.index == 0)
        if g.motion is not None:  # the same side of the static threshold
            assert (g.motion >= threshold) == (c.motion >= threshold)
        assert bin(int(g.phash, 16) ^ int(c.phash, 16)).count("1") <= 4  # of 64 bits
    # DIS is sensitive to the frames' small differences on fast pairs (one pair 40% apart here);
    # the pairs' median (a shot's motion, pipeline.motion.shot_motion) stays close
    pairs = np.array([(g.motion, c.motion) for g, c in zip(gpu.candidates, cpu.candidates) if c.motion is not None])
    assert abs(np.median(pairs[:, 0]) - np.median(pairs[:, 1])) < 0.1 * np.median(pairs[:, 1])
    # the area is what the GPU path measured in: the full frame's bars darken every frame
    full = scan(GpuFrameSource("cpu", batch=16), area=ActiveArea())
    assert np.mean(full.luma) < np.mean(gpu.luma) - 10 and np.mean(full.black) > np.mean(gpu.black) + 0.1
