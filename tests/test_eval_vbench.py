"""Each `multishot eval` column against its source, on fixed inputs and small random models of the
real architectures loaded by the real loading code.

The ``vbench`` wheel (0.1.5) cannot be installed here (it pins transformers 4.33.2 and numpy<2,
needs decord and CUDA), so VBench's code is written out below as the reference, each block naming
its file in github Vchitect/VBench (commit 45e79ec) or facebookresearch/dino.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from multishot.evaluate.consistency import ClipImageEncoder, DinoV1Encoder, LinearAestheticHead, character_pairs
from multishot.evaluate.vbench import (
    clip_transform,
    consistency_sums,
    dino_transform,
    middle_frame_indices,
    pooled,
)
from multishot.evaluate.viclip import ViCLIP
from tiny_eval_models import tiny_viclip_state

TINY_CLIP = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 64, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def _tv():
    from multishot.torchvision_cpu import import_torchvision

    return import_torchvision()


def _frames(seed: int, count: int = 5, h: int = 72, w: int = 128) -> torch.Tensor:
    """Smooth-ish uint8 frames ``[T, 3, H, W]``: a random image drifting, so consecutive frames differ."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, h // 8, w // 8, generator=g)
    frames = [F.interpolate(base + 0.15 * t * torch.rand(1, 3, h // 8, w // 8, generator=g), size=(h, w),
                            mode="bilinear", align_corners=False) for t in range(count)]
    return (torch.cat(frames).clamp(0, 1) * 255).to(torch.uint8)


# ---- vbench/utils.py, written out ------------------------------------------------------------

def vbench_clip_transform(n_px):
    tv = _tv()
    from torchvision.transforms import CenterCrop, Compose, Normalize, Resize

    return Compose([
        Resize(n_px, interpolation=tv.transforms.InterpolationMode.BICUBIC, antialias=False),
        CenterCrop(n_px),
        tv.transforms.Lambda(lambda x: x.float().div(255.0)),
        Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    ])


def vbench_dino_transform(n_px):
    tv = _tv()
    from torchvision.transforms import Compose, Normalize, Resize

    return Compose([
        Resize(size=n_px, antialias=False),
        tv.transforms.Lambda(lambda x: x.float().div(255.0)),
        Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ])


def vbench_get_frame_indices_middle(num_frames, vlen):
    acc_samples = min(num_frames, vlen)
    intervals = np.linspace(start=0, stop=vlen, num=acc_samples + 1).astype(int)
    ranges = []
    for idx, interv in enumerate(intervals[:-1]):
        ranges.append((interv, intervals[idx + 1] - 1))
    frame_indices = [(x[0] + x[1]) // 2 for x in ranges]
    if len(frame_indices) < num_frames:
        padded_frame_indices = [frame_indices[-1]] * num_frames
        padded_frame_indices[:len(frame_indices)] = frame_indices
        frame_indices = padded_frame_indices
    return frame_indices


def vbench_consistency_loop(per_clip_features):
    """vbench/subject_consistency.py ``subject_consistency`` (background_consistency is the same
    loop): per clip ``video_sim / (len - 1)``, overall ``sim / cnt``."""
    sim, cnt, video_results = 0.0, 0, []
    for feats in per_clip_features:
        video_sim = 0.0
        for i in range(len(feats)):
            image_features = F.normalize(feats[i:i + 1], dim=-1, p=2)
            if i == 0:
                first_image_features = image_features
            else:
                sim_pre = max(0.0, F.cosine_similarity(former_image_features, image_features).item())
                sim_fir = max(0.0, F.cosine_similarity(first_image_features, image_features).item())
                video_sim += (sim_pre + sim_fir) / 2
                cnt += 1
            former_image_features = image_features
        sim += video_sim
        video_results.append(video_sim / (len(feats) - 1))
    return sim / cnt, video_results


# ---- tests -------------------------------------------------------------------------------------

def test_transforms_and_frame_sampling_are_vbench_s():
    frames = _frames(0)
    torch.testing.assert_close(clip_transform(frames), vbench_clip_transform(224)(frames))
    torch.testing.assert_close(dino_transform(frames), vbench_dino_transform(224)(frames))
    assert dino_transform(frames).shape == (5, 3, 224, 398)  # shorter side 224, no crop
    for vlen in (1, 5, 8, 9, 37, 241):
        assert middle_frame_indices(8, vlen) == [int(i) for i in vbench_get_frame_indices_middle(8, vlen)]


def test_consistency_and_pooling_are_vbench_s_loop():
    torch.manual_seed(0)
    clips = [torch.randn(9, 16), torch.randn(4, 16) * 3, torch.randn(2, 16)]
    overall, per_clip = vbench_consistency_loop(clips)
    sums = [consistency_sums(c) for c in clips]
    for (s, n), expected in zip(sums, per_clip):
        assert s / n == pytest.approx(expected, abs=1e-6)
    assert pooled(sums) == pytest.approx(overall, abs=1e-6)
    assert consistency_sums(torch.ones(5, 3)) == (pytest.approx(4.0), 4)
    assert pooled([consistency_sums(torch.ones(1, 3))]) is None


def dino_interpolate_pos_encoding(pos_embed, x, w, h, patch_size):
    """facebookresearch/dino ``vision_transformer.py`` ``VisionTransformer.interpolate_pos_encoding``
    (verbatim but for ``self``)."""
    npatch = x.shape[1] - 1
    N = pos_embed.shape[1] - 1
    if npatch == N and w == h:
        return pos_embed
    class_pos_embed = pos_embed[:, 0]
    patch_pos_embed = pos_embed[:, 1:]
    dim = x.shape[-1]
    w0 = w // patch_size
    h0 = h // patch_size
    w0, h0 = w0 + 0.1, h0 + 0.1
    patch_pos_embed = torch.nn.functional.interpolate(
        patch_pos_embed.reshape(1, int(math.sqrt(N)), int(math.sqrt(N)), dim).permute(0, 3, 1, 2),
        scale_factor=(w0 / math.sqrt(N), h0 / math.sqrt(N)),
        mode='bicubic',
    )
    assert int(w0) == patch_pos_embed.shape[-2] and int(h0) == patch_pos_embed.shape[-1]
    patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, dim)
    return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1)


@pytest.fixture(scope="module")
def tiny_dino_v1(tmp_path_factory):
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("dino_v1")
    # DINO v1 ViT-B/16's layout at a tiny size: patch 16, 224 px (a 14 x 14 position grid), LN eps 1e-6
    model = ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                               image_size=224, patch_size=16, layer_norm_eps=1e-6), add_pooling_layer=False)
    with torch.no_grad():  # ViTModel initialises the position grid and CLS token to zeros-ish: make them matter
        model.embeddings.position_embeddings.normal_()
        model.embeddings.cls_token.normal_()
    model.save_pretrained(folder)
    return folder


def test_subject_consistency_is_vbench_s_on_dino_v1(tiny_dino_v1):
    """Our DINO v1 path (loaded from a transformers folder) against DINO's ``prepare_tokens`` +
    ``interpolate_pos_encoding`` + VBench's ``subject_consistency`` loop (one frame per forward)."""
    encoder = DinoV1Encoder(tiny_dino_v1)
    m = encoder.model
    frames = _frames(1)

    def dino_forward(image):  # dino vision_transformer.py: prepare_tokens → blocks → norm → [:, 0]
        B, nc, w, h = image.shape
        x = m.embeddings.patch_embeddings.projection(image).flatten(2).transpose(1, 2)
        x = torch.cat((m.embeddings.cls_token.expand(B, -1, -1), x), dim=1)
        x = x + dino_interpolate_pos_encoding(m.embeddings.position_embeddings, x, w, h, 16)
        for layer in m.layers:  # transformers 5 (the pinned version)
            out = layer(x)
            x = out[0] if isinstance(out, tuple) else out
        return m.layernorm(x)[:, 0]

    with torch.no_grad():
        images = vbench_dino_transform(224)(frames)
        expected = [dino_forward(images[i].unsqueeze(0)) for i in range(len(images))]
    ours = encoder.images(frames)
    torch.testing.assert_close(ours, torch.cat(expected), rtol=1e-4, atol=1e-5)
    overall, _ = vbench_consistency_loop([torch.cat(expected)])
    assert pooled([consistency_sums(ours)]) == pytest.approx(overall, abs=1e-5)
    # on a square 224 input DINO does not interpolate: transformers' own forward agrees
    square = vbench_dino_transform(224)(frames[:, :, :, :72])
    with torch.no_grad():
        torch.testing.assert_close(encoder.images(frames[:, :, :, :72]),
                                   m(pixel_values=square).last_hidden_state[:, 0], rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    _tv()
    import open_clip

    root = tmp_path_factory.mktemp("vbench_clip")
    (root / "tiny-vbench-clip.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(root / "tiny-vbench-clip.json")
    torch.manual_seed(0)
    torch.save(open_clip.create_model("tiny-vbench-clip").state_dict(), root / "clip.pt")
    torch.manual_seed(1)
    torch.save(LinearAestheticHead(TINY_CLIP["embed_dim"]).state_dict(), root / "head.pth")
    return "tiny-vbench-clip", root / "clip.pt", root / "head.pth"


def test_background_consistency_and_aesthetic_are_vbench_s(tiny_clip):
    """vbench/background_consistency.py and aesthetic_quality.py on a tiny open_clip model: the
    transform is VBench's tensor ``clip_transform`` at the model's input size, not open_clip's PIL
    preprocessing; the aesthetic is the linear head on L2-normalised features, / 10, mean."""
    name, clip, head_path = tiny_clip
    encoder = ClipImageEncoder(name, clip, batch_size=2)
    head = LinearAestheticHead.load(head_path, TINY_CLIP["embed_dim"])
    frames = _frames(2, count=6)
    with torch.no_grad():
        images = vbench_clip_transform(64)(frames)
        image_features = F.normalize(encoder.model.encode_image(images), dim=-1, p=2)
        overall, _ = vbench_consistency_loop([image_features])
        aesthetic = (head(image_features.to(torch.float32)).squeeze(dim=-1) / 10).mean().item()
        ours = encoder.images(frames)
        assert pooled([consistency_sums(ours)]) == pytest.approx(overall, abs=1e-5)
        assert (head(ours).squeeze(-1) / 10).mean().item() == pytest.approx(aesthetic, abs=1e-6)
    with pytest.raises(RuntimeError, match="size mismatch"):
        LinearAestheticHead.load(head_path, 768)  # the real head is 768-wide: a mismatch is an error


def vbench_viclip_vision(s, x, layers=2):
    """vbench/third_party/ViCLIP/viclip_vision.py ``VisionTransformer.forward`` (eval, no masking),
    with the einops rearranges spelled as reshapes, on the state dict ``s``; ``x`` [B, C, T, H, W]."""
    p = "vision_encoder."
    x = F.conv3d(x, s[p + "conv1.weight"], stride=(1, 14, 14))
    B, C, T, H, W = x.shape
    x = x.permute(0, 2, 3, 4, 1).reshape(B * T, H * W, C)
    x = torch.cat([s[p + "class_embedding"] + torch.zeros(x.shape[0], 1, x.shape[-1]), x], dim=1)
    x = x + s[p + "positional_embedding"]
    cls_tokens = x[:B, :1, :]
    x = x[:, 1:]
    x = x.reshape(B, T, H * W, C).permute(0, 2, 1, 3).reshape(B * H * W, T, C)  # '(b t) n m -> (b n) t m'
    x = x + s[p + "temporal_positional_embedding"]
    x = x.reshape(B, H * W * T, C)  # '(b n) t m -> b (n t) m'
    x = torch.cat((cls_tokens, x), dim=1)
    x = F.layer_norm(x, (C,), s[p + "ln_pre.weight"], s[p + "ln_pre.bias"])
    x = _clip_blocks(s, p, layers, x.permute(1, 0, 2), heads=C // 64, mask=None)
    x = F.layer_norm(x, (C,), s[p + "ln_post.weight"], s[p + "ln_post.bias"])
    return x[0] @ s[p + "proj"]


def _clip_blocks(s, p, layers, x, heads, mask):
    """``ResidualAttentionBlock``: x + attn(ln_1(x)); x + mlp(ln_2(x)) (QuickGELU), sequence first."""
    C = x.shape[-1]
    for i in range(layers):
        b = f"{p}transformer.resblocks.{i}."
        h = F.layer_norm(x, (C,), s[b + "ln_1.weight"], s[b + "ln_1.bias"])
        attn, _ = F.multi_head_attention_forward(
            h, h, h, C, heads, s[b + "attn.in_proj_weight"], s[b + "attn.in_proj_bias"], None, None, False, 0.0,
            s[b + "attn.out_proj.weight"], s[b + "attn.out_proj.bias"], training=False, need_weights=False,
            attn_mask=mask)
        x = x + attn
        h = F.linear(F.layer_norm(x, (C,), s[b + "ln_2.weight"], s[b + "ln_2.bias"]),
                     s[b + "mlp.c_fc.weight"], s[b + "mlp.c_fc.bias"])
        x = x + F.linear(h * torch.sigmoid(1.702 * h), s[b + "mlp.c_proj.weight"], s[b + "mlp.c_proj.bias"])
    return x


def vbench_viclip_text(s, text):
    """viclip_text.py ``CLIP_TEXT.forward`` with its causal mask, on token ids ``[B, 32]``."""
    p = "text_encoder."
    x = s[p + "token_embedding.weight"][text] + s[p + "positional_embedding"]
    C = x.shape[-1]
    mask = torch.empty(32, 32).fill_(float("-inf")).triu_(1)
    x = _clip_blocks(s, p, 1, x.permute(1, 0, 2), heads=C // 64, mask=mask).permute(1, 0, 2)
    x = F.layer_norm(x, (C,), s[p + "ln_final.weight"], s[p + "ln_final.bias"])
    return x[torch.arange(x.shape[0]), text.argmax(dim=-1)] @ s[p + "text_projection"]


def test_viclip_loads_vbench_layout_and_matches_its_forward(tmp_path):
    """A ``{"model": state_dict}`` checkpoint in VBench's ViCLIP layout loads strictly (weights_only)
    and our video / text features equal VBench's forward written out; text is cut at 32 tokens
    with EOT last (``CLIP_TEXT.tokenize``)."""
    state = tiny_viclip_state()
    torch.save({"model": state}, tmp_path / "viclip.pth")
    model = ViCLIP.load(tmp_path / "viclip.pth")
    assert (model.num_frames, model.resolution, model.text_encoder.context_length) == (4, 28, 32)
    frames = _frames(3, count=11)
    index = middle_frame_indices(4, len(frames))
    clip = clip_transform(frames[index], 28)
    ours = model.encode_video(clip[None])
    with torch.no_grad():
        expected = vbench_viclip_vision(state, clip[None].permute(0, 2, 1, 3, 4))
    torch.testing.assert_close(ours, F.normalize(expected, dim=-1), rtol=1e-4, atol=1e-5)
    long = "a girl walks " * 30
    tokens = model.tokenize(["[character1] runs.", long])
    import open_clip

    bpe = open_clip.tokenizer.SimpleTokenizer()
    sot, eot = 49406, 49407  # CLIP's <|startoftext|>, <|endoftext|> (bpe_simple_vocab_16e6)
    assert tokens[0, : len(bpe.encode("[character1] runs.")) + 2].tolist() == [sot, *bpe.encode("[character1] runs."), eot]
    assert tokens.shape == (2, 32) and tokens[1, -1] == eot and tokens[1, 0] == sot
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(["[character1] runs.", long]),
                                   F.normalize(vbench_viclip_text(state, tokens), dim=-1), rtol=1e-4, atol=1e-5)
    torch.save({"model": {k: v for k, v in state.items() if k != "vision_encoder.proj"}}, tmp_path / "bad.pth")
    with pytest.raises(RuntimeError, match="vision_encoder.proj"):
        ViCLIP.load(tmp_path / "bad.pth")


def test_character_pairs():
    assert character_pairs(["[character1] runs", "[character2]", "[character2] and [character1]"]) == [(0, 2), (1, 2)]


def dino_v1_state(dim: int = 64, layers: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in dino_vitbase16_pretrain.pth's layout (facebookresearch/dino
    ``vision_transformer.py``: patch 16, 224 px), tiny: width 64 (1 head), 2 blocks."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g) * 0.2  # noqa: E731
    s = {"cls_token": r(1, 1, dim), "pos_embed": r(1, 197, dim), "patch_embed.proj.weight": r(dim, 3, 16, 16),
         "patch_embed.proj.bias": r(dim), "norm.weight": 1 + r(dim), "norm.bias": r(dim)}
    for i in range(layers):
        b = f"blocks.{i}."
        s |= {b + "norm1.weight": 1 + r(dim), b + "norm1.bias": r(dim), b + "attn.qkv.weight": r(3 * dim, dim),
              b + "attn.qkv.bias": r(3 * dim), b + "attn.proj.weight": r(dim, dim), b + "attn.proj.bias": r(dim),
              b + "norm2.weight": 1 + r(dim), b + "norm2.bias": r(dim), b + "mlp.fc1.weight": r(4 * dim, dim),
              b + "mlp.fc1.bias": r(4 * dim), b + "mlp.fc2.weight": r(dim, 4 * dim), b + "mlp.fc2.bias": r(dim)}
    return s


def dino_v1_reference(s, x, layers=2, heads=1):
    """facebookresearch/dino ``VisionTransformer.forward`` (``prepare_tokens`` → ``Block``s →
    ``norm`` → CLS) written out on the state dict: ``Block`` = x + Attention(norm1(x)) (qkv, scale
    head_dim^-0.5, softmax, proj), then x + Mlp(norm2(x)) (fc1, exact GELU, fc2); LayerNorm eps 1e-6."""
    B, nc, w, h = x.shape
    t = F.conv2d(x, s["patch_embed.proj.weight"], s["patch_embed.proj.bias"], stride=16).flatten(2).transpose(1, 2)
    t = torch.cat((s["cls_token"].expand(B, -1, -1), t), dim=1)
    t = t + dino_interpolate_pos_encoding(s["pos_embed"], t, w, h, 16)
    C = t.shape[-1]
    for i in range(layers):
        b = f"blocks.{i}."
        y = F.layer_norm(t, (C,), s[b + "norm1.weight"], s[b + "norm1.bias"], eps=1e-6)
        qkv = F.linear(y, s[b + "attn.qkv.weight"], s[b + "attn.qkv.bias"]).reshape(B, -1, 3, heads, C // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q @ k.transpose(-2, -1)) * (C // heads) ** -0.5).softmax(dim=-1)
        y = (attn @ v).transpose(1, 2).reshape(B, -1, C)
        t = t + F.linear(y, s[b + "attn.proj.weight"], s[b + "attn.proj.bias"])
        y = F.layer_norm(t, (C,), s[b + "norm2.weight"], s[b + "norm2.bias"], eps=1e-6)
        y = F.linear(F.gelu(F.linear(y, s[b + "mlp.fc1.weight"], s[b + "mlp.fc1.bias"])), s[b + "mlp.fc2.weight"], s[b + "mlp.fc2.bias"])
        t = t + y
    return F.layer_norm(t, (C,), s["norm.weight"], s["norm.bias"], eps=1e-6)[:, 0]


def test_dino_v1_own_checkpoint_loads_and_matches_dino_s_forward(tmp_path):
    """VBench's actual DINO file layout (dino_vitbase16_pretrain.pth) loads into our encoder and its
    features equal DINO's forward written out, on VBench's uncropped 16:9 frames."""
    state = dino_v1_state()
    torch.save(state, tmp_path / "dino_vitbase16_pretrain.pth")
    encoder = DinoV1Encoder(tmp_path / "dino_vitbase16_pretrain.pth")
    assert encoder.model.config.layer_norm_eps == 1e-6 and encoder.model.config.num_attention_heads == 1
    frames = _frames(4, count=3)
    with torch.no_grad():
        images = vbench_dino_transform(224)(frames)
        expected = torch.cat([dino_v1_reference(state, images[i:i + 1]) for i in range(len(images))])
    torch.testing.assert_close(encoder.images(frames), expected, rtol=1e-4, atol=1e-5)
    torch.save({**state, "head.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="unexpected"):
        DinoV1Encoder(tmp_path / "bad.pth")
