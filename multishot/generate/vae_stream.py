"""Chunk-wise Wan VAE decoding that stays causal in time across chunks.

Wan's VAE decoder (diffusers ``AutoencoderKLWan``) is a stack of causal 3D convolutions: its
own ``_decode`` feeds the latents one latent frame at a time and keeps each convolution's last
input frames in a feature cache (``feat_cache``) between the calls, the first latent frame
flagged ``first_chunk`` (it decodes to one pixel frame, every later one to 4). Keeping that
cache across calls instead of across the frames of one call decodes a video whose latents
arrive chunk by chunk exactly as one decode of all the latents would:

    chunk latents [1, C, f, H_lat, W_lat] (normalised)
      → · std + mean → post_quant_conv → decoder per latent frame (feat_cache kept)
      → [1 + 4(f − 1) (first chunk) or 4f, H, W, 3] uint8

Tiling is not applied (the decoder runs on whole frames); a frame at 480×832 fits a GPU.
"""

from __future__ import annotations

import numpy as np
import torch


class StreamingDecoder:
    """Decode latents of one video chunk after chunk (module docstring) with ``vae``.

    Args:
        vae: a diffusers ``AutoencoderKLWan`` (Wan2.1 or Wan2.2 layout).
        device, dtype: where and in which dtype the decoder runs.
        decoder: ``vae.decoder`` or a compiled copy of it (``torch.compile``: on one H100 the
            Wan2.2 decoder took 69 instead of 94 ms a latent frame at 480×832,
            ``benchmarks/results/distill/distill_h100.md``); None = ``vae.decoder``.

    The decoder's feature cache is this object's (the VAE's own ``_feat_map`` is untouched), so
    one VAE may serve other decodes in between. One object per video.
    """

    def __init__(self, vae: torch.nn.Module, device: torch.device | str, dtype: torch.dtype,
                 decoder: torch.nn.Module | None = None):
        self.vae, self.device, self.dtype = vae, torch.device(device), dtype
        self.decoder = vae.decoder if decoder is None else decoder
        self.mean = torch.tensor(vae.config.latents_mean, dtype=torch.float32).view(1, -1, 1, 1, 1)
        self.std = torch.tensor(vae.config.latents_std, dtype=torch.float32).view(1, -1, 1, 1, 1)
        self.feat_cache: list = [None] * vae._cached_conv_counts["decoder"]
        #: latent frames decoded so far
        self.latent_frames = 0

    @torch.no_grad()
    def decode_device(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents ``[1, C, f, H_lat, W_lat]`` of the next ``f`` latent frames →
        pixels ``[1, 3, F, H, W]`` float32 in ``[-1, 1]`` on the decoder's device,
        ``F = 1 + 4(f − 1)`` for the video's first chunk and ``4f`` after it.

        Raises:
            ValueError: not one video's ``[1, C, f, H, W]`` latents of the VAE's channels.
        """
        if latents.dim() != 5 or latents.shape[0] != 1 or latents.shape[1] != self.mean.shape[1]:
            raise ValueError(f"latents must be [1, {self.mean.shape[1]}, f, H, W], "
                             f"got {tuple(latents.shape)}")
        vae = self.vae
        z = latents.float().cpu() * self.std + self.mean
        x = vae.post_quant_conv(z.to(self.device, self.dtype))
        frames = []
        for i in range(x.shape[2]):
            # contiguous: one stride for every frame (a compiled decoder is specialised once)
            frames.append(self.decoder(x[:, :, i:i + 1].contiguous(), feat_cache=self.feat_cache,
                                       feat_idx=[0], first_chunk=self.latent_frames == 0))
            self.latent_frames += 1
        out = torch.cat(frames, 2)
        if vae.config.patch_size is not None:  # Wan2.2's VAE packs 2×2 pixels into channels
            from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

            out = unpatchify(out, patch_size=vae.config.patch_size)
        return out.float().clamp(-1, 1)

    def decode_float(self, latents: torch.Tensor) -> torch.Tensor:
        """:meth:`decode_device`, on the CPU."""
        return self.decode_device(latents).cpu()

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """:meth:`decode_device` as ``[F, H, W, 3]`` uint8 frames (rounded as
        :func:`generate.generator.decode_latents` rounds them), converted on the device: a
        quarter of the bytes cross to the host."""
        video = ((self.decode_device(latents)[0] + 1) * 127.5).round().to(torch.uint8)
        return video.permute(1, 2, 3, 0).cpu().numpy()
