"""The typed configuration of ``multishot generate`` (``configs/generate/*.yaml``).

One pydantic model per component, each default here and nowhere else; unknown keys are errors
naming the key (:func:`multishot.config.load_config`). The sampling defaults of the released
models are written in the YAML files with their sources (Wan2.2 ``wan/configs/``, HoloCine's
``diffsynth/pipelines/wan_video_holocine.py``); ``sampling:`` is
:class:`model.sampling.SamplingConfig`, shared with the trainer's ``validation:``.
"""

from __future__ import annotations

from typing import Literal

from pathlib import Path

from pydantic import Field, model_validator

from multishot.config import Section
from multishot.model.sampling import SamplingConfig
from multishot.model.settings import DiTConfig, EncodersConfig, VideoSize


class GenModelConfig(DiTConfig):
    """The DiT (one, or the two experts of Wan2.2 A14B / HoloCine): :class:`model.settings.
    DiTConfig` plus the weights to load."""

    checkpoint: str | None = Field(None, description=(
        "DiT safetensors file or folder (official Wan / HoloCine / our export, or diffusers names); "
        "for A14B the high-noise expert. None only with random_weights"))
    low_noise_checkpoint: str | None = Field(None, description=(
        "A14B: the low-noise expert, used for timesteps below sampling.boundary; None = one model "
        "(with random_weights any value asks for a random second expert)"))
    random_weights: str | None = Field(None, description=(
        "a folder: create small random DiT / VAE / UMT5 there if absent and load them from it "
        "(tiny_cpu smoke runs; the log says the weights are random); checkpoint and encoders "
        "then point into it"))
    holocine_dir: str | None = Field(None, description=(
        "HoloCine's checkpoints/HoloCine_dit folder (README layout: {full,sparse}/"
        "{variant}_{high,low}_noise.safetensors); with it, holocine_variant picks the two experts "
        "and the self-attention, and checkpoint / low_noise_checkpoint / sparse_self_attention "
        "must not be given"))
    holocine_variant: Literal["full", "sparse"] = Field("full", description=(
        "HoloCine release: 'full' (full self-attention; HoloCine's default and recommendation: "
        "'better performance') or 'sparse' (sparse inter-shot self-attention, faster)"))

    @model_validator(mode="before")
    @classmethod
    def _holocine_variant(cls, data):
        """``holocine_dir`` + ``holocine_variant`` → the experts' files and the attention."""
        if not isinstance(data, dict) or data.get("holocine_dir") is None:
            return data
        clash = [k for k in ("checkpoint", "low_noise_checkpoint", "sparse_self_attention") if k in data]
        if clash:
            raise ValueError(f"model.holocine_dir sets {', '.join(clash)} from model.holocine_variant; "
                             "give one or the other")
        variant = data.get("holocine_variant", cls.model_fields["holocine_variant"].default)
        folder = Path(data["holocine_dir"]) / str(variant)
        return {**data, "checkpoint": str(folder / f"{variant}_high_noise.safetensors"),
                "low_noise_checkpoint": str(folder / f"{variant}_low_noise.safetensors"),
                "sparse_self_attention": variant == "sparse"}


class VideoConfig(VideoSize):
    """Default size of a generated sample (a request may override num_frames)."""

    num_frames: int = Field(241, description="pixel frames, 4k+1 (HoloCine: 241 = 15 s at 16 fps)")
    height: int = Field(480, gt=0, description="pixels, divisible by the VAE stride × patch")
    width: int = Field(832, gt=0, description="pixels, divisible by the VAE stride × patch")
    fps: float = Field(16.0, gt=0, description=(
        "frame rate of the written mp4 (Wan: 16; HoloCine writes 15); `generate --fps` overrides it"))


class RuntimeConfig(Section):
    """Where and how the models run."""

    device: str = Field("auto", description="'auto' = cuda when available, else cpu")
    dtype: Literal["auto", "bfloat16", "float32"] = Field("auto", description=(
        "DiT dtype; 'auto' = bfloat16 on GPU, float32 on CPU"))
    offload: bool = Field(True, description=(
        "GPU only: keep the text encoder, the VAE and the idle A14B expert on the CPU until used"))
    vae_tiling: Literal["auto"] | bool = Field("auto", description=(
        "tiled VAE decode (diffusers enable_tiling): true, false, or 'auto' = untiled when the "
        "GPU's free memory holds the untiled decode's estimated peak, else tiled, and tiled "
        "again if untiled runs out of memory; untiled on CPU (generate.vae_tiling)"))
    progress: bool = Field(True, description="tqdm bar over the denoising steps")
    cuda_graphs: bool = Field(True, description=(
        "streaming (--causal) on GPU: replay the denoising passes from CUDA graphs once their "
        "shapes repeat (generate.graphs; same outputs); no effect on CPU"))
    step_graphs: bool = Field(False, description=(
        "bidirectional sampler on GPU: replay each CFG step's blocks and head from a CUDA graph "
        "once its shapes repeat (generate.graphs.GraphedDenoiser; the same kernels, checked on "
        "the GPU by benchmarks/generate.py --parts exact); off by default until that check "
        "has run; no effect on CPU or with step_cache"))
    step_cache: bool = Field(False, description=(
        "first-block cache (model.step_cache, as diffusers' FirstBlockCache): a step whose first "
        "block's residual changed by less than step_cache_threshold since the last computed step "
        "reuses that step's residual of the other blocks. NOT exact: faster, at a quality cost"))
    step_cache_threshold: float = Field(0.05, ge=0, description=(
        "relative mean-absolute change of the first block's residual under which a step is "
        "skipped (diffusers' default 0.05; 0 = never skip)"))


class GenerateConfig(Section):
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
