"""The image and video encoders of ``multishot eval``'s columns, and the pairings between shots.

Each encoder reproduces the model, preprocessing and pooling of the column's source:

* :class:`DinoV1Encoder`: VBench subject consistency (DINO v1 ViT-B/16, ``dino_transform``).
* :class:`ClipImageEncoder`: VBench background consistency (CLIP ViT-B/32) and, with
  :class:`LinearAestheticHead`, VBench aesthetic quality (CLIP ViT-L/14 + LAION's linear head)
  (``clip_transform``, ``encode_image``, L2 normalisation).
* :class:`multishot.evaluate.viclip.ViCLIP`: HoloCine's inter-shot and semantic consistency.
* :class:`Dinov2Encoder`: CausalCine's DINOv2 inter-shot consistency.

Weights are local files only; ``tests/test_eval_vbench.py`` loads small random models of the
same classes through this code.
"""

from __future__ import annotations

import re
from itertools import combinations
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from multishot.evaluate.vbench import clip_transform, dino_transform, dino_v1_features

CHARACTER_TAG = re.compile(r"\[character(\d+)\]")


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class ClipImageEncoder:
    """open_clip ``encode_image`` of VBench's ``clip_transform(224)`` frames, L2-normalised, float32.

    Raises:
        FileNotFoundError: ``weights`` does not exist.
        RuntimeError: the weights do not fit ``model_name``.
    """

    def __init__(self, model_name: str, weights: Path, batch_size: int = 32):
        from multishot.pipeline.aesthetic import load_clip

        self.device = _device()
        self.model, _ = load_clip(model_name, weights, self.device)
        self.size = self.model.visual.image_size
        self.size = self.size[0] if isinstance(self.size, (tuple, list)) else self.size
        self.batch_size = batch_size

    @torch.inference_mode()
    def images(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames ``[T, 3, H, W]`` → ``[T, D]``."""
        out = []
        for i in range(0, len(frames), self.batch_size):
            x = clip_transform(frames[i : i + self.batch_size], self.size).to(self.device)
            out.append(self.model.encode_image(x).float().cpu())
        return torch.nn.functional.normalize(torch.cat(out), dim=-1, p=2)


class LinearAestheticHead(nn.Linear):
    """LAION's linear aesthetic head ``sa_0_4_vit_l_14_linear.pth`` (``nn.Linear(768, 1)`` on the
    L2-normalised CLIP ViT-L/14 embedding; VBench ``aesthetic_quality.get_aesthetic_model``)."""

    def __init__(self, dim: int = 768):
        super().__init__(dim, 1)

    @classmethod
    def load(cls, path: Path, dim: int) -> "LinearAestheticHead":
        """Raises: FileNotFoundError (no file), RuntimeError (the head does not fit ``dim``)."""
        if not Path(path).is_file():
            raise FileNotFoundError(f"aesthetic head not found: {path}")
        head = cls(dim)
        head.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return head.eval()


def load_dino_v1(path: Path):
    """DINO v1's own checkpoint (``dino_vitbase16_pretrain.pth``, the file VBench loads through
    torch.hub; github facebookresearch/dino ``vision_transformer.py`` key layout) as a transformers
    ``ViTModel``: sizes from the tensors, heads = width / 64, LayerNorm eps 1e-6 (DINO's; the
    transformers conversion's config may say 1e-12), ``qkv`` split into q / k / v. Read with
    ``weights_only=True``.

    Raises:
        FileNotFoundError: no such file. ValueError: not DINO's layout.
    """
    import math

    from transformers import ViTConfig, ViTModel

    from multishot.model.native_wan import read_pth

    state = read_pth(path)
    try:
        dim, _, patch, _ = state["patch_embed.proj.weight"].shape
        layers = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
        config = ViTConfig(hidden_size=dim, num_hidden_layers=layers, num_attention_heads=dim // 64,
                           intermediate_size=state["blocks.0.mlp.fc1.weight"].shape[0], patch_size=patch,
                           image_size=int(math.isqrt(state["pos_embed"].shape[1] - 1)) * patch,
                           layer_norm_eps=1e-6, qkv_bias=True, hidden_act="gelu")
        out = {"embeddings.cls_token": state["cls_token"], "embeddings.position_embeddings": state["pos_embed"],
               "embeddings.patch_embeddings.projection.weight": state["patch_embed.proj.weight"],
               "embeddings.patch_embeddings.projection.bias": state["patch_embed.proj.bias"],
               "layernorm.weight": state["norm.weight"], "layernorm.bias": state["norm.bias"]}
        for i in range(layers):
            b, h = f"blocks.{i}.", f"layers.{i}."
            for part, chunk in zip(("q_proj", "k_proj", "v_proj"), state[b + "attn.qkv.weight"].chunk(3)):
                out[h + f"attention.{part}.weight"] = chunk
            for part, chunk in zip(("q_proj", "k_proj", "v_proj"), state[b + "attn.qkv.bias"].chunk(3)):
                out[h + f"attention.{part}.bias"] = chunk
            for ours, theirs in (("attention.o_proj", "attn.proj"), ("layernorm_before", "norm1"),
                                 ("layernorm_after", "norm2"), ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")):
                for p in ("weight", "bias"):
                    out[f"{h}{ours}.{p}"] = state[f"{b}{theirs}.{p}"]
    except KeyError as err:
        raise ValueError(f"{path}: not a DINO v1 ViT checkpoint (facebookresearch/dino): no {err}") from None
    unused = set(state) - {k for k in state if k.startswith(("blocks.", "patch_embed.", "norm.", "cls_token", "pos_embed"))}
    if unused:
        raise ValueError(f"{path}: not a DINO v1 ViT checkpoint: unexpected {sorted(unused)[:3]}")
    model = ViTModel(config, add_pooling_layer=False)
    model.load_state_dict(out, strict=True)
    return model


class DinoV1Encoder:
    """DINO v1 CLS features (:func:`~multishot.evaluate.vbench.dino_v1_features`) of VBench's
    ``dino_transform(224)`` frames (shorter side 224, not cropped), one frame per forward as VBench
    does; ``[T, D]`` float32, not normalised (VBench normalises before the cosine).

    ``path``: DINO's ``dino_vitbase16_pretrain.pth`` (:func:`load_dino_v1`, what VBench runs), or a
    transformers ``ViTModel`` folder (``facebook/dino-vitb16``).

    Raises:
        FileNotFoundError: ``path`` does not exist. ValueError: a ``.pth`` not in DINO's layout.
    """

    def __init__(self, path: Path, size: int = 224):
        from transformers import ViTModel

        self.device = _device()
        if Path(path).is_file():
            self.model = load_dino_v1(path)
        elif Path(path).is_dir():
            self.model = ViTModel.from_pretrained(path, add_pooling_layer=False)
        else:
            raise FileNotFoundError(f"DINO v1 weights not found: {path}")
        self.model = self.model.to(self.device).eval()
        self.size = size

    @torch.inference_mode()
    def images(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames ``[T, 3, H, W]`` → ``[T, D]``."""
        x = dino_transform(frames, self.size)
        return torch.cat([dino_v1_features(self.model, x[i : i + 1].to(self.device)).float().cpu()
                          for i in range(len(x))])


class Dinov2Encoder:
    """DINOv2 (transformers ``AutoModel`` + its ``AutoImageProcessor``): the final-layer-normed CLS
    token (``pooler_output``), L2-normalised, ``[N, D]`` float32.

    Raises:
        FileNotFoundError: ``folder`` does not exist.
    """

    def __init__(self, folder: Path, batch_size: int = 32):
        from multishot.torchvision_cpu import import_torchvision

        import_torchvision()
        from transformers import AutoImageProcessor, AutoModel

        if not Path(folder).is_dir():
            raise FileNotFoundError(f"DINOv2 folder not found: {folder}")
        self.device = _device()
        self.model = AutoModel.from_pretrained(folder).to(self.device).eval()
        self.processor = AutoImageProcessor.from_pretrained(folder)
        self.batch_size = batch_size

    @torch.inference_mode()
    def images(self, frames: Sequence[np.ndarray]) -> torch.Tensor:
        """RGB uint8 frames ``[H, W, 3]`` → ``[N, D]``."""
        out = []
        for i in range(0, len(frames), self.batch_size):
            inputs = self.processor(images=list(frames[i : i + self.batch_size]), return_tensors="pt")
            out.append(self.model(pixel_values=inputs["pixel_values"].to(self.device)).pooler_output.float().cpu())
        return torch.nn.functional.normalize(torch.cat(out), dim=-1)


def shot_embedding(embeddings: torch.Tensor) -> torch.Tensor:
    """One shot's embedding ``[D]``: the mean of its L2-normalised frame embeddings ``[N, D]``,
    re-normalised."""
    return torch.nn.functional.normalize(embeddings.mean(0), dim=-1)


def pair_similarity(shots: torch.Tensor, pairs: Sequence[tuple[int, int]] | None = None) -> float | None:
    """Mean cosine similarity of L2-normalised shot embeddings ``[S, D]`` over ``pairs``
    (default: all ``i < j``), in [-1, 1]; ``None`` when there is no pair."""
    pairs = list(combinations(range(len(shots)), 2)) if pairs is None else list(pairs)
    if not pairs:
        return None
    i, j = torch.tensor(pairs).T
    return float((shots[i] * shots[j]).sum(-1).mean())


def character_pairs(captions: Sequence[str]) -> list[tuple[int, int]]:
    """Pairs ``(i, j)``, ``i < j``, of shots whose captions name a common ``[characterK]``
    (HoloCine's inter-shot pairing)."""
    names = [set(CHARACTER_TAG.findall(c)) for c in captions]
    return [(i, j) for i, j in combinations(range(len(captions)), 2) if names[i] & names[j]]
