"""Two CPU processes (gloo, torchrun on loopback) fine-tune the `tiny` DiT on footage shards.

One module-scoped uninterrupted run serves three checks: the loss on the small overfit set
falls; the corrupt samples in one shard are skipped and counted; and a second run, killed
(SIGKILL, no clean-up) two steps after its step-10 checkpoint and resumed, logs the same
per-step losses as the uninterrupted run.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
STEPS, CHECKPOINT, KILL_AT = 30, 10, 12
#: resumed losses must equal the uninterrupted run's to this relative tolerance: 0, bit-identical
#: (CPU, gloo, per-step seeded noise, data position and RNG restored)
RESUME_RTOL = 0.0


def write_config(tmp: Path, shards: dict, encoders: dict, name: str) -> Path:
    config = yaml.safe_load((REPO / "configs/train/tiny_cpu.yaml").read_text())
    config["data"]["shards"] = [shards["clean"], shards["corrupt"]]
    config["encoders"].update(encoders)
    config["run"].update(output_dir=str(tmp / name), max_steps=STEPS, checkpoint_every=CHECKPOINT)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def torchrun(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2",
           "--master-addr=127.0.0.1", f"--master-port={29600 + os.getpid() % 300}", *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def losses(output_dir: Path) -> dict[int, float]:
    """step → loss of metrics.jsonl; a resumed run's later lines overwrite the killed run's."""
    rows = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, train_footage_shards, tiny_encoders) -> Path:
    tmp = tmp_path_factory.mktemp("train")
    result = torchrun("-m", "multishot.cli.train", "--config", str(write_config(tmp, train_footage_shards, tiny_encoders, "full")))
    assert result.returncode == 0, result.stderr[-4000:]
    return tmp / "full"


def test_loss_falls_on_small_overfit_set(full_run):
    loss = losses(full_run)
    assert sorted(loss) == list(range(1, STEPS + 1))
    # medians: a step whose draw lands at small t has an irreducible loss near var(noise) = 1
    first = statistics.median(loss[s] for s in range(1, 6))
    last = statistics.median(loss[s] for s in range(STEPS - 9, STEPS + 1))
    assert last < 0.6 * first, (first, last)


def test_corrupt_samples_are_skipped_and_counted(full_run):
    rows = [json.loads(line) for line in (full_run / "metrics.jsonl").read_text().splitlines()]
    # the corrupt shard holds 2 bad samples of 4; 30 steps read it at least once
    assert rows[-1]["skipped_samples"] >= 2
    assert all(r["skipped_samples"] <= s["skipped_samples"] for r, s in zip(rows, rows[1:]))


def test_export_is_a_single_wan_safetensors(full_run):
    weights = load_file(str(full_run / "model.safetensors"))
    assert "blocks.0.self_attn.q.weight" in weights and "head.modulation" in weights
    assert not any("_checkpoint_wrapped_module" in k or "_fsdp" in k for k in weights)
    assert weights["blocks.0.self_attn.q.weight"].shape == (64, 64)


def test_killed_run_resumes_with_the_same_losses(full_run, tmp_path, train_footage_shards, tiny_encoders):
    config = write_config(tmp_path, train_footage_shards, tiny_encoders, "killed")
    driver = tmp_path / "killed_driver.py"
    driver.write_text(textwrap.dedent(f"""
        import os, signal
        from multishot.config import load_config
        from multishot.trainer.config import TrainConfig
        from multishot.trainer.trainer import Trainer

        def kill(step, metrics):
            if step == {KILL_AT}:
                os.kill(os.getpid(), signal.SIGKILL)  # a preemption: no clean-up at all

        Trainer(load_config({str(config)!r}, TrainConfig)).train(on_step=kill)
    """))
    killed = torchrun(str(driver))
    assert killed.returncode != 0
    out = tmp_path / "killed"
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == ["step-00000010"]
    assert max(losses(out)) == KILL_AT and not (out / "model.safetensors").exists()

    resumed = torchrun("-m", "multishot.cli.train", "--config", str(config))
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "resumed from" in resumed.stderr
    expected, got = losses(full_run), losses(out)
    assert sorted(got) == sorted(expected)
    for step in range(CHECKPOINT + 1, STEPS + 1):
        assert got[step] == pytest.approx(expected[step], rel=RESUME_RTOL), step
