"""``benchmarks/train.py`` runs on CPU at the `tiny` size with the options the GPU measurements
use (LoRA, CPU offload, batches of short samples, selective checkpointing, the profiler), and
reports what it ran. Timings on CPU mean nothing; the numbers are measured on GPUs."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_benchmark_runs_a_lora_offloaded_batched_selective_step(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(REPO / "benchmarks/train.py"), "--model", "tiny", "--frames", "17",
           "--batch-size", "2", "--lora-rank", "4", "--cpu-offload", "--checkpoint-policy", "selective",
           "--no-compile", "--warmup", "1", "--steps", "1", "--profile", "--out", str(out)]
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "MASTER_PORT": str(free_port())})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert (report["model"], report["batch_per_gpu"], report["lora_rank"]) == ("tiny", 2, 4)
    assert report["cpu_offload"] and report["checkpoint_policy"] == "selective"
    # 2 blocks × 10 adapted Linears × (A [4, in] + B [out, 4]); width 64, FFN 128
    assert report["trainable_parameters"] == 2 * (8 * 4 * (64 + 64) + 2 * 4 * (64 + 128))
    assert report["latents"] == [16, 5, 4, 4] and report["tokens_per_sample"] == 20
    assert report["tokens_per_s_per_gpu"] > 0 and report["timed_steps"] == 1
    assert (tmp_path / "bench.trace.json").stat().st_size > 0
    assert "aten::mm" in (tmp_path / "bench.kernels.txt").read_text()
