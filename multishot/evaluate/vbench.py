"""VBench's frame handling, preprocessing and aggregation, ported (VBench is Apache-2.0).

Why a port: the ``vbench`` wheel (0.1.5) pins ``transformers==4.33.2`` and ``numpy<2``, needs
``decord`` and refuses to install without CUDA 11.6–12.1, so it cannot live in our environment.
Each function below names the VBench function it reproduces (github Vchitect/VBench, ``vbench/``);
``tests/test_eval_vbench.py`` checks ours against VBench's code written out on fixed inputs.

Frames are ``[T, 3, H, W]`` uint8 tensors, as VBench's ``load_video`` returns them (every frame of
the clip, RGB).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

#: CLIP's normalisation (``vbench/utils.py`` ``clip_transform``)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
#: ImageNet normalisation (``vbench/utils.py`` ``dino_transform``)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _normalise(x: torch.Tensor, mean, std) -> torch.Tensor:
    mean = torch.tensor(mean, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(std, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def clip_transform(frames: torch.Tensor, size: int = 224) -> torch.Tensor:
    """VBench's ``clip_transform(n_px)``: shorter side → ``size`` (bicubic, no antialias), centre
    crop ``size``², ``/255``, CLIP normalisation. ``[T, 3, H, W]`` uint8 → ``[T, 3, size, size]`` float32."""
    from multishot.torchvision_cpu import import_torchvision

    tv = import_torchvision()
    from torchvision.transforms import functional as TF

    x = TF.resize(frames, size, interpolation=tv.transforms.InterpolationMode.BICUBIC, antialias=False)
    x = TF.center_crop(x, size)
    return _normalise(x.float().div(255.0), CLIP_MEAN, CLIP_STD)


def dino_transform(frames: torch.Tensor, size: int = 224) -> torch.Tensor:
    """VBench's ``dino_transform(n_px)``: shorter side → ``size`` (bilinear, no antialias, **no
    crop**: a 16:9 frame stays 16:9), ``/255``, ImageNet normalisation.
    ``[T, 3, H, W]`` uint8 → ``[T, 3, size, W']`` float32."""
    from multishot.torchvision_cpu import import_torchvision

    import_torchvision()
    from torchvision.transforms import functional as TF

    x = TF.resize(frames, size, antialias=False)
    return _normalise(x.float().div(255.0), IMAGENET_MEAN, IMAGENET_STD)


def middle_frame_indices(num_frames: int, vlen: int) -> list[int]:
    """VBench's ``get_frame_indices(num_frames, vlen, sample="middle")``: ``vlen`` split into
    ``num_frames`` intervals, the middle of each; padded with the last index when ``vlen`` is shorter.

    Raises:
        ValueError: ``vlen`` < 1.
    """
    if vlen < 1:
        raise ValueError("no frame to sample")
    count = min(num_frames, vlen)
    edges = np.linspace(start=0, stop=vlen, num=count + 1).astype(int)
    indices = [int((a + (b - 1)) // 2) for a, b in zip(edges[:-1], edges[1:])]
    return indices + [indices[-1]] * (num_frames - len(indices))


def consistency_sums(features: torch.Tensor) -> tuple[float, int]:
    """VBench's per-clip loop of ``subject_consistency`` / ``background_consistency`` on one clip's
    frame features ``[T, D]`` (any norm; L2-normalised here): ``(video_sim, cnt)`` where
    ``video_sim = Σ_{i≥1} (max(0, cos(f_{i-1}, f_i)) + max(0, cos(f_0, f_i))) / 2`` and ``cnt = T − 1``.
    The clip's score is ``video_sim / cnt``; VBench's overall score is ``Σ video_sim / Σ cnt``
    over clips (frame-weighted, :func:`pooled`)."""
    f = F.normalize(features.float(), dim=-1, p=2)
    if len(f) < 2:
        return 0.0, 0
    to_previous = (f[1:] * f[:-1]).sum(-1).clamp(min=0)
    to_first = (f[1:] * f[:1]).sum(-1).clamp(min=0)
    return float(((to_previous + to_first) / 2).sum()), len(f) - 1


def pooled(sums: Sequence[tuple[float, int]]) -> float | None:
    """VBench's overall ``sim / cnt`` over clips' :func:`consistency_sums`; None when no clip has
    two frames."""
    count = sum(c for _, c in sums)
    return sum(s for s, _ in sums) / count if count else None


def dino_v1_features(model, pixels: torch.Tensor) -> torch.Tensor:
    """DINO v1's ``VisionTransformer.forward`` (github facebookresearch/dino,
    ``vision_transformer.py``) on a transformers ``ViTModel`` holding DINO's weights (e.g.
    ``facebook/dino-vitb16``, the conversion of ``dino_vitbase16_pretrain.pth`` that VBench loads
    through torch.hub): the final-LayerNorm CLS token ``[T, D]`` of ``pixels`` ``[T, 3, H, W]``.

    Not ``pooler_output`` (a tanh layer DINO does not have), and not transformers' own position
    interpolation: DINO resamples the position grid with ``scale_factor=(h0 + 0.1)/√N`` (bicubic)
    where transformers uses ``size=``; the two grids differ for VBench's uncropped 16:9 frames.
    """
    emb = model.embeddings
    patch = emb.patch_embeddings.projection
    x = patch(pixels.to(patch.weight.dtype)).flatten(2).transpose(1, 2)  # [T, h0·w0, D]
    h0, w0 = pixels.shape[-2] // patch.stride[0], pixels.shape[-1] // patch.stride[1]
    pos = emb.position_embeddings  # [1, 1 + N, D]
    n = pos.shape[1] - 1
    if n == h0 * w0 and pixels.shape[-2] == pixels.shape[-1]:  # DINO's test: npatch == N and w == h
        grid = pos[:, 1:]
    else:
        side, dim = int(math.sqrt(n)), pos.shape[-1]
        grid = F.interpolate(
            pos[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2),
            scale_factor=((h0 + 0.1) / math.sqrt(n), (w0 + 0.1) / math.sqrt(n)), mode="bicubic",
        )
        assert grid.shape[-2:] == (h0, w0), (grid.shape, h0, w0)
        grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim)
    cls = emb.cls_token.expand(len(x), -1, -1) + pos[:, :1]
    hidden = torch.cat([cls, x + grid], dim=1)
    # transformers 5 keeps the blocks in ``model.layers``; 4.x in ``model.encoder.layer`` (tuples out)
    for layer in model.layers if hasattr(model, "layers") else model.encoder.layer:
        out = layer(hidden)
        hidden = out[0] if isinstance(out, tuple) else out
    return model.layernorm(hidden)[:, 0]
