"""Ulysses context parallelism (model/context_parallel.py) on CPU: a small DiT split over 2
and 4 gloo processes (torchrun on loopback) gives the single-process forward output and
parameter gradients, for sparse and full self-attention, uneven shots cut inside a rank's slice,
and sequences that need padding; plus the sharding arithmetic and the heads check."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from multishot.model.context_parallel import SequenceShard, check_heads

REPO = Path(__file__).resolve().parents[1]
#: float32, the brief's bound on the relative error (max |cp − ref| / max |ref| per tensor)
RTOL = 1e-5


def torchrun(nproc: int, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc-per-node={nproc}",
           "--master-addr=127.0.0.1", f"--master-port={29300 + os.getpid() % 300}", *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("ranks", [2, 4])
def test_forward_and_gradients_equal_single_process(ranks, tmp_path):
    out = tmp_path / "errors.json"
    result = torchrun(ranks, str(REPO / "tests" / "helpers" / "context_parallel_worker.py"), str(out))
    assert result.returncode == 0, result.stderr[-4000:]
    cases = json.loads(out.read_text())
    assert len(cases) == 8
    for name, case in cases.items():
        frames = int(name.rsplit("=", 1)[1])
        assert case["local_tokens"] == math.ceil(frames * 9 / ranks), name
        assert case["output"] < RTOL, name
        if "flex" in name:   # forward only (no FlexAttention backward on CPU)
            continue
        assert case["grads"] and not case["dead_grads"], (name, case["dead_grads"])
        worst = max(case["grads"], key=case["grads"].get)
        assert case["grads"][worst] < RTOL, (name, worst, case["grads"][worst])


@pytest.mark.parametrize("seq_len, degree", [(45, 4), (45, 2), (36, 4), (5, 4)])
def test_shards_cover_the_padded_sequence(seq_len, degree):
    x = torch.randn(2, seq_len, 3)
    chunk = math.ceil(seq_len / degree)
    shards = [SequenceShard(None, degree, r, seq_len, chunk) for r in range(degree)]
    local = [s.shard(x) for s in shards]
    assert all(t.shape == (2, chunk, 3) for t in local)
    joined = torch.cat(local, 1)
    assert torch.equal(joined[:, :seq_len], x)
    assert not joined[:, seq_len:].any()          # the end padding is zeros
    mask = torch.ones(2, seq_len, 4, dtype=torch.bool)
    assert torch.cat([s.shard(mask, pad_value=True) for s in shards], 1).all()
    with pytest.raises(ValueError, match="tokens on dim 1"):
        shards[0].shard(x[:, 1:])


def test_heads_must_divide_by_the_context_degree():
    check_heads(24, 8)
    check_heads(40, 5)
    with pytest.raises(ValueError, match="parallel.context 16 must divide the model's 24"):
        check_heads(24, 16)
    with pytest.raises(ValueError, match="parallel.context 3 must divide the model's 40"):
        check_heads(40, 3)


def test_train_config_rejects_a_context_degree_that_does_not_split_the_heads():
    from multishot.config import ConfigError, load_config
    from multishot.trainer.config import TrainConfig

    config = REPO / "configs" / "train" / "wan22_5b_sparse.yaml"
    assert load_config(config, TrainConfig, {"parallel": {"context": 8}}).parallel.context == 8
    with pytest.raises(ConfigError, match="parallel.context 16 must divide the model's 24"):
        load_config(config, TrainConfig, {"parallel": {"context": 16}})
