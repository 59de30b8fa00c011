"""The loader clips a sample to data.num_frames: the global caption's shot count follows."""

from __future__ import annotations

import os

from multishot.dataset.loader import DataConfig, TrainLoader
from multishot.dataset.record import GLOBAL_TAG, PER_SHOT_TAG, with_shot_count


def test_with_shot_count_rewrites_or_appends():
    assert with_shot_count("A duel. This scene contains 3 shots.", 2) == "A duel. This scene contains 2 shots."
    assert with_shot_count("A duel. this scene contains 3 shots. Night.", 1) == "A duel. This scene contains 1 shot. Night."
    assert with_shot_count("A duel.", 4) == "A duel. This scene contains 4 shots."


def test_clipped_sample_says_how_many_shots_it_kept(tmp_path, train_footage_shards):
    from multishot.dataset.shards import read_shard, write_shard
    from multishot.dataset.storage import resolve

    fs, _ = resolve(str(tmp_path))
    clean = os.path.join(train_footage_shards["clean"], "shards")
    records = {r.key: (r, mp4) for name in sorted(os.listdir(clean)) for r, mp4 in read_shard(fs, os.path.join(clean, name))}
    record, mp4 = records["clip04"]  # shots of 5, 16, 12 frames, captioned
    assert record.num_shots == 3
    record = record.model_copy(update={"global_caption": "Blender films. This scene contains 3 shots."})
    write_shard(fs, str(tmp_path / "set" / "shards" / "a-00000.tar"), [(record, mp4)])

    def prompt(num_frames: int) -> str:
        loader = TrainLoader(DataConfig(shards=[str(tmp_path / "set")], num_frames=num_frames, height=32, width=32,
                                        num_workers=0, shuffle_buffer=1))
        return next(iter(loader)).prompts[0]

    assert prompt(17).startswith(f"{GLOBAL_TAG} Blender films. This scene contains 2 shots. {PER_SHOT_TAG}")
    assert prompt(5).startswith(f"{GLOBAL_TAG} Blender films. This scene contains 1 shot. {PER_SHOT_TAG}")
    assert "This scene contains 3 shots." in prompt(33)
