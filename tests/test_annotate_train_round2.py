"""``annotate`` and ``train`` under the second hostile round (issue [P] item 12): a run where
every sample failed is not a success; a runaway caption is refused without a tokenizer; the
training loader honours a set's manifest kind and counts a corrupt shard in its skips.
Real-footage samples throughout (``test_annotate``'s set, conftest's training shards).
"""

from __future__ import annotations

import json
import shutil

import pytest

import gemini_server as gs
from multishot.cli import main as multishot_main
from multishot.dataset.loader import DataConfig, TrainLoader
from multishot.dataset.shards import Manifest, ShardSetLayout, write_manifest
from multishot.dataset.storage import resolve
from multishot.errors import UsageError
from test_annotate import FAST, _captioner, samples, server, shard_set  # noqa: F401 (fixtures)


def test_annotate_exits_non_zero_when_every_sample_failed(server, shard_set, tmp_path, capsys):
    config = tmp_path / "annotate.yaml"
    config.write_text(json.dumps({**FAST, "max_attempts": 1, "concurrency": 1}))
    server.queue(*[gs.error(503)] * 3)
    code = multishot_main(["annotate", "--shards", shard_set, "--output", str(tmp_path / "out"),
                           "--config", str(config), "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code == 1, err[-2000:]
    assert "multishot annotate: every sample failed (3 of 3; first reason:" in err and "503" in err


def test_a_runaway_caption_is_refused_without_a_tokenizer(server, samples, tmp_path):
    record, mp4 = samples["sintel-a"]
    huge = "a" * (2 << 20)  # a 2 MB caption
    reply = {"global_caption": f"[character1] runs. {huge}",
             "shot_captions": [{"shot": 1, "caption": "[character1] runs."}, {"shot": 2, "caption": "A door."}]}
    server.queue(gs.reply_text(json.dumps(reply)), gs.reply_text(json.dumps(reply)))
    out = _captioner(tmp_path).annotate(record, mp4)  # the default config: no text_tokenizer
    assert out.caption_status == "failed"
    assert "characters" in out.caption_error and len(out.caption_error) < 1000
    assert not out.global_caption or len(out.global_caption) < 10000


def _config(root: str, **kw) -> DataConfig:
    base = dict(shards=[root], num_frames=17, height=64, width=64, shuffle_buffer=4, num_workers=0,
                uncaptioned="placeholder")
    return DataConfig(**{**base, **kw})


def test_loader_honours_the_manifest_kind(train_footage_shards, tmp_path):
    root = tmp_path / "set"
    shutil.copytree(train_footage_shards["clean"], root)
    fs, _ = resolve(str(root))
    write_manifest(fs, ShardSetLayout(str(root)), Manifest(kind="samples", shards=[]))
    with pytest.raises(UsageError, match="is a samples set .* data.kind is 'latents': set data.kind: video"):
        TrainLoader(_config(str(root), kind="latents"))
    write_manifest(fs, ShardSetLayout(str(root)), Manifest(kind="latents", shards=[]))
    with pytest.raises(UsageError, match="is a latents set .* data.kind is 'video': set data.kind: latents"):
        TrainLoader(_config(str(root), kind="video"))


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_corrupt_shard_counts_in_the_skips(train_footage_shards, tmp_path, damage):
    import itertools

    root = tmp_path / "set"
    shutil.copytree(train_footage_shards["clean"], root)
    shard = root / "shards" / "a-00001.tar"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 3] if damage == "truncated" else b"not a tar, " * (len(data) // 11))
    loader = TrainLoader(_config(str(root), batch_size=1))
    batches = list(itertools.islice(loader, 8))  # more than an epoch
    reasons = [r for b in batches for r in b.skip_reasons]
    assert loader.skipped >= 1 and any("a-00001.tar" in r and ("damaged" in r or "unreadable" in r)
                                       for r in reasons), reasons
