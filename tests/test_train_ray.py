"""The Ray Train launcher runs the same training as ``torchrun -m multishot.cli.train``.

Two CPU Ray Train workers (gloo) fine-tune the `tiny` DiT for a few steps on the clean
footage shards, on a local Ray kept on loopback, in a subprocess (Ray's environment and
process state stay out of this pytest process). The same config through torchrun must log
the same per-step losses, and the Ray run must write the same checkpoints and export.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from multishot.cli import main

REPO = Path(__file__).resolve().parents[1]
STEPS, CHECKPOINT = 3, 2
#: both launchers give each rank the same data, seeds and gloo reductions: bit-identical losses
LAUNCHER_RTOL = 0.0


def write_config(tmp: Path, shards: dict, encoders: dict, name: str) -> Path:
    config = yaml.safe_load((REPO / "configs/train/tiny_cpu.yaml").read_text())
    config["data"]["shards"] = [shards["clean"]]
    config["encoders"].update(encoders)
    config["run"].update(output_dir=str(tmp / name), max_steps=STEPS, checkpoint_every=CHECKPOINT,
                         tensorboard=False)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def losses(output_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}


def env() -> dict[str, str]:
    # RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 must be set before ray is imported: Ray's no-cluster
    # mode then binds 127.0.0.1; gloo is kept on loopback as well
    out = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
           "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    out.pop("RAY_ADDRESS", None)
    return out


def test_help_explains_both_launchers(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--launcher {torchrun,ray}" in text and "--num-workers" in text and "--ray-address" in text
    assert "Ray Train" in text and "torchrun" in text


def test_ray_train_launcher_matches_torchrun(tmp_path, train_footage_shards, tiny_encoders):
    ray_config = write_config(tmp_path, train_footage_shards, tiny_encoders, "ray")
    driver = tmp_path / "ray_driver.py"
    driver.write_text(textwrap.dedent(f"""
        import json, ray
        from multishot.config import load_config
        from multishot.trainer.config import TrainConfig
        from multishot.trainer.ray_launch import launch

        ray.init(address="local", num_cpus=2, include_dashboard=False)  # never a cluster named in TMPDIR
        try:
            result = launch(load_config({str(ray_config)!r}, TrainConfig), 2, use_gpu=False)
            print("RESULT " + json.dumps(result.return_value))
        finally:
            ray.shutdown()
    """))
    run = subprocess.run([sys.executable, str(driver)], cwd=REPO, env=env(), capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-4000:]
    reported = json.loads(run.stdout.split("RESULT ", 1)[1].splitlines()[0])

    out = tmp_path / "ray"
    got = losses(out)
    assert sorted(got) == list(range(1, STEPS + 1))
    assert all(math.isfinite(v) for v in got.values())
    # rank 0's last ray.train.report (returned by its worker) is the last metrics.jsonl line
    assert reported["step"] == STEPS and reported["loss"] == got[STEPS]
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == ["step-00000002", "step-00000003"]
    assert (out / "model.safetensors").stat().st_size > 0

    torchrun_config = write_config(tmp_path, train_footage_shards, tiny_encoders, "torchrun")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2",
           "--master-addr=127.0.0.1", f"--master-port={29300 + os.getpid() % 300}",
           "-m", "multishot.cli.train", "--config", str(torchrun_config)]
    reference = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert reference.returncode == 0, reference.stderr[-4000:]
    expected = losses(tmp_path / "torchrun")
    for step in range(1, STEPS + 1):
        assert got[step] == pytest.approx(expected[step], rel=LAUNCHER_RTOL), step
