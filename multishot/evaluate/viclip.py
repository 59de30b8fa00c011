"""ViCLIP (InternVideo / InternVid, Wang et al. 2023) for video–text and video–video similarity,
ported from the copy VBench ships (github Vchitect/VBench, ``vbench/third_party/ViCLIP/``:
``viclip.py``, ``viclip_vision.py``, ``viclip_text.py``; Apache-2.0).

Inference only: no drop-path, dropout, masking or checkpointing. Module and parameter names are
VBench's, so ``ViClip-InternVid-10M-FLT.pth`` (``{"model": state_dict}``) loads with
``strict=True``. The sizes are read from the checkpoint (ViT-L/14 vision, 8 frames, 224 px; a
12-layer 768-wide text tower with a 32-token context), heads = width / 64 as in CLIP, so a small
random checkpoint of the same layout loads through the same code. The tokenizer is CLIP's BPE
(open_clip's copy of ``bpe_simple_vocab_16e6.txt.gz``, the file VBench's tokenizer reads).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class _LayerNormFp32(nn.LayerNorm):
    """The text tower's LayerNorm (computes in fp32, ``viclip_text.LayerNorm``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


class ResidualAttentionBlock(nn.Module):
    """Pre-norm CLIP block on ``[L, B, D]`` (sequence first, as ``nn.MultiheadAttention`` wants)."""

    def __init__(self, width: int, heads: int, attn_mask: torch.Tensor | None, norm=nn.LayerNorm):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = norm(width)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, width * 4)), ("gelu", QuickGELU()), ("c_proj", nn.Linear(width * 4, width)),
        ]))
        self.ln_2 = norm(width)
        self.attn_mask = attn_mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = None if self.attn_mask is None else self.attn_mask.to(dtype=x.dtype, device=x.device)
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, attn_mask=None, norm=nn.LayerNorm):
        super().__init__()
        # VBench's text tower holds them in an nn.Sequential, the vision tower in an nn.ModuleList:
        # the parameter names are the same (resblocks.0. …)
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(width, heads, attn_mask, norm) for _ in range(layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x)
        return x


class VisionTransformer(nn.Module):
    """ViCLIP's video ViT (``viclip_vision.VisionTransformer``): each frame patched by a
    ``(1, p, p)`` Conv3d, spatial + temporal position embeddings, all frames' patches attended
    jointly after one CLS token; output ``ln_post(CLS) @ proj``."""

    def __init__(self, resolution: int, patch: int, width: int, layers: int, output_dim: int, num_frames: int):
        super().__init__()
        self.conv1 = nn.Conv3d(3, width, (1, patch, patch), (1, patch, patch), bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.positional_embedding = nn.Parameter(torch.zeros((resolution // patch) ** 2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.temporal_positional_embedding = nn.Parameter(torch.zeros(1, num_frames, width))
        self.transformer = Transformer(width, layers, width // 64)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.zeros(width, output_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``[B, 3, T, H, W]`` (CLIP-normalised) → ``[B, output_dim]``."""
        x = self.conv1(x)
        B, C, T, H, W = x.shape
        x = x.permute(0, 2, 3, 4, 1).reshape(B * T, H * W, C)
        cls = self.class_embedding.to(x.dtype) + torch.zeros(x.shape[0], 1, C, dtype=x.dtype, device=x.device)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        cls_tokens = x[:B, :1, :]
        x = x[:, 1:].reshape(B, T, H * W, C).transpose(1, 2).reshape(B * H * W, T, C)  # (b t) n m -> (b n) t m
        x = x + (self.temporal_positional_embedding.mean(1) if T == 1 else self.temporal_positional_embedding)
        x = x.reshape(B, H * W * T, C)  # (b n) t m -> b (n t) m
        x = self.ln_pre(torch.cat((cls_tokens, x), dim=1))
        x = self.transformer(x.permute(1, 0, 2))
        return self.ln_post(x)[0] @ self.proj


class TextTransformer(nn.Module):
    """ViCLIP's text tower (``viclip_text.CLIP_TEXT``): causal CLIP text transformer, features of
    the end-of-text token (the highest id) projected by ``text_projection``."""

    def __init__(self, embed_dim: int, context_length: int, vocab_size: int, width: int, layers: int):
        super().__init__()
        self.context_length = context_length
        mask = torch.full((context_length, context_length), float("-inf")).triu_(1)
        self.transformer = Transformer(width, layers, width // 64, mask, _LayerNormFp32)
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.zeros(context_length, width))
        self.ln_final = _LayerNormFp32(width)
        self.text_projection = nn.Parameter(torch.zeros(width, embed_dim))

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        """Token ids ``[B, context_length]`` → ``[B, embed_dim]``."""
        x = self.token_embedding(text) + self.positional_embedding
        x = self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0]), text.argmax(dim=-1)] @ self.text_projection


class ViCLIP(nn.Module):
    """``vbench/third_party/ViCLIP/viclip.ViCLIP`` for inference; build with :meth:`from_state_dict`."""

    def __init__(self, vision: VisionTransformer, text: TextTransformer):
        super().__init__()
        self.vision_encoder = vision
        self.text_encoder = text
        self.temp = nn.Parameter(torch.ones([]) / 100.0)
        from multishot.torchvision_cpu import import_torchvision

        import_torchvision()  # before open_clip (its tokenizer module imports torchvision)
        import open_clip

        self._tokenizer = open_clip.tokenizer.SimpleTokenizer()

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> "ViCLIP":
        """A ViCLIP sized from ``state``'s shapes, holding ``state`` (strict).

        Raises:
            RuntimeError: ``state`` is not a ViCLIP state dict (names the missing keys).
        """
        try:
            conv = state["vision_encoder.conv1.weight"]  # [width, 3, 1, p, p]
            width, patch = conv.shape[0], conv.shape[-1]
            grid = state["vision_encoder.positional_embedding"].shape[0] - 1
            vision = VisionTransformer(
                resolution=int(round(grid ** 0.5)) * patch, patch=patch, width=width,
                layers=_count(state, "vision_encoder.transformer.resblocks."),
                output_dim=state["vision_encoder.proj"].shape[1],
                num_frames=state["vision_encoder.temporal_positional_embedding"].shape[1],
            )
            text = TextTransformer(
                embed_dim=state["text_encoder.text_projection"].shape[1],
                context_length=state["text_encoder.positional_embedding"].shape[0],
                vocab_size=state["text_encoder.token_embedding.weight"].shape[0],
                width=state["text_encoder.token_embedding.weight"].shape[1],
                layers=_count(state, "text_encoder.transformer.resblocks."),
            )
        except KeyError as err:
            raise RuntimeError(f"not a ViCLIP checkpoint: missing {err}") from None
        model = cls(vision, text)
        model.load_state_dict(state, strict=True)
        return model.eval()

    @classmethod
    def load(cls, path: str | Path) -> "ViCLIP":
        """``ViClip-InternVid-10M-FLT.pth`` (``{"model": state_dict}``, or a bare state dict) on the
        CPU, read with ``weights_only=True`` (no pickled objects run).

        Raises:
            FileNotFoundError: ``path`` does not exist.
            RuntimeError: not a ViCLIP checkpoint.
        """
        if not Path(path).is_file():
            raise FileNotFoundError(f"ViCLIP weights not found: {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        return cls.from_state_dict(state.get("model", state))

    @property
    def num_frames(self) -> int:
        return self.vision_encoder.temporal_positional_embedding.shape[1]

    @property
    def resolution(self) -> int:
        grid = self.vision_encoder.positional_embedding.shape[0] - 1
        return int(round(grid ** 0.5)) * self.vision_encoder.conv1.kernel_size[-1]

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """``CLIP_TEXT.tokenize``: ``[SOT] + BPE + [EOT]`` cut to the context (the last kept token
        becomes EOT), zero-padded: ``[B, context_length]`` int64. ViCLIP's context is 32 tokens."""
        n = self.text_encoder.context_length
        # CLIP's <|startoftext|> / <|endoftext|> (ids 49406 / 49407; open_clip names them differently)
        sot, eot = self._tokenizer.sot_token_id, self._tokenizer.eot_token_id
        out = torch.zeros(len(texts), n, dtype=torch.long)
        for i, text in enumerate(texts):
            tokens = [sot, *self._tokenizer.encode(text), eot]
            if len(tokens) > n:
                tokens = tokens[:n]
                tokens[-1] = eot
            out[i, : len(tokens)] = torch.tensor(tokens)
        return out

    @torch.inference_mode()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Texts → L2-normalised ``[B, D]`` float32 (``overall_consistency.get_text_features``)."""
        device = self.text_encoder.token_embedding.weight.device
        f = self.text_encoder(self.tokenize(texts).to(device)).float()
        return f / f.norm(dim=-1, keepdim=True)

    @torch.inference_mode()
    def encode_video(self, clips: torch.Tensor) -> torch.Tensor:
        """CLIP-normalised clips ``[B, T, 3, H, W]`` → L2-normalised ``[B, D]`` float32
        (``overall_consistency.get_vid_features``: ``encode_vision(test=True)``)."""
        weight = self.vision_encoder.conv1.weight
        f = self.vision_encoder(clips.permute(0, 2, 1, 3, 4).to(weight.device, weight.dtype)).float()
        return f / f.norm(dim=-1, keepdim=True)


def _count(state: dict, prefix: str) -> int:
    return len({k[len(prefix):].split(".")[0] for k in state if k.startswith(prefix)})
