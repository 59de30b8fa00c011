"""A full disk during finalize: one clean error line, and a rerun with space again leaves no
temporary file behind; ``shards verify`` flags one that an interrupted write left.

The output lives on a real small filesystem (a tmpfs mounted for the test, removed after); a
stage appended after the write stage fills it, so the index and manifest writes of finalize
meet ENOSPC. The input is an 8 s clip cut from the real footage.
"""

from __future__ import annotations

import errno
import subprocess
from pathlib import Path

import pytest
import yaml

from footage_clips import FOOTAGE, cut_clip
from multishot.cli import main
from multishot.pipeline import stages as pipeline_stages
from multishot.pipeline.stages import Stage


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB tmpfs at ``tmp_path/disk`` (unmounted afterwards)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(folder: Path) -> None:
    """Write ``folder/filler`` until the filesystem is full (unbuffered: each write reaches the disk)."""
    with open(folder / "filler", "wb", buffering=0) as f:
        for size in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError as err:
                assert err.errno == errno.ENOSPC


def test_disk_full_in_finalize_is_one_line_and_the_rerun_cleans_up(small_disk, tmp_path, capsys):
    clip = tmp_path / "in" / "sintel.mp4"
    cut_clip(FOOTAGE / "archive" / "sintel_film_excerpt_26s.mp4", 2.0, 8.0, clip)
    config = tmp_path / "quick.yaml"
    config.write_text(yaml.safe_dump({
        "detect": {"backend": "content"}, "analyse": {"ocr_backend": "none"},
        "pack": {"buckets": [{"name": "2s", "target_s": 2, "tolerance_s": 1}]},
        "render": {"width": 160, "height": 96}, "ray": {"runner": "sequential"}}))
    out = small_disk / "out"
    argv = ["pipeline", "run", "--config", str(config), "--input", str(clip.parent), "--output", str(out), "--no-progress"]

    pipeline_stages.STAGES.append(Stage("fill", lambda c, h: lambda task: _fill(small_disk), "write", every_task=True))
    try:
        code = main(argv)
    finally:
        pipeline_stages.STAGES.pop()
    err = capsys.readouterr().err
    assert code == 2, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("multishot pipeline run: ")]
    assert len(lines) == 1 and "No space left on device" in lines[0] and "Traceback" not in err, err[-3000:]
    assert list(out.glob("shards/*.tar"))  # the finished video's shards are kept

    (small_disk / "filler").unlink()
    # an interrupted write (a kill) leaves a temporary file: verify names it
    (out / "index").mkdir(exist_ok=True)
    (out / "index" / "samples.parquet.0123abcd.tmp").write_bytes(b"half a table")
    main(["shards", "verify", str(out), "-q"])
    assert "index/samples.parquet.0123abcd.tmp: left-over temporary file" in capsys.readouterr().out

    assert main(argv) == 0
    capsys.readouterr()
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert main(["shards", "verify", str(out)]) == 0, capsys.readouterr()
