"""ODE initialisation of the few-step student (CausVid's and Self-Forcing's ODE regression;
CausalCine §3.4): the causal base's noise → sample trajectories at the student's noise levels
on ground-truth history, their file format, and the regression loss.

**Trajectories on ground-truth history** (CausalCine §3.4 conditions the ODE pairs on
ground-truth history, not on the base's own earlier chunks). For a footage sample
(:mod:`distill.footage`: its real latents ``x_gt`` and its prompt with shots on chunks) the
causal base generates every chunk from noise with its KV cache (as :mod:`generate.stream`
does): per chunk the Euler sampler of :mod:`model.sampling` at ``teacher_steps`` steps with CFG
(the conditional and the unconditional pass each keep their own cache), then the clean pass
writes the **ground-truth** chunk ``x_gt[j]`` into the cache, so chunk ``j``'s trajectory is
the base's given the real chunks ``0 … j−1``. Its grid holds every student level
(``teacher_steps`` is a multiple of the student's N steps), and the trajectory records the
latents at each: ``states[k]`` at ``σ_k`` (``k < N``) and the sample ``states[N]``
(``σ = 0``), ``[N + 1, C, F_lat, H_lat, W_lat]``.

**File** (this module owns it): one safetensors file per rank, tensor ``"{i}"`` the states of
footage sample ``i``, metadata ``{"format": "multishot-ode-trajectories", "version": "2",
"sigmas": JSON list}`` (version 1 held trajectories on the base's own history).

**Regression.** The student (initialised from the base) predicts x0 from the trajectory's
states chunk by chunk against the KV cache of the ground-truth chunks, the history the
trajectory was made on: chunk ``j`` at ``states[k_j]`` (``k_j`` drawn per chunk) and timestep
``1000·σ_{k_j}``, ``x̂0 = x − σ·v`` regressed on ``states[N]`` (MSE); then ``x_gt[j]`` enters
the cache. This equals one parallel teacher-forcing forward with ``x_gt`` as the clean copies
(``forward_chunk`` = ``forward_teacher_forcing`` chunk by chunk, :mod:`model.causal`), but keeps
the streaming text: each chunk sees the prompt of the shots so far
(:class:`distill.prompts.PromptConditioning`), which one teacher-forced forward over a single
context cannot.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from multishot.distill.prompts import PromptConditioning
from multishot.model.sampling import SamplingConfig, make_scheduler
from multishot.model.causal import CausalConfig, KVCache

FORMAT = "multishot-ode-trajectories"
VERSION = "2"


@torch.no_grad()
def ode_trajectory(base, cond: PromptConditioning, causal: CausalConfig, noise: torch.Tensor,
                   history: torch.Tensor, sigmas: list[float], teacher_steps: int, shift: float,
                   guidance: float) -> torch.Tensor:
    """One trajectory of the causal base on ground-truth history (module docstring).

    Args:
        base: the causal ``WanModel`` (``forward_chunk``).
        noise: ``ε`` ``[1, C, F_lat, H_lat, W_lat]`` float32.
        history: the footage's latents ``x_gt``, like ``noise``: chunk ``j``'s clean pass
            writes ``history``'s chunk ``j`` into the caches.
        sigmas: the student's levels :func:`distill.rollout.student_sigmas` (``N + 1``).
        teacher_steps: Euler steps, a multiple of ``N``; shift, guidance: the sampler's.
    Returns:
        ``states`` ``[N + 1, C, F_lat, H_lat, W_lat]`` float32.
    Raises:
        ValueError: a student level is not on the sampler's grid.
    """
    sampling = SamplingConfig(sampler="euler", steps=teacher_steps, shift=shift,
                              cfg_scale=guidance)
    grid = [float(s) for s in make_scheduler(sampling, noise.device).sigmas]
    record = []
    for s in sigmas[:-1]:
        match = [i for i, g in enumerate(grid) if abs(g - s) < 1e-5]
        if not match:
            raise ValueError(f"student level {s:.6f} is not on the {teacher_steps}-step grid")
        record.append(match[0])
    caches = [KVCache.empty(base.config.num_layers) for _ in range(2 if guidance != 1 else 1)]
    states = [[] for _ in range(len(sigmas))]
    for i, (start, end) in enumerate(zip(cond.chunks.starts, cond.chunks.ends)):
        contexts, masks = [cond.chunk_context(i), cond.negative], [cond.chunk_mask(i), None]
        scheduler = make_scheduler(sampling, noise.device)
        x = noise[:, :, start:end].float()
        for step, t in enumerate(scheduler.timesteps):
            if step in record:
                states[record.index(step)].append(x)
            timestep = t.reshape(1).to(x.device, torch.float32)
            v = [base.forward_chunk(x, timestep, contexts[r], caches[r], i, causal,
                                    masks[r]).float() for r in range(len(caches))]
            v = v[0] if len(v) == 1 else v[1] + guidance * (v[0] - v[1])
            x = scheduler.step(v, t, x, return_dict=False)[0].float()
        states[-1].append(x)
        clean = history[:, :, start:end].float()
        for r in range(len(caches)):
            base.forward_chunk(clean, torch.zeros(1, device=x.device), contexts[r], caches[r],
                               i, causal, masks[r], write_cache=True)
    return torch.cat([torch.cat(chunks, dim=2) for chunks in states])


def write_trajectories(path: str | Path, trajectories: dict[int, torch.Tensor],
                       sigmas: list[float]) -> Path:
    """Write ``trajectories`` (footage index → ``[N + 1, C, F, H, W]``) as one file (module
    docstring), atomically; returns its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({str(i): t.detach().cpu().contiguous() for i, t in trajectories.items()},
              str(tmp), metadata={"format": FORMAT, "version": VERSION,
                                   "sigmas": json.dumps(sigmas)})
    tmp.replace(path)  # a run killed while writing leaves no half file to resume from
    return path


def read_trajectories(path: str | Path,
                      sigmas: list[float] | None = None) -> dict[int, torch.Tensor]:
    """Read a trajectory file (footage index → ``[N + 1, C, F, H, W]`` float32, CPU).

    Raises:
        ValueError: not such a file, or made at other noise levels than ``sigmas``.
    """
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ValueError(f"{path}: not a {FORMAT} v{VERSION} file")
    if sigmas is not None and json.loads(meta["sigmas"]) != sigmas:
        raise ValueError(f"{path}: trajectories at levels {meta['sigmas']}, not {sigmas}")
    return {int(i): t for i, t in load_file(str(path)).items()}


def ode_regression_loss(student, states: torch.Tensor, history: torch.Tensor,
                        cond: PromptConditioning, causal: CausalConfig, sigmas: list[float],
                        levels: list[int]) -> torch.Tensor:
    """The student's x0 regression on one trajectory (module docstring), a scalar.

    Args:
        states: ``[N + 1, C, F, H, W]`` on the device.
        history: the ground-truth latents ``[1, C, F, H, W]`` the trajectory was made on; their
            chunks enter the student's cache.
        levels: the student level ``k_j`` of every chunk (``0 … N − 1``).
    """
    n = len(sigmas) - 1
    cache = KVCache.empty(student.config.num_layers)
    predicted = []
    for i, ((start, end), k) in enumerate(zip(zip(cond.chunks.starts, cond.chunks.ends), levels)):
        context, mask = cond.chunk_context(i), cond.chunk_mask(i)
        x = states[k:k + 1, :, start:end]
        t = torch.full((1,), 1000.0 * sigmas[k], device=x.device)
        v = student.forward_chunk(x, t, context, cache, i, causal, mask).float()
        predicted.append(x - sigmas[k] * v)
        with torch.no_grad():  # the ground-truth chunk enters the cache
            student.forward_chunk(history[:, :, start:end].float(),
                                  torch.zeros(1, device=x.device), context, cache, i, causal,
                                  mask, write_cache=True)
    return F.mse_loss(torch.cat(predicted, dim=2), states[n:n + 1])
