"""Decoding and rendering under odd input: rotation, cover streams, variable frame rate,
damage, reproducibility, far aspect ratios (issue [H] items 2, 3, 4, 5, 8, 14).

Every file is made at test time from the real footage (tests/helpers/odd_inputs.py) or is one of the
damaged files of ../shared/footage/bad.
"""

from __future__ import annotations

import io
import os

import av
import numpy as np
import pyarrow.fs as pafs
import pytest
from odd_inputs import BBB, FOOTAGE, alternating_times, footage, two_shots, write_video

from multishot.dataset.record import SampleRecord
from multishot.pipeline.config import RenderConfig
from multishot.pipeline.render import RenderJob, crop_rejection, render_samples, source_frames_for_shot
from multishot.pipeline.decode import DecodeStats, iter_frames, iter_grid, probe

LOCAL = pafs.LocalFileSystem()
ZEROED = FOOTAGE / "bad" / "corrupt_zeroed_middle_bbb.mp4"  # slots 620-714 lost to damage
SMALL = RenderConfig(width=96, height=48, fps=16)


def _mae(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


def _decode(mp4: bytes) -> list[np.ndarray]:
    with av.open(io.BytesIO(mp4)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def test_rotated_phone_footage_is_shown_upright(tmp_path):
    frames = footage(BBB, 20.0, 24, (96, 54))
    # a phone stores the picture sideways (54 wide, 96 tall) and a display matrix turning it back
    path = write_video(tmp_path / "phone.mp4", [np.rot90(f, 1) for f in frames], rotation=-90)
    info = probe(str(path))
    assert (info.width, info.height, info.rotation) == (54, 96, -90)
    assert (info.display_width, info.display_height) == (96, 54)
    shown = [f for _, f in iter_frames(str(path), fps=info.fps)]
    assert shown[0].shape == (54, 96, 3)
    upright = np.mean([_mae(a, b) for a, b in zip(shown, frames)])
    upside_down = np.mean([_mae(a, np.rot90(b, 2)) for a, b in zip(shown, frames)])
    assert upright < 8 < upside_down, (upright, upside_down)
    # detection's scaled decode turns too (scale, then turn)
    small = next(iter_frames(str(path), fps=info.fps, width=48, height=27))[1]
    assert small.shape == (27, 48, 3)
    # and the render matches the render of the same footage stored upright
    plain = write_video(tmp_path / "plain.mp4", frames)
    job = [RenderJob("k", source_frames_for_shot(0, 13, info.fps, SMALL.fps))]
    rotated_mp4 = render_samples(str(path), LOCAL, info, job, SMALL, DecodeStats())[0].mp4
    plain_mp4 = render_samples(str(plain), LOCAL, probe(str(plain)), job, SMALL, DecodeStats())[0].mp4
    a, b = _decode(rotated_mp4), _decode(plain_mp4)
    assert a[0].shape == (48, 96, 3) and len(a) == len(b) == 13
    assert np.mean([_mae(x, y) for x, y in zip(a, b)]) < 8


def test_cover_picture_stream_first_is_skipped(tmp_path):
    frames = two_shots((96, 54), seconds=3.0)
    path = write_video(tmp_path / "with cover.mkv", frames, cover=np.full((32, 32, 3), 200, np.uint8))
    with av.open(str(path)) as container:  # the cover really is the first video stream
        assert [s.codec_context.width for s in container.streams.video] == [32, 96]
    info = probe(str(path))
    assert (info.stream_index, info.width, info.height, info.num_frames) == (1, 96, 54, 72)
    assert info.duration_s == pytest.approx(3.0)  # the stream's own, not the cover's 5 s
    shown = [f for _, f in iter_frames(str(path), fps=info.fps)]
    assert len(shown) == 72 and np.mean([_mae(a, b) for a, b in zip(shown, frames)]) < 8


LEVELS = np.array([0, 85, 170, 255], dtype=np.uint8)


def _stamp(frame: np.ndarray, k: int) -> np.ndarray:
    """The footage frame with ``k`` written in base 4 as five grey 8×8 blocks along its top."""
    out = frame.copy()
    for j in range(5):
        out[:8, 8 + 8 * j : 16 + 8 * j] = LEVELS[(k >> 2 * j) & 3]
    return out


def _read_stamp(frame: np.ndarray, scale: float, offset_x: float) -> int:
    """The number :func:`_stamp` wrote, read back from a frame scaled by ``scale`` and cropped."""
    k = 0
    for j in range(5):
        x, y = round((12 + 8 * j) * scale - offset_x), round(4 * scale)
        level = int(np.abs(LEVELS.astype(int) - frame[y - 1 : y + 2, x - 1 : x + 2].mean()).argmin())
        k |= level << 2 * j
    return k


def test_variable_frame_rate_is_resampled_by_presentation_time(tmp_path):
    times = alternating_times(11.9)  # one second at 60 fps, one at 12 fps, ...
    frames = [_stamp(f, k) for k, f in enumerate(footage(BBB, 15.0, len(times), (64, 36)))]
    path = write_video(tmp_path / "vfr.mp4", frames, times_s=times)
    info = probe(str(path))
    stats = DecodeStats()
    slots = [i for i, _, _ in iter_grid(str(path), fps=info.fps, stats=stats)]
    assert slots == list(range(len(slots))) and slots[-1] == round(times[-1] * info.fps)
    assert (stats.errors, stats.substituted) == (0, 0)  # a slow stretch is no damage
    # a sample spanning the whole clip renders, and output frame m shows the picture on screen
    # at m / 16 s, late by at most one output frame and one grid slot (two nearest-earlier picks)
    count = 4 * int(11.5 * 16 / 4) + 1
    job = RenderJob("vfr", source_frames_for_shot(0, count, info.fps, 16.0))
    config = RenderConfig(width=48, height=32, fps=16)
    result = render_samples(str(path), LOCAL, info, [job], config, stats)[0]
    assert result.error == "" and result.substituted == 0 and result.frames == count
    scale = 32 / 36  # cover 48×32: 64×36 → 57×32, 4 px cropped left
    late = [m / 16 - times[_read_stamp(f, scale, 4)] for m, f in enumerate(_decode(result.mp4))]
    assert all(-1e-6 <= d <= 1 / 16 + 1 / info.fps + 1e-6 for d in late), late


def _zeroed_jobs() -> list[RenderJob]:
    info = probe(str(ZEROED))
    return [RenderJob(f"at{s}", source_frames_for_shot(s, 33, info.fps, 16.0)) for s in (100, 600, 720)]


def test_damage_is_recorded_per_sample_and_can_drop_it():
    info = probe(str(ZEROED))
    jobs = _zeroed_jobs()
    keep = RenderConfig(width=64, height=48, fps=16, max_damaged_frames=1000)
    clean, hole, after = render_samples(str(ZEROED), LOCAL, info, jobs, keep, DecodeStats())
    assert clean.substituted == after.substituted == 0
    # slots 620-649 of the 600-649 sample are lost: about 30 · 16/24 output frames
    assert 15 <= hole.substituted <= 25 and hole.mp4 is not None
    default = RenderConfig(width=64, height=48, fps=16)
    assert default.max_damaged_frames == 0
    clean, hole, after = render_samples(str(ZEROED), LOCAL, info, jobs, default, DecodeStats())
    assert clean.mp4 is not None and after.mp4 is not None
    assert hole.mp4 is None and "lost to damage" in hole.error and "max_damaged_frames 0" in hole.error
    # the record carries the count, in output frames
    assert SampleRecord.model_fields["damaged_frames"].default == 0


def test_render_of_damaged_source_is_reproducible():
    """Frame-threaded H.264 decoding conceals damage differently with the thread count: the
    same sample gave other bytes on a machine (or Ray worker) with other CPUs."""
    info = probe(str(ZEROED))
    job = _zeroed_jobs()[1:2]
    config = RenderConfig(width=64, height=48, fps=16, max_damaged_frames=1000)
    cpus = sorted(os.sched_getaffinity(0))
    outputs = []
    try:
        for allowed in ({cpus[0]}, set(cpus)):
            os.sched_setaffinity(0, allowed)
            outputs.append(render_samples(str(ZEROED), LOCAL, info, job, config, DecodeStats())[0].mp4)
    finally:
        os.sched_setaffinity(0, cpus)
    assert outputs[0] is not None and outputs[0] == outputs[1]


def test_overlapping_samples_render_to_the_same_bytes_every_time():
    """Three samples sharing source frames (each frame converted once, every encoder given its
    own copy), rendered three times in one process with the default preset: the same bytes each
    time. Measured with veryfast's macroblock tree at 832×480: other bytes in 2 of 4 runs."""
    info = probe(str(BBB))
    jobs = [RenderJob(key, source_frames_for_shot(start, frames, info.fps, 16))
            for key, start, frames in (("a", 0, 160), ("b", 60, 80), ("c", 150, 40))]
    config = RenderConfig(width=320, height=192)
    runs = [[r.mp4 for r in render_samples(str(BBB), LOCAL, info, jobs, config, DecodeStats())] for _ in range(3)]
    assert all(mp4 is not None for mp4 in runs[0])
    assert runs[0] == runs[1] == runs[2]
    # the shared frames are the same pictures in every sample that shows them
    a, b = _decode(runs[0][0]), _decode(runs[0][1])
    assert _mae(a[40], b[0]) < 2


def test_far_aspect_ratio_is_rejected_with_the_ratio(tmp_path):
    strip = write_video(tmp_path / "strip.mp4", footage(BBB, 20.0, 4, (2000, 96)))
    info = probe(str(strip))
    reason = crop_rejection(info, RenderConfig())
    assert "aspect ratio 20.83:1" in reason and "keep 8% of the width" in reason
    assert crop_rejection(info, RenderConfig(min_crop_fraction=0.05)) == ""
    assert crop_rejection(probe(str(FOOTAGE / "archive" / "sintel_trailer_480p.mp4")), RenderConfig()) == ""
    # a rotated phone clip is judged as shown: portrait 9:16 keeps 32% of its height
    phone = write_video(tmp_path / "portrait.mp4", footage(BBB, 20.0, 4, (96, 54)), rotation=90)
    assert "0.56:1" in crop_rejection(probe(str(phone)), RenderConfig())
