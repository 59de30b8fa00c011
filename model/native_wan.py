"""Wan's native ``.pth`` encoders (the files HoloCine's README has users download:
``Wan2.1_VAE.pth`` and ``models_t5_umt5-xxl-enc-bf16.pth``) loaded into the classes we run:
diffusers ``AutoencoderKLWan`` and transformers ``UMT5EncoderModel``.

Key layouts (github Wan-Video/Wan2.2 ``wan/modules/vae2_1.py`` ``WanVAE_`` and ``wan/modules/t5.py``
``T5Encoder``; the VAE renaming is the one diffusers' ``scripts/convert_wan_to_diffusers.py``
``convert_vae`` applies, written here for any ``dim_mult`` / ``num_res_blocks``):

VAE (Wan → diffusers): ``encoder.conv1`` → ``encoder.conv_in``; ``encoder.downsamples.k`` →
``encoder.down_blocks.k`` (the same flat list of residual blocks and resamples) with a residual
block's ``residual.{0,2,3,6}`` → ``norm1, conv1, norm2, conv2`` and ``shortcut`` →
``conv_shortcut``; ``{encoder,decoder}.middle.{0,2}`` → ``mid_block.resnets.{0,1}``, ``middle.1`` →
``mid_block.attentions.0``; ``head.{0,2}`` → ``norm_out, conv_out``; ``conv1, conv2`` →
``quant_conv, post_quant_conv``; ``decoder.upsamples.k`` → ``decoder.up_blocks.l.resnets.r`` or
``.upsamplers.0`` with ``l, r = divmod(k, num_res_blocks + 2)`` (``r == num_res_blocks + 1`` is
the level's resample). The file holds no latent statistics: Wan keeps its 16-channel
``mean``/``std`` as constants, which are ``AutoencoderKLWan``'s defaults.

UMT5 (Wan → transformers): ``token_embedding`` → ``shared`` (and ``encoder.embed_tokens``);
``blocks.i.norm1`` → ``encoder.block.i.layer.0.layer_norm``; ``blocks.i.attn.{q,k,v,o}`` →
``…layer.0.SelfAttention.{q,k,v,o}``; ``blocks.i.pos_embedding.embedding`` →
``…SelfAttention.relative_attention_bias`` (UMT5: one per layer); ``blocks.i.norm2`` →
``…layer.1.layer_norm``; ``blocks.i.ffn.{gate.0, fc1, fc2}`` → ``…DenseReluDense.{wi_0, wi_1,
wo}`` (``fc1(x) · gelu_tanh(gate(x))`` = transformers' gated-gelu); ``norm`` →
``encoder.final_layer_norm``. Sizes are read from the tensors; the bucket distance (128) and
epsilon (1e-6) are Wan's constants.

Files are read with ``torch.load(weights_only=True)``: tensors only, no pickled code runs.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

_RESIDUAL = {"residual.0.gamma": "norm1.gamma", "residual.2.weight": "conv1.weight",
             "residual.2.bias": "conv1.bias", "residual.3.gamma": "norm2.gamma",
             "residual.6.weight": "conv2.weight", "residual.6.bias": "conv2.bias",
             "shortcut.weight": "conv_shortcut.weight", "shortcut.bias": "conv_shortcut.bias"}
_TOP = {"conv1.weight": "quant_conv.weight", "conv1.bias": "quant_conv.bias",
        "conv2.weight": "post_quant_conv.weight", "conv2.bias": "post_quant_conv.bias"}


def read_pth(path: str | Path) -> dict[str, torch.Tensor]:
    """A ``.pth`` state dict, tensors only (``weights_only=True``), memory-mapped.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file holds something other than a dict of tensors (or pickled objects,
            which ``weights_only`` refuses).
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        try:  # memory-mapped: the 11 GB T5 file is not read twice into RAM
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):  # a pre-1.6 (non-zip) file cannot be mapped: read it whole
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError / RuntimeError for foreign pickles
        raise ValueError(f"{path}: not a tensors-only .pth ({str(err).splitlines()[0]})") from None
    if not (isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())):
        raise ValueError(f"{path}: not a state dict of tensors")
    return state


def _residual(prefix: str, rest: str) -> str:
    if rest not in _RESIDUAL:
        raise KeyError(rest)
    return f"{prefix}.{_RESIDUAL[rest]}"


def wan_vae_to_diffusers(state: dict[str, torch.Tensor]) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(AutoencoderKLWan kwargs, renamed state)`` of a Wan2.1 VAE state dict (module docstring).

    Raises:
        ValueError: a key that is not part of Wan2.1's VAE layout.
    """
    try:
        down = sorted({int(m.group(1)) for k in state if (m := re.match(r"encoder\.downsamples\.(\d+)\.", k))})
        is_resample = {i: f"encoder.downsamples.{i}.resample.1.weight" in state for i in down}
        levels, current = [], []
        for i in down:
            if is_resample[i]:
                levels.append((current, i))
                current = []
            else:
                current.append(i)
        levels.append((current, None))
        num_res_blocks = len(levels[0][0])
        base = state["encoder.conv1.weight"].shape[0]
        dim_mult = [state[f"encoder.downsamples.{blocks[0]}.residual.2.weight"].shape[0] // base for blocks, _ in levels]
        temporal = [r is not None and f"encoder.downsamples.{r}.time_conv.weight" in state for _, r in levels[:-1]]
        config = {"base_dim": base, "z_dim": state["conv2.weight"].shape[0], "dim_mult": dim_mult,
                  "num_res_blocks": num_res_blocks, "temperal_downsample": temporal}
    except (KeyError, IndexError) as err:
        raise ValueError(f"not a Wan2.1 VAE state dict (wan/modules/vae2_1.py): no {err}") from None
    stride = num_res_blocks + 2
    out = {}
    for key, value in state.items():
        try:
            if key in _TOP:
                new = _TOP[key]
            elif m := re.fullmatch(r"(encoder|decoder)\.conv1\.(weight|bias)", key):
                new = f"{m.group(1)}.conv_in.{m.group(2)}"
            elif m := re.fullmatch(r"(encoder|decoder)\.head\.(0\.gamma|2\.weight|2\.bias)", key):
                new = f"{m.group(1)}." + {"0.gamma": "norm_out.gamma", "2.weight": "conv_out.weight",
                                          "2.bias": "conv_out.bias"}[m.group(2)]
            elif m := re.fullmatch(r"(encoder|decoder)\.middle\.([02])\.(.+)", key):
                new = _residual(f"{m.group(1)}.mid_block.resnets.{int(m.group(2)) // 2}", m.group(3))
            elif m := re.fullmatch(r"(encoder|decoder)\.middle\.1\.(norm\.gamma|to_qkv\.\w+|proj\.\w+)", key):
                new = f"{m.group(1)}.mid_block.attentions.0.{m.group(2)}"
            elif m := re.fullmatch(r"encoder\.downsamples\.(\d+)\.(.+)", key):
                i, rest = m.groups()
                new = (f"encoder.down_blocks.{i}.{rest}" if rest.startswith(("resample.", "time_conv."))
                       else _residual(f"encoder.down_blocks.{i}", rest))
            elif m := re.fullmatch(r"decoder\.upsamples\.(\d+)\.(.+)", key):
                level, r = divmod(int(m.group(1)), stride)
                rest = m.group(2)
                new = (f"decoder.up_blocks.{level}.upsamplers.0.{rest}" if r == num_res_blocks + 1
                       else _residual(f"decoder.up_blocks.{level}.resnets.{r}", rest))
            else:
                raise KeyError(key)
        except KeyError:
            raise ValueError(f"{key}: not a key of Wan2.1's VAE (wan/modules/vae2_1.py)") from None
        out[new] = value
    return config, out


def wan_t5_to_transformers(state: dict[str, torch.Tensor]) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(UMT5Config kwargs, renamed state)`` of Wan's ``T5Encoder`` state dict (module docstring).

    Raises:
        ValueError: a key that is not part of Wan's UMT5 encoder layout.
    """
    try:
        vocab, dim = state["token_embedding.weight"].shape
        buckets, heads = state["blocks.0.pos_embedding.embedding.weight"].shape
        d_kv, d_ff = state["blocks.0.attn.q.weight"].shape[0] // heads, state["blocks.0.ffn.fc1.weight"].shape[0]
    except KeyError as err:
        raise ValueError(f"not Wan's UMT5 encoder state dict (wan/modules/t5.py): no {err}") from None
    layers = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    config = {"vocab_size": vocab, "d_model": dim, "d_kv": d_kv,
              "d_ff": d_ff, "num_layers": layers, "num_heads": heads,
              "relative_attention_num_buckets": buckets, "relative_attention_max_distance": 128,
              "feed_forward_proj": "gated-gelu", "layer_norm_epsilon": 1e-6, "is_encoder_decoder": False,
              "tie_word_embeddings": False}
    names = {"norm1.weight": "layer.0.layer_norm.weight", "norm2.weight": "layer.1.layer_norm.weight",
             "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
             "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",
             "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",
             "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
             **{f"attn.{p}.weight": f"layer.0.SelfAttention.{p}.weight" for p in "qkvo"}}
    out = {}
    for key, value in state.items():
        if key == "token_embedding.weight":
            out["shared.weight"] = out["encoder.embed_tokens.weight"] = value
        elif key == "norm.weight":
            out["encoder.final_layer_norm.weight"] = value
        elif (m := re.fullmatch(r"blocks\.(\d+)\.(.+)", key)) and m.group(2) in names:
            out[f"encoder.block.{m.group(1)}.{names[m.group(2)]}"] = value
        else:
            raise ValueError(f"{key}: not a key of Wan's UMT5 encoder (wan/modules/t5.py)")
    return config, out


def load_wan_vae(path: str | Path, dtype: torch.dtype):
    """diffusers ``AutoencoderKLWan`` holding ``Wan2.1_VAE.pth`` (strict: every key used, none missing).

    Raises:
        FileNotFoundError, ValueError: see :func:`read_pth`, :func:`wan_vae_to_diffusers`;
        RuntimeError: the tensors do not fit the inferred architecture.
    """
    from diffusers import AutoencoderKLWan

    config, state = wan_vae_to_diffusers(read_pth(path))
    with torch.device("meta"):
        vae = AutoencoderKLWan(**config)
    vae.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True, assign=True)
    return vae


def load_wan_t5(path: str | Path, dtype: torch.dtype):
    """transformers ``UMT5EncoderModel`` holding ``models_t5_umt5-xxl-enc-bf16.pth`` (strict).

    Raises:
        FileNotFoundError, ValueError: see :func:`read_pth`, :func:`wan_t5_to_transformers`;
        RuntimeError: the tensors do not fit the inferred architecture.
    """
    from transformers import UMT5Config, UMT5EncoderModel

    config, state = wan_t5_to_transformers(read_pth(path))
    with torch.device("meta"):
        model = UMT5EncoderModel(UMT5Config(**config))
    missing, unexpected = model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=False, assign=True)
    missing = [k for k in missing if k != "encoder.embed_tokens.weight"]
    if missing or unexpected:
        raise RuntimeError(f"{path}: missing {missing}, unexpected {unexpected}")
    model.encoder.embed_tokens = model.shared
    return model
