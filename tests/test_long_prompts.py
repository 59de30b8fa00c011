"""A prompt longer than the text encoder reads (13 shots can pass UMT5's 512 tokens): the
captioner asks for shorter captions, and training never dies on such a sample."""

from __future__ import annotations

import json
import os

import torch
import torch.distributed as dist
import yaml
from transformers import AutoTokenizer

from multishot.annotate.captioner import prompt_token_counter
from multishot.annotate.reply import CaptionReply, check_reply
from multishot.dataset.record import build_prompt
from multishot.model.config import get_config
from multishot.model.dit import WanModel
from multishot.model.layout import ShotLayout
from multishot.model.prompt_spans import prompt_token_spans, shot_text_mask, window_spans

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LONG_GLOBAL = " ".join(["Blender films"] * 6)  # 12 words: with tags, past the tiny DiT's 16 tokens


def test_truncated_prompt_falls_back_to_unmasked_cross_attention(tiny_encoders):
    tokenizer = AutoTokenizer.from_pretrained(tiny_encoders["text_encoder"])
    prompt = build_prompt(LONG_GLOBAL, ["sintel", "bbb", "tos"])
    spans = prompt_token_spans(tokenizer, prompt, 16)
    assert spans.num_shots < 3  # truncation took shot captions away: the old path raised here
    try:
        shot_text_mask(spans, 3, 16)
        raise AssertionError("shot_text_mask accepted a video with more shots than its prompt")
    except ValueError as err:
        assert "3 shots but the prompt only" in str(err)
    fallback, why = window_spans(tokenizer, prompt, 3, 16)
    assert fallback.global_span is None and "only" in why and "16 text tokens" in why
    short = build_prompt("Blender films", ["sintel", "bbb", "tos"])
    kept, why = window_spans(tokenizer, short, 3, 16)
    assert why is None and kept == prompt_token_spans(tokenizer, short, 16)
    # the model runs with the fallback spans, and equals the run without any window mask
    config = get_config("tiny")
    torch.manual_seed(0)
    model = WanModel(config, "reference")
    x, t, context = torch.randn(1, 16, 5, 4, 4), torch.tensor([500.0]), torch.randn(1, 16, 32)
    layout = ShotLayout.from_cut_frames(17, [5, 9], 4, "cpu")
    out = model(x, t, context, layout, [fallback])
    torch.testing.assert_close(out, model(x, t, context, layout, None))


def test_captioner_asks_for_shorter_captions(tiny_encoders):
    count = prompt_token_counter(tiny_encoders["text_encoder"])
    reply = CaptionReply.model_validate({"global_caption": LONG_GLOBAL, "shot_captions": [
        {"shot": i + 1, "caption": c} for i, c in enumerate(["sintel", "bbb", "tos"])]})
    final = build_prompt(LONG_GLOBAL + " This scene contains 3 shots.", ["sintel", "bbb", "tos"])
    tokens = count(final)
    assert tokens > 16
    (problem,) = check_reply(reply, 3, count, max_tokens=16)
    assert f"a prompt of {tokens} tokens but the text encoder reads 16" in problem
    assert check_reply(reply, 3, count, max_tokens=tokens) == []
    assert check_reply(reply, 3) == []  # without a tokenizer nothing is counted


def test_training_survives_prompts_longer_than_text_len(tmp_path, train_footage_shards, tiny_encoders, monkeypatch):
    """The tiny DiT reads 16 text tokens; every captioned sample's prompt is made longer."""
    from multishot.dataset.shards import read_shard, write_shard
    from multishot.dataset.storage import resolve

    fs, _ = resolve(str(tmp_path))
    clean = os.path.join(train_footage_shards["clean"], "shards")
    samples = []
    for name in sorted(os.listdir(clean)):
        for record, mp4 in read_shard(fs, os.path.join(clean, name)):
            if record.caption_status == "ok":
                samples.append((record.model_copy(update={"global_caption": LONG_GLOBAL}), mp4))
    assert len(samples) == 3
    write_shard(fs, str(tmp_path / "long" / "shards" / "a-00000.tar"), samples)

    config = yaml.safe_load(open(os.path.join(REPO, "configs/train/tiny_cpu.yaml")))
    config["data"].update(shards=[str(tmp_path / "long")], uncaptioned="skip")
    config["encoders"].update(tiny_encoders)
    config["run"].update(output_dir=str(tmp_path / "run"), max_steps=3, checkpoint_every=3, tensorboard=False,
                         export_safetensors=False)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))

    from multishot.config import load_config
    from multishot.trainer.config import TrainConfig
    from multishot.trainer.trainer import Trainer

    monkeypatch.setenv("MASTER_PORT", str(29700 + os.getpid() % 90))
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    try:
        trainer = Trainer(load_config(path, TrainConfig))
        trainer.train()
    finally:
        dist.destroy_process_group()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    # 17-frame clips of these samples keep 2 shots (one has 1: nothing to window)
    assert rows[-1]["unmasked_prompts"] >= 2 and all(r["loss"] > 0 for r in rows)
