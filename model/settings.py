"""The YAML sections that describe a DiT and its frozen encoders, shared by every command that
builds one (``train``, ``generate``, ``distill``, ``precompute``).

Each field's default and meaning live here and nowhere else; a command's own section extends
:class:`DiTConfig` with what only it needs (the trainer's ``init_from`` and checkpointing, the
generator's checkpoints and random weights). :class:`VideoSize` is the one type of a video's
frame count and size.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from multishot.config import Section
from multishot.dataset.record import num_latent_frames
from multishot.model.attention import BACKENDS
from multishot.model.causal import CausalConfig

#: the architectures of :func:`model.config.get_config`
ModelName = Literal["tiny", "learn", "1.3B", "5B", "14B"]


class DiTConfig(Section):
    """The DiT and how its attention runs (HoloCine §3.2; the kernels of :mod:`model.attention`)."""

    name: ModelName = Field(description="architecture (model.config.get_config)")
    attention_backend: Literal[BACKENDS] = Field("sdpa", description=(
        "sparse self-attention kernel (model.attention); 'sdpa' (per-shot cuDNN) is the fastest on "
        "Hopper (benchmarks/results/attention/attention.md)"))
    sparse_self_attention: bool = Field(True, description=(
        "HoloCine's sparse inter-shot self-attention; False = full self-attention (the 'full "
        "attention' ablation)"))
    global_bank: bool = Field(True, description=(
        "with sparse_self_attention: every shot also attends the first latent frame of every "
        "shot (HoloCine's summary tokens); False = the 'sparse w/o global' ablation, each shot "
        "attends only itself"))
    window_cross_attention: bool = Field(True, description=(
        "mask each shot's cross-attention to the global caption and its own shot caption "
        "(needs a tokenizer); False = every video token attends the whole prompt (the 'w/o "
        "window' ablation)"))
    compile: bool | None = Field(None, description=(
        "regional torch.compile of every block (attention kernel stays eager; streaming: and of "
        "the VAE decoder); None = the command's default: on for CUDA training, off for generation"))
    causal: CausalConfig | None = Field(None, description=(
        "CausalCine's causal chunk-wise mode (model.causal): teacher forcing in training, a "
        "chunk-by-chunk stream with a KV cache in generation; None = the bidirectional model"))


class EncodersConfig(Section):
    """Frozen encoders (:class:`model.encoders.FrozenEncoders`): needed for data.kind 'video',
    window cross-attention, precompute and generation."""

    vae: str | None = Field(None, description=(
        "diffusers AutoencoderKLWan folder, or Wan's native Wan2.1_VAE.pth (model.native_wan)"))
    text_encoder: str | None = Field(None, description=(
        "transformers UMT5EncoderModel folder, or Wan's native models_t5_umt5-xxl-enc-bf16.pth "
        "(then tokenizer is required)"))
    tokenizer: str | None = Field(None, description="tokenizer folder; None = text_encoder's")
    dtype: Literal["bfloat16", "float32"] = Field("bfloat16", description="encoder compute dtype")


class VideoSize(Section):
    """A video's frame count and size in pixels (the data a run reads, the videos it samples)."""

    num_frames: int = Field(description="pixel frames, 4k+1 (Wan's VAE: 1 + 4 per latent frame)")
    height: int = Field(gt=0, description="pixels, divisible by the VAE stride × patch (16 or 32)")
    width: int = Field(gt=0, description="pixels, divisible by the VAE stride × patch (16 or 32)")

    @field_validator("num_frames")
    @classmethod
    def _four_k_plus_one(cls, value: int) -> int:
        num_latent_frames(value)  # raises ValueError naming the 4k+1 rule
        return value
