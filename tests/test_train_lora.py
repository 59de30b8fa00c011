"""A LoRA fine-tune of the `tiny` DiT by two CPU processes (gloo, torchrun on loopback, FSDP2,
selective activation checkpointing, LoRA dropout, batches of 2) on footage shards.

One module-scoped uninterrupted run serves the checks: its checkpoints hold only the adapters
and their AdamW state; it ends with ``lora.safetensors`` in the Wan LoRA layout (no full model
export); ``multishot export-lora`` reads the same adapter back from the last checkpoint and,
with ``--merge``, writes the base (``model.init_from``, untouched where no adapter is) plus
``(alpha/rank)·B·A``. A second run, killed (SIGKILL) after its step-4 checkpoint and resumed,
logs bit-identically the same per-step losses.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from test_train_distributed import losses, torchrun

REPO = Path(__file__).resolve().parents[1]
STEPS, CHECKPOINT, KILL_AT = 8, 4, 6


def write_config(tmp: Path, shards: dict, encoders: dict, name: str, base: Path) -> Path:
    config = yaml.safe_load((REPO / "configs/train/tiny_cpu_lora.yaml").read_text())
    config["model"]["init_from"] = str(base)
    config["data"]["shards"] = [shards["clean"]]
    config["encoders"].update(encoders)
    config["run"].update(output_dir=str(tmp / name), max_steps=STEPS, checkpoint_every=CHECKPOINT,
                         tensorboard=False)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, train_footage_shards, tiny_encoders, tiny_base) -> Path:
    tmp = tmp_path_factory.mktemp("train_lora")
    result = torchrun("-m", "multishot.cli.train", "--config",
                      str(write_config(tmp, train_footage_shards, tiny_encoders, "full", tiny_base)))
    assert result.returncode == 0, result.stderr[-4000:]
    return tmp / "full"


def export(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "multishot", "export-lora", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_checkpoints_hold_only_the_adapters(lora_run):
    import torch.distributed.checkpoint as dcp

    meta = dcp.FileSystemReader(str(lora_run / "checkpoints" / f"step-{STEPS:08d}")).read_metadata()
    model_keys = [k for k in meta.state_dict_metadata if k.startswith("train.model.")]
    assert len(model_keys) == 40 and all(".lora_" in k for k in model_keys)
    assert any(k.startswith("train.optim.state.") and ".lora_A." in k for k in meta.state_dict_metadata)


def test_run_exports_the_adapter_and_the_cli_reads_it_back(lora_run, tmp_path, tiny_base):
    assert not (lora_run / "model.safetensors").exists()
    final = load_file(str(lora_run / "lora.safetensors"))
    assert len(final) == 40 and "diffusion_model.blocks.0.self_attn.q.lora_A.weight" in final
    assert all(final[k].abs().max() > 0 for k in final)  # B moved off its zero init

    result = export(str(lora_run), "--out", str(tmp_path / "again.safetensors"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"wrote {tmp_path / 'again.safetensors'}: 20 LoRA modules")  # says what it wrote
    again = load_file(str(tmp_path / "again.safetensors"))
    assert set(again) == set(final) and all(torch.equal(again[k], final[k]) for k in final)

    result = export(str(lora_run), "--merge", "--out", str(tmp_path / "merged.safetensors"))
    assert result.returncode == 0, result.stderr
    merged = load_file(str(tmp_path / "merged.safetensors"))
    base = load_file(str(tiny_base))  # model.init_from: frozen, so also the run's final base
    assert set(merged) == set(base)
    adapted = {k.removeprefix("diffusion_model.").removesuffix(".lora_A.weight") for k in final if ".lora_A." in k}
    for key in base:
        module = key.removesuffix(".weight")
        if module in adapted:
            a, b = final[f"diffusion_model.{module}.lora_A.weight"], final[f"diffusion_model.{module}.lora_B.weight"]
            torch.testing.assert_close(merged[key], base[key] + b @ a, rtol=0, atol=1e-6)
        else:
            assert torch.equal(merged[key], base[key]), key


def test_export_lora_rejects_bad_input_with_one_line(lora_run, tmp_path):
    for args, words in ((["--checkpoint", str(tmp_path)], "no complete DCP checkpoint"),
                        ([], "cannot read config")):
        run_dir = str(lora_run) if args else str(tmp_path)
        result = export(run_dir, "--out", str(tmp_path / "x.safetensors"), *args)
        assert result.returncode == 2 and words in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_killed_lora_run_resumes_with_the_same_losses(lora_run, tmp_path, train_footage_shards, tiny_encoders, tiny_base):
    config = write_config(tmp_path, train_footage_shards, tiny_encoders, "killed", tiny_base)
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
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == [f"step-{CHECKPOINT:08d}"]
    resumed = torchrun("-m", "multishot.cli.train", "--config", str(config))
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "resumed from" in resumed.stderr
    expected, got = losses(lora_run), losses(out)
    assert sorted(got) == sorted(expected) == list(range(1, STEPS + 1))
    for step in range(CHECKPOINT + 1, STEPS + 1):
        assert got[step] == expected[step], step  # bit-identical
    final, again = load_file(str(lora_run / "lora.safetensors")), load_file(str(out / "lora.safetensors"))
    assert all(torch.equal(final[k], again[k]) for k in final)
