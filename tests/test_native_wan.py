"""Wan's native ``.pth`` VAE and T5 (the files HoloCine's README has users download) load into
the same models as the diffusers / transformers folders holding the same weights.

Small random models of the real classes are saved as folders; their weights are then written in
Wan's native key layout (the module names of Wan2.2's ``wan/modules/vae2_1.py`` ``WanVAE_`` and
``wan/modules/t5.py`` ``T5Encoder``, spelled out below independently of the loader) to a ``.pth``.
"""

from __future__ import annotations

import pickle
import re

import pytest
import torch

from multishot.model.encoders import FrozenEncoders
from multishot.model.native_wan import read_pth
from multishot.model.settings import EncodersConfig

NUM_RES_BLOCKS = 2  # Wan2.1's VAE


def wan_vae_key(key: str) -> str:
    """diffusers ``AutoencoderKLWan`` name → Wan's ``WanVAE_`` name."""
    res = {"norm1.gamma": "residual.0.gamma", "conv1.weight": "residual.2.weight", "conv1.bias": "residual.2.bias",
           "norm2.gamma": "residual.3.gamma", "conv2.weight": "residual.6.weight", "conv2.bias": "residual.6.bias",
           "conv_shortcut.weight": "shortcut.weight", "conv_shortcut.bias": "shortcut.bias"}
    top = {"quant_conv": "conv1", "post_quant_conv": "conv2"}
    if (m := re.fullmatch(r"(quant_conv|post_quant_conv)\.(\w+)", key)):
        return f"{top[m.group(1)]}.{m.group(2)}"
    if (m := re.fullmatch(r"(encoder|decoder)\.conv_in\.(\w+)", key)):
        return f"{m.group(1)}.conv1.{m.group(2)}"
    if (m := re.fullmatch(r"(encoder|decoder)\.norm_out\.gamma", key)):
        return f"{m.group(1)}.head.0.gamma"
    if (m := re.fullmatch(r"(encoder|decoder)\.conv_out\.(\w+)", key)):
        return f"{m.group(1)}.head.2.{m.group(2)}"
    if (m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d)\.(.+)", key)):
        return f"{m.group(1)}.middle.{2 * int(m.group(2))}.{res[m.group(3)]}"
    if (m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", key)):
        return f"{m.group(1)}.middle.1.{m.group(2)}"
    if (m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.(.+)", key)):
        rest = m.group(2)
        return f"encoder.downsamples.{m.group(1)}.{res.get(rest, rest)}"
    if (m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key)):
        return f"decoder.upsamples.{int(m.group(1)) * (NUM_RES_BLOCKS + 2) + int(m.group(2))}.{res[m.group(3)]}"
    if (m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)", key)):
        return f"decoder.upsamples.{int(m.group(1)) * (NUM_RES_BLOCKS + 2) + NUM_RES_BLOCKS + 1}.{m.group(2)}"
    raise AssertionError(f"unmapped diffusers key {key}")


def wan_t5_key(key: str) -> str | None:
    """transformers ``UMT5EncoderModel`` name → Wan's ``T5Encoder`` name (None: tied copy)."""
    if key == "shared.weight":
        return "token_embedding.weight"
    if key == "encoder.embed_tokens.weight":
        return None
    if key == "encoder.final_layer_norm.weight":
        return "norm.weight"
    m = re.fullmatch(r"encoder\.block\.(\d+)\.layer\.(\d)\.(.+)", key)
    i, sub, rest = m.groups()
    names = {("0", "layer_norm.weight"): "norm1.weight", ("1", "layer_norm.weight"): "norm2.weight",
             ("0", "SelfAttention.relative_attention_bias.weight"): "pos_embedding.embedding.weight",
             ("1", "DenseReluDense.wi_0.weight"): "ffn.gate.0.weight", ("1", "DenseReluDense.wi_1.weight"): "ffn.fc1.weight",
             ("1", "DenseReluDense.wo.weight"): "ffn.fc2.weight",
             **{("0", f"SelfAttention.{p}.weight"): f"attn.{p}.weight" for p in "qkvo"}}
    return f"blocks.{i}.{names[(sub, rest)]}"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny Wan2.1-layout VAE (16 latent channels, Wan's statistics, dim_mult 1-2-4-4, 2 residual
    blocks) and a tiny UMT5 (2 layers, per-layer relative bias) as folders and as native ``.pth``."""
    from multishot.torchvision_cpu import import_torchvision

    import_torchvision()
    from diffusers import AutoencoderKLWan
    from transformers import UMT5Config, UMT5EncoderModel

    root = tmp_path_factory.mktemp("native_wan")
    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=NUM_RES_BLOCKS)
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if name.endswith("gamma"):  # RMS-norm scales start at 1: make them matter
                p.add_(0.3 * torch.randn_like(p))
    vae.save_pretrained(root / "vae")
    torch.save({wan_vae_key(k): v.clone() for k, v in vae.state_dict().items()}, root / "Wan2.1_VAE.pth")
    t5 = UMT5EncoderModel(UMT5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                                     feed_forward_proj="gated-gelu", relative_attention_max_distance=128))
    t5.save_pretrained(root / "text_encoder")
    native = {wan_t5_key(k): v.clone() for k, v in t5.state_dict().items()}
    native.pop(None, None)
    torch.save(native, root / "models_t5_umt5-xxl-enc-bf16.pth")
    return root


def test_native_vae_equals_the_diffusers_folder(models):
    folder = FrozenEncoders.load(EncodersConfig(vae=str(models / "vae"), dtype="float32"), "cpu").vae
    native = FrozenEncoders.load(EncodersConfig(vae=str(models / "Wan2.1_VAE.pth"), dtype="float32"), "cpu").vae
    public = lambda c: {k: v for k, v in c.items() if not k.startswith("_")}  # noqa: E731
    assert public(native.config) == public(folder.config)
    a, b = folder.state_dict(), native.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    torch.manual_seed(1)
    video = torch.rand(1, 3, 5, 32, 32) * 2 - 1
    with torch.no_grad():
        za = folder.encode(video).latent_dist.mode()
        zb = native.encode(video).latent_dist.mode()
        torch.testing.assert_close(za, zb, rtol=0, atol=0)
        torch.testing.assert_close(folder.decode(za).sample, native.decode(za).sample, rtol=0, atol=0)


def test_native_t5_equals_the_transformers_folder(models):
    from transformers import UMT5EncoderModel

    folder = UMT5EncoderModel.from_pretrained(models / "text_encoder").eval()
    from multishot.model.native_wan import load_wan_t5

    native = load_wan_t5(models / "models_t5_umt5-xxl-enc-bf16.pth", torch.float32).eval()
    for key in ("d_model", "d_kv", "d_ff", "num_layers", "num_heads", "vocab_size", "relative_attention_num_buckets",
                "relative_attention_max_distance", "dense_act_fn", "is_gated_act"):
        assert getattr(native.config, key) == getattr(folder.config, key), key
    ids = torch.randint(0, 64, (2, 11))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    with torch.no_grad():
        torch.testing.assert_close(native(ids, attention_mask=mask).last_hidden_state,
                                   folder(ids, attention_mask=mask).last_hidden_state, rtol=0, atol=0)
    assert native.encoder.embed_tokens.weight is native.shared.weight


def test_native_t5_through_frozen_encoders_needs_a_tokenizer(models):
    with pytest.raises(ValueError, match="encoders.tokenizer"):
        FrozenEncoders.load(EncodersConfig(text_encoder=str(models / "models_t5_umt5-xxl-enc-bf16.pth")), "cpu")


class Payload:
    """Unpickling this would run code: ``weights_only=True`` refuses it."""

    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_pth_reading_refuses_pickled_objects_and_foreign_keys(models, tmp_path, capsys):
    torch.save({"weight": torch.zeros(1), "evil": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="not a tensors-only .pth"):
        read_pth(tmp_path / "evil.pth")
    assert "pickled code ran" not in capsys.readouterr().out
    with open(tmp_path / "raw.pth", "wb") as f:
        pickle.dump(Payload(), f)
    with pytest.raises(ValueError, match="not a tensors-only"):
        read_pth(tmp_path / "raw.pth")
    from multishot.model.native_wan import load_wan_t5, load_wan_vae

    state = torch.load(models / "Wan2.1_VAE.pth", weights_only=True)
    torch.save({**state, "encoder.bogus.weight": torch.zeros(1)}, tmp_path / "vae.pth")
    with pytest.raises(ValueError, match="encoder.bogus.weight: not a key of Wan2.1's VAE"):
        load_wan_vae(tmp_path / "vae.pth", torch.float32)
    torch.save({"conv2.weight": torch.zeros(16, 16, 1, 1, 1)}, tmp_path / "vae.pth")
    with pytest.raises(ValueError, match="not a Wan2.1 VAE state dict"):
        load_wan_vae(tmp_path / "vae.pth", torch.float32)
    t5 = torch.load(models / "models_t5_umt5-xxl-enc-bf16.pth", weights_only=True)
    torch.save({**t5, "blocks.0.attn.bias": torch.zeros(1)}, tmp_path / "t5.pth")
    with pytest.raises(ValueError, match="blocks.0.attn.bias: not a key of Wan's UMT5"):
        load_wan_t5(tmp_path / "t5.pth", torch.float32)
    with pytest.raises(FileNotFoundError):
        load_wan_t5(tmp_path / "nope.pth", torch.float32)
