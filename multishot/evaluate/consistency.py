"""Consistency of a multi-shot video: inter-shot, intra-shot and text-video similarity.

Definitions (HoloCine arXiv 2510.20822 §4 and VBench, Huang et al. 2024):

* **intra-shot** (:func:`vbench_consistency`): VBench's subject (DINO) and background (CLIP)
  consistency inside one shot. For L2-normalised frame embeddings ``e_0 … e_{N-1}``:
  ``mean_{i>=1} (max(0, cos(e_{i-1}, e_i)) + max(0, cos(e_0, e_i))) / 2``
  (``vbench/subject_consistency.py``, ``background_consistency.py``). HoloCine applies it
  after splitting the video into shots with TransNetV2; so do we (the detected shots).
* **inter-shot** (:func:`inter_shot_similarity`): mean cosine similarity of per-shot
  embeddings (mean of the shot's L2-normalised CLIP frame embeddings, re-normalised) over all
  shot pairs, and over the pairs whose captions name the same ``[characterK]``
  (:func:`character_pairs`, HoloCine's grouping; HoloCine uses ViCLIP, we use CLIP frames).
* **text-video** (:func:`text_similarity`): mean over frames of the cosine between the
  frame's CLIP embedding and the caption's (CLIPScore without its 2.5 scale and clipping), for
  each shot with its own caption and for the whole video with the global caption.

The encoders load local weights only: open_clip through the aesthetic stage's loader
(:func:`multishot.pipeline.aesthetic.load_clip`) and DINOv2 through transformers.
"""

from __future__ import annotations

import re
from itertools import combinations
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

CHARACTER_TAG = re.compile(r"\[character(\d+)\]")


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class ClipEncoder:
    """open_clip image and text embeddings, L2-normalised, float32 on the CPU.

    Raises:
        FileNotFoundError: ``weights`` does not exist.
        RuntimeError: the weights do not fit ``model_name``.
    """

    def __init__(self, model_name: str, weights: Path, batch_size: int = 32):
        import open_clip

        from multishot.pipeline.aesthetic import load_clip

        self.device = _device()
        self.model, self.preprocess = load_clip(model_name, weights, self.device)
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.batch_size = batch_size

    @torch.inference_mode()
    def images(self, frames: Sequence[np.ndarray]) -> torch.Tensor:
        """RGB uint8 frames ``[H, W, 3]`` → ``[N, D]`` (CLIP's resize + centre crop)."""
        from PIL import Image

        out = []
        for i in range(0, len(frames), self.batch_size):
            batch = torch.stack([self.preprocess(Image.fromarray(f)) for f in frames[i : i + self.batch_size]])
            out.append(self.model.encode_image(batch.to(self.device)).float().cpu())
        return torch.nn.functional.normalize(torch.cat(out), dim=-1)

    @torch.inference_mode()
    def texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Captions → ``[N, D]``; the tokenizer truncates at CLIP's context length (77 tokens)."""
        tokens = self.tokenizer(list(texts)).to(self.device)
        return torch.nn.functional.normalize(self.model.encode_text(tokens).float().cpu(), dim=-1)


class DinoEncoder:
    """DINOv2 (transformers ``AutoModel`` + ``AutoImageProcessor`` from a local folder): the
    final-layer-normed CLS token (``pooler_output``), L2-normalised, ``[N, D]`` float32.

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


def vbench_consistency(embeddings: torch.Tensor) -> float:
    """VBench's subject/background consistency of one shot's L2-normalised frame embeddings
    ``[N, D]`` (N >= 2), in [0, 1]; identical frames give 1.0.

    Raises:
        ValueError: fewer than two frames.
    """
    if len(embeddings) < 2:
        raise ValueError("consistency needs at least two frames")
    to_previous = (embeddings[1:] * embeddings[:-1]).sum(-1).clamp(min=0)
    to_first = (embeddings[1:] * embeddings[:1]).sum(-1).clamp(min=0)
    return float(((to_previous + to_first) / 2).mean())


def shot_embedding(embeddings: torch.Tensor) -> torch.Tensor:
    """One shot's embedding ``[D]``: the mean of its L2-normalised frame embeddings ``[N, D]``,
    re-normalised."""
    return torch.nn.functional.normalize(embeddings.mean(0), dim=-1)


def inter_shot_similarity(shots: torch.Tensor, pairs: Sequence[tuple[int, int]] | None = None) -> float | None:
    """Mean cosine similarity of shot embeddings ``[S, D]`` (L2-normalised) over ``pairs``
    (default: all ``i < j``), in [-1, 1]; ``None`` when there is no pair."""
    pairs = list(combinations(range(len(shots)), 2)) if pairs is None else list(pairs)
    if not pairs:
        return None
    i, j = torch.tensor(pairs).T
    return float((shots[i] * shots[j]).sum(-1).mean())


def character_pairs(captions: Sequence[str]) -> list[tuple[int, int]]:
    """Pairs ``(i, j)``, ``i < j``, of shots whose captions name a common ``[characterK]``."""
    names = [set(CHARACTER_TAG.findall(c)) for c in captions]
    return [(i, j) for i, j in combinations(range(len(captions)), 2) if names[i] & names[j]]


def text_similarity(frames: torch.Tensor, text: torch.Tensor) -> float:
    """Mean cosine between L2-normalised frame embeddings ``[N, D]`` and one caption's ``[D]``."""
    return float((frames @ text).mean())
