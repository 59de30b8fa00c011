"""The trainer with Ulysses context parallelism (``parallel.context``) on CPU: torchrun with
gloo on loopback, the `tiny` DiT (2 heads) on footage shards at 48×48 pixels (5 latent frames of
9 tokens: 45 tokens, padded to 46 on 2 ranks).

A run split over 2 ranks logs the single-process run's per-step losses, and its DCP checkpoint,
saved at ``parallel.context: 2``, resumes at ``parallel.context: 1`` with the same losses.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
STEPS, CHECKPOINT = 4, 2
#: float32 CP sums its gradients in another order: losses agree to rounding, not bit for bit
LOSS_RTOL = 1e-5


def write_config(tmp: Path, shards: dict, encoders: dict, name: str, context: int) -> Path:
    config = yaml.safe_load((REPO / "configs/train/tiny_cpu.yaml").read_text())
    config["data"].update(shards=[shards["clean"]], height=48, width=48)
    config["encoders"].update(encoders)
    config["parallel"] = {"context": context}
    config["run"].update(output_dir=str(tmp / name), max_steps=STEPS, checkpoint_every=CHECKPOINT,
                         tensorboard=False, export_safetensors=False)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def train(nproc: int, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc-per-node={nproc}",
           "--master-addr=127.0.0.1", f"--master-port={29000 + os.getpid() % 300}", *args]
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def losses(output_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}


@pytest.fixture(scope="module")
def single(tmp_path_factory, train_footage_shards, tiny_encoders) -> Path:
    tmp = tmp_path_factory.mktemp("cp_single")
    train(1, "-m", "multishot.cli.train", "--config",
          str(write_config(tmp, train_footage_shards, tiny_encoders, "single", 1)))
    return tmp / "single"


@pytest.fixture(scope="module")
def split(tmp_path_factory, train_footage_shards, tiny_encoders) -> Path:
    """The trainer's own run over 2 context-parallel ranks, plus a hook recording the tokens a
    block's self-attention sees on each rank (``tokens{rank}.json``)."""
    tmp = tmp_path_factory.mktemp("cp_split")
    config = write_config(tmp, train_footage_shards, tiny_encoders, "cp2", 2)
    driver = tmp / "driver.py"
    driver.write_text(textwrap.dedent(f"""
        import json, torch.distributed as dist
        from multishot.config import load_config
        from multishot.trainer.config import TrainConfig
        from multishot.trainer.trainer import Trainer

        trainer = Trainer(load_config({str(config)!r}, TrainConfig))
        seen = set()
        trainer.model.blocks[0].self_attn.register_forward_hook(
            lambda m, args, out: seen.add(args[0].shape[1]))
        trainer.train()
        with open({str(tmp)!r} + f"/tokens{{dist.get_rank()}}.json", "w") as fh:
            json.dump([trainer.model.context_parallel.degree, sorted(seen)], fh)
    """))
    train(2, str(driver))
    return tmp


def test_context_parallel_run_has_the_single_process_losses(single, split):
    for rank in range(2):   # 45 tokens a sample: 23 per rank, the last one padding on rank 1
        assert json.loads((split / f"tokens{rank}.json").read_text()) == [2, [23]]
    expected, got = losses(single), losses(split / "cp2")
    assert sorted(got) == list(range(1, STEPS + 1))
    assert len(set(expected.values())) == STEPS   # the steps differ: a real run, not a constant
    for step in expected:
        assert got[step] == pytest.approx(expected[step], rel=LOSS_RTOL), step


def test_checkpoint_saved_at_context_2_resumes_at_context_1(single, split, tmp_path,
                                                           train_footage_shards, tiny_encoders):
    resumed = tmp_path / "resumed"
    step_dir = f"step-{CHECKPOINT:08d}"
    shutil.copytree(split / "cp2" / "checkpoints" / step_dir, resumed / "checkpoints" / step_dir)
    result = train(1, "-m", "multishot.cli.train", "--config",
                   str(write_config(tmp_path, train_footage_shards, tiny_encoders, "resumed", 1)))
    assert f"resumed from {resumed / 'checkpoints' / step_dir}" in result.stderr
    expected, got = losses(single), losses(resumed)
    assert sorted(got) == list(range(CHECKPOINT + 1, STEPS + 1))
    for step in got:
        assert got[step] == pytest.approx(expected[step], rel=LOSS_RTOL), step
