"""Issue 30's ablation through the real product at the smallest size, on CPU
(multishot/learn_product.py): world films written as mp4s + a caption source →
``multishot pipeline run`` (configs/pipeline/learn.yaml, the sequential runner: the same stages
without starting Ray) → shards holding the joined captions → ``multishot train``
(configs/train/learn_full.yaml with the ``tiny`` DiT, a few steps) → ``multishot generate`` →
``multishot eval`` + the world's classifier → the table. The encoders are the product's
classes (diffusers ``AutoencoderKLWan``, transformers ``UMT5EncoderModel``) with small random
weights, saved and loaded by the product's code; the committed ones of checkpoints/learn/ fit
the ``learn`` DiT, too slow for CI on CPU."""

from __future__ import annotations

import json

import numpy as np
import torch

from multishot import learn, learn_product
from multishot.dataset.shardset import ShardSet
from multishot.dataset.synthetic_world import Film, read_video


def _fixed_draw_loss(model, encoders, films, frames) -> float:
    """Flow-matching loss (uniform weighting) of ``model`` on ``films`` with noise and
    timesteps fixed by a seed: the same draws for every model."""
    from multishot.model.layout import ShotLayout, latent_shot_starts
    from multishot.trainer.flow_matching import FlowMatchConfig, FlowMatching

    text_len = model.config.text_len
    latents = encoders.encode_video(learn.to_video_tensor(frames))
    context = torch.stack([torch.nn.functional.pad(s, (0, 0, 0, text_len - s.shape[0]))
                           for s in encoders.encode_prompts([f.prompt for f in films], text_len)])
    layout = ShotLayout.from_shot_starts([latent_shot_starts(f.num_frames, f.cut_frames) for f in films],
                                         latents.shape[2], (latents.shape[3] // 2) * (latents.shape[4] // 2),
                                         "cpu")
    noised = FlowMatching(FlowMatchConfig(weighting="uniform"), "cpu").noise(
        latents, torch.Generator().manual_seed(1234))
    with torch.no_grad():
        pred = model(noised.x_t, noised.timestep, context, layout, None)
    return float(FlowMatching.loss(pred, noised))


def test_world_to_table_through_the_product(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    enc = tmp_path / "encoders"
    learn.make_text_encoder(enc / "text_encoder", text_dim=32)   # the tiny DiT's text width
    learn.new_vae(base_dim=8).save_pretrained(enc / "vae")
    encoders_set = [f"encoders.vae={enc / 'vae'}", f"encoders.text_encoder={enc / 'text_encoder'}"]
    out = tmp_path / "run"
    code = learn_product.main([
        "all", "--out", str(out), "--variants", "full", "--train-films", "4", "--eval-films", "2",
        "--set-pipeline", "ray.runner=sequential",
        # 32x32 (the loader resizes the 64x64 samples): a quarter of the tokens and VAE work
        *[f"--set-train={s}" for s in ["model.name=tiny", *encoders_set, "data.height=32", "data.width=32",
                                       "data.batch_size=2",
                                       "data.num_workers=0", "data.shuffle_buffer=4", "run.max_steps=24",
                                       "run.mixed_precision=fp32", "run.log_every=1",
                                       "run.checkpoint_every=1000", "optim.warmup_steps=1",
                                       "optim.lr=3e-3"]],
        *[f"--set-generate={s}" for s in ["model.name=tiny", *encoders_set, "sampling.steps=2",
                                          "video.height=32", "video.width=32"]],
    ])
    assert code == 0

    # the shards hold the caption source's captions, joined by video and time span
    films = {f.name: f for f in (Film.from_dict(json.loads(p.read_text()))
                                 for p in sorted((out / "world" / "films").glob("*.json")))}
    records = [r for _, r in ShardSet.open(str(out / "shards"), progress=False).records()]
    assert len(records) == 4
    for record in records:
        film = films[record.source.rsplit("/", 1)[-1].removesuffix(".mp4")]
        assert record.caption_status == "ok" and record.caption_model == "caption_source:captions.jsonl"
        assert record.prompt() == film.prompt and record.cut_frames == film.cut_frames

    # the loss on fixed draws falls from the trainer's initialisation to the exported model
    from multishot.model.checkpoint import load_dit
    from multishot.model.config import get_config
    from multishot.model.dit import WanModel
    from multishot.model.encoders import FrozenEncoders
    from multishot.model.settings import EncodersConfig

    torch.set_num_threads(2)
    encoders = FrozenEncoders.load(EncodersConfig(vae=str(enc / "vae"), text_encoder=str(enc / "text_encoder"),
                                                  dtype="float32"), "cpu")
    ordered = list(films.values())
    frames = np.stack([read_video(out / "world" / "films" / f"{f.name}.mp4") for f in ordered])
    # at the training size (2x2 means; the loader scales with swscale: near, and the same data for both models)
    frames = frames.reshape(*frames.shape[:2], 32, 2, 32, 2, 3).mean((3, 5)).round().astype(np.uint8)
    torch.manual_seed(0)
    fresh = WanModel(get_config("tiny"), "sdpa")
    fresh.init_weights()
    trained = load_dit("tiny", str(out / "train" / "full" / "model.safetensors"), torch.device("cpu"),
                       torch.float32)
    before = _fixed_draw_loss(fresh.eval(), encoders, ordered, frames)
    after = _fixed_draw_loss(trained, encoders, ordered, frames)
    assert after < 0.9 * before, (before, after)

    # generated videos of the unseen prompts, scored by multishot eval and the world's classifier
    stages = json.loads((out / "stages.json").read_text())
    assert stages["pipeline"]["captioned"] == 4 and stages["train"]["full"]["logged_steps"] == 24
    assert len(list((out / "generate" / "full").glob("*.mp4"))) == 2
    scores = stages["eval"]["full"]
    assert 0 <= scores["sca"] <= 1 and 0 <= scores["caption_following"] <= 1
    assert 0 <= scores["eval_sca"]["mean"] <= 1 and scores["films"] == 2
    table = (out / "learn_product.md").read_text()
    assert "| full |" in table and "4 captioned" in table
