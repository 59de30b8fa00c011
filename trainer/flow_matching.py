"""Rectified flow matching as Wan / DiffSynth-Studio train it.

The noise schedule is DiffSynth-Studio's ``FlowMatchScheduler`` with the "Wan" template
(``diffsynth/diffusion/flow_match.py``): ``T = 1000`` training timesteps,

    σ_i = shift · s_i / (1 + (shift − 1) · s_i),   s_i = 1 − i / T,   i = 0 … T−1,
    t_i = 1000 · σ_i                                  (descending: i = 0 is pure noise)

and one step (``FlowMatchSFTLoss``) draws one uniform index ``i`` per sample, forms
``x_t = (1 − σ) x0 + σ ε`` and regresses the model's output on ``ε − x0`` with MSE, weighted by
DiffSynth's bell-shaped ``training_weight`` over t (mean 1 over the table). The A14B model has
a high-noise expert (t ≥ 875) and a low-noise expert (t < 875), each fine-tuned only on its
range: with shift 5 the boundary falls at index 417, DiffSynth's ``max/min_timestep_boundary``
0.417.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field

from multishot.config import Section

Expert = Literal["all", "high_noise", "low_noise"]


class FlowMatchConfig(Section):
    """The training objective."""

    num_train_timesteps: int = Field(1000, gt=1, description="entries of the timestep table")
    shift: float = Field(5.0, gt=0, description="timestep shift (HoloCine / DiffSynth Wan: 5)")
    expert: Expert = Field("all", description=(
        "timestep range to train: 'all', or one A14B expert: 'high_noise' (t >= boundary) or "
        "'low_noise' (t < boundary)"))
    boundary: float = Field(875.0, gt=0, lt=1000, description="A14B expert boundary timestep")
    weighting: Literal["diffsynth", "uniform"] = Field("diffsynth", description=(
        "'diffsynth': bell-shaped weight over t (FlowMatchScheduler.training_weight); "
        "'uniform': plain MSE"))


@dataclass
class NoisedBatch:
    """What one step feeds the model and regresses on.

    ``x_t``, ``target``: [B, C, F_lat, H_lat, W_lat]; ``timestep``: [B] float in [0, 1000);
    ``weight``: [B] loss weight per sample.
    """

    x_t: torch.Tensor
    target: torch.Tensor
    timestep: torch.Tensor
    weight: torch.Tensor


class FlowMatching:
    """The timestep table, sampling and loss of :class:`FlowMatchConfig` (module docstring).

    Tables live on ``device``; :meth:`noise` and :meth:`loss` make no host syncs.
    """

    def __init__(self, config: FlowMatchConfig, device: torch.device | str = "cpu"):
        self.config = config
        steps = config.num_train_timesteps
        s = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)[:-1]
        sigmas = config.shift * s / (1 + (config.shift - 1) * s)
        self.sigmas = sigmas.float().to(device)  # [T], descending
        self.timesteps = (sigmas * 1000).float().to(device)  # [T]
        bell = torch.exp(-2 * ((sigmas * 1000 - steps / 2) / steps) ** 2)
        bell = bell - bell.min()
        self.weights = (bell * (steps / bell.sum())).float().to(device)  # [T], mean 1
        self.index_range = self._index_range(sigmas * 1000)

    def _index_range(self, timesteps: torch.Tensor) -> tuple[int, int]:
        """Half-open table index range ``[lo, hi)`` the configured expert trains on."""
        high = int((timesteps >= self.config.boundary).sum())  # descending: high-noise first
        if self.config.expert == "high_noise":
            return 0, high
        if self.config.expert == "low_noise":
            return high, self.config.num_train_timesteps
        return 0, self.config.num_train_timesteps

    def noise(self, x0: torch.Tensor, generator: torch.Generator | None = None) -> NoisedBatch:
        """Draw one timestep index and one noise tensor per sample and noise ``x0``.

        Args:
            x0: clean latents [B, C, F_lat, H_lat, W_lat].
            generator: RNG on ``x0.device`` (the trainer seeds it per step and rank so runs
                and resumes draw the same noise).
        """
        lo, hi = self.index_range
        index = torch.randint(lo, hi, (x0.shape[0],), device=x0.device, generator=generator)
        eps = torch.randn(x0.shape, device=x0.device, dtype=torch.float32, generator=generator)
        sigma = self.sigmas[index].view(-1, *([1] * (x0.dim() - 1)))
        x0 = x0.float()
        weight = self.weights[index] if self.config.weighting == "diffsynth" else torch.ones_like(sigma.flatten())
        return NoisedBatch((1 - sigma) * x0 + sigma * eps, eps - x0, self.timesteps[index], weight)

    @staticmethod
    def loss(prediction: torch.Tensor, batch: NoisedBatch) -> torch.Tensor:
        """Weighted MSE in fp32: mean over samples of ``weight_b · mean((pred_b − target_b)²)``.

        Args:
            prediction: model output [B, C, F_lat, H_lat, W_lat] (any float dtype).
        Returns:
            scalar loss tensor (fp32).
        """
        per_sample = (prediction.float() - batch.target).pow(2).flatten(1).mean(1)
        return (per_sample * batch.weight).mean()
