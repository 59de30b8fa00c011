"""The typed configuration of a distillation run (``configs/distill/*.yaml``).

One pydantic model per component, each field's default and meaning here and nowhere else;
unknown keys are errors naming the key (:func:`multishot.config.load_config`). The model,
encoder, optimiser and run sections are the fine-tuning ones (:mod:`trainer.config`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from multishot.config import Section
from multishot.dataset.loader import DataConfig
from multishot.dataset.record import num_latent_frames
from multishot.model.sampling import WAN_NEGATIVE_PROMPT
from multishot.model.settings import EncodersConfig
from multishot.trainer.config import ModelConfig, OptimConfig, RunConfig


class VideoConfig(Section):
    """The latent video every rollout makes: its frame count follows from each prompt's
    shots (``1 + chunk_latent_frames · chunks`` latent frames), its size from here."""

    height: int = Field(gt=0, description="pixels (a multiple of 16)")
    width: int = Field(gt=0, description="pixels (a multiple of 16)")


class FootageConfig(Section):
    """Ground-truth videos from shards (:mod:`distill.footage`): the history the ODE
    trajectories are conditioned on and the adversarial head's real samples (CausalCine §3.4).
    Read once at the start into ``output_dir/footage.safetensors``."""

    shards: list[str] = Field(min_length=1, description=DataConfig.model_fields["shards"].description)
    kind: Literal["video", "latents"] = Field(DataConfig.model_fields["kind"].default, description=(
        "'video': mp4 shards from the pipeline, encoded once by encoders.vae; 'latents': a "
        "latent set of `multishot precompute` made at video.height x width and num_frames"))
    num_frames: int = Field(description=(
        "pixel frames of every clip, the first of each sample (shorter samples are skipped): "
        "1 + 4·c·m (c = student.causal.chunk_latent_frames), so chunk 0 is the lone first "
        "latent frame as in every rollout"))
    samples: int = Field(ge=1, description=(
        "how many usable samples to take, the first in shard order (sorted tars, tar order)"))
    uncaptioned: Literal["skip", "placeholder"] = Field(
        DataConfig.model_fields["uncaptioned"].default,
        description=DataConfig.model_fields["uncaptioned"].description)

    @field_validator("num_frames")
    @classmethod
    def _four_k_plus_one(cls, value: int) -> int:
        num_latent_frames(value)  # raises ValueError naming the 4k+1 rule
        return value


class AdversarialConfig(Section):
    """APT-style adversarial regularisation (CausalCine §3.4; DMD2's GAN term): a light
    discriminator head on one critic block's tokens, logistic (non-saturating) loss."""

    enabled: bool = Field(False, description="add the GAN terms to the critic and generator losses")
    layer: int | None = Field(None, description=(
        "critic block whose output tokens the head reads (negative: from the end); null: the "
        "middle block (num_layers // 2), intermediate features as APT's heads read"))
    r1_weight: float = Field(100.0, ge=0, description=(
        "approximated R1 on real samples (APT): weight of (D(x_real) - D(x_real + "
        "r1_sigma·n))², a finite-difference stand-in for the gradient penalty (no double "
        "backward through the critic); 0 = off (weight and sigma: ours, not verified against "
        "APT's text)"))
    r1_sigma: float = Field(0.01, gt=0, description="approximated R1: the perturbation's std")
    generator_weight: float = Field(0.01, ge=0, description="weight of the generator's GAN loss")
    critic_weight: float = Field(1.0, ge=0, description="weight of the discriminator loss")


class DistillObjective(Section):
    """ODE initialisation and DMD (Self-Forcing's ``configs/self_forcing_dmd.yaml`` defaults)."""

    student_timesteps: list[float] = Field([1000.0, 750.0, 500.0, 250.0], description=(
        "the student's denoising timesteps before the shift, descending (Self-Forcing's "
        "denoising_step_list); must be the uniform grid 1000·(1 − k/N) that the Euler sampler "
        "of `multishot generate` runs at N steps"))
    shift: float = Field(5.0, gt=0, description=(
        "timestep shift σ' = shift·σ/(1+(shift−1)·σ) of the student's steps and of the DMD "
        "noise draws (Self-Forcing: 5)"))
    guidance_scale: float = Field(4.0, ge=1, description=(
        "the teacher's CFG scale g of v = v_uncond + g·(v_cond − v_uncond), the project's one "
        "convention (model.sampling, Wan, diffusers). Self-Forcing's model/dmd.py writes "
        "cond + s·(cond − uncond) with s = 3.0 (configs/self_forcing_dmd.yaml), i.e. g = s + 1 "
        "= 4.0: the default is Self-Forcing's effective guidance"))
    negative_prompt: str = Field(WAN_NEGATIVE_PROMPT, description="the teacher's unconditional prompt")
    critic_steps_per_generator_step: int = Field(5, ge=1, description=(
        "critic (fake score) updates before each generator update (Self-Forcing: 5)"))
    rollout_gradient: Literal["exit_step", "all_steps"] = Field("exit_step", description=(
        "'exit_step': a chunk's gradient flows only through the denoising step the rollout "
        "exits at (Self-Forcing); 'all_steps': through every step up to it (more memory)"))
    min_timestep: float = Field(20.0, ge=0, lt=1000, description=(
        "DMD / critic noise draws: s ~ U[min, max]/1000 before the shift (Self-Forcing: 0.02–0.98)"))
    max_timestep: float = Field(980.0, gt=0, le=1000)
    ode_steps: int = Field(0, ge=0, description=(
        "ODE-initialisation regression steps before DMD (0: start DMD from the causal base)"))
    teacher_steps: int = Field(48, ge=1, description=(
        "Euler steps of the causal base's ODE trajectories (a multiple of the student's steps, "
        "so the trajectory passes through every student timestep)"))
    trajectory_guidance_scale: float | None = Field(None, ge=1, description=(
        "CFG of the ODE trajectories, as guidance_scale (null: guidance_scale)"))
    adversarial: AdversarialConfig = Field(default_factory=AdversarialConfig)
    ema_decay: float = Field(0.99, ge=0, lt=1, description=(
        "generator EMA: ema ← decay·ema + (1 − decay)·student after every student update from "
        "ema_start_step on; the exported student is the EMA (Self-Forcing: 0.99); 0 = off"))
    ema_start_step: int = Field(200, ge=0, description=(
        "the step whose update starts the EMA as a copy of the student (Self-Forcing: 200)"))

    @field_validator("student_timesteps")
    @classmethod
    def _uniform(cls, steps: list[float]) -> list[float]:
        n = len(steps)
        grid = [1000.0 * (1 - k / n) for k in range(n)]
        if n == 0 or any(abs(a - b) > 1e-6 for a, b in zip(steps, grid)):
            raise ValueError(f"must be the uniform grid {grid} (the Euler sampler's), got {steps}")
        return steps

    @model_validator(mode="after")
    def _check(self) -> DistillObjective:
        if self.min_timestep >= self.max_timestep:
            raise ValueError("min_timestep must be below max_timestep")
        if self.teacher_steps % len(self.student_timesteps):
            raise ValueError(f"teacher_steps {self.teacher_steps} is not a multiple of the "
                             f"{len(self.student_timesteps)} student steps")
        return self


class DistillConfig(Section):
    """A whole distillation run: ``phase 1`` regresses the causal student onto its own base's
    ODE trajectories on the ground-truth history of ``footage`` for ``objective.ode_steps``
    steps, ``phase 2`` runs DMD until
    ``run.max_steps`` (one step = ``critic_steps_per_generator_step`` critic updates and one
    generator update)."""

    student: ModelConfig = Field(description=(
        "the causal student (model.causal required), initialised from the causal base (init_from)"))
    teacher: ModelConfig = Field(description=(
        "the frozen causal teacher (the real score), init_from the tuned causal multi-shot base "
        "(CausalCine §3.4: 'the causal base serves as the high-quality autoregressive "
        "teacher'); it scores by teacher forcing with student.causal. The critic (fake score) "
        "starts as a copy of it"))
    encoders: EncodersConfig = Field(default_factory=EncodersConfig)
    prompts: str = Field(description=(
        "JSON-lines file, one training prompt a line: {\"global_caption\": str, \"shots\": "
        "[{\"caption\": str, \"chunks\": int}, ...]} (multishot.distill.prompts)"))
    video: VideoConfig
    footage: FootageConfig | None = Field(None, description=(
        "ground-truth shards; required by ODE initialisation (objective.ode_steps > 0) and the "
        "adversarial head (objective.adversarial.enabled)"))
    objective: DistillObjective = Field(default_factory=DistillObjective)
    generator_optim: OptimConfig = Field(default_factory=lambda: OptimConfig(lr=2e-6, warmup_steps=0))
    critic_optim: OptimConfig = Field(default_factory=lambda: OptimConfig(lr=4e-7, warmup_steps=0))
    run: RunConfig

    @model_validator(mode="after")
    def _check(self) -> DistillConfig:
        if self.student.causal is None:
            raise ValueError("student.causal is required: the student is the causal model")
        if self.teacher.causal is not None and self.teacher.causal != self.student.causal:
            raise ValueError("teacher.causal must be unset or equal student.causal: the causal "
                             "teacher scores by teacher forcing with the student's chunks and CAMR")
        if self.student.name != self.teacher.name:
            raise ValueError(f"student.name {self.student.name} and teacher.name "
                             f"{self.teacher.name} differ (one latent space, one critic shape)")
        if self.student.lora is not None or self.teacher.lora is not None:
            raise ValueError("student.lora / teacher.lora: distillation trains full weights")
        if self.objective.ode_steps >= self.run.max_steps:
            raise ValueError(f"objective.ode_steps {self.objective.ode_steps} leaves no DMD "
                             f"step before run.max_steps {self.run.max_steps}")
        if self.video.height % 16 or self.video.width % 16:
            raise ValueError(f"video size {self.video.height}x{self.video.width} is not a "
                             "multiple of 16")
        obj, footage = self.objective, self.footage
        if (obj.ode_steps or obj.adversarial.enabled) and footage is None:
            raise ValueError("footage is required: ODE initialisation (objective.ode_steps) and "
                             "the adversarial head condition on / compare with ground truth")
        if footage is not None:
            c = self.student.causal.chunk_latent_frames
            if (num_latent_frames(footage.num_frames) - 1) % c:
                raise ValueError(f"footage.num_frames {footage.num_frames} is not 1 + 4·{c}·m "
                                 f"(chunks of {c} latent frames after the lone first one)")
            if footage.kind == "video" and not self.encoders.vae:
                raise ValueError("footage.kind 'video' needs encoders.vae (the footage is "
                                 "encoded once at the start)")
        if not self.encoders.text_encoder:
            raise ValueError("encoders.text_encoder is required: the prompts are encoded once "
                             "at the start")
        return self
