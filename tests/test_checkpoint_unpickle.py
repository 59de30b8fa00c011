"""A run folder cannot run code: DCP checkpoints are read without unrestricted unpickling.

PyTorch's DCP reader unpickles a checkpoint's ``.metadata`` with ``pickle.load`` and its
non-tensor entries with ``torch.load(weights_only=False)``. Each test saves a real checkpoint
at test time, then crafts one of its files so that reading it would write a marker file; every
path the tools read checkpoints through (train resume, ``export-lora``, the distill resume's
reader) must refuse it with a clear error before the marker exists.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import yaml

from multishot.model import dcp_reader
from multishot.model.dcp_reader import UnsafeCheckpointError

REPO = Path(__file__).resolve().parents[1]


class WritesAFile:
    """Unpickling this writes ``path`` (what a crafted checkpoint would do, harmlessly)."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (exec, (f"open({self.path!r}, 'w').write('pwned')",))


def _tiny_state() -> dict:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    return {"train": {"model": {"lora_A.weight": model.weight.detach().clone(),
                                "bias": model.bias.detach().clone()},
                      "step": 4, "rank0": {"loader": {"epoch": 1, "offset": 7},
                                           "rng": {"cpu": torch.get_rng_state()}}}}


@pytest.fixture()
def checkpoint(tmp_path) -> Path:
    path = tmp_path / "run" / "checkpoints" / "step-00000004"
    dcp.save(_tiny_state(), checkpoint_id=str(path), no_dist=True)
    return path


def _craft_metadata(checkpoint: Path, marker: Path) -> None:
    """Put the crafted object inside the real Metadata (which still loads), as an attacker
    editing a real file would."""
    meta = dcp.FileSystemReader(str(checkpoint)).read_metadata()
    meta.note = WritesAFile(marker)
    (checkpoint / ".metadata").write_bytes(pickle.dumps(meta))


def test_a_real_checkpoint_loads_through_the_restricted_reader(checkpoint):
    loaded = {"train": {"model": {"lora_A.weight": torch.zeros(3, 4), "bias": torch.zeros(3)},
                        "step": 0, "rank0": {"loader": {"epoch": 0, "offset": 0},
                                                      "rng": {"cpu": torch.zeros_like(torch.get_rng_state())}}}}
    dcp_reader.load(loaded, checkpoint, no_dist=True)
    expected = _tiny_state()["train"]
    assert loaded["train"]["step"] == 4 and loaded["train"]["rank0"]["loader"] == {"epoch": 1, "offset": 7}
    assert torch.equal(loaded["train"]["model"]["lora_A.weight"], expected["model"]["lora_A.weight"])
    assert torch.equal(loaded["train"]["rank0"]["rng"]["cpu"], expected["rank0"]["rng"]["cpu"])


@pytest.mark.parametrize("crafted", ["metadata", "entry"])
def test_train_resume_refuses_a_crafted_checkpoint(tmp_path, crafted):
    """The trainer's own save, then its resume (``trainer.checkpoint.load``) of a crafted copy."""
    from multishot.trainer import checkpoint as ckpt

    marker = tmp_path / "PWNED"
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        def state(extra: dict) -> ckpt.TrainState:
            torch.manual_seed(0)
            model = torch.nn.Linear(4, 3)
            optimizer = torch.optim.AdamW(model.parameters())
            model(torch.ones(1, 4)).sum().backward()
            optimizer.step()
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
            return ckpt.TrainState(model, optimizer, scheduler, 4, extra)

        # the loader position is a non-tensor entry: torch.save'd bytes inside a .distcp file
        saved = ckpt.save(state({"loader": {"epoch": WritesAFile(marker) if crafted == "entry" else 1}}),
                          tmp_path / "run", keep=2)
        assert not marker.exists()
        if crafted == "metadata":
            _craft_metadata(saved, marker)
        else:  # the clean state resumes; the crafted one must not
            clean = ckpt.save(state({"loader": {"epoch": 1}}), tmp_path / "clean", keep=2)
            resumed = state({"loader": {"epoch": 0}})  # as the trainer: extra is the template
            resumed.step = 0
            ckpt.load(resumed, clean)
            assert resumed.extra == {"loader": {"epoch": 1}} and resumed.step == 4
        with pytest.raises(UnsafeCheckpointError, match="refused"):
            ckpt.load(state({"loader": {"epoch": 0}}), saved)
    finally:
        dist.destroy_process_group()
    assert not marker.exists()


def test_export_lora_refuses_a_crafted_checkpoint_with_one_line(checkpoint, tmp_path):
    marker = tmp_path / "PWNED"
    _craft_metadata(checkpoint, marker)
    run_dir = checkpoint.parents[1]
    config = yaml.safe_load((REPO / "configs/train/tiny_cpu_lora.yaml").read_text())
    config["data"]["kind"] = "latents"  # export-lora reads no data; latents need no encoders
    config["model"]["window_cross_attention"] = False
    (run_dir / "config.resolved.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "multishot", "export-lora", str(run_dir),
                             "--checkpoint", str(checkpoint), "--out", str(tmp_path / "a.safetensors")],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.startswith("multishot export-lora: ") and "refused" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not marker.exists() and not (tmp_path / "a.safetensors").exists()


def test_metadata_refusal_names_the_file_and_the_global(checkpoint, tmp_path):
    _craft_metadata(checkpoint, tmp_path / "PWNED")
    with pytest.raises(UnsafeCheckpointError) as err:
        dcp_reader.read_metadata_file(checkpoint / ".metadata")
    assert str(checkpoint / ".metadata") in str(err.value) and "builtins.exec" in str(err.value)
    assert not (tmp_path / "PWNED").exists()
