"""Wan's 3D rotary position embedding (RoPE) as real cos/sin tables in float32.

Shared by the bidirectional DiT (:mod:`model.dit`, absolute positions) and the causal mode
(:mod:`model.causal`, Block-Relative RoPE: keys cached unrotated and rotated per query chunk).
"""

from __future__ import annotations

import math

import torch

from multishot.model.config import WanConfig

#: Positions per RoPE axis in Wan's tables (``rope_params(1024, …)``).
ROPE_MAX_POSITIONS = 1024


def rope_cos_sin(config: WanConfig, grid: tuple[int, int, int], device: torch.device,
                 frame_offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """3D RoPE tables for a ``(f, h, w)`` token grid: cos and sin ``[f·h·w, 1, head_dim/2]``
    float32, bands (t, h, w) of ``config.rope_bands`` channels, theta 10000 (Wan ``rope_params``;
    channel pairs ``(2j, 2j+1)`` rotate together). ``frame_offset``: the latent-frame position
    of the grid's first frame (a streamed chunk's rows of the whole video's table).

    Raises:
        ValueError: an axis exceeds :data:`ROPE_MAX_POSITIONS`.
    """
    if max(grid[0] + frame_offset, *grid[1:]) > ROPE_MAX_POSITIONS:
        raise ValueError(f"token grid {grid} at frame {frame_offset} exceeds "
                         f"{ROPE_MAX_POSITIONS} RoPE positions")
    angles = []
    for axis, (n, band) in enumerate(zip(grid, config.rope_bands)):
        inv = 1.0 / 10000 ** (torch.arange(0, band, 2, dtype=torch.float64, device=device) / band)
        first = frame_offset if axis == 0 else 0
        a = torch.outer(torch.arange(first, first + n, dtype=torch.float64, device=device), inv)
        shape = [1, 1, 1, band // 2]
        shape[axis] = n
        angles.append(a.view(shape).expand(*grid, band // 2))
    theta = torch.cat(angles, dim=-1).reshape(math.prod(grid), 1, -1)
    return theta.cos().float(), theta.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs of ``x`` ``[B, L, H, D]`` by the tables of :func:`rope_cos_sin`."""
    xf = x.float().unflatten(-1, (-1, 2))
    x0, x1 = xf[..., 0], xf[..., 1]
    return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1).flatten(-2).type_as(x)
