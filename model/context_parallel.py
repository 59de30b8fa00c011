"""Ulysses context parallelism: one sample's tokens split over the ``cp`` ranks of a group.

DeepSpeed-Ulysses (Jacobs et al., arXiv 2309.14509, §3): every rank holds ``L / cp`` tokens of
the sample for everything that works token by token (patch embedding, norms, modulation, RoPE,
window cross-attention, FFN, head). Around self-attention, one all-to-all turns the sequence
shards of ``q, k, v`` into head shards — each rank then holds the **whole** sequence for
``heads / cp`` heads and runs the attention of :mod:`model.attention` unchanged (dense or
HoloCine's sparse inter-shot pattern, any backend) — and a second all-to-all turns the output
back into sequence shards. The layout follows diffusers' / FastVideo's Ulysses attention
(``[B, L, H, D]``, sequence chunk ``r`` on rank ``r`` of the group); the code is ours.

A sequence of ``L`` tokens that ``cp`` does not divide is padded at its end to
``L_pad = cp · ceil(L / cp)``. Pad tokens never reach the attention kernel (each rank cuts the
gathered sequence back to ``L`` before it, and pads the output with zeros after) and never
reach the loss (:meth:`SequenceShard.gather` drops them), so they change nothing.

Gradients: :meth:`SequenceShard.gather` is an autograd all-gather whose backward is a
reduce-scatter (sum). Every rank of the group computes the same loss from the same gathered
output, so each rank's own slice receives ``cp ×`` its gradient, and each rank's parameter
gradients are ``cp ×`` the contribution of its tokens. FSDP2 sharding over all ``dp × cp``
ranks averages gradients over the ``dp · cp`` ranks (torchtitan's ``dp_shard_cp``), which
turns that into exactly the gradient of the mean loss over the ``dp`` samples.

The model knows nothing of this beyond one hook (:attr:`model.dit.WanModel.context_parallel`):
:func:`apply_context_parallel` sets it, ``WanModel.forward`` asks it for a
:class:`SequenceShard` of its sequence, shards its tokens, RoPE tables and window mask, passes
the shard to every block's self-attention call and gathers the head's output. Callers (the
trainer, the sampler) keep passing full inputs and receive the full output on every rank.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from torch import nn

#: ``attend(q, k, v)`` on ``[B, L, H, D]`` tensors → ``[B, L, H, D]``: the single-device kernel.
Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def check_heads(num_heads: int, degree: int) -> None:
    """Raise ValueError unless ``degree`` (``parallel.context``) divides ``num_heads``: Ulysses
    gives every rank ``num_heads / degree`` whole heads (5B: 24 heads, 14B: 40)."""
    if degree < 1 or num_heads % degree:
        raise ValueError(f"parallel.context {degree} must divide the model's {num_heads} "
                         f"attention heads (Ulysses splits heads over ranks; 5B has 24, 14B 40)")


@dataclass(frozen=True)
class ContextParallel:
    """Ulysses context parallelism over ``group`` (the ``cp`` dimension of the device mesh).

    Set on a model with :func:`apply_context_parallel`; the model calls :meth:`split` once
    per forward.
    """

    group: dist.ProcessGroup

    @property
    def degree(self) -> int:
        return dist.get_world_size(self.group)

    def split(self, seq_len: int) -> SequenceShard:
        """This rank's shard of a sequence of ``seq_len`` tokens (per sample)."""
        degree = self.degree
        chunk = math.ceil(seq_len / degree)
        return SequenceShard(self.group, degree, dist.get_rank(self.group), seq_len, chunk)


@dataclass(frozen=True, eq=False)
class SequenceShard:
    """One forward's split of ``seq_len`` tokens into ``degree`` chunks of ``chunk`` tokens (the
    last ones padded); this rank holds tokens ``[rank · chunk, (rank + 1) · chunk)``."""

    group: dist.ProcessGroup
    degree: int
    rank: int
    seq_len: int
    chunk: int

    @property
    def padded_len(self) -> int:
        """``degree · chunk``: the sequence with its end padding."""
        return self.degree * self.chunk

    def shard(self, x: torch.Tensor, dim: int = 1, pad_value: float | bool = 0) -> torch.Tensor:
        """This rank's slice of ``x`` along ``dim`` (``seq_len`` long there), padded with
        ``pad_value`` where it runs past the end: e.g. tokens ``[B, L, C]`` → ``[B, chunk, C]``,
        RoPE tables ``[L, 1, D/2]`` (``dim=0``) → ``[chunk, 1, D/2]``.

        Raises:
            ValueError: ``x`` is not ``seq_len`` long along ``dim``.
        """
        if x.shape[dim] != self.seq_len:
            raise ValueError(f"tensor {tuple(x.shape)} has {x.shape[dim]} tokens on dim {dim}, "
                             f"the shard {self.seq_len}")
        start = self.rank * self.chunk
        local = x.narrow(dim, min(start, self.seq_len), max(0, min(self.chunk, self.seq_len - start)))
        missing = self.chunk - local.shape[dim]
        if missing:
            pad = list(x.shape)
            pad[dim] = missing
            local = torch.cat([local, x.new_full(pad, pad_value)], dim)
        return local

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """All ranks' slices ``[B, chunk, C]`` → the sequence ``[B, seq_len, C]`` on every rank,
        padding dropped (autograd: the backward reduce-scatters, module docstring)."""
        full = funcol.all_gather_single_autograd(x.transpose(0, 1).contiguous(), 0, self.group)
        return funcol.wait_tensor(full)[:self.seq_len].transpose(0, 1)

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attend: Attend,
                  ) -> torch.Tensor:
        """Ulysses attention: ``q, k, v`` ``[B, chunk, H, D]`` (this rank's tokens, all heads) →
        ``[B, chunk, H, D]``, running ``attend`` on ``[B, seq_len, H / degree, D]`` (all tokens,
        this rank's heads) in between. One all-to-all carries ``q, k, v`` together."""
        b = q.shape[0]
        qkv = self._to_heads(torch.cat([q, k, v]))[:, :self.seq_len]    # [3B, L, H/cp, D]
        out = attend(qkv[:b], qkv[b:2 * b], qkv[2 * b:])                 # [B, L, H/cp, D]
        out = torch.cat([out, out.new_zeros(b, self.padded_len - self.seq_len, *out.shape[2:])], 1)
        return self._to_sequence(out)

    def _to_heads(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, chunk, H, D]`` → ``[N, padded_len, H / degree, D]``: send head group ``j`` to
        rank ``j``, receive sequence chunk ``i`` from rank ``i``."""
        n, chunk, heads, d = x.shape
        x = x.reshape(n, chunk, self.degree, heads // self.degree, d).permute(2, 0, 1, 3, 4)
        y = self._all_to_all(x)                                # [cp (chunk i), N, chunk, H/cp, D]
        return y.permute(1, 0, 2, 3, 4).reshape(n, self.padded_len, heads // self.degree, d)

    def _to_sequence(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, padded_len, H / degree, D]`` → ``[N, chunk, H, D]`` (inverse of :meth:`_to_heads`)."""
        n, _, heads_local, d = x.shape
        x = x.reshape(n, self.degree, self.chunk, heads_local, d).transpose(0, 1)
        y = self._all_to_all(x)                                # [cp (head group j), N, chunk, H/cp, D]
        return y.permute(1, 2, 0, 3, 4).reshape(n, self.chunk, self.degree * heads_local, d)

    def _all_to_all(self, x: torch.Tensor) -> torch.Tensor:
        """Equal-split all-to-all along dim 0 (``degree`` rows), differentiable."""
        out = funcol.all_to_all_single_autograd(x.contiguous(), None, None, self.group)
        return funcol.wait_tensor(out)


def apply_context_parallel(model: nn.Module, group: dist.ProcessGroup | None) -> None:
    """Split every forward of ``model`` (a :class:`model.dit.WanModel`, FSDP-wrapped or not)
    over the ranks of ``group`` (Ulysses, module docstring); ``None`` or a group of one rank
    leaves the model single-device. Every rank of the group must call the model with the same
    inputs (same sample, noise and timestep); each gets the full output.

    Raises:
        ValueError: the group's size does not divide the model's heads.
    """
    if group is None or dist.get_world_size(group) == 1:
        model.context_parallel = None
        return
    check_heads(model.config.num_heads, dist.get_world_size(group))
    model.context_parallel = ContextParallel(group)


def join_torchrun(device: torch.device) -> tuple[dist.ProcessGroup | None, torch.device]:
    """For a command that ``torchrun --nproc-per-node N`` started (``WORLD_SIZE`` > 1, e.g.
    ``multishot generate``): join the default process group (NCCL on CUDA, gloo on CPU) and
    return it with this rank's device (``cuda:LOCAL_RANK`` for a CUDA ``device``). A plain
    process gets ``(None, device)`` back.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None, device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.group.WORLD, device


@contextlib.contextmanager
def context_parallel(model: nn.Module, group: dist.ProcessGroup | None) -> Iterator[nn.Module]:
    """``with context_parallel(model, group):`` — :func:`apply_context_parallel` for the block,
    then the model is single-device again (for a sampler: ``torchrun --nproc-per-node N``,
    ``group=None`` → the default group, i.e. all N ranks share one sample).

    Raises:
        ValueError: the group's size does not divide the model's heads.
    """
    previous = getattr(model, "context_parallel", None)
    apply_context_parallel(model, group if group is not None else dist.group.WORLD)
    try:
        yield model
    finally:
        model.context_parallel = previous
