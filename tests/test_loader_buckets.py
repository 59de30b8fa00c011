"""Batches of several samples from shards of mixed lengths and sizes (the pipeline's duration
buckets): every batch holds one shape, each sample its own cuts and prompt, and a resumed
loader continues with the batches an uninterrupted one gives, held samples included."""

from __future__ import annotations

import itertools

import pytest

from multishot.dataset.loader import DataConfig, TrainLoader

#: (frames per shot, frame size) of each sample: 17, 21 and 33 frames, two sizes
SAMPLES = [([9, 8], (64, 48)), ([17, 16], (64, 48)), ([11, 10], (64, 48)), ([5, 12], (64, 48)),
           ([21], (64, 48)), ([13, 20], (64, 48)), ([9, 8], (48, 64)), ([6, 11], (64, 48)),
           ([7, 14], (64, 48))]


@pytest.fixture(scope="module")
def mixed_shards(tmp_path_factory) -> str:
    from conftest import TRAIN_SHOT_SOURCES, make_footage_sample
    from multishot.dataset.shards import write_shard
    from multishot.dataset.storage import resolve

    root = tmp_path_factory.mktemp("mixed")
    fs, _ = resolve(str(root))
    samples = [make_footage_sample(f"mix{i:02d}", [TRAIN_SHOT_SOURCES[(i + j) % 6] for j in range(len(shots))],
                                   shots, captioned=True, size=size)
               for i, (shots, size) in enumerate(SAMPLES)]
    write_shard(fs, str(root / "shards" / "m-00000.tar"), samples[:5])
    write_shard(fs, str(root / "shards" / "m-00001.tar"), samples[5:])
    return str(root)


def loader(root: str, **kw) -> TrainLoader:
    return TrainLoader(DataConfig(shards=[root], batch_size=2, shuffle_buffer=3, num_workers=0, seed=1, **kw))


def test_batches_group_samples_of_one_shape(mixed_shards):
    batches = list(itertools.islice(loader(mixed_shards), 6))
    shapes = {(i, (sum(s), *size[::-1])) for i, (s, size) in enumerate(SAMPLES)}
    expected = {f"mix{i:02d}": shape for i, shape in shapes}
    for b in batches:
        assert len(b.keys) == 2 and b.video.shape[0] == 2
        assert b.video.shape[2:] == (b.num_frames, *b.video.shape[3:])
        assert {expected[k] for k in b.keys} == {(b.num_frames, *b.video.shape[3:])}
        assert len(b.cut_frames) == len(b.prompts) == 2
    # the two 17-frame 64×48 samples, the two of 21 frames, …: a mixed batch never forms, and
    # samples with different cuts share a batch
    assert any(b.cut_frames[0] != b.cut_frames[1] for b in batches)


def test_resume_keeps_the_samples_held_in_unfilled_buckets(mixed_shards):
    full = [b.keys for b in itertools.islice(loader(mixed_shards), 8)]
    first = loader(mixed_shards)
    head = [b.keys for b in itertools.islice(first, 3)]
    state = first.state_dict()
    assert any(state["held"]), "this seed should leave samples waiting after 3 batches"
    resumed = loader(mixed_shards)
    resumed.load_state_dict(state)
    tail = [b.keys for b in itertools.islice(resumed, 5)]
    assert head + tail == full
