"""LoRA through peft on the `tiny` DiT (CPU, float32): only the adapters train, the base stays
bit-identical, the exported file merges to ``W + (alpha/rank)·B·A`` and loads into diffusers'
``WanTransformer3DModel`` (``WanPipeline.load_lora_weights``) with every adapter in place."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from multishot.model.checkpoint import from_diffusers, load_into
from multishot.model.config import get_config
from multishot.model.dit import WanModel
from multishot.model.layout import ShotLayout
from multishot.model.lora import (LoraConfig, adapter_state_dict, apply_lora, apply_lora_file,
                                    base_state_dict, load_adapter, merge_adapter, save_adapter,
                                    trainable_parameters)

TINY = get_config("tiny")
LORA = LoraConfig(rank=4, alpha=8.0)  # scale 2: a folding mistake shows


def tiny_model() -> WanModel:
    torch.manual_seed(0)
    model = WanModel(TINY, "sdpa")
    torch.nn.init.normal_(model.head.head.weight, std=0.1)  # Wan zero-inits the head
    return model


def inputs():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, TINY.in_channels, 5, 4, 4, generator=g)
    context = torch.randn(2, 6, TINY.text_dim, generator=g)
    layout = ShotLayout.stack([ShotLayout.from_cut_frames(17, cuts, 4) for cuts in ([9], [5, 13])])
    return x, torch.tensor([300.0, 800.0]), context, layout


def trained_lora_model(steps: int = 3) -> tuple[WanModel, dict[str, torch.Tensor]]:
    """A LoRA model after ``steps`` AdamW steps, and its state before training."""
    model = apply_lora(tiny_model(), LORA)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optim = torch.optim.AdamW(trainable_parameters(model), lr=1e-2)
    x, t, ctx, layout = inputs()
    for _ in range(steps):
        model(x, t, ctx, layout).square().mean().backward()
        optim.step()
        optim.zero_grad()
    return model, before


def test_only_adapters_train_and_the_base_stays_bit_identical():
    model, before = trained_lora_model()
    names = [n for n, _ in model.named_parameters()]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    # 2 blocks × (self q k v o + cross q k v o + ffn.0 ffn.2) adapters, A and B each
    assert len(trainable) == 2 * 10 * 2 and all(".lora_" in n for n in trainable)
    x, t, ctx, layout = inputs()
    model(x, t, ctx, layout).square().mean().backward()
    for name, param in model.named_parameters():
        assert (param.grad is not None) == (name in trainable), name
    after = model.state_dict()
    for name in names:
        if name in trainable:
            assert not torch.equal(after[name], before[name]), name  # B starts at 0 and moves
        else:
            assert torch.equal(after[name], before[name]), name


def test_export_merges_to_base_plus_scaled_BA_and_loads_back(tmp_path):
    model, _ = trained_lora_model()
    path = save_adapter(adapter_state_dict(model.state_dict(), LORA), tmp_path / "lora.safetensors", LORA)
    with safe_open(str(path), "pt") as f:
        keys, meta = set(f.keys()), f.metadata()
    # ComfyUI / DiffSynth / diffusers layout, one A and one B per adapted Linear, no alpha keys
    assert "diffusion_model.blocks.0.self_attn.q.lora_A.weight" in keys
    assert "diffusion_model.blocks.1.ffn.2.lora_B.weight" in keys
    assert len(keys) == 40 and not any("alpha" in k or "default" in k for k in keys)
    assert (meta["lora_rank"], meta["lora_alpha"]) == ("4", "8.0")

    adapter = load_adapter(path)
    state = model.state_dict()
    base = base_state_dict(state)
    own = tiny_model().state_dict()
    assert set(base) == set(own)  # no missing or unexpected keys against the plain model
    merged = merge_adapter(base, adapter)
    for module in ("blocks.0.self_attn.q", "blocks.1.cross_attn.o", "blocks.0.ffn.0"):
        a = state[f"{module}.lora_A.default.weight"]
        b = state[f"{module}.lora_B.default.weight"]
        expected = state[f"{module}.base_layer.weight"] + LORA.scale * b @ a
        torch.testing.assert_close(merged[f"{module}.weight"], expected, rtol=0, atol=1e-6)
    assert torch.equal(merged["head.head.weight"], base["head.head.weight"])

    # the merged plain model, and one merged by apply_lora_file, compute what the LoRA model does
    x, t, ctx, layout = inputs()
    with torch.no_grad():
        want = model(x, t, ctx, layout)
        plain = tiny_model()
        assert load_into(plain, merged).ok
        torch.testing.assert_close(plain(x, t, ctx, layout), want, rtol=1e-5, atol=1e-6)
        applied = tiny_model()
        assert apply_lora_file(applied, path, scale=1.0) == 20
        torch.testing.assert_close(applied(x, t, ctx, layout), want, rtol=1e-5, atol=1e-6)
        half = tiny_model()
        apply_lora_file(half, path, scale=0.5)
        delta = half.blocks[0].self_attn.q.weight - tiny_model().blocks[0].self_attn.q.weight
        torch.testing.assert_close(delta, 0.5 * (merged["blocks.0.self_attn.q.weight"] - base["blocks.0.self_attn.q.weight"]),
                                   rtol=1e-5, atol=1e-7)


def test_bad_lora_inputs_are_named(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        apply_lora(tiny_model(), LoraConfig(target_modules=["to_q"]))  # diffusers' names, not Wan's
    with pytest.raises(ValueError, match="non-Linear"):
        apply_lora(tiny_model(), LoraConfig(target_modules=["patch_embedding"]))
    with pytest.raises(FileNotFoundError):
        apply_lora_file(tiny_model(), tmp_path / "missing.safetensors")
    from safetensors.torch import save_file
    save_file({"diffusion_model.blocks.9.self_attn.q.lora_A.weight": torch.zeros(4, 64),
               "diffusion_model.blocks.9.self_attn.q.lora_B.weight": torch.zeros(64, 4)},
              str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="lacks"):
        apply_lora_file(tiny_model(), tmp_path / "other.safetensors")


def test_diffusers_wan_loads_the_export_and_fuses_to_our_merge(tmp_path):
    from multishot.torchvision_cpu import import_torchvision

    import_torchvision()
    from diffusers import WanPipeline, WanTransformer3DModel
    from peft import get_peft_model_state_dict

    torch.manual_seed(0)
    theirs = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=TINY.num_heads, attention_head_dim=TINY.head_dim,
        in_channels=TINY.in_channels, out_channels=TINY.out_channels, text_dim=TINY.text_dim,
        freq_dim=TINY.freq_dim, ffn_dim=TINY.ffn_dim, num_layers=TINY.num_layers,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=TINY.eps)
    ours = WanModel(TINY, "sdpa")
    assert load_into(ours, from_diffusers(theirs.state_dict())).ok
    apply_lora(ours, LORA)
    with torch.no_grad():
        for name, param in ours.named_parameters():
            if ".lora_B." in name:
                param.normal_()  # B starts at zero: give it something to carry
    path = save_adapter(adapter_state_dict(ours.state_dict(), LORA), tmp_path / "lora.safetensors", LORA)

    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=None, scheduler=None, transformer=theirs)
    pipe.load_lora_weights(str(path), adapter_name="multishot")
    loaded = get_peft_model_state_dict(theirs, adapter_name="multishot")
    assert len(loaded) == 40  # every adapter of the file found its layer
    pipe.fuse_lora(lora_scale=1.0)
    pipe.unload_lora_weights()
    fused = from_diffusers(theirs.state_dict())
    merged = merge_adapter(base_state_dict(ours.state_dict()), load_adapter(path))
    assert set(fused) == set(merged)
    assert not torch.equal(merged["blocks.0.self_attn.q.weight"], base_state_dict(ours.state_dict())["blocks.0.self_attn.q.weight"])
    for key in merged:
        torch.testing.assert_close(fused[key], merged[key], rtol=1e-5, atol=1e-6, msg=key)
