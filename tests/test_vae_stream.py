"""Chunk-wise Wan VAE decoding (generate.vae_stream) equals diffusers' one-shot decode."""

from __future__ import annotations

import pytest
import torch

from multishot.torchvision_cpu import import_torchvision

import_torchvision()
from diffusers import AutoencoderKLWan  # noqa: E402

from multishot.generate.vae_stream import StreamingDecoder  # noqa: E402

#: the Wan2.1 layout (16 channels, stride 4×8×8) and the Wan2.2 one (48 channels, residual,
#: 2×2 patches, stride 4×16×16), both at tiny widths
VAES = {
    "wan2.1": dict(base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1),
    "wan2.2": dict(base_dim=8, decoder_base_dim=16, z_dim=48, is_residual=True, in_channels=12,
                   out_channels=12, patch_size=2, scale_factor_spatial=16, dim_mult=[1, 2, 2, 2],
                   num_res_blocks=1),
}


@pytest.mark.parametrize("layout", sorted(VAES))
def test_chunkwise_decode_equals_one_shot_decode(layout):
    torch.manual_seed(0)
    config = VAES[layout]
    z_dim = config["z_dim"]
    mean = torch.linspace(-0.5, 0.5, z_dim)
    std = torch.linspace(0.5, 1.5, z_dim)
    vae = AutoencoderKLWan(**config, latents_mean=mean.tolist(), latents_std=std.tolist()).eval()
    for p in vae.parameters():  # diffusers zero-initialises nothing here, but make it lively
        p.data.normal_(0, 0.2)
    latents = torch.randn(1, z_dim, 5, 4, 4)                    # 5 latent frames = 17 pixel frames
    with torch.no_grad():
        whole = vae.decode(latents * std.view(1, -1, 1, 1, 1) + mean.view(1, -1, 1, 1, 1)).sample
    decoder = StreamingDecoder(vae, "cpu", torch.float32)
    parts = [decoder.decode_float(latents[:, :, a:b]) for a, b in ((0, 2), (2, 3), (3, 5))]
    assert [p.shape[2] for p in parts] == [5, 4, 8]
    streamed = torch.cat(parts, 2)
    assert streamed.shape == whole.shape
    torch.testing.assert_close(streamed, whole, rtol=0, atol=1e-5)
    # the kept cache carries the history: after other first frames the third chunk differs
    other = StreamingDecoder(vae, "cpu", torch.float32)
    other.decode_float(torch.zeros_like(latents[:, :, :3]))
    assert (other.decode_float(latents[:, :, 3:5]) - parts[2]).abs().max() > 1e-3
    frames = StreamingDecoder(vae, "cpu", torch.float32).decode(latents[:, :, :2])
    assert frames.shape == (5, whole.shape[3], whole.shape[4], 3) and frames.dtype.name == "uint8"


def test_rejects_latents_of_other_channels():
    vae = AutoencoderKLWan(**VAES["wan2.1"])
    with pytest.raises(ValueError, match="latents must be"):
        StreamingDecoder(vae, "cpu", torch.float32).decode_float(torch.zeros(1, 4, 1, 2, 2))
