"""Small random weights of `multishot eval`'s models in their real key layouts (no weights can be
downloaded here); shared by tests/test_eval_vbench.py and tests/test_eval_consistency.py."""

from __future__ import annotations

import torch


def tiny_viclip_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in ViClip-InternVid-10M-FLT.pth's key layout (VBench's ViCLIP module names)
    at a tiny size: vision width 64 (1 head), patch 14, 28 px, 4 frames, 2 layers; text width 64,
    context 32, CLIP's 49408-token vocabulary, 1 layer; embedding 16."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g) * 0.2  # noqa: E731
    state = {"temp": torch.tensor(0.01),
             "vision_encoder.conv1.weight": r(64, 3, 1, 14, 14), "vision_encoder.class_embedding": r(64),
             "vision_encoder.positional_embedding": r(5, 64), "vision_encoder.temporal_positional_embedding": r(1, 4, 64),
             "vision_encoder.ln_pre.weight": 1 + r(64), "vision_encoder.ln_pre.bias": r(64),
             "vision_encoder.ln_post.weight": 1 + r(64), "vision_encoder.ln_post.bias": r(64),
             "vision_encoder.proj": r(64, 16),
             "text_encoder.token_embedding.weight": r(49408, 64), "text_encoder.positional_embedding": r(32, 64),
             "text_encoder.ln_final.weight": 1 + r(64), "text_encoder.ln_final.bias": r(64),
             "text_encoder.text_projection": r(64, 16)}
    for prefix, layers in (("vision_encoder", 2), ("text_encoder", 1)):
        for i in range(layers):
            p = f"{prefix}.transformer.resblocks.{i}."
            state |= {p + "attn.in_proj_weight": r(192, 64), p + "attn.in_proj_bias": r(192),
                      p + "attn.out_proj.weight": r(64, 64), p + "attn.out_proj.bias": r(64),
                      p + "ln_1.weight": 1 + r(64), p + "ln_1.bias": r(64), p + "ln_2.weight": 1 + r(64),
                      p + "ln_2.bias": r(64), p + "mlp.c_fc.weight": r(256, 64), p + "mlp.c_fc.bias": r(256),
                      p + "mlp.c_proj.weight": r(64, 256), p + "mlp.c_proj.bias": r(64)}
    return state
