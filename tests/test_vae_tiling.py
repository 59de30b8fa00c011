"""`runtime.vae_tiling`: the tiled/untiled decision from free memory and the untiled decode's
estimated peak, and the two decodes agreeing on the synthetic world's trained VAE."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydantic
import pytest
import torch

from multishot.generate.config import RuntimeConfig
from multishot.generate.vae_tiling import (HEADROOM, MEASURED, choose_tiling, decode,
                                           untiled_peak_bytes)

GIB = 2**30
WAN22_VAE = dict(base_dim=160, decoder_base_dim=256, patch_size=2)  # benchmarks/generate.py
CUDA = torch.device("cuda")


def test_estimate_reproduces_the_measured_peak_and_scales_with_the_frame_area():
    measured = untiled_peak_bytes(WAN22_VAE, 241, 480, 832, torch.bfloat16)
    assert measured / GIB == pytest.approx(MEASURED["peak_gib"], rel=1e-6)
    # one latent frame at a time: the frame count adds only the video, the area scales it all
    fewer = untiled_peak_bytes(WAN22_VAE, 81, 480, 832, torch.bfloat16)
    assert 0.9 * measured < fewer < measured
    bigger = untiled_peak_bytes(WAN22_VAE, 241, 720, 1280, torch.bfloat16)
    assert bigger / measured == pytest.approx(720 * 1280 / (480 * 832), rel=0.01)
    assert untiled_peak_bytes(WAN22_VAE, 241, 480, 832, torch.float32) == pytest.approx(
        2 * measured, rel=1e-6)


def test_choice_from_free_memory():
    need = untiled_peak_bytes(WAN22_VAE, 241, 480, 832, torch.bfloat16)
    # an 80 GB card holding a 5B DiT (~10 GiB) has room; a 24 GiB card does not
    tiled, why = choose_tiling("auto", CUDA, need, available=68 * GIB)
    assert not tiled and why.startswith("auto: untiled")
    tiled, why = choose_tiling("auto", CUDA, need, available=20 * GIB)
    assert tiled and why.startswith("auto: tiled")
    # the headroom: exactly the estimate is not enough
    assert choose_tiling("auto", CUDA, need, available=need)[0]
    assert not choose_tiling("auto", CUDA, need, available=int(HEADROOM * need) + 1)[0]
    # forced either way, whatever the memory
    assert choose_tiling(True, CUDA, need, available=100 * GIB) == (True, "runtime.vae_tiling: true")
    assert choose_tiling(False, CUDA, need, available=GIB) == (False, "runtime.vae_tiling: false")
    # the CPU decodes untiled under auto; asked, it tiles
    assert choose_tiling("auto", torch.device("cpu"), need) == (False, "auto on CPU: untiled")
    assert choose_tiling(True, torch.device("cpu"), need)[0]
    with pytest.raises(ValueError, match="vae_tiling must be"):
        choose_tiling("sometimes", CUDA, need, available=GIB)


def test_config_values():
    assert RuntimeConfig().vae_tiling == "auto"
    assert RuntimeConfig(vae_tiling=False).vae_tiling is False
    assert RuntimeConfig(vae_tiling=True).vae_tiling is True
    with pytest.raises(pydantic.ValidationError, match="vae_tiling"):
        RuntimeConfig(vae_tiling="sometimes")


def test_tiled_and_untiled_decodes_agree_on_a_trained_vae():
    """The synthetic world's trained Wan VAE (checkpoints/learn/vae) decodes a world scene at
    128×192 untiled and in 128-pixel tiles at a 96-pixel stride (32 pixels blended): the same
    video up to the seams, both close to the input."""
    from multishot.torchvision_cpu import import_torchvision

    import_torchvision()
    from diffusers import AutoencoderKLWan

    from multishot.dataset.synthetic_world import render_frame, sample_film

    vae = AutoencoderKLWan.from_pretrained(Path(__file__).parents[1] / "checkpoints/learn/vae").eval()
    film = sample_film(0)
    shot = film.shots[0]
    frames = np.stack([render_frame(shot.scene, film.character, 0.3 + 0.04 * t, shot.y, 128, 192)
                       for t in range(9)])
    video = torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    with torch.no_grad():
        latents = (vae.encode(video).latent_dist.mode() - mean) / std   # [1, 16, 3, 16, 24]
    cpu = torch.device("cpu")
    untiled, info = decode(vae, latents, cpu, torch.float32, "auto")
    assert info == {"vae_tiling": False, "vae_tiling_reason": "auto on CPU: untiled"}
    vae.enable_tiling(tile_sample_min_height=128, tile_sample_min_width=128,
                      tile_sample_stride_height=96, tile_sample_stride_width=96)
    tiled, info = decode(vae, latents, cpu, torch.float32, True)
    assert info["vae_tiling"] is True and vae.use_tiling
    assert tiled.shape == untiled.shape == frames.shape
    diff = np.abs(tiled.astype(float) - untiled.astype(float))
    print(f"tiled vs untiled: mean {diff.mean():.3f}, 99th percentile {np.percentile(diff, 99)}, "
          f"max {diff.max()} levels of 255")
    assert diff.mean() < 1.0 and np.percentile(diff, 99) <= 4
    for out in (tiled, untiled):
        assert np.abs(out.astype(float) - frames).mean() < 5.0
    # and untiled again when asked: the tiling is decided per decode, not left over
    again, info = decode(vae, latents, cpu, torch.float32, False)
    assert info["vae_tiling"] is False and np.array_equal(again, untiled)
