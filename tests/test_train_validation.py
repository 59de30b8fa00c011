"""Validation during a fine-tune: two CPU ranks (gloo, FSDP2) train the `tiny` DiT on footage
shards and sample a prompt file plus one held-out sample every 2 steps; and the held-out key
never reaches the training stream."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import av
import pytest
import yaml

from multishot.dataset.loader import DataConfig, TrainLoader

REPO = Path(__file__).resolve().parents[1]
PROMPT = "[global caption] a video [per shot caption] a shot [shot cut] a shot"


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_training_run_validates_every_two_steps(tmp_path, train_footage_shards, tiny_encoders, tiny_base, lora):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": PROMPT, "name": "two_shots", "cut_frames": [9]}) + "\n")
    config = yaml.safe_load((REPO / "configs/train/tiny_cpu.yaml").read_text())
    config["data"]["shards"] = [train_footage_shards["clean"]]
    config["encoders"].update(tiny_encoders)
    config["run"].update(output_dir=str(tmp_path / "run"), max_steps=4, checkpoint_every=4)
    if lora:  # validation samples with the adapters on the frozen base; a base with a non-zero
        # head (Wan zero-inits it: the adapters would get no gradient and the videos not change)
        config["model"].update(lora={"rank": 4}, init_from=str(tiny_base))
    config["validation"] = {"every": 2, "prompts": str(prompts), "held_out": 1,
                            "sampling": {"steps": 2, "cfg_scale": 3.0}}
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2",
         "--master-addr=127.0.0.1", f"--master-port={29300 + os.getpid() % 300}",
         "-m", "multishot.cli.train", "--config", str(path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stderr.count("validation at step") == 6  # steps 0, 2, 4 on both ranks

    root = tmp_path / "run" / "validation"
    assert sorted(p.name for p in root.iterdir()) == ["step_000000", "step_000002", "step_000004"]
    for step_dir in root.iterdir():
        report = json.loads((step_dir / "metrics.json").read_text())
        names = [s["name"] for s in report["samples"]]
        assert names == ["two_shots", "clip00"] and report["seconds"] > 0
        assert report["samples"][0]["cut_frames"] == [9] and report["samples"][1]["steps"] == 2
        # scored as `multishot eval` scores (no CLIP / DINOv2 weights: those metrics skipped)
        assert 0 < report["metrics"]["sca"] <= 1
        assert all(0 < s["metrics"]["sca"] <= 1 and "inter_shot_viclip" in s["skipped"]
                   for s in report["samples"])
        for name in names:
            with av.open(str(step_dir / f"{name}.mp4")) as container:
                frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
            assert len(frames) == 17 and frames[0].shape == (64, 64, 3)
    first = (root / "step_000000" / "two_shots.mp4").read_bytes()
    assert first != (root / "step_000004" / "two_shots.mp4").read_bytes()  # the model trained

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    assert {"validation/two_shots", "validation/clip00"} <= set(events.Tags()["images"])
    assert [e.step for e in events.Images("validation/clip00")] == [0, 2, 4]
    assert [e.step for e in events.Scalars("validation/seconds")] == [0, 2, 4]
    assert [e.step for e in events.Scalars("validation/sca")] == [0, 2, 4]


def test_held_out_keys_never_reach_training(train_footage_shards):
    config = DataConfig(shards=[train_footage_shards["clean"]], num_frames=17, height=64,
                        width=64, shuffle_buffer=2, num_workers=0, uncaptioned="placeholder")
    loader = TrainLoader(config, exclude_keys=frozenset({"clip00", "clip03"}))
    keys = [next(loader).keys[0] for _ in range(8)]  # two epochs of the 4 remaining samples
    loader.close()
    assert sorted(set(keys)) == ["clip01", "clip02", "clip04", "clip05"] and loader.skipped == 0
