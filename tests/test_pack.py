"""Property tests of the packing rule (pipeline/pack.py) with hypothesis."""

from hypothesis import given, settings
from hypothesis import strategies as st

from multishot.pipeline.config import Bucket, PackConfig
from multishot.pipeline.pack import PackShot, pack_video, runs, shot_frames, target_frames

SOURCE_FPS = 24.0
FPS = 16.0


@st.composite
def videos(draw):
    """A video's shot list: durations 0.1-40 s, some removed, some after a dropped transition."""
    n = draw(st.integers(1, 40))
    shots, at = [], 0
    for i in range(n):
        if draw(st.booleans()) and draw(st.booleans()):
            at += draw(st.integers(1, 12))  # transition frames dropped between shots
            gap = True
        else:
            gap = False
        length = draw(st.integers(2, 960))
        shots.append(PackShot(i, at, at + length, kept=draw(st.floats(0, 1)) > 0.2, gap_before=gap))
        at += length
    return shots


configs = st.builds(
    PackConfig,
    buckets=st.just([Bucket(name="5s", target_s=5, tolerance_s=1), Bucket(name="15s", target_s=15, tolerance_s=3),
                     Bucket(name="60s", target_s=60, tolerance_s=10)]),
    max_shots=st.integers(3, 13),
    min_shots=st.integers(1, 3),
    min_last_shot_s=st.floats(0, 3),
)


@settings(max_examples=300, deadline=None)
@given(videos(), configs)
def test_packing_rule_properties(shots, config):
    samples = pack_video(shots, config, SOURCE_FPS, FPS)
    assert samples == pack_video(shots, config, SOURCE_FPS, FPS)  # deterministic
    by_index = {s.index: s for s in shots}
    run_of = {s.index: r for r, run in enumerate(runs(shots)) for s in run}
    for sample in samples:
        bucket = next(b for b in config.buckets if b.name == sample.bucket)
        target, tol = target_frames(bucket, FPS), int(bucket.tolerance_s * FPS)
        # geometry: 4k+1 frames, cuts on latent-frame boundaries, within tolerance
        assert sample.num_frames % 4 == 1
        assert all(c % 4 == 1 for c in sample.cut_frames)
        assert target - tol <= sample.num_frames <= target + tol
        assert config.min_shots <= len(sample.shots) <= config.max_shots
        indices = [s.index for s in sample.shots]
        # consecutive kept shots of one run: never spans a removed shot or a gap
        assert indices == list(range(indices[0], indices[0] + len(indices)))
        assert len({run_of.get(i) for i in indices}) == 1 and None not in {run_of.get(i) for i in indices}
        for k, packed in enumerate(sample.shots):
            shot = by_index[packed.index]
            assert packed.frames >= (1 if k == 0 else 4)
            # a shot's frames never read past its end in the source
            assert packed.frames <= (shot.end_frame - shot.start_frame) / SOURCE_FPS * FPS + 1e-6 + (1 if k == 0 else 0)
    # within a bucket, samples do not overlap
    for bucket in config.buckets:
        used = [s.index for sample in samples if sample.bucket == bucket.name for s in sample.shots]
        assert len(used) == len(set(used))


def test_worked_example_15s():
    """Three adjacent shots of 6 s each: 15 s ± 3 s takes all three, the third cut short."""
    shots = [PackShot(i, i * 144, (i + 1) * 144, kept=True) for i in range(3)]
    config = PackConfig(buckets=[Bucket(name="15s", target_s=15, tolerance_s=1)])
    (sample,) = pack_video(shots, config, SOURCE_FPS, FPS)
    assert [s.frames for s in sample.shots] == [93, 96, 52]  # 6 s → 93 (4k+1) and 96 frames
    assert sample.num_frames == 241 and sample.cut_frames == [93, 189]


def test_removed_shot_splits_samples():
    shots = [PackShot(0, 0, 120, True), PackShot(1, 120, 240, False), PackShot(2, 240, 360, True)]
    config = PackConfig(buckets=[Bucket(name="8s", target_s=8, tolerance_s=3)])
    assert pack_video(shots, config, SOURCE_FPS, FPS) == []  # 5 s on each side, never joined


def test_shot_frames_rounding():
    assert shot_frames(5.0, 16, first=True) == 77 and shot_frames(5.0, 16, first=False) == 80
    assert shot_frames(0.2, 16, first=False) == 0
