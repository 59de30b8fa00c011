"""Flow-matching sampling with classifier-free guidance and A14B expert switching.

The schedulers are diffusers' (``FlowMatchEulerDiscreteScheduler``, ``UniPCMultistepScheduler``
with flow sigmas); this module only chooses their sigmas and runs the guided loop:

    x_T = ε ~ N(0, I)                                  [B, C, F_lat, H_lat, W_lat] float32
    for t in the scheduler's timesteps (descending, in [0, 1000)):
        expert = high-noise DiT if t >= 1000·boundary else low-noise DiT   (Wan2.2 A14B)
        v = v_u + s·(v_c − v_u)                         (CFG; s = 1 → v_c alone, one pass)
        x = scheduler.step(v, t, x)

as Wan2.2's ``WanT2V.generate`` and HoloCine's ``WanVideoHoloCinePipeline.__call__`` do. The
unconditional pass sees the same shot layout (sparse self-attention) but no caption windows
(HoloCine's negative prompt is unmasked).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from pydantic import Field
from tqdm import tqdm

from multishot.config import Section
from multishot.model.config import WanConfig
from multishot.model.layout import ShotLayout
from multishot.model.prompt_spans import TextSpans

if TYPE_CHECKING:
    from multishot.model.encoders import FrozenEncoders

#: Wan's default negative prompt, ``sample_neg_prompt`` of Wan2.2 ``wan/configs/shared_config.py``
#: (HoloCine's inference scripts pass the same string as ``scene_negative_prompt``).
WAN_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
    "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，"
    "形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走")



#: Wan's training timesteps (``num_train_timesteps``), the scale of t and of the boundary.
NUM_TRAIN_TIMESTEPS = 1000


class SamplingConfig(Section):
    """Flow-matching sampling with classifier-free guidance (diffusers schedulers): ``sampling:``
    of ``configs/generate/*.yaml`` and of ``validation:`` in ``configs/train/*.yaml``."""

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


def holocine_sigmas(steps: int) -> np.ndarray:
    """Unshifted sigmas of DiffSynth's ``FlowMatchScheduler(sigma_min=0, extra_one_step=True)``
    (HoloCine's inference): ``linspace(1, 0, steps + 1)[:-1]``; the scheduler shifts them."""
    return np.linspace(1.0, 0.0, steps + 1)[:-1]


def make_scheduler(config: SamplingConfig, device: torch.device | str | None = None):
    """A diffusers scheduler of ``config`` with its timesteps set for ``config.steps``.

    ``euler``: ``FlowMatchEulerDiscreteScheduler(shift)`` on :func:`holocine_sigmas`, i.e.
    σ_i = shift·s_i / (1 + (shift − 1)·s_i), s_i = 1 − i/N, and a final σ = 0 (HoloCine).
    ``unipc``: ``UniPCMultistepScheduler(flow_prediction, use_flow_sigmas, flow_shift=shift)``
    with diffusers' default spacing, as diffusers' ``WanPipeline`` sets it up for Wan2.2.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    if config.sampler == "euler":
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS,
                                                    shift=config.shift)
        scheduler.set_timesteps(sigmas=holocine_sigmas(config.steps).tolist(), device=device)
    else:
        scheduler = UniPCMultistepScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS,
                                            prediction_type="flow_prediction",
                                            use_flow_sigmas=True, flow_shift=config.shift)
        scheduler.set_timesteps(config.steps, device=device)
    scheduler.set_begin_index(0)
    return scheduler


@dataclass
class Expert:
    """A DiT and the guidance it samples with, used for timesteps ``t >= min_timestep``."""

    model: torch.nn.Module
    cfg_scale: float
    min_timestep: float = 0.0
    name: str = "dit"


def pick_expert(experts: Sequence[Expert], timestep: float) -> Expert:
    """The expert for ``timestep``: the first (highest ``min_timestep``) whose range holds it."""
    for expert in sorted(experts, key=lambda e: -e.min_timestep):
        if timestep >= expert.min_timestep:
            return expert
    raise ValueError(f"no expert covers timestep {timestep}")


@dataclass
class Conditioning:
    """The model inputs of one sample besides the latents.

    ``context`` / ``negative_context``: UMT5 states ``[L, text_dim]`` and ``[L', text_dim]``
    float32 (the DiT zero-pads both to its text length); ``layout``: one sample's
    :class:`ShotLayout`; ``spans``: its caption windows, or None for unmasked cross-attention.
    """

    context: torch.Tensor
    negative_context: torch.Tensor
    layout: ShotLayout
    spans: TextSpans | None

    def batch_of_two(self) -> tuple[torch.Tensor, ShotLayout, list[TextSpans | None] | None]:
        """Context ``[2, max(L, L'), D]`` (conditional first), layout and spans of the CFG batch."""
        n = max(self.context.shape[0], self.negative_context.shape[0])
        pad = [torch.nn.functional.pad(c, (0, 0, 0, n - c.shape[0]))
               for c in (self.context, self.negative_context)]
        spans = None if self.spans is None else [self.spans, None]
        return torch.stack(pad), ShotLayout.stack([self.layout, self.layout]), spans


def guided_velocity(model: torch.nn.Module, x: torch.Tensor, timestep: torch.Tensor,
                    cond: Conditioning, scale: float, cfg_batch: bool,
                    batch_inputs: tuple | None = None) -> torch.Tensor:
    """CFG velocity ``v_u + scale·(v_c − v_u)`` of latents ``x`` ``[1, C, F, H, W]`` at
    ``timestep`` ``[1]``, float32. ``scale == 1`` runs the conditional pass alone (as HoloCine);
    ``cfg_batch`` runs both passes as one batch of two (``batch_inputs``: a cached
    :meth:`Conditioning.batch_of_two`)."""
    spans = None if cond.spans is None else [cond.spans]
    if scale == 1.0:
        return model(x, timestep, cond.context[None], cond.layout, spans).float()
    if cfg_batch:
        context, layout, spans2 = batch_inputs or cond.batch_of_two()
        v_c, v_u = model(x.expand(2, *x.shape[1:]), timestep.expand(2), context, layout,
                         spans2).float().chunk(2)
    else:
        v_c = model(x, timestep, cond.context[None], cond.layout, spans).float()
        v_u = model(x, timestep, cond.negative_context[None], cond.layout, None).float()
    return v_u + scale * (v_c - v_u)


@dataclass
class SampleTrace:
    """What a sampling run did: per step the timestep, the expert used, its seconds and whether
    it reused the step cache's residual (:mod:`model.step_cache`; always False without one)."""

    timesteps: list[float]
    experts: list[str]
    step_seconds: list[float]
    reused: list[bool] = field(default_factory=list)


def sample(experts: Sequence[Expert], noise: torch.Tensor, cond: Conditioning,
           config: SamplingConfig, *, progress: bool = False,
           on_expert: Callable[[Expert], None] | None = None) -> tuple[torch.Tensor, SampleTrace]:
    """Denoise ``noise`` ``[1, C, F_lat, H_lat, W_lat]`` (float32) into clean latents.

    Args:
        experts: one DiT (``min_timestep`` 0) or A14B's two (high-noise with
            ``min_timestep = 1000·boundary``, low-noise with 0).
        on_expert: called with the expert about to be used whenever it changes (moves the
            idle expert off the GPU when offloading).
        An expert's model with a ``step_cache`` (:func:`model.step_cache.apply_step_cache`)
        has it reset here and told of every step; ``trace.reused`` says which steps reused it.
    Returns:
        the final latents (float32, like ``noise``) and a :class:`SampleTrace`.
    """
    scheduler = make_scheduler(config, noise.device)
    x = noise.float()
    batch_inputs = cond.batch_of_two() if config.cfg_batch and max(
        e.cfg_scale for e in experts) != 1.0 else None
    trace = SampleTrace([], [], [])
    caches = {id(e): getattr(e.model, "step_cache", None) for e in experts}
    for cache in caches.values():
        if cache is not None:
            cache.reset()  # a new sample: nothing of the last one is reused
    current: Expert | None = None
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    for t in tqdm(scheduler.timesteps, desc="sampling", unit="step", disable=not progress):
        start = time.perf_counter()
        expert = pick_expert(experts, float(t))
        if expert is not current:
            if on_expert is not None:
                on_expert(expert)
            current = expert
        cache = caches[id(expert)]
        if cache is not None:
            cache.new_step()
        timestep = t.reshape(1).to(x.device, torch.float32)
        v = guided_velocity(expert.model, x, timestep, cond, expert.cfg_scale, config.cfg_batch,
                            batch_inputs)
        x = scheduler.step(v, t, x, return_dict=False)[0].float()
        sync()  # per-step seconds are reported; one sync a step costs nothing next to a step
        trace.timesteps.append(float(t))
        trace.experts.append(expert.name)
        trace.reused.append(cache is not None and cache.step_reused)
        trace.step_seconds.append(time.perf_counter() - start)
    return x, trace


def initial_noise(shape: tuple[int, ...], seed: int, device: torch.device) -> torch.Tensor:
    """ε ~ N(0, I) of ``shape`` drawn on the CPU in float32 from ``seed`` (the same on every
    device and rank, as diffusers' ``randn_tensor`` with a CPU generator), then moved."""
    generator = torch.Generator("cpu").manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(device)


def make_conditioning(encoders: FrozenEncoders, model_config: WanConfig, prompt: str,
                      num_frames: int, cut_frames: Sequence[int], context: torch.Tensor,
                      negative: torch.Tensor, latent_hw: tuple[int, int],
                      window_cross_attention: bool,
                      device: torch.device) -> tuple[Conditioning, str | None]:
    """The :class:`Conditioning` of ``prompt`` from its UMT5 states ``context`` ``[L, D]``
    (``negative`` likewise): the shot layout of ``cut_frames`` (pixel frames where shots 2..
    start, of ``num_frames``) over latents of ``latent_hw`` and, with
    ``window_cross_attention``, its caption windows (HoloCine's spans). A prompt whose shot
    captions do not all fit the text length gets unmasked cross-attention, as HoloCine's
    inference runs it; the reason is returned beside the conditioning (None when masked), for
    the caller to log and record.
    """
    _, ph, pw = model_config.patch_size
    layout = ShotLayout.from_cut_frames(num_frames, list(cut_frames),
                                        (latent_hw[0] // ph) * (latent_hw[1] // pw), device)
    spans, why = None, None
    if window_cross_attention:
        shots = len(layout.shot_starts[0])
        spans, why = encoders.text_spans([prompt], [shots], model_config.text_len)[0]
    return Conditioning(context, negative, layout, spans), why


@torch.no_grad()
def decode_latents(vae: torch.nn.Module, latents: torch.Tensor, device: torch.device,
                   dtype: torch.dtype) -> np.ndarray:
    """Normalised latents ``[1, C, F_lat, H_lat, W_lat]`` → ``latents · std + mean`` → Wan VAE
    decode (diffusers ``AutoencoderKLWan``, tiled when enabled) → ``[F, H, W, 3]`` uint8."""
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    z = latents.float().cpu() * std + mean
    video = vae.decode(z.to(device, dtype)).sample                       # [1, 3, F, H, W]
    video = ((video[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return video.permute(1, 2, 3, 0).cpu().numpy()
