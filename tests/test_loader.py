"""The training loader on shards cut from the real footage (fixture in conftest.py)."""

from __future__ import annotations

import itertools

import pytest
import torch

from multishot.dataset.loader import PLACEHOLDER_CAPTION, DataConfig, ShardStream, TrainLoader, list_shards
from multishot.dataset.record import CUT_TAG, GLOBAL_TAG, build_prompt


def config(root: str, **kw) -> DataConfig:
    base = dict(shards=[root], num_frames=17, height=64, width=64, shuffle_buffer=4, num_workers=0,
                uncaptioned="placeholder")
    return DataConfig(**{**base, **kw})


def take(loader, n):
    return list(itertools.islice(loader, n))


def test_batches_hold_normalised_clips_cuts_and_prompts(train_footage_shards):
    loader = TrainLoader(config(train_footage_shards["clean"], batch_size=2))
    batches = take(loader, 3)
    keys = [k for b in batches for k in b.keys]
    assert sorted(keys) == [f"clip{i:02d}" for i in range(6)]  # one epoch, each sample once
    for b in batches:
        assert b.video.shape == (2, 3, 17, 64, 64) and b.video.dtype == torch.float32
        assert -1.0 <= b.video.min() < -0.5 and 0.5 < b.video.max() <= 1.0
        assert b.num_frames == 17
    by_key = {k: (c, p) for b in batches for k, c, p in zip(b.keys, b.cut_frames, b.prompts)}
    # clip01 has shots of 13, 12, 8 frames: within 17 frames only the cut at 13 remains
    assert by_key["clip01"][0] == [13]
    assert by_key["clip01"][1].count(CUT_TAG) == 1
    assert by_key["clip00"][1].startswith(f"{GLOBAL_TAG} Blender films")  # captioned
    assert by_key["clip01"][1] == build_prompt(PLACEHOLDER_CAPTION, ["shot 1", "shot 2"])  # pending
    assert by_key["clip03"][0] == [] and by_key["clip03"][1].count(CUT_TAG) == 0
    assert by_key["clip02"][0] == [9]


def test_order_is_fixed_by_seed_and_epoch_and_ranks_are_disjoint(train_footage_shards):
    root = train_footage_shards["clean"]

    def keys(seed, rank=0, world=1, n=6):
        return [b.keys[0] for b in take(TrainLoader(config(root, seed=seed), rank, world), n)]

    first = keys(0, n=12)
    assert first == keys(0, n=12)  # deterministic
    assert first[:6] != first[6:] and sorted(first[:6]) == sorted(first[6:])  # epochs reshuffle
    assert first != keys(1, n=12)
    rank0, rank1 = keys(0, 0, 2, 3), keys(0, 1, 2, 3)
    assert not set(rank0) & set(rank1) and len(set(rank0) | set(rank1)) == 6


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_continues_exactly(train_footage_shards, workers):
    cfg = config(train_footage_shards["clean"], num_workers=workers, seed=3)
    full = take(TrainLoader(cfg), 9)
    first = TrainLoader(cfg)
    take(first, 5)
    state = first.state_dict()
    resumed = TrainLoader(cfg)
    resumed.load_state_dict(state)
    rest = take(resumed, 4)
    assert [b.keys for b in rest] == [b.keys for b in full[5:]]
    for a, b in zip(rest, full[5:]):
        assert torch.equal(a.video, b.video)


def test_corrupt_samples_are_skipped_and_counted(train_footage_shards):
    loader = TrainLoader(config(train_footage_shards["corrupt"]))
    batches = take(loader, 4)  # two epochs of the two good samples
    assert sorted({k for b in batches for k in b.keys}) == ["clip00", "clip02"]
    assert loader.skipped == 4  # 2 bad samples x 2 epochs
    reasons = [r for b in batches for r in b.skip_reasons]
    assert any(r.startswith("broken: undecodable mp4") for r in reasons)
    assert any(r.startswith("truncated:") for r in reasons)


def test_uncaptioned_samples_can_be_skipped(train_footage_shards):
    loader = TrainLoader(config(train_footage_shards["clean"], uncaptioned="skip"))
    batches = take(loader, 4)  # the 4th starts epoch 2, so all of epoch 1 was read
    assert sorted(b.keys[0] for b in batches[:3]) == ["clip00", "clip02", "clip04"]
    reasons = [r for b in batches for r in b.skip_reasons]
    assert loader.skipped == len(reasons) >= 3
    assert all(r.endswith("caption_status 'pending'") for r in reasons)


def test_listing_and_bad_config(train_footage_shards, tmp_path):
    assert [u.rsplit("/", 1)[-1] for u in list_shards([train_footage_shards["clean"]])] == \
        ["a-00000.tar", "a-00001.tar"]
    with pytest.raises(FileNotFoundError):
        list_shards([str(tmp_path)])
    with pytest.raises(ValueError, match="4k\\+1"):
        DataConfig(shards=["x"], num_frames=16)
    stream = ShardStream(config(train_footage_shards["clean"], num_workers=2))
    with pytest.raises(RuntimeError, match="workers"):
        iter(stream)  # iterated outside a 2-worker DataLoader


def test_a_refused_member_costs_its_sample_only_and_resume_stays_exact(train_footage_shards, tmp_path):
    import io
    import os
    import tarfile

    # clip01's mp4 becomes a symbolic link: the reader refuses it (dataset.shards.member_problem),
    # the loader's handler logs it and goes on, so clip01 is a counted skip and clip02 still comes.
    source = os.path.join(train_footage_shards["clean"], "shards", "a-00000.tar")
    hostile = tmp_path / "shards" / "a-00000.tar"
    hostile.parent.mkdir()
    with tarfile.open(source) as src, tarfile.open(hostile, "w") as out:
        for member in src.getmembers():
            if member.name == "clip01.mp4":
                link = tarfile.TarInfo(member.name)
                link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
                out.addfile(link)
            else:
                out.addfile(member, io.BytesIO(src.extractfile(member).read()))
    cfg = config(str(tmp_path), shuffle_buffer=1)
    full = take(TrainLoader(cfg), 4)  # two epochs
    assert [b.keys[0] for b in full] == ["clip00", "clip02", "clip00", "clip02"]
    assert full[1].skip_reasons == ["clip01: no .mp4 member"]

    first = TrainLoader(cfg)
    take(first, 1)
    resumed = TrainLoader(cfg)
    resumed.load_state_dict(first.state_dict())
    assert [b.keys for b in take(resumed, 3)] == [b.keys for b in full[1:]]
