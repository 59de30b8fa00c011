"""``make demo-train`` (``demo/train.sh``) end to end on a slice of the pipeline's shards: random
encoders, a 2-step fine-tune, ``multishot generate`` from its checkpoint, ``multishot shards
export`` of two real samples and ``multishot eval`` of all three, each artefact checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import av
import torch
import yaml

from multishot.dataset.shards import write_shard
from multishot.dataset.storage import resolve
from multishot.dataset.shardset import ShardSet
from multishot.model.checkpoint import load_into, load_state_dict_file
from multishot.model.config import get_config
from multishot.model.dit import WanModel
from multishot.trainer.checkpoint import latest_checkpoint

REPO = Path(__file__).resolve().parents[1]


def shortened(config: str, tmp: Path, **sections) -> str:
    """A copy of a repository config with ``sections`` merged in, written under ``tmp``."""
    data = yaml.safe_load((REPO / config).read_text())
    for section, values in sections.items():
        data[section].update(values)
    path = tmp / f"{Path(config).parent.name}_{Path(config).name}"  # train_…, generate_…
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_demo_train_makes_checkpoint_video_and_eval_report(tmp_path, footage_shards):
    # the slice: the two 5 s multi-shot samples the script will export, as `out/demo` of a
    # fresh working folder (the configs' relative paths resolve there)
    shards = ShardSet.open(footage_shards, progress=False)
    rows = [r for r in shards.rows() if r["bucket"] == "5s" and r["num_shots"] >= 2][:2]
    assert len(rows) == 2, "the footage fixture has fewer than two 5 s multi-shot samples"
    fs, _ = resolve(str(tmp_path))
    write_shard(fs, str(tmp_path / "out" / "demo" / "shards" / "slice-00000.tar"),
                [(record, members["mp4"]) for record, members in (shards.sample(r["key"]) for r in rows)])
    configs = tmp_path / "configs"
    configs.mkdir()
    env = dict(
        os.environ, MULTISHOT=str(Path(sys.executable).parent / "multishot"), PYTHON=sys.executable,
        TRAIN_CONFIG=shortened("configs/train/demo_cpu.yaml", configs,
                               run={"max_steps": 2, "checkpoint_every": 2}),
        GENERATE_CONFIG=shortened("configs/generate/demo_cpu.yaml", configs, sampling={"steps": 2}),
        EVAL_CONFIG=str(REPO / "configs" / "eval" / "default.yaml"))
    result = subprocess.run(["sh", str(REPO / "demo" / "train.sh")], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert "RANDOM weights" in result.stdout

    # the fine-tune: a DCP checkpoint of step 2 and an export that loads into the tiny DiT
    run = tmp_path / "out" / "demo_train" / "run"
    assert latest_checkpoint(run).name == "step-00000002"
    tuned = load_state_dict_file(run / "model.safetensors")
    report = load_into(WanModel(get_config("tiny")), tuned)
    assert not report.missing and not report.mismatched and not report.unexpected
    init = load_state_dict_file(tmp_path / "out" / "random_models" / "dit" / "high_noise.safetensors")
    assert any(not torch.equal(tuned[k], init[k]) for k in init)  # the steps moved the weights
    assert len(Path(run / "metrics.jsonl").read_text().splitlines()) >= 2  # a log line per step

    # the generated video: the config's 33 frames at 64×64, three shots from the prompt
    mp4 = tmp_path / "out" / "demo_train" / "generated" / "scene.mp4"
    with av.open(str(mp4)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 33 and frames[0].shape == (64, 64, 3)
    generated = json.loads(mp4.with_suffix(".json").read_text())
    assert len(generated["cut_frames"]) == 2
    assert "unmasked_cross_attention" not in generated  # the prompt's shot windows were used
    assert list(generated["checkpoints"]) == ["out/demo_train/run/model.safetensors"]

    # the eval report: the generated video and both real samples, with their requested cuts
    evaluated = json.loads((tmp_path / "out" / "demo_train" / "eval.json").read_text())
    by_name = {Path(v["video"]).stem: v for v in evaluated["videos"]}
    assert set(by_name) == {"scene"} | {r["key"] for r in rows}
    assert by_name["scene"]["requested_cuts"] == generated["cut_frames"]
    for r in rows:
        assert len(by_name[r["key"]]["requested_cuts"]) == r["num_shots"] - 1
    assert all(0.0 <= v["metrics"]["sca"] <= 1.0 for v in evaluated["videos"])
    # one table of the three videos and their mean on stdout
    table = result.stdout[result.stdout.index("== 5/5"):]
    assert all(name in table for name in by_name) and "overall" in table


def test_demo_train_before_make_demo_is_one_line_and_exit_2(tmp_path):
    result = subprocess.run(["sh", str(REPO / "demo" / "train.sh")], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60, env=dict(os.environ, SHARDS="out/demo"))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == "demo-train: out/demo does not exist: run `make demo` first\n"
