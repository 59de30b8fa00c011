"""The Wan DiT on CPU: shapes, RoPE, backends inside the model, window cross-attention,
checkpoint round trips and FLOP counts (``tiny`` config, small token grids)."""

import dataclasses
import json

import pytest
import torch

from multishot.model.checkpoint import (from_diffusers, is_diffusers_state_dict, load_into,
                              load_state_dict_file, save_safetensors)
from multishot.model.config import get_config
from multishot.model.dit import WanModel
from multishot.model.rope import apply_rope, rope_cos_sin
from multishot.model.flops import attention_flops, forward_flops
from multishot.model.layout import ShotLayout
from multishot.model.prompt_spans import TextSpans

TINY = get_config("tiny")


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def tiny_model(backend="reference", **overrides):
    torch.manual_seed(0)
    model = WanModel(dataclasses.replace(TINY, **overrides), backend)
    torch.nn.init.normal_(model.head.head.weight, std=0.1)  # Wan zero-inits the head
    return model


def inputs(batch=2, frames=7, h=6, w=4, text=10):
    torch.manual_seed(1)
    return (torch.randn(batch, TINY.in_channels, frames, h, w), torch.tensor([10.0, 900.0])[:batch],
            torch.randn(batch, text, TINY.text_dim))


def test_configs_match_wan():
    for name, (dim, ffn, heads, layers, ch) in {"1.3B": (1536, 8960, 12, 30, 16),
                                                "5B": (3072, 14336, 24, 30, 48),
                                                "14B": (5120, 13824, 40, 40, 16)}.items():
        c = get_config(name)
        assert (c.dim, c.ffn_dim, c.num_heads, c.num_layers, c.in_channels) == \
            (dim, ffn, heads, layers, ch)
        assert c.head_dim == 128 and c.rope_bands == (44, 42, 42)
        assert (c.patch_size, c.text_len, c.text_dim) == ((1, 2, 2), 512, 4096)
    with pytest.raises(KeyError, match="known"):
        get_config("7B")


def test_rope_matches_wan_complex_float64():
    grid, bands = (3, 4, 5), TINY.rope_bands
    x = torch.randn(1, 60, 2, TINY.head_dim, dtype=torch.float64)
    cos, sin = rope_cos_sin(TINY, grid, torch.device("cpu"))
    ours = apply_rope(x.float(), cos, sin).double()
    # Wan's rope_apply: complex multiply by per-axis polar tables, bands (t, h, w) concatenated.
    tables = []
    for n, band in zip(grid, bands):
        freqs = torch.outer(torch.arange(n, dtype=torch.float64),
                            1.0 / 10000 ** (torch.arange(0, band, 2, dtype=torch.float64) / band))
        tables.append(torch.polar(torch.ones_like(freqs), freqs))
    f, h, w = grid
    table = torch.cat([tables[0].view(f, 1, 1, -1).expand(f, h, w, -1),
                       tables[1].view(1, h, 1, -1).expand(f, h, w, -1),
                       tables[2].view(1, 1, w, -1).expand(f, h, w, -1)], -1).reshape(60, 1, -1)
    wan = torch.view_as_real(torch.view_as_complex(x.reshape(1, 60, 2, -1, 2)) * table).flatten(3)
    assert rel(ours, wan) < 1e-6


def test_forward_shape_and_unpatchify_order():
    model = tiny_model()
    x, t, ctx = inputs()
    out = model(x, t, ctx)
    assert out.shape == x.shape and out.dtype == torch.float32
    # Unpatchify follows Wan's einsum 'fhwpqrc->cfphqwr' over (pt, ph, pw, c) features.
    feats = torch.randn(2, 7 * 3 * 2, 1 * 2 * 2 * TINY.out_channels)
    wan = torch.einsum("bfhwpqrc->bcfphqwr", feats.view(2, 7, 3, 2, 1, 2, 2, -1)).reshape(
        2, TINY.out_channels, 7, 6, 4)
    assert torch.equal(model.unpatchify(feats, (7, 3, 2)), wan)
    with pytest.raises(ValueError, match="patch"):
        model(x[..., :5, :], t, ctx)
    with pytest.raises(ValueError, match="layout"):
        model(x, t, ctx, ShotLayout.from_cut_frames(25, [9], 5))


@pytest.mark.parametrize("backend", ["sdpa", "flex", "flex_inplace"])
def test_backend_equals_reference_inside_the_model(backend):
    """Output and (sdpa: PyTorch has no FlexAttention backward on CPU) parameter gradients."""
    layout = ShotLayout.stack([ShotLayout.from_cut_frames(25, [9, 17], 6),
                               ShotLayout.from_cut_frames(25, [13], 6)])
    spans = [TextSpans((0, 3), ((3, 6), (6, 8), (8, 9))), None]
    x, t, ctx = inputs()
    backward = backend == "sdpa"
    results = {}
    for name in ("reference", backend):
        model = tiny_model(name)
        with torch.set_grad_enabled(backward):
            out = model(x, t, ctx, layout, spans)
        if backward:
            out.square().mean().backward()
        results[name] = out, (torch.cat([p.grad.flatten() for p in model.parameters()])
                              if backward else None)
    (out_ref, g_ref), (out, g) = results["reference"], results[backend]
    assert rel(out, out_ref) < 1e-5
    if backward:
        assert rel(g, g_ref) < 1e-5
    # The sparse pattern and the window mask change the function.
    dense = tiny_model("reference")(x, t, ctx)
    assert rel(dense, out_ref) > 1e-3


def test_window_cross_attention_hides_other_shots_captions():
    # One block: a video token sees text only through its own block's cross-attention, whose
    # window admits the global span and its own shot's span.
    model = tiny_model("sdpa", num_layers=1)
    layout = ShotLayout.from_cut_frames(25, [13], 6)          # shots: latent frames [0,4) [4,7)
    spans = [TextSpans((0, 3), ((3, 6), (6, 9)))]             # pads admitted from 10 on
    x, t, ctx = inputs(batch=1)
    base = model(x, t, ctx, layout, spans)
    ctx2 = ctx.clone()
    ctx2[:, 7] += 5.0                                         # a token of shot 1's caption only
    moved = model(x, t, ctx2, layout, spans) - base
    assert moved[:, :, :4].abs().max() == 0                   # shot 0 unaffected
    assert moved[:, :, 4:].abs().max() > 1e-4
    unmasked = model(x, t, ctx2, layout) - model(x, t, ctx, layout)
    assert unmasked[:, :, :4].abs().max() > 1e-4
    with pytest.raises(ValueError, match="shot_layout"):
        model(x, t, ctx, None, spans)


def test_meta_build_then_init():
    with torch.device("meta"):
        model = WanModel(TINY, "sdpa")
    model.to_empty(device="cpu")
    model.init_weights()
    assert model.head.head.weight.abs().max() == 0
    assert all(torch.isfinite(p).all() for p in model.parameters())
    x, t, ctx = inputs()
    assert torch.isfinite(model(x, t, ctx)).all()


@pytest.mark.parametrize("max_shard_bytes", [None, 60_000])
def test_safetensors_round_trip(tmp_path, max_shard_bytes):
    model = tiny_model()
    files = save_safetensors(model.state_dict(), tmp_path / "dit.safetensors", max_shard_bytes)
    if max_shard_bytes:
        assert len(files) > 2 and files[-1].name == "dit.safetensors.index.json"
        source = tmp_path                                 # a folder with an index
    else:
        source = files[0]
    state = load_state_dict_file(source)
    fresh = WanModel(TINY)
    report = load_into(fresh, state)
    assert report.ok, str(report)
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    x, t, ctx = inputs()
    assert torch.equal(fresh(x, t, ctx), model(x, t, ctx))


def diffusers_names(num_layers):
    """Diffusers ``WanTransformer3DModel`` names, from DiffSynth-Studio's rename table."""
    block = {"attn1.norm_k.weight": "self_attn.norm_k.weight",
             "attn1.norm_q.weight": "self_attn.norm_q.weight",
             "attn2.norm_k.weight": "cross_attn.norm_k.weight",
             "attn2.norm_q.weight": "cross_attn.norm_q.weight",
             "ffn.net.0.proj.bias": "ffn.0.bias", "ffn.net.0.proj.weight": "ffn.0.weight",
             "ffn.net.2.bias": "ffn.2.bias", "ffn.net.2.weight": "ffn.2.weight",
             "norm2.bias": "norm3.bias", "norm2.weight": "norm3.weight",
             "scale_shift_table": "modulation"}
    for attn, ours in (("attn1", "self_attn"), ("attn2", "cross_attn")):
        for p in ("bias", "weight"):
            for x in "qkv":
                block[f"{attn}.to_{x}.{p}"] = f"{ours}.{x}.{p}"
            block[f"{attn}.to_out.0.{p}"] = f"{ours}.o.{p}"
    names = {f"blocks.{i}.{d}": f"blocks.{i}.{o}" for i in range(num_layers)
             for d, o in block.items()}
    for p in ("bias", "weight"):
        names.update({f"condition_embedder.text_embedder.linear_1.{p}": f"text_embedding.0.{p}",
                      f"condition_embedder.text_embedder.linear_2.{p}": f"text_embedding.2.{p}",
                      f"condition_embedder.time_embedder.linear_1.{p}": f"time_embedding.0.{p}",
                      f"condition_embedder.time_embedder.linear_2.{p}": f"time_embedding.2.{p}",
                      f"condition_embedder.time_proj.{p}": f"time_projection.1.{p}",
                      f"patch_embedding.{p}": f"patch_embedding.{p}",
                      f"proj_out.{p}": f"head.head.{p}"})
    names["scale_shift_table"] = "head.modulation"
    return names


def test_diffusers_checkpoint_loads_by_mapping(tmp_path):
    model = tiny_model()
    ours = model.state_dict()
    names = diffusers_names(TINY.num_layers)
    assert set(names.values()) == set(ours)                     # the table covers the model
    diffusers = {d: ours[o].clone() for d, o in names.items()}
    diffusers["blocks.0.attn2.add_k_proj.weight"] = torch.zeros(1)  # I2V-only: unexpected
    assert is_diffusers_state_dict(diffusers)
    assert set(from_diffusers(diffusers)) == set(ours) | {"blocks.0.attn2.add_k_proj.weight"}
    save_safetensors(diffusers, tmp_path / "diffusion_pytorch_model.safetensors")
    fresh = WanModel(TINY)
    report = load_into(fresh, load_state_dict_file(tmp_path))
    assert (report.missing, report.unexpected) == ([], ["blocks.0.attn2.add_k_proj.weight"])
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in ours.items())


def test_load_report_names_missing_unexpected_and_mismatched(tmp_path):
    state = tiny_model().state_dict()
    state.pop("head.head.bias")
    state["blocks.0.ffn.0.weight"] = torch.zeros(3, 3)
    state["blocks.9.modulation"] = torch.zeros(1, 6, TINY.dim)
    report = load_into(WanModel(TINY), state)
    assert report.missing == ["head.head.bias"]
    assert report.unexpected == ["blocks.9.modulation"]
    assert report.mismatched == ["blocks.0.ffn.0.weight: (3, 3) vs (128, 64)"]
    assert not report.ok and "1 missing" in str(report)
    # A wrapper prefix is stripped; a sharded index naming a missing shard is an error.
    save_safetensors({"model.diffusion_model." + k: v for k, v in tiny_model().state_dict()
                      .items()}, tmp_path / "comfy.safetensors")
    assert load_into(WanModel(TINY), load_state_dict_file(tmp_path / "comfy.safetensors")).ok
    (tmp_path / "x.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "gone.safetensors"}}))
    with pytest.raises(FileNotFoundError):
        load_state_dict_file(tmp_path / "x.safetensors.index.json")


def test_forward_flops_counts_sparse_attention_pairs():
    config = get_config("14B")
    layout = ShotLayout.from_cut_frames(241, [49, 97, 145, 193], 1560)
    dense = forward_flops(config, 61, 1560)
    sparse = forward_flops(config, 61, 1560, layout)
    seq = 61 * 1560
    assert dense - sparse == config.num_layers * attention_flops(
        seq * seq - layout.attention_pairs(), 40, 128)
    # Linear layers dominate a per-token count: 2·params·tokens for the blocks' matmuls.
    block_params = 4 * 5120 ** 2 + 2 * 5120 ** 2 + 2 * 5120 * 13824
    assert sparse > config.num_layers * 2 * block_params * seq
    assert forward_flops(config, 61, 1560, layout, text_len=0) < sparse
