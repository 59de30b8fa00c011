"""Distribution matching distillation: the generator's DMD loss, the critic's flow-matching
loss and the optional discriminator head (Yin et al. 2024, DMD; DMD2; Self-Forcing's
``model/dmd.py``; CausalCine §3.4).

With the student's video ``x0`` (its rollout), one noise level ``σ`` (``s ~ U[min, max]/1000``,
shifted) and ``x_σ = (1 − σ)·x0 + σ·ε``, the two scores are x0 estimates:

    real:  x̂0_real = x_σ − σ·v_teacher,  v_teacher = v_unc + g·(v_cond − v_unc)   frozen, CFG g
    fake:  x̂0_fake = x_σ − σ·v_critic                                            conditional

and the KL gradient with respect to ``x0`` is ``(x̂0_fake − x̂0_real) / mean|x0 − x̂0_real|``
(DMD's normaliser, per sample). The generator loss ``½·‖x0 − sg(x0 − grad)‖²`` (mean over
elements) has exactly that gradient up to the element count. The critic regresses the
velocity ``ε − x0`` of the student's (detached) videos: flow matching on the fake
distribution.

**A causal teacher** (CausalCine §3.4 and its appendix: real and fake denoisers initialised
from the tuned causal multi-shot base). Teacher and critic score by parallel teacher forcing
(:meth:`model.dit.WanModel.forward_teacher_forcing`): the clean copies are the student's own
video ``x0`` (stop-gradient: the history the score is conditioned on), the noisy copies
``x_σ`` at ``1000·σ``; each chunk's velocity is the causal base's given the clean chunks
before it (CAMR and Block-Relative RoPE as the student's causal config), the whole prompt and
every shot's window (:meth:`distill.prompts.PromptConditioning.video_mask`); the unconditional
pass has the negative prompt and no mask.

**CFG convention**: one for the project, ``v_unc + g·(v_cond − v_unc)`` (:mod:`model.sampling`,
Wan, diffusers). Self-Forcing's ``model/dmd.py`` (``_compute_kl_grad``) writes
``cond + s·(cond − uncond)`` with ``s = 3.0``: the same as ``g = s + 1 = 4.0`` here, the
default of ``objective.guidance_scale``.

Adversarial term (APT / DMD2, off by default): :class:`Discriminator` reads one critic block's
output tokens (the noisy half of the teacher-forcing sequence; by default the middle block,
intermediate features); the critic step adds ``softplus(−D(real)) + softplus(D(fake))``
(logistic loss) and APT's approximated R1 on the real samples, the generator
``softplus(−D(fake))`` (non-saturating). "Real" videos are footage from the shards
(:mod:`distill.footage`: ground-truth latents, each scored with its own prompt and shots).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from multishot.distill.prompts import PromptConditioning
from multishot.model.causal import CausalConfig


def sample_sigma(generator: torch.Generator, shift: float, min_timestep: float,
                 max_timestep: float, device: torch.device) -> torch.Tensor:
    """One shifted noise level ``[1]`` float32: ``s ~ U[min, max]/1000``,
    ``σ = shift·s/(1 + (shift − 1)·s)``."""
    s = torch.rand(1, device=device, generator=generator) * (max_timestep - min_timestep) / 1000 \
        + min_timestep / 1000
    return shift * s / (1 + (shift - 1) * s)


def score(model, clean: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
          context: torch.Tensor, mask: torch.Tensor | None, causal: CausalConfig) -> torch.Tensor:
    """A causal score by teacher forcing (module docstring): the velocity of ``x_t``
    ``[1, C, F, H, W]`` at ``t`` ``[1]`` given the clean history ``clean`` (detached here),
    ``[1, C, F, H, W]`` float32."""
    return model.forward_teacher_forcing(clean.detach(), x_t, t, context, causal, mask).float()


def teacher_velocity(teacher, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                     cond: PromptConditioning, guidance: float,
                     causal: CausalConfig) -> torch.Tensor:
    """CFG velocity ``v_unc + g·(v_cond − v_unc)`` of the frozen causal teacher on the noisy
    video ``x_t`` ``[1, C, F, H, W]`` given the clean history ``x0``, ``t`` ``[1]`` (×1000 of
    σ) → ``[1, C, F, H, W]`` float32; no gradient."""
    with torch.no_grad():
        v_cond = score(teacher, x0, x_t, t, cond.context, cond.video_mask(), causal)
        if guidance == 1.0:
            return v_cond
        v_unc = score(teacher, x0, x_t, t, cond.negative, None, causal)
        return v_unc + guidance * (v_cond - v_unc)


@dataclass
class DMDTerms:
    """The generator loss and its parts (device scalars): ``loss`` (DMD plus the weighted GAN
    term), ``dmd``, ``gan`` (0 when off), ``grad_norm`` (mean |DMD gradient|)."""

    loss: torch.Tensor
    dmd: torch.Tensor
    gan: torch.Tensor
    grad_norm: torch.Tensor


def dmd_loss(x0: torch.Tensor, teacher, critic, cond: PromptConditioning, sigma: torch.Tensor,
             eps: torch.Tensor, guidance: float, causal: CausalConfig,
             discriminator: Discriminator | None = None, gan_weight: float = 0.0) -> DMDTerms:
    """The generator's DMD loss on its video ``x0`` ``[1, C, F, H, W]`` (with gradient).

    Args:
        teacher, critic: causal ``WanModel`` s scoring by teacher forcing (module docstring);
            no parameter gets a gradient here (their forwards run under ``no_grad``, except the
            critic's for the GAN term, whose parameters the caller leaves out of the
            generator's optimiser).
        sigma: ``[1]`` noise level (:func:`sample_sigma`); ``eps``: ``ε`` like ``x0``.
        guidance: the teacher's CFG scale ``g`` (module docstring).
        causal: the student's causal config (chunks, CAMR, horizon).
        discriminator: the GAN head (None: no GAN term).
    """
    x_t = (1 - sigma) * x0.detach() + sigma * eps
    t = 1000 * sigma
    with torch.no_grad():
        x0_real = x_t - sigma * teacher_velocity(teacher, x0, x_t, t, cond, guidance, causal)
        x0_fake = x_t - sigma * score(critic, x0, x_t, t, cond.context, cond.video_mask(),
                                      causal)
        normaliser = (x0.detach() - x0_real).abs().mean(dim=(1, 2, 3, 4), keepdim=True)
        grad = torch.nan_to_num((x0_fake - x0_real) / normaliser)
    dmd = 0.5 * F.mse_loss(x0.float(), (x0 - grad).detach().float())
    gan = torch.zeros((), device=x0.device)
    if discriminator is not None:
        # the critic's features with gradient into x0 through the noisy copies (the clean
        # history is detached as in the scores; the critic's own grads are discarded)
        x_t_grad = (1 - sigma) * x0 + sigma * eps
        gan = F.softplus(-discriminator.logit(critic, x0, x_t_grad, t, cond, causal)).mean()
    return DMDTerms(dmd + gan_weight * gan, dmd.detach(), gan.detach(), grad.abs().mean())


def critic_loss(critic, x0: torch.Tensor, sigma: torch.Tensor, eps: torch.Tensor,
                cond: PromptConditioning, causal: CausalConfig) -> torch.Tensor:
    """Flow matching of the fake score on the student's (detached) video ``x0``
    ``[1, C, F, H, W]`` by teacher forcing (clean history ``x0``):
    ``mean((critic(x_σ, 1000σ | x0) − (ε − x0))²)``, a scalar."""
    x0 = x0.detach().float()
    x_t = (1 - sigma) * x0 + sigma * eps
    v = score(critic, x0, x_t, 1000 * sigma, cond.context, cond.video_mask(), causal)
    return F.mse_loss(v, eps - x0)


class Discriminator(nn.Module):
    """A light discriminator head on the tokens one critic block outputs (APT-style):
    LayerNorm → Linear → SiLU → Linear(1), mean over tokens → one logit per video.

    Args:
        dim: the critic's width; layer: the block whose output it reads (negative: from the end).
    """

    def __init__(self, dim: int, layer: int):
        super().__init__()
        self.layer = layer
        self.norm = nn.LayerNorm(dim)
        self.hidden = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens`` ``[B, L, dim]`` → logits ``[B]`` float32."""
        h = F.silu(self.hidden(self.norm(tokens.float())))
        return self.out(h).squeeze(-1).mean(1)

    def logit(self, critic, clean: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
              cond: PromptConditioning, causal: CausalConfig) -> torch.Tensor:
        """Run the critic by teacher forcing on ``x_t`` given the clean history ``clean`` and
        return the head's logits ``[1]`` on the noisy half of the tokens block ``layer``
        outputs (read by a forward hook)."""
        captured = []
        block = critic.blocks[self.layer]
        handle = block.register_forward_hook(lambda module, args, out: captured.append(out))
        try:
            score(critic, clean, x_t, t, cond.context, cond.video_mask(), causal)
        finally:
            handle.remove()
        tokens = captured[-1]
        return self(tokens[:, tokens.shape[1] // 2:])                    # the noisy copies


@dataclass
class RealSample:
    """A real video of the GAN: ground-truth ``latents`` ``[1, C, F, H, W]`` and their own
    ``cond`` (:mod:`distill.footage`)."""

    latents: torch.Tensor
    cond: PromptConditioning


def discriminator_loss(discriminator: Discriminator, critic, real: torch.Tensor,
                       real_cond: PromptConditioning, fake: torch.Tensor,
                       fake_cond: PromptConditioning, sigma: torch.Tensor,
                       real_eps: torch.Tensor, fake_eps: torch.Tensor, causal: CausalConfig,
                       r1_weight: float = 0.0, r1_noise: torch.Tensor | None = None,
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Logistic loss of the head: ``softplus(−D(real_σ)) + softplus(D(fake_σ))``, the real
    video ``[1, C, F_r, H, W]`` (footage) and the fake ``[1, C, F, H, W]`` (the student's)
    noised to the one ``σ`` with their own ``ε`` (``real_eps`` / ``fake_eps``; detached), each
    scored given its own clean history and its own prompt (``real_cond`` / ``fake_cond``); plus
    APT's approximated R1 on the real sample, ``r1_weight·(D(real_σ) − D(real_σ + r1_noise))²``
    (``r1_noise``: the perturbation, like ``real``, already scaled by its std). Returns
    ``(loss, r1 penalty)``."""
    t = 1000 * sigma
    real, fake = real.detach().float(), fake.detach().float()
    real_t = (1 - sigma) * real + sigma * real_eps
    fake_t = (1 - sigma) * fake + sigma * fake_eps
    real_logit = discriminator.logit(critic, real, real_t, t, real_cond, causal)
    loss = (F.softplus(-real_logit) +
            F.softplus(discriminator.logit(critic, fake, fake_t, t, fake_cond, causal))).mean()
    r1 = torch.zeros((), device=real.device)
    if r1_weight and r1_noise is not None:
        perturbed = discriminator.logit(critic, real, real_t + r1_noise, t, real_cond, causal)
        r1 = (real_logit - perturbed).square().mean()
        loss = loss + r1_weight * r1
    return loss, r1.detach()
