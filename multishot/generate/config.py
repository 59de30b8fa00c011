"""The typed configuration of ``multishot generate`` (``configs/generate/*.yaml``).

One pydantic model per component, each default here and nowhere else; unknown keys are errors
naming the key (:func:`multishot.config.load_config`). The sampling defaults of the released
models are written in the YAML files with their sources (Wan2.2 ``wan/configs/``, HoloCine's
``diffsynth/pipelines/wan_video_holocine.py``); ``sampling:`` is
:class:`generate.sampler.SamplingConfig`, shared with the trainer's ``validation:``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from multishot.dataset.record import num_latent_frames
from multishot.generate.sampler import SamplingConfig
from multishot.model.causal import CausalConfig
from multishot.trainer.config import EncodersConfig


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GenModelConfig(_Section):
    """The DiT (one, or the two experts of Wan2.2 A14B / HoloCine)."""

    name: Literal["tiny", "learn", "1.3B", "5B", "14B"] = Field(description="architecture (model.config.get_config)")
    checkpoint: str | None = Field(None, description=(
        "DiT safetensors file or folder (official Wan / HoloCine / our export, or diffusers names); "
        "for A14B the high-noise expert. None only with random_weights"))
    low_noise_checkpoint: str | None = Field(None, description=(
        "A14B: the low-noise expert, used for timesteps below sampling.boundary; None = one model "
        "(with random_weights any value asks for a random second expert)"))
    attention_backend: Literal["reference", "varlen", "sdpa", "flex"] = Field("sdpa", description=(
        "sparse self-attention kernel (model.attention)"))
    sparse_self_attention: bool = Field(True, description=(
        "HoloCine's sparse inter-shot self-attention; False = full self-attention"))
    global_bank: bool = Field(True, description=(
        "with sparse_self_attention: every shot also attends the first latent frame of every "
        "shot (HoloCine's summary tokens); False = the 'sparse w/o global' ablation"))
    window_cross_attention: bool = Field(True, description=(
        "mask each shot's cross-attention to the global caption and its own shot caption; "
        "False = every video token attends the whole prompt (the 'w/o window' ablation)"))
    compile: bool = Field(False, description=(
        "regional torch.compile of every block (streaming: and of the VAE decoder)"))
    causal: CausalConfig | None = Field(None, description=(
        "CausalCine's causal chunk-wise mode (model.causal): stream chunk by chunk with a KV "
        "cache; None = the bidirectional model"))
    random_weights: str | None = Field(None, description=(
        "a folder: create small random DiT / VAE / UMT5 there if absent and load them from it "
        "(tiny_cpu smoke runs; the log says the weights are random); checkpoint and encoders "
        "then point into it"))


class VideoConfig(_Section):
    """Default size of a generated sample (a request may override num_frames)."""

    num_frames: int = Field(241, description="pixel frames, 4k+1 (HoloCine: 241 = 15 s at 16 fps)")
    height: int = Field(480, gt=0, description="pixels, divisible by the VAE stride × patch")
    width: int = Field(832, gt=0, description="pixels, divisible by the VAE stride × patch")
    fps: float = Field(16.0, gt=0, description="frame rate of the written mp4 (Wan: 16)")

    @field_validator("num_frames")
    @classmethod
    def _four_k_plus_one(cls, value: int) -> int:
        num_latent_frames(value)  # raises ValueError naming the 4k+1 rule
        return value


class RuntimeConfig(_Section):
    """Where and how the models run."""

    device: str = Field("auto", description="'auto' = cuda when available, else cpu")
    dtype: Literal["auto", "bfloat16", "float32"] = Field("auto", description=(
        "DiT dtype; 'auto' = bfloat16 on GPU, float32 on CPU"))
    offload: bool = Field(True, description=(
        "GPU only: keep the text encoder, the VAE and the idle A14B expert on the CPU until used"))
    vae_tiling: bool = Field(True, description="tiled VAE decode (diffusers enable_tiling)")
    progress: bool = Field(True, description="tqdm bar over the denoising steps")
    cuda_graphs: bool = Field(True, description=(
        "streaming (--causal) on GPU: replay the denoising passes from CUDA graphs once their "
        "shapes repeat (generate.graphs; same outputs); no effect on CPU"))


class GenerateConfig(_Section):
    """``multishot generate --config FILE``."""

    model: GenModelConfig
    encoders: EncodersConfig = EncodersConfig()
    sampling: SamplingConfig = SamplingConfig()
    video: VideoConfig = VideoConfig()
    runtime: RuntimeConfig = RuntimeConfig()

    @model_validator(mode="after")
    def _weights_named(self) -> GenerateConfig:
        if self.model.random_weights is None:
            if self.model.checkpoint is None:
                raise ValueError("model.checkpoint is required (or model.random_weights for a "
                                 "smoke run)")
            if not (self.encoders.vae and self.encoders.text_encoder):
                raise ValueError("encoders.vae and encoders.text_encoder are required")
        return self
