"""``annotate``'s resume trusts an OUT shard only when it was captioned from IN's current shard.

Re-captioning a changed set into an old OUT used to keep OUT's stale shards (same names) and
``shards verify`` then failed. IN and its changed copy are real-footage shard sets
(``test_annotate``), captioned by the stand-in Gemini service.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from multishot.cli import main as multishot_main
from multishot.dataset.shards import Manifest, ShardSetLayout, read_shard, write_manifest, write_shard
from multishot.dataset.storage import resolve
from test_annotate import FAST, samples, server, shard_set  # noqa: F401 (fixtures)


def _changed_copy(shard_set: str, samples: dict, root: Path) -> Path:
    """IN changed: shard sintel-00000.tar now holds sintel-c alone, sintel-00001.tar is gone."""
    shutil.copytree(shard_set, root)
    fs, _ = resolve(str(root))
    layout = ShardSetLayout(str(root))
    (root / "shards" / "sintel-00001.tar").unlink()
    info = write_shard(fs, layout.shard("sintel-00000.tar"), [samples["sintel-c"]])
    write_manifest(fs, layout, Manifest(kind="samples", shards=[info]))
    pq.write_table(pa.table({"key": ["sintel-c"], "shard": ["sintel-00000.tar"], "num_shots": [2],
                             "caption_status": ["pending"]}), layout.samples_index)
    return root


def test_annotate_into_an_old_output_redoes_changed_shards(server, shard_set, samples, tmp_path, capsys):
    config = tmp_path / "annotate.yaml"
    config.write_text(json.dumps(FAST))
    out = tmp_path / "out"

    def annotate(source) -> int:
        return multishot_main(["annotate", "--shards", str(source), "--output", str(out), "--config", str(config),
                               "--cache-dir", str(tmp_path / "cache")])

    assert annotate(shard_set) == 0
    changed = _changed_copy(shard_set, samples, tmp_path / "changed")
    assert annotate(changed) == 0
    fs, _ = resolve(str(out))
    keys = [record.key for record, _ in read_shard(fs, str(out / "shards" / "sintel-00000.tar"))]
    assert keys == ["sintel-c"]
    assert sorted(p.name for p in (out / "shards").glob("*.tar")) == ["sintel-00000.tar"]
    assert (out / "_work" / "set_aside" / "sintel-00001.tar").exists()  # kept, not deleted
    capsys.readouterr()
    assert multishot_main(["shards", "verify", str(out)]) == 0, capsys.readouterr()
    assert pq.read_table(out / "index" / "samples.parquet")["key"].to_pylist() == ["sintel-c"]
