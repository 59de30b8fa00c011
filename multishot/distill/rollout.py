"""The few-step student's chunk-by-chunk generation with the KV cache (Self-Forcing's
training-time rollout; CausalCine §3.4), the same sampler ``multishot generate --causal`` runs.

The student's N timesteps ``t_k = 1000·(1 − k/N)`` (Self-Forcing: 1000, 750, 500, 250) become
noise levels ``σ_k = shift·s_k / (1 + (shift − 1)·s_k)``, ``s_k = t_k / 1000``, and a final
``σ_N = 0``: exactly the grid of the Euler sampler of :mod:`model.sampling` at N steps
(:func:`model.sampling.holocine_sigmas`), so a streamed student equals its training rollout.
Per chunk (:class:`model.causal.ChunkLayout`)::

    x = ε_chunk
    for k = 0 … exit:  v = student.forward_chunk(x, 1000·σ_k, cache)     cache read only
                       x̂0 = x − σ_k·v                                    the chunk's output if k = exit
                       x ← x + (σ_{k+1} − σ_k)·v                          Euler (deterministic)
    student.forward_chunk(x̂0, 0, cache, write_cache=True)                 no grad: the chunk's K/V

Decisions (ours): the step to the next level is Euler's (the flow's own ε estimate), not
Self-Forcing's re-noising with fresh noise, so that the project's Euler sampler streams the
student unchanged; the rollout exits at one step ``exit`` (drawn per rollout, the same for all
chunks, as Self-Forcing's ``exit_flags``), and with ``exit < N − 1`` a chunk's output is the
x̂0 prediction at that step; gradients flow through the exit step only (``exit_step``, as
Self-Forcing) or through all steps up to it (``all_steps``). The clean pass and therefore
the cache never carry gradients: later chunks see earlier chunks as constants.
"""

from __future__ import annotations

import torch

from multishot.distill.prompts import PromptConditioning
from multishot.model.causal import CausalConfig, KVCache


def student_sigmas(timesteps: list[float], shift: float) -> list[float]:
    """Noise levels of the student's timesteps after the shift, then a final 0 (module
    docstring): ``[σ_0, …, σ_{N−1}, 0]``."""
    out = []
    for t in timesteps:
        s = t / 1000.0
        out.append(shift * s / (1 + (shift - 1) * s))
    return out + [0.0]


def rollout(student, cond: PromptConditioning, causal: CausalConfig, noise: torch.Tensor,
            sigmas: list[float], exit_step: int | None = None,
            gradient: str | None = None) -> torch.Tensor:
    """Generate one video chunk by chunk with the KV cache.

    Args:
        student: the causal ``WanModel`` (FSDP-wrapped or not; ``forward_chunk``).
        cond: the prompt (context, per-frame text mask, chunk layout).
        causal: the student's causal config.
        noise: ``ε`` ``[1, C, F_lat, H_lat, W_lat]`` float32 for every latent frame.
        sigmas: :func:`student_sigmas`, ``N + 1`` levels.
        exit_step: the step whose x̂0 is each chunk's output, ``0 … N − 1``; None: ``N − 1``
            (the full sampler: the inference rollout).
        gradient: None (no gradient), ``"exit_step"`` or ``"all_steps"`` (module docstring).
    Returns:
        the generated clean latents ``[1, C, F_lat, H_lat, W_lat]`` float32 (with gradient
        through the student when ``gradient`` is set).
    Raises:
        ValueError: ``exit_step`` out of range.
    """
    n = len(sigmas) - 1
    exit_step = n - 1 if exit_step is None else exit_step
    if not 0 <= exit_step < n:
        raise ValueError(f"exit step {exit_step} outside the student's {n} steps")
    cache = KVCache.empty(student.config.num_layers)
    outputs = []
    for i, (start, end) in enumerate(zip(cond.chunks.starts, cond.chunks.ends)):
        x = noise[:, :, start:end].float()
        context, mask = cond.chunk_context(i), cond.chunk_mask(i)
        for k in range(exit_step + 1):
            grad = gradient == "all_steps" or (gradient == "exit_step" and k == exit_step)
            with torch.set_grad_enabled(grad):
                t = torch.full((1,), 1000.0 * sigmas[k], device=x.device)
                v = student.forward_chunk(x, t, context, cache, i, causal, mask).float()
                if k == exit_step:
                    x0 = x - sigmas[k] * v
                else:
                    x = x + (sigmas[k + 1] - sigmas[k]) * v
        with torch.no_grad():
            student.forward_chunk(x0.detach(), torch.zeros(1, device=x.device), context, cache, i,
                                  causal, mask, write_cache=True)
        outputs.append(x0)
    return torch.cat(outputs, dim=2)
