"""Tiled or untiled VAE decode: untiled when the GPU has room for it, tiled as the fallback.

diffusers' ``AutoencoderKLWan`` decodes either the whole frame (one latent frame at a time, its
causal feature cache carried over) or in overlapping spatial tiles blended at the seams
(``enable_tiling``). Tiling bounds the memory but costs time: on one H100 the Wan2.2 (5B) VAE
decoded the 61 latent frames of a 241-frame 480×832 sample in 13.7 s tiled against 5.6 s untiled,
at a 24.6 GiB peak untiled (issue 35, random weights, bf16). ``runtime.vae_tiling``:

* ``true`` / ``false``: always / never tiled;
* ``auto`` (the default): on CUDA untiled when the free memory (``torch.cuda.mem_get_info`` plus
  what PyTorch's allocator holds unused) exceeds :func:`untiled_peak_bytes` by
  :data:`HEADROOM`, else tiled; an untiled decode that still runs out of memory is retried tiled.
  On the CPU untiled: the CPU runs here are small (smoke tests, the synthetic world at 64×64),
  where a frame is below the tile size and tiling would do nothing, and the untiled decode is the
  exact one (tiles blend their seams), so host memory is not estimated.

The estimate (:func:`untiled_peak_bytes`): the untiled decoder works one latent frame at a time,
so its peak is set by one frame's activations, which scale with the frame's area and the
decoder's width, not with the frame count; the decoded video grows with the frame count. So

    peak ≈ k · C_top · (H / p) · (W / p) · 4 · bytes  +  2 · F · H · W · 3 · bytes

with ``C_top`` the decoder's top-stage width (``decoder_base_dim``, else ``base_dim``), ``p`` the
VAE's output patch (2 for Wan2.2's, whose decoder works at half resolution; 1 for Wan2.1's), 4
the video frames one latent frame decodes into, the last term the video and the copy of it that
``torch.cat`` makes, and ``k`` (:data:`ACTIVATION_COPIES`) calibrated on the one measurement
above. Other geometries are extrapolated from it (the OOM fallback covers an underestimate);
``benchmarks/generate.py`` reports the estimate beside the measured peak.
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
import torch

from multishot.model.sampling import decode_latents

log = logging.getLogger(__name__)

#: issue 35's measurement: Wan2.2 VAE (decoder_base_dim 256, patch 2), 61 latent frames → 241
#: frames of 480×832, bf16, untiled, one H100: peak 24.6 GiB
MEASURED = dict(peak_gib=24.6, top_channels=256, patch=2, frames=241, height=480, width=832,
                bytes=2)
#: free memory must exceed the estimate by this factor for ``auto`` to decode untiled
HEADROOM = 1.15

TilingSetting = Literal["auto"] | bool


def _video_bytes(frames: int, height: int, width: int, nbytes: int) -> int:
    """The decoded video and the copy ``torch.cat`` makes of it while appending frames."""
    return 2 * frames * height * width * 3 * nbytes


def _top_stage_elements(top_channels: int, patch: int, height: int, width: int) -> int:
    """Elements of the top decoder stage's activation for one latent frame (4 video frames)."""
    return top_channels * (height // patch) * (width // patch) * 4


#: activation bytes of the measured decode per (top-stage element × bytes per element)
ACTIVATION_COPIES = ((MEASURED["peak_gib"] * 2**30
                      - _video_bytes(MEASURED["frames"], MEASURED["height"], MEASURED["width"],
                                     MEASURED["bytes"]))
                     / (_top_stage_elements(MEASURED["top_channels"], MEASURED["patch"],
                                            MEASURED["height"], MEASURED["width"])
                        * MEASURED["bytes"]))


def untiled_peak_bytes(vae_config, frames: int, height: int, width: int,
                       dtype: torch.dtype) -> int:
    """Estimated peak bytes of an untiled decode into ``frames`` frames of ``height × width``
    (module docstring). ``vae_config``: the VAE's config (diffusers ``AutoencoderKLWan.config``,
    attribute or mapping access)."""
    get = vae_config.get if isinstance(vae_config, dict) else (
        lambda key, default=None: getattr(vae_config, key, default))
    top = get("decoder_base_dim") or get("base_dim", 96)
    patch = get("patch_size") or 1
    nbytes = torch.finfo(dtype).bits // 8
    activations = ACTIVATION_COPIES * _top_stage_elements(top, patch, height, width) * nbytes
    return int(activations + _video_bytes(frames, height, width, nbytes))


def available_bytes(device: torch.device) -> int:
    """Bytes a new allocation on CUDA ``device`` can get: the driver's free memory plus what
    PyTorch's caching allocator has reserved but not allocated."""
    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def choose_tiling(setting: TilingSetting, device: torch.device, estimate: int,
                  available: int | None = None) -> tuple[bool, str]:
    """Whether to decode tiled, and why (module docstring).

    Args:
        setting: ``runtime.vae_tiling``: True, False or ``"auto"``.
        estimate: :func:`untiled_peak_bytes` of the decode.
        available: free bytes on ``device``; None → :func:`available_bytes` (CUDA).
    Returns:
        ``(tiled, reason)``.
    """
    if not (isinstance(setting, bool) or setting == "auto"):
        raise ValueError(f"vae_tiling must be true, false or 'auto', not {setting!r}")
    if setting != "auto":
        return setting, f"runtime.vae_tiling: {str(setting).lower()}"
    if device.type != "cuda":
        return False, "auto on CPU: untiled"
    available = available_bytes(device) if available is None else available
    need = HEADROOM * estimate
    words = f"{available / 2**30:.1f} GiB free, untiled needs ~{estimate / 2**30:.1f} GiB"
    if available >= need:
        return False, f"auto: untiled ({words})"
    return True, f"auto: tiled ({words} × {HEADROOM})"


def decode(vae: torch.nn.Module, latents: torch.Tensor, device: torch.device, dtype: torch.dtype,
           setting: TilingSetting) -> tuple[np.ndarray, dict]:
    """:func:`model.sampling.decode_latents` of ``latents`` ``[1, C, F_lat, H_lat, W_lat]``,
    tiled as :func:`choose_tiling` decides; an untiled decode that runs out of GPU memory is
    retried tiled (only under ``auto``).

    Returns:
        the video ``[F, H, W, 3]`` uint8 and ``{"vae_tiling": bool, "vae_tiling_reason": str}``.
    Raises:
        torch.cuda.OutOfMemoryError: the decode does not fit even tiled (or untiled when asked).
    """
    cfg = vae.config
    _, _, f_lat, h_lat, w_lat = latents.shape
    frames = (f_lat - 1) * cfg.scale_factor_temporal + 1
    estimate = untiled_peak_bytes(cfg, frames, h_lat * cfg.scale_factor_spatial,
                                  w_lat * cfg.scale_factor_spatial, dtype)
    tiled, reason = choose_tiling(setting, device, estimate)
    vae.enable_tiling() if tiled else vae.disable_tiling()
    try:
        video = decode_latents(vae, latents, device, dtype)
    except torch.cuda.OutOfMemoryError:
        if tiled or setting != "auto":
            raise
        video = None  # retried below, once the failed attempt's tensors are freed
    if video is None:
        log.warning("untiled VAE decode ran out of GPU memory (%s); decoding tiled", reason)
        torch.cuda.empty_cache()
        tiled, reason = True, f"{reason}; out of memory, retried tiled"
        vae.enable_tiling()
        video = decode_latents(vae, latents, device, dtype)
    log.info("VAE decode %s (%s)", "tiled" if tiled else "untiled", reason)
    return video, {"vae_tiling": tiled, "vae_tiling_reason": reason}
