"""Every name read from a manifest, index or result file stays inside its root.

A shard set's ``manifest.json`` and ``index/samples.parquet`` name shards relative to
``shards/``; an attacker who edits them (``../../PWNED.tar``) must not make any command read or
write outside the set. The set is the real-footage one of ``test_annotate``, copied and edited
at test time.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from multishot.cli import main as multishot_main
from multishot.dataset.names import UnsafeNameError, check_relative_name
from multishot.dataset.shards import ShardSetLayout
from test_annotate import FAST, samples, server, shard_set  # noqa: F401 (fixtures)

EVIL = "../../PWNED.tar"


def _crafted_set(shard_set: str, tmp_path: Path) -> Path:
    """A copy of the set whose manifest names its first shard ``../../PWNED.tar``; the real
    shard is also put where that name points from the set (``tmp/PWNED.tar``), so that a reader
    following the name finds valid data and goes on."""
    root = tmp_path / "in"
    shutil.copytree(shard_set, root)
    manifest = json.loads((root / "manifest.json").read_text())
    first = manifest["shards"][0]["name"]
    shutil.copy(root / "shards" / first, tmp_path / "PWNED.tar")
    manifest["shards"][0]["name"] = EVIL
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def _one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith(f"multishot {command}: ") and len(err.strip().splitlines()) == 1, err
    return err


def test_annotate_refuses_a_manifest_name_outside_the_set(server, shard_set, tmp_path, capsys):
    root = _crafted_set(shard_set, tmp_path)
    config = tmp_path / "annotate.yaml"
    config.write_text(json.dumps(FAST))
    out = tmp_path / "a" / "b" / "out"
    code = multishot_main(["annotate", "--shards", str(root), "--output", str(out),
                           "--config", str(config), "--cache-dir", str(tmp_path / "cache")])
    assert code == 2
    err = _one_line_error(capsys, "annotate")
    assert EVIL in err and "leave" in err
    assert not (tmp_path / "a" / "PWNED.tar").exists() and not list(tmp_path.glob("a/**/*.tar"))


def test_shards_commands_refuse_names_outside_the_set(shard_set, tmp_path, capsys):
    root = _crafted_set(shard_set, tmp_path)
    assert multishot_main(["shards", "verify", str(root)]) != 0
    out = capsys.readouterr()
    assert EVIL in out.out + out.err and "Traceback" not in out.err

    # the index names the shard of each key: a crafted one must not be opened
    index = pq.read_table(root / "index" / "samples.parquet")
    shard = index.column("shard").to_pylist()
    shard[0] = EVIL
    pq.write_table(index.set_column(index.schema.get_field_index("shard"), "shard",
                                    __import__("pyarrow").array(shard)), root / "index" / "samples.parquet")
    key = index.column("key")[0].as_py()
    assert multishot_main(["shards", "show", str(root), key]) == 2
    assert EVIL in _one_line_error(capsys, "shards show")


@pytest.mark.parametrize("name", [EVIL, "/etc/passwd", "C:\\x.tar", "a\\..\\b.tar", "", "a/../../b.tar", "x\x00.tar"])
def test_one_check_for_every_relative_name(name):
    with pytest.raises(UnsafeNameError):
        check_relative_name(name, "shard")
    with pytest.raises(UnsafeNameError):
        ShardSetLayout("/data/set").shard(name)
    assert check_relative_name("sub/000001.tar") == "sub/000001.tar"
