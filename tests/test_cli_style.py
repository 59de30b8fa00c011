"""One command-line style (issue 31): ``--config`` + ``--set`` on every command that takes a
config, ``--output`` with ``--out`` kept as an alias, ``--version``, an unknown flag named as
such, and ``pipeline run --dry-run`` (which videos a run would process or skip, and why).

Commands run as the installed ``multishot`` in a fresh process, as in ``test_cli_errors``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from multishot import __version__
from multishot.cli import build_parser
from test_cli_errors import REPO, assert_one_line_error, multishot


def test_version():
    result = multishot("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"multishot {__version__}"


@pytest.mark.parametrize("args, flag, suggestion", [
    (["pipeline", "run", "--conifg", "configs/pipeline/demo.yaml"], "--conifg", "--config"),
    (["train", "--conifg", "configs/train/tiny_cpu.yaml"], "--conifg", "--config"),
    (["generate", "--config", "configs/generate/wan22_5b.yaml", "--promt", "x", "-o", "x.mp4"], "--promt", "--prompt"),
    (["shards", "ls", "/tmp", "--bogus"], "--bogus", None),
])
def test_unknown_flag_is_named(args, flag, suggestion):
    line = assert_one_line_error(multishot(*args), f"unrecognized argument {flag}")
    assert "required" not in line
    if suggestion:
        assert f"did you mean {suggestion}?" in line


# --set reaches the config of each command: an unknown key given with --set is refused by name
@pytest.mark.parametrize("args", [
    ["pipeline", "run", "--config", "configs/pipeline/demo.yaml", "--set", "nokey=1"],
    ["generate", "--config", "configs/generate/wan22_5b.yaml", "--set", "nokey=1",
     "--prompt", "[global caption] a [per shot caption] b", "-o", "/tmp/never.mp4"],
    ["eval", "/no/such.mp4", "--set", "nokey=1"],
    ["annotate", "--shards", "{set}", "--output", "/tmp/never", "--set", "nokey=1"],
])
def test_set_overrides_every_config(args, train_footage_shards):
    args = [a.replace("{set}", train_footage_shards["clean"]) for a in args]
    assert_one_line_error(multishot(*args), f"multishot {args[0]}", "nokey")


def test_set_value_is_used(tmp_path):
    """A --set value lands in the loaded config (pipeline: seen in the dry run's samples_hash)."""
    first = multishot("pipeline", "run", "--config", "configs/pipeline/demo.yaml", "--dry-run",
                      "--output", str(tmp_path / "out"))
    assert first.returncode == 0, first.stderr
    (tmp_path / "out" / "_work").mkdir(parents=True)
    plan_hash = _write_marker(tmp_path / "out", "ok")
    same = multishot("pipeline", "run", "--config", "configs/pipeline/demo.yaml", "--dry-run",
                     "--output", str(tmp_path / "out"))
    changed = multishot("pipeline", "run", "--config", "configs/pipeline/demo.yaml", "--dry-run",
                        "--output", str(tmp_path / "out"), "--set", "render.fps=8")
    assert "1 to skip" in same.stdout, same.stdout
    assert f"settings changed: done with samples_hash {plan_hash}" in changed.stdout, changed.stdout


@pytest.mark.parametrize("command", [["precompute", "--config", "c.yaml"], ["export-lora", "run"],
                                     ["annotate", "--shards", "s"], ["pipeline", "run", "--config", "c.yaml"],
                                     ["generate", "--config", "c.yaml", "--prompt", "p"],
                                     ["shards", "export", "p", "k"], ["shards", "report", "p"],
                                     ["eval", "v.mp4"]])
def test_output_flag_has_one_name_and_the_old_alias(command):
    parser = build_parser()
    values = set()
    for flag in ("--output", "--out", "-o"):
        args = parser.parse_args([*command, flag, "target"])
        values.add(getattr(args, "output", None) or getattr(args, "out", None) or getattr(args, "json", None))
    assert values == {"target"}


# ---- dry run ---------------------------------------------------------------------------------

FILM = "sintel_film_excerpt_26s.mp4"


def _write_marker(out: Path, status: str, samples_hash: str | None = None, film: str = FILM) -> str:
    """A result marker as a finished run leaves it (``pipeline.write.save_result``) for ``film``
    of demo/footage; returns the samples hash of configs/pipeline/demo.yaml."""
    from multishot.config import load_config
    from multishot.dataset.shards import ShardSetLayout
    from multishot.dataset.storage import resolve
    from multishot.pipeline.config import PipelineConfig
    from multishot.pipeline.run import compute_samples_hash
    from multishot.pipeline.task import VideoTask, fingerprint
    from multishot.pipeline.write import save_result

    config_hash = compute_samples_hash(load_config(REPO / "configs/pipeline/demo.yaml", PipelineConfig))
    source = str(REPO / "demo" / "footage" / film)
    fs, path = resolve(source)
    task = VideoTask(source=source, source_id=fingerprint(fs, path), samples_hash=samples_hash or config_hash)
    if status != "ok":
        task.fail("detect", "decoder stopped", status=status)
    out_fs, root = resolve(str(out))
    save_result(task, out_fs, ShardSetLayout(root))
    return config_hash


def test_dry_run_says_what_and_why_without_writing(tmp_path):
    films = tmp_path / "films"
    films.mkdir()
    for film in ("sintel_film_excerpt_26s.mp4", "bbb_first60s_360p.mp4", "sintel_trailer_480p.mp4"):
        (films / film).symlink_to(REPO / "demo" / "footage" / film)
    shutil.copy(REPO / "demo" / "footage" / FILM, films / "copy_of_sintel.mp4")  # same content
    (films / "broken.mp4").write_bytes(b"")
    out = tmp_path / "out"
    _write_marker(out, "ok")
    _write_marker(out, "error", film="bbb_first60s_360p.mp4")
    before = sorted(p.name for p in out.rglob("*"))
    config = tmp_path / "demo.yaml"
    config.write_text(yaml.safe_dump({**yaml.safe_load((REPO / "configs/pipeline/demo.yaml").read_text()),
                                      "input": str(films), "output": str(out)}))
    result = multishot("pipeline", "run", "--config", str(config), "--dry-run")
    assert result.returncode == 0, result.stderr
    lines = {line.split()[1]: line for line in result.stdout.splitlines()[:-1]}
    # the copy has the film's content, so its identity: one of the two is done, the other a duplicate
    pair = sorted([lines[FILM], lines["copy_of_sintel.mp4"]])
    assert pair[0].startswith("reject") and "duplicate of" in pair[0], pair
    assert pair[1].startswith("skip") and "done (ok" in pair[1], pair
    assert lines["bbb_first60s_360p.mp4"].startswith("process") and "retry" in lines["bbb_first60s_360p.mp4"]
    assert lines["sintel_trailer_480p.mp4"].startswith("process") and "new" in lines["sintel_trailer_480p.mp4"]
    assert lines["broken.mp4"].startswith("process")  # an unreadable video is found out by the run's probe
    assert result.stdout.splitlines()[-1].startswith("5 videos: 3 to process, 1 to skip, 1 rejected")
    assert sorted(p.name for p in out.rglob("*")) == before  # nothing written
    assert "ray" not in result.stderr.lower()
    assert json.loads(next((out / "_work").glob("*.json")).read_text())  # markers untouched
