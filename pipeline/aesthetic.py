"""Aesthetic score: the LAION improved aesthetic predictor on OpenAI CLIP ViT-L/14 embeddings.

The predictor (github christophschuhmann/improved-aesthetic-predictor, weights
``sac+logos+ava1-l14-linearMSE.pth``) is an MLP 768 → 1024 → 128 → 64 → 16 → 1 with dropout and
no activations, applied to the **L2-normalised** CLIP image embedding; unnormalised embeddings
give meaningless scores of 20-30. The CLIP model is open_clip's ``ViT-L-14-quickgelu`` with the
OpenAI weights (a GELU/QuickGELU mismatch moves scores by about 0.6). Both weight files are
paths in the config: nothing is downloaded.

On a GPU the CLIP image tower runs under fp16 autocast, as the predictor's own reference
computes its embeddings (``simple_inference.py`` loads ``clip.load("ViT-L/14", device="cuda")``,
and OpenAI's ``clip.load`` keeps the model in fp16 on CUDA); in fp32 it was the largest GPU cost
of a scan (``benchmarks/results/pipeline_gpu/pipeline_gpu_h100.md``). On the CPU it runs in fp32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn



class AestheticHead(nn.Module):
    """LAION's MLP; parameter names match the released ``.pth`` (``layers.{0,2,4,6,7}``).

    ``forward``: L2-normalised embeddings ``[N, 768]`` → scores ``[N]`` (about 1-10).
    """

    def __init__(self, dim: int = 768):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(dim, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.layers(embedding).squeeze(-1)


def load_clip(clip_model: str, clip_weights: Path, device: str) -> tuple[nn.Module, object]:
    """open_clip model ``clip_model`` with the weights file ``clip_weights``, in eval mode on
    ``device``: ``(model, preprocess)`` where ``preprocess`` is CLIP's resize + centre crop +
    normalisation of a PIL image to ``[3, S, S]``. Nothing is downloaded.

    ``clip_model`` is an open_clip architecture name, or the path of an open_clip model config
    (a ``.json`` file as in open_clip's ``model_configs/``): it is registered under its file
    stem in the process that loads it (every Ray actor loads its own), so an architecture
    open_clip does not ship needs no code.

    Raises:
        FileNotFoundError: ``clip_weights`` does not exist.
        RuntimeError: the weights do not fit the architecture (names the missing keys).
    """
    from multishot.torchvision_cpu import import_torchvision

    import_torchvision()  # before open_clip, which imports torchvision's transforms
    import open_clip

    if not Path(clip_weights).is_file():
        raise FileNotFoundError(f"CLIP weights not found: {clip_weights}")
    if clip_model.endswith(".json"):
        if not Path(clip_model).is_file():
            raise FileNotFoundError(f"CLIP model config not found: {clip_model}")
        open_clip.add_model_config(clip_model)
        clip_model = Path(clip_model).stem
    model, _, preprocess = open_clip.create_model_and_transforms(clip_model, pretrained=str(clip_weights), device=device)
    return model.eval(), preprocess


class AestheticScorer:
    """CLIP image embedding → L2 normalise → :class:`AestheticHead`, on CPU or CUDA (CLIP in
    fp16 autocast there, the head in fp32).

    Raises:
        FileNotFoundError: a weights path does not exist.
        RuntimeError: the weights do not fit the architecture (names the missing keys).
    """

    def __init__(self, clip_model: str, clip_weights: Path, head_weights: Path):
        if not Path(head_weights).is_file():
            raise FileNotFoundError(f"aesthetic weights not found: {head_weights}")
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model, self.preprocess = load_clip(clip_model, clip_weights, self.device)
        dim = self.model.visual.output_dim
        self.head = AestheticHead(dim).to(self.device).eval()
        self.head.load_state_dict(torch.load(head_weights, map_location=self.device, weights_only=True))

    def score(self, frames: list[np.ndarray]) -> np.ndarray:
        """Scores ``[N]`` for RGB uint8 frames ``[H, W, 3]`` (CLIP's resize + centre crop)."""
        return self.score_and_embed(frames)[0]

    @torch.inference_mode()
    def score_and_embed(self, frames: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Scores ``[N]`` and the L2-normalised CLIP image embeddings ``[N, D]`` (float32; D 768
        for ViT-L/14) the head read, of RGB uint8 frames ``[H, W, 3]``: one CLIP forward for
        both (the embeddings are what near-duplicate removal compares, :mod:`pipeline.dedup`)."""
        from PIL import Image

        batch = torch.stack([self.preprocess(Image.fromarray(f)) for f in frames]).to(self.device)
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.device == "cuda"):
            embedding = self.model.encode_image(batch).float()
        embedding = embedding / embedding.norm(dim=-1, keepdim=True)
        return self.head(embedding).cpu().numpy(), embedding.cpu().numpy()
