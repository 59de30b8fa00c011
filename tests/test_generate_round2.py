"""``generate`` under bad input (issue [P] item 11): a non-UTF-8 line on ``--schedule -`` is a
skipped line, not a crashed stream; more shots than the frames hold, ``--num-frames 0`` and an
unusable ``-o`` are one line and exit 2, before anything is generated. Tiny random models loaded
by the real loading code (``configs/generate/tiny_cpu*.yaml``).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from multishot.cli import main as multishot_main
from test_causal_stream import stream_config

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs/generate/tiny_cpu.yaml"


def test_non_utf8_line_on_stdin_is_skipped_and_the_stream_finishes(tmp_path):
    out = tmp_path / "video" / "live.mp4"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "multishot", "generate", "--causal", "--config", str(stream_config(tmp_path, None, None)),
         "--schedule", "-", "--global-caption", "Blender films.", "--chunks-per-shot", "1", "-o", str(out)],
        cwd=tmp_path, env=env, capture_output=True, timeout=600,
        input=b"a rabbit hops\n\xff\xfe caf\xe9 in Latin-1\nTrees of the scene\n")
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode == 0, stderr[-3000:]
    assert "stdin:2: not UTF-8 text (byte 0)" in stderr and "Traceback" not in stderr
    info = json.loads(out.with_suffix(".json").read_text())
    assert info["chunk_shots"][-1] == 1  # both good lines became shots


@pytest.mark.parametrize("args, words", [
    (["--prompt", "[global caption] a scene " + "".join(f"[per shot caption] shot {i} " if i == 0 else
                                                        f"[shot cut] shot {i} " for i in range(50))],
     "the prompt has 50 shots but 17 frames"),
    (["--prompt", "[global caption] a [per shot caption] b", "--num-frames", "0"], "num_frames must be 4k+1, got 0"),
])
def test_bad_requests_are_one_line_before_generating(tmp_path, monkeypatch, capsys, caplog, args, words):
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.INFO):
        code = multishot_main(["generate", "--config", str(TINY), *args, "-o", str(tmp_path / "x.mp4")])
    err = capsys.readouterr().err
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err
    assert "RANDOM weights" not in caplog.text and not (tmp_path / "x.mp4").exists()


def test_output_folder_for_one_prompt_is_refused_before_generating(tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "videos"
    folder.mkdir()
    with caplog.at_level(logging.INFO):
        code = multishot_main(["generate", "--config", str(TINY), "--prompt",
                               "[global caption] a [per shot caption] b", "-o", str(folder)])
    err = capsys.readouterr().err
    assert code == 2 and "is a folder" in err and len(err.strip().splitlines()) == 1, err
    assert "RANDOM weights" not in caplog.text and not list(folder.iterdir())
