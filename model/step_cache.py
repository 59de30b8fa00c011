"""First-block cache: skip the DiT's remaining blocks on denoising steps that barely change.

The step cache users know from diffusers (``hooks/first_block_cache.py``, ``FirstBlockCache``)
and ParaAttention (``first_block_cache``), after TeaCache's observation that the model's output
changes little between some consecutive steps and that the first block's change predicts it:

    r₁ = block₁(x) − x                                  the first block's residual, every call
    Δ  = mean|r₁ − r₁'| / mean|r₁'|                      r₁' of the last COMPUTED call
    Δ < threshold → out = block₁(x) + R'                 R' the remaining blocks' cached residual
    otherwise     → out = blocks₂…ₙ(block₁(x)); R' = out − block₁(x); r₁' = r₁

(diffusers computes when ``Δ > threshold``; here a step is skipped only when ``Δ < threshold``,
so threshold 0 never skips and gives the uncached outputs exactly). The residuals are the
tokens' (before the head); a CFG batch of two is one call, decided as a whole. The states are
kept per call of a denoising step (:meth:`FirstBlockCache.new_step` restarts the count), so with
``cfg_batch: false`` the conditional and the unconditional pass each compare with their own
previous call. The output is NOT that of the sampler without the cache (unless nothing is
skipped): its quality cost is measured, not assumed (issue 35).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


@dataclass
class _Slot:
    """The cache of one call position within a step."""

    first_residual: torch.Tensor | None = None
    rest_residual: torch.Tensor | None = None


class FirstBlockCache:
    """The first-block cache of one DiT (module docstring).

    Args:
        threshold: Δ under which the remaining blocks are skipped (>= 0).
    ``computed`` / ``reused``: the calls that ran all blocks / reused the cached residual;
    ``step_reused``: whether a call of the current step reused it.

    Raises:
        ValueError: a negative threshold.
    """

    def __init__(self, threshold: float):
        if threshold < 0:
            raise ValueError(f"step cache threshold must be >= 0, got {threshold}")
        self.threshold = threshold
        self.slots: list[_Slot] = []
        self.call = 0
        self.computed = self.reused = 0
        self.step_reused = False

    def new_step(self) -> None:
        """A new denoising step begins: its calls compare with the previous steps' calls in
        the same position."""
        self.call = 0
        self.step_reused = False

    def reset(self) -> None:
        """Forget the cached residuals (a new sample)."""
        self.slots.clear()
        self.new_step()

    def run(self, blocks: Sequence[torch.nn.Module], tokens: torch.Tensor,
            call_block: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``tokens`` ``[B, L, dim]`` through ``blocks`` (``call_block(block, tokens)`` runs one),
        or through the first and the cached residual of the rest; ``[B, L, dim]``."""
        if self.call == len(self.slots):
            self.slots.append(_Slot())
        slot = self.slots[self.call]
        self.call += 1
        first = call_block(blocks[0], tokens)
        residual = first - tokens
        prev = slot.first_residual
        if prev is not None and prev.shape == residual.shape and self.threshold > 0:
            change = ((residual.float() - prev.float()).abs().mean()
                      / prev.float().abs().mean()).item()
            if change < self.threshold:
                self.reused += 1
                self.step_reused = True
                return first + slot.rest_residual
        out = first
        for block in blocks[1:]:
            out = call_block(block, out)
        slot.first_residual, slot.rest_residual = residual, out - first
        self.computed += 1
        return out


def apply_step_cache(model: torch.nn.Module, threshold: float) -> FirstBlockCache:
    """Give ``model`` (a :class:`model.dit.WanModel`) a :class:`FirstBlockCache`, used by its
    :meth:`~model.dit.WanModel.forward` (the bidirectional sampler's; the causal paths ignore
    it); returns it."""
    model.step_cache = FirstBlockCache(threshold)
    return model.step_cache
