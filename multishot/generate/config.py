"""The typed configuration of ``multishot generate`` (``configs/generate/*.yaml``).

One pydantic model per component, each default here and nowhere else; unknown keys are errors
naming the key (:func:`multishot.config.load_config`). The sampling defaults of the released
models are written in the YAML files with their sources (Wan2.2 ``wan/configs/``, HoloCine's
``diffsynth/pipelines/wan_video_holocine.py``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from multishot.dataset.record import num_latent_frames
from multishot.trainer.config import EncodersConfig

#: Wan's default negative prompt, ``sample_neg_prompt`` of Wan2.2 ``wan/configs/shared_config.py``
#: (HoloCine's inference scripts pass the same string as ``scene_negative_prompt``).
WAN_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
    "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，"
    "形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GenModelConfig(_Section):
    """The DiT (one, or the two experts of Wan2.2 A14B / HoloCine)."""

    name: Literal["tiny", "1.3B", "5B", "14B"] = Field(description="architecture (model.config.get_config)")
    checkpoint: str | None = Field(None, description=(
        "DiT safetensors file or folder (official Wan / HoloCine / our export, or diffusers names); "
        "for A14B the high-noise expert. None only with random_weights"))
    low_noise_checkpoint: str | None = Field(None, description=(
        "A14B: the low-noise expert, used for timesteps below sampling.boundary; None = one model"))
    attention_backend: Literal["reference", "varlen", "sdpa", "flex"] = Field("sdpa", description=(
        "sparse self-attention kernel (model.attention)"))
    sparse_self_attention: bool = Field(True, description=(
        "HoloCine's sparse inter-shot self-attention; False = full self-attention"))
    window_cross_attention: bool = Field(True, description=(
        "mask each shot's cross-attention to the global caption and its own shot caption"))
    compile: bool = Field(False, description="regional torch.compile of every block")
    random_weights: str | None = Field(None, description=(
        "a folder: create small random DiT / VAE / UMT5 there if absent and load them from it "
        "(tiny_cpu smoke runs; the log says the weights are random); checkpoint and encoders "
        "then point into it"))


class SamplingConfig(_Section):
    """Flow-matching sampling with classifier-free guidance (diffusers schedulers)."""

    sampler: Literal["euler", "unipc"] = Field("euler", description=(
        "'euler': FlowMatchEulerDiscreteScheduler on HoloCine's sigmas (DiffSynth "
        "FlowMatchScheduler(sigma_min=0, extra_one_step=True)); 'unipc': UniPCMultistepScheduler "
        "with flow sigmas (Wan2.2's default solver)"))
    steps: int = Field(50, ge=1, description="denoising steps")
    shift: float = Field(5.0, gt=0, description="timestep shift σ' = shift·σ/(1+(shift−1)·σ)")
    cfg_scale: float = Field(5.0, ge=1, description=(
        "guidance scale (of the high-noise expert for A14B); 1 = no unconditional pass"))
    cfg_scale_low_noise: float | None = Field(None, ge=1, description=(
        "A14B: guidance of the low-noise expert; None = cfg_scale"))
    boundary: float = Field(0.875, gt=0, lt=1, description=(
        "A14B expert switch as a fraction of 1000 timesteps: high-noise expert for t >= 1000·boundary"))
    negative_prompt: str = Field(WAN_NEGATIVE_PROMPT, description="the unconditional prompt")
    cfg_batch: bool = Field(True, description=(
        "run the conditional and unconditional passes as one batch of two (more memory, faster)"))


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
