"""The typed configuration of a fine-tuning run (``configs/train/*.yaml``).

One pydantic model per component, each field with its default and meaning here and nowhere
else; unknown keys are errors naming the key (:func:`multishot.config.load_config`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from multishot.dataset.loader import DataConfig
from multishot.evaluate.config import EvalConfig
from multishot.generate.sampler import SamplingConfig
from multishot.model.causal import CausalConfig
from multishot.model.config import get_config
from multishot.trainer.context_parallel import check_heads
from multishot.trainer.flow_matching import FlowMatchConfig
from multishot.trainer.lora import LoraConfig


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelConfig(_Section):
    """The DiT being fine-tuned."""

    name: Literal["tiny", "learn", "1.3B", "5B", "14B"] = Field(description="architecture (model.config.get_config)")
    init_from: str | None = Field(None, description=(
        "Wan / HoloCine safetensors file or folder (official or diffusers names); None = Wan's "
        "random initialisation"))
    attention_backend: Literal["reference", "varlen", "sdpa", "flex"] = Field("sdpa", description=(
        "sparse self-attention kernel (model.attention); 'sdpa' (per-shot cuDNN) is the fastest on "
        "Hopper (benchmarks/results/attention.md)"))
    sparse_self_attention: bool = Field(True, description=(
        "HoloCine's sparse inter-shot self-attention; False = full self-attention"))
    global_bank: bool = Field(True, description=(
        "with sparse_self_attention: every shot also attends the first latent frame of every "
        "shot (HoloCine's summary tokens); False = the 'sparse w/o global' ablation, each shot "
        "attends only itself"))
    window_cross_attention: bool = Field(True, description=(
        "mask cross-attention to each shot's caption window (needs a tokenizer); False = every "
        "video token attends the whole prompt (the 'w/o window' ablation)"))
    activation_checkpointing: bool = Field(True, description="recompute each block in backward")
    checkpoint_policy: Literal["full", "selective"] = Field("full", description=(
        "with activation_checkpointing: 'full' recomputes the whole block; 'selective' keeps "
        "the matmul and attention outputs and recomputes only element-wise and norm ops "
        "(trainer.parallelize.SAVED_OPS)"))
    checkpoint_skip_last: int = Field(0, ge=0, description=(
        "with activation_checkpointing: the last N blocks keep their activations instead "
        "(a third less forward work each, for ~3.4 GiB each: 5B, 23.8k tokens, H200)"))
    compile: bool | None = Field(None, description=(
        "regional torch.compile of every block (attention kernel stays eager); None = on for "
        "CUDA, off for CPU"))
    cpu_offload: bool = Field(False, description=(
        "FSDP2 CPUOffloadPolicy: sharded parameters, gradients and AdamW state in CPU memory, "
        "the optimiser step on the CPU (a 5B full fine-tune on one 80 GB GPU)"))
    lora: LoraConfig | None = Field(None, description=(
        "train LoRA adapters on the frozen base (trainer.lora) instead of every weight; "
        "None = full fine-tune"))
    causal: CausalConfig | None = Field(None, description=(
        "CausalCine's causal chunk-wise mode (model.causal): teacher forcing; "
        "None = the bidirectional model"))


class EncodersConfig(_Section):
    """Frozen encoders (needed for data.kind 'video', for window cross-attention and precompute)."""

    vae: str | None = Field(None, description="diffusers AutoencoderKLWan folder")
    text_encoder: str | None = Field(None, description="transformers UMT5EncoderModel folder")
    tokenizer: str | None = Field(None, description="tokenizer folder; None = text_encoder's")
    dtype: Literal["bfloat16", "float32"] = Field("bfloat16", description="encoder compute dtype")


class OptimConfig(_Section):
    """AdamW with linear warm-up, then a constant / cosine / linear schedule."""

    lr: float = Field(1e-5, gt=0, description="peak learning rate (HoloCine: 1e-5)")
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_steps: int = Field(100, ge=0, description="linear warm-up from 0 over these steps")
    schedule: Literal["constant", "cosine", "linear"] = "constant"
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="cosine / linear floor, × lr")
    grad_clip: float | None = Field(1.0, gt=0, description="max global grad norm; None = off")


class ParallelConfig(_Section):
    """How the ranks split the work: a ``dp × cp`` device mesh (trainer.parallelize)."""

    context: int = Field(1, ge=1, description=(
        "context-parallel degree: ranks that split one sample's tokens (Ulysses over heads, "
        "trainer.context_parallel); must divide the model's heads (5B: 24, 14B: 40) and the "
        "world size; the other factor of the world size is data parallel"))


class RunConfig(_Section):
    """Length, outputs, checkpoints and logging of a run."""

    output_dir: str = Field(description="checkpoints/, tensorboard/, metrics.jsonl, config.resolved.yaml")
    max_steps: int = Field(gt=0, description="optimiser steps of the whole run")
    seed: int = Field(0, description="initialisation and noise / timestep draws")
    mixed_precision: Literal["bf16", "fp32"] = Field("bf16", description=(
        "FSDP2 compute dtype on GPUs ('bf16': bf16 parameters, fp32 gradient reduction and "
        "fp32 master weights); CPU runs always compute in fp32"))
    checkpoint_every: int = Field(500, gt=0, description="steps between DCP checkpoints")
    keep_checkpoints: int = Field(2, ge=1, description="newest checkpoints kept on disk")
    resume: bool = Field(True, description="continue from the newest complete checkpoint in output_dir")
    export_safetensors: bool = Field(True, description=(
        "write output_dir/model.safetensors at the end (LoRA runs: the adapter, "
        "output_dir/lora.safetensors)"))
    log_every: int = Field(10, gt=0, description="steps between logged metrics")
    tensorboard: bool = Field(True, description="write TensorBoard event files")
    peak_tflops: float = Field(989.0, gt=0, description=(
        "dense bf16 peak per GPU for MFU (H100/H200 SXM datasheet: 989)"))


class ValidationConfig(_Section):
    """Sampling fixed prompts during the run (:mod:`trainer.validation`); off unless ``every``."""

    every: int = Field(0, ge=0, description="steps between validations; 0 = off")
    at_start: bool = Field(True, description="with every > 0: also validate at step 0")
    prompts: str | None = Field(None, description=(
        "JSON-lines prompt file (the `multishot generate --prompts` format)"))
    held_out: int = Field(0, ge=0, description=(
        "K captioned samples of data.shards re-created from their captions and cuts; their keys "
        "are excluded from training"))
    num_frames: int | None = Field(None, description="pixel frames, 4k+1; None = data.num_frames")
    height: int | None = Field(None, gt=0, description="pixels; None = data.height")
    width: int | None = Field(None, gt=0, description="pixels; None = data.width")
    seed: int = Field(0, description="noise seed of every prompt without its own")
    fps: float = Field(16.0, gt=0, description="frame rate of the written mp4s")
    sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig(steps=10), description=(
        "sampler, steps (few by default: 10), shift, CFG scale, negative prompt"))
    metrics: bool = Field(True, description=(
        "score every video as `multishot eval` does (SCA, consistency) into metrics.json"))
    eval: EvalConfig = Field(default_factory=EvalConfig, description=(
        "the cut detector and CLIP / DINOv2 weights of the metrics (metrics without weights are "
        "reported as skipped)"))


class TrainConfig(_Section):
    """A fine-tuning run: ``multishot train --config FILE``."""

    model: ModelConfig
    data: DataConfig
    encoders: EncodersConfig = EncodersConfig()
    objective: FlowMatchConfig = FlowMatchConfig()
    optim: OptimConfig = OptimConfig()
    validation: ValidationConfig = ValidationConfig()
    parallel: ParallelConfig = ParallelConfig()
    run: RunConfig

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        """Refuse at load (in the launcher, not in N ranks) a run that would need an encoder
        the config does not name, or whose context-parallel degree does not divide the heads."""
        enc = self.encoders
        if self.data.kind == "video" and not (enc.vae and enc.text_encoder):
            raise ValueError("data.kind 'video' needs encoders.vae and encoders.text_encoder "
                             "(or precompute latents: `multishot precompute`)")
        if self.model.window_cross_attention and not (enc.tokenizer or enc.text_encoder):
            raise ValueError("model.window_cross_attention needs encoders.tokenizer or "
                             "encoders.text_encoder")
        check_heads(get_config(self.model.name).num_heads, self.parallel.context)
        if self.model.causal is not None:
            if self.parallel.context > 1:
                raise ValueError("model.causal: teacher forcing runs without context "
                                 "parallelism; set parallel.context: 1")
            if self.validation.every:
                raise ValueError("model.causal: validation samples with the bidirectional "
                                 "sampler; set validation.every: 0 and stream the checkpoint "
                                 "with `multishot generate --causal`")
        return self
