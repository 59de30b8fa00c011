"""Every ``multishot`` command reports a bad input the same way: exit code 2 and exactly one
line on stderr naming the problem, no traceback; a training rank's bad input under ``multishot
train`` (torchrun, two ranks) ends the same way instead of torchrun's child-failure report; and
output into a pipe whose reader has gone ends quietly.

Each case runs the installed ``multishot`` in a fresh process, as a user would.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from multishot.cli import BROKEN_PIPE_EXIT

REPO = Path(__file__).resolve().parents[1]
#: no credentials from the environment, no network: a Gemini client would hit a closed port
ENV = {**{k: v for k, v in os.environ.items() if not k.startswith(("GEMINI", "GOOGLE"))},
       "GEMINI_API_KEY": "test", "GOOGLE_GEMINI_BASE_URL": "http://127.0.0.1:9",
       "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}


def multishot(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "multishot", *args], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=300, **kwargs)


def assert_one_line_error(result: subprocess.CompletedProcess, *words: str) -> str:
    lines = result.stderr.splitlines()
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stdout == ""
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def bad_train_config(tmp_path_factory) -> Path:
    """A train config with an unknown key and a wrong value."""
    config = yaml.safe_load((REPO / "configs/train/tiny_cpu.yaml").read_text())
    config["model"]["nmae"] = "tiny"
    config["run"]["max_steps"] = 0
    path = tmp_path_factory.mktemp("cli") / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("args, words", [
    (["pipeline", "run", "--config", "missing.yaml"], ["multishot pipeline run:", "missing.yaml"]),
    (["pipeline", "run", "--config", "configs/pipeline/demo.yaml", "--input", "/no/such/films"],
     ["multishot pipeline run:", "/no/such/films"]),
    (["shards", "ls", "/no/such/set"], ["multishot shards ls:", "/no/such/set"]),
    (["annotate", "--shards", "/no/such/set", "--output", "/tmp/never"], ["multishot annotate:", "/no/such/set"]),
    (["precompute", "--config", "{bad}", "--out", "/tmp/never"], ["multishot precompute:", "model.nmae", "run.max_steps"]),
    (["train", "--config", "{bad}"], ["multishot train:", "model.nmae", "run.max_steps"]),
    # the README's tiny config leaves its encoders to be filled in: refused before torchrun starts
    (["train", "--config", "configs/train/tiny_cpu.yaml"], ["multishot train:", "encoders.vae"]),
    (["train", "--config", "configs/train/tiny_cpu.yaml", "--set", "run.max_steps"], ["--set expects KEY=VALUE"]),
    (["train"], ["multishot train: error:", "--config"]),  # argparse's usage error, one line too
    (["nosuchcommand"], ["multishot: error:", "nosuchcommand"]),
])
def test_bad_input_is_one_line_and_exit_2(args, words, bad_train_config):
    assert_one_line_error(multishot(*[a.replace("{bad}", str(bad_train_config)) for a in args]), *words)


def test_failed_rank_ends_in_one_line_not_torchruns_report(tmp_path):
    # the launcher accepts this config; both ranks then find that init_from does not fit
    save_file({"blocks.0.self_attn.q.weight": torch.zeros(3, 3)}, str(tmp_path / "wrong.safetensors"))
    (tmp_path / "unused.tar").write_bytes(b"")  # exists (the launcher checks paths); never read
    config = {"model": {"name": "tiny", "init_from": str(tmp_path / "wrong.safetensors"),
                        "window_cross_attention": False},
              "data": {"shards": [str(tmp_path / "unused.tar")], "kind": "latents", "num_workers": 0},
              "run": {"output_dir": str(tmp_path / "run"), "max_steps": 1, "tensorboard": False}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    result = multishot("train", "--config", str(tmp_path / "run.yaml"), "--nproc", "2")
    line = assert_one_line_error(result, "multishot train:", "wrong.safetensors", "does not fit",
                                 "blocks.0.self_attn.q.weight: (3, 3) vs (64, 64)")
    assert "ChildFailedError" not in line and "elastic" not in line


def _into_closed_pipe(args: list[str], buffered: bool) -> subprocess.CompletedProcess:
    """Run with stdout a pipe whose read end is closed before the command starts: its first
    write to stdout fails (EPIPE), as in ``multishot ... | head`` once head has exited.
    ``buffered``: stdout block-buffered (Python's default for a pipe: the failure comes when
    the buffer is flushed, at exit at the latest) or written through (``PYTHONUNBUFFERED``)."""
    env = {k: v for k, v in ENV.items() if k != "PYTHONUNBUFFERED"}
    if not buffered:
        env["PYTHONUNBUFFERED"] = "1"
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run([sys.executable, "-m", "multishot", *args], cwd=REPO, env=env,
                              stdout=write, stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(write)


@pytest.mark.parametrize("buffered", [True, False])
def test_output_into_a_closed_pipe_ends_quietly(buffered, train_footage_shards):
    listing = _into_closed_pipe(["shards", "ls", "--json", "-q", train_footage_shards["clean"]],
                                buffered)
    assert listing.returncode == BROKEN_PIPE_EXIT, listing.stderr[-3000:]
    # (the set has no index: the listing warns that it reads the shards' JSON)
    assert "Error" not in listing.stderr and "Exception" not in listing.stderr, listing.stderr
    if buffered:  # argparse itself ignores a failed write of --help when it is not buffered
        usage = _into_closed_pipe(["--help"], buffered)
        assert (usage.returncode, usage.stderr) == (BROKEN_PIPE_EXIT, "")


def test_head_reads_the_first_lines_of_a_listing(train_footage_shards):
    shell = subprocess.run(
        f"set -o pipefail; {sys.executable} -m multishot shards ls --json -q "
        f"{train_footage_shards['clean']} | head -n 1", shell=True, executable="/bin/bash",
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert shell.stdout.count("\n") == 1 and '"key"' in shell.stdout
    assert "Error" not in shell.stderr and "Traceback" not in shell.stderr, shell.stderr
