"""Shot layout of a batch: which latent frames belong to which shot, and the packed
sequences the sparse inter-shot self-attention runs on.

HoloCine (``diffsynth/models/wan_video_dit.py: attention_per_batch_with_shots``) attends, for
every shot ``i``, from the shot's queries to the keys ``[K_i ; K_g]``: the shot's own tokens
followed by the *global bank* ``K_g``, the first latent frame (h·w tokens, after RoPE) of every
shot of the sample, in shot order. The own first frame is therefore in the keys twice; we keep
that (see :mod:`model.attention`). Everything here is computed once per batch on the host from
the cut frames, so the forward pass needs no host sync: index tensors live on the device,
offsets and maxima are Python ints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from multishot.dataset.record import VAE_TEMPORAL_STRIDE, latent_cut_frame, num_latent_frames


def enforce_4t_plus_1(frame: int) -> int:
    """The nearest pixel frame of the form ``4t + 1`` (HoloCine's ``enforce_4t_plus_1``;
    Python's ``round``, so ties go to the even ``t``)."""
    return VAE_TEMPORAL_STRIDE * round((frame - 1) / VAE_TEMPORAL_STRIDE) + 1


def latent_shot_starts(num_frames: int, cut_frames: list[int]) -> list[int]:
    """First latent frame of every shot, from pixel-frame cuts.

    Cuts are forced to ``4t + 1`` and mapped with :func:`dataset.record.latent_cut_frame`;
    cuts at frame 0 (no cut), cuts past the end and duplicates are dropped, as
    HoloCine's ``WanVideoUnit_ShotEmbedder`` does. E.g. 241 frames with cuts
    ``[37, 73, 113, 169, 205]`` → ``[0, 10, 19, 29, 43, 52]`` (61 latent frames).

    Raises:
        ValueError: ``num_frames`` is not ``4k + 1``.
    """
    f_lat = num_latent_frames(num_frames)
    latent = {latent_cut_frame(enforce_4t_plus_1(f)) for f in cut_frames if f >= 1}
    return [0] + sorted(c for c in latent if 0 < c < f_lat)


@dataclass(frozen=True, eq=False)
class ShotLayout:
    """Shots of every sample of a batch, and the packed index the sparse attention needs.

    Token order is Wan's ``(latent frame, h, w)``; a sample has ``L = F_lat · tokens_per_frame``
    tokens. Build with :meth:`from_cut_frames` (one sample) or :meth:`from_shot_starts`, and
    :meth:`stack` samples of equal ``L`` into a batch.

    Host fields (Python ints, no device sync to read):
        ``num_latent_frames``, ``tokens_per_frame``, ``shot_starts`` (per sample, first latent
        frame of each shot), ``q_offsets`` (cumulative shot lengths over the flattened batch,
        ``B·L`` tokens; ``cu_seqlens_q``), ``kv_offsets`` (cumulative ``len(shot) + len(bank)``;
        ``cu_seqlens_k``), ``max_q`` / ``max_kv`` (longest shot / packed KV segment).
    Device tensors:
        ``frame_shot`` ``[B, F_lat]`` int64, shot index of every latent frame;
        ``kv_index`` ``[sum_kv]`` int64, for every packed key its token in the flattened
        ``[B·L]`` sequence (``[shot_i tokens ; bank of its sample]`` per shot);
        ``cu_seqlens_q`` / ``cu_seqlens_k`` ``[num_shots_total + 1]`` int32;
        ``q_segment`` ``[B·L]`` / ``kv_segment`` ``[sum_kv]`` int32: the packed segment (global
        shot number) of every query / key, for FlexAttention's document mask;
        ``own_rows`` ``[B·L]`` int64, the packed row of every token's own-shot copy.
    Per sample (for the backward of the packing, :func:`model.attention.pack_kv`):
        ``bank_tokens`` (device ``[G_b]`` int64, the bank's tokens in the flattened batch) and
        ``bank_row_ranges`` (host: the packed row range of the bank copy after each shot).
    """

    num_latent_frames: int
    tokens_per_frame: int
    shot_starts: tuple[tuple[int, ...], ...]
    q_offsets: tuple[int, ...]
    kv_offsets: tuple[int, ...]
    max_q: int
    max_kv: int
    frame_shot: torch.Tensor
    kv_index: torch.Tensor
    cu_seqlens_q: torch.Tensor
    cu_seqlens_k: torch.Tensor
    q_segment: torch.Tensor
    kv_segment: torch.Tensor
    own_rows: torch.Tensor
    bank_tokens: tuple[torch.Tensor, ...]
    bank_row_ranges: tuple[tuple[tuple[int, int], ...], ...]
    #: Per-backend objects derived from the layout (FlexAttention BlockMask), built on first use.
    cache: dict[Any, Any] = field(default_factory=dict, repr=False)

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_cut_frames(cls, num_frames: int, cut_frames: list[int], tokens_per_frame: int,
                        device: torch.device | str | None = None) -> ShotLayout:
        """Layout of one sample from its pixel-frame cuts (``SampleRecord.cut_frames``).

        Args:
            num_frames: pixel frames, ``4k + 1``.
            cut_frames: pixel frame where each shot after the first starts.
            tokens_per_frame: tokens per latent frame after patching, ``(H/2)·(W/2)`` in latent
                pixels (1560 at 480×832 with the Wan2.1 VAE).
        Raises:
            ValueError: ``num_frames`` is not ``4k + 1`` or ``tokens_per_frame < 1``.
        """
        return cls.from_shot_starts([latent_shot_starts(num_frames, cut_frames)],
                                    num_latent_frames(num_frames), tokens_per_frame, device)

    @classmethod
    def from_shot_starts(cls, shot_starts: list[list[int]], num_latent_frames: int,
                         tokens_per_frame: int, device: torch.device | str | None = None,
                         ) -> ShotLayout:
        """Layout of a batch from each sample's shot start latent frames (first one 0).

        Raises:
            ValueError: a list does not start at 0, is not strictly increasing, or reaches
                ``num_latent_frames``; ``tokens_per_frame < 1``.
        """
        if tokens_per_frame < 1:
            raise ValueError(f"tokens_per_frame must be >= 1, got {tokens_per_frame}")
        hw, f_lat = tokens_per_frame, num_latent_frames
        seq_len = f_lat * hw
        frame_shot, kv_index, q_seg, kv_seg, own_rows = [], [], [], [], []
        bank_tokens, bank_ranges = [], []
        q_off, kv_off = [0], [0]
        segment = 0
        for b, starts in enumerate(shot_starts):
            starts = list(starts)
            if not starts or starts[0] != 0 or any(a >= c for a, c in zip(starts, starts[1:])) \
                    or starts[-1] >= f_lat:
                raise ValueError(f"shot starts {starts} must rise strictly from 0 below {f_lat}")
            bounds = starts + [f_lat]
            base = b * seq_len
            # The global bank: first latent frame of every shot, in shot order.
            bank = torch.cat([torch.arange(s * hw, s * hw + hw) for s in starts]) + base
            shots = torch.zeros(f_lat, dtype=torch.long)
            ranges = []
            for i, (s, e) in enumerate(zip(bounds, bounds[1:])):
                shots[s:e] = i
                n_q = (e - s) * hw
                kv_index += [torch.arange(s * hw, e * hw) + base, bank]
                own_rows.append(torch.arange(kv_off[-1], kv_off[-1] + n_q))
                ranges.append((kv_off[-1] + n_q, kv_off[-1] + n_q + bank.numel()))
                q_seg.append(torch.full((n_q,), segment, dtype=torch.int32))
                kv_seg.append(torch.full((n_q + bank.numel(),), segment, dtype=torch.int32))
                q_off.append(q_off[-1] + n_q)
                kv_off.append(kv_off[-1] + n_q + bank.numel())
                segment += 1
            frame_shot.append(shots)
            bank_tokens.append(bank.to(device))
            bank_ranges.append(tuple(ranges))
        q_lens = [b - a for a, b in zip(q_off, q_off[1:])]
        kv_lens = [b - a for a, b in zip(kv_off, kv_off[1:])]
        return cls(
            num_latent_frames=f_lat, tokens_per_frame=hw,
            shot_starts=tuple(tuple(s) for s in shot_starts),
            q_offsets=tuple(q_off), kv_offsets=tuple(kv_off),
            max_q=max(q_lens), max_kv=max(kv_lens),
            frame_shot=torch.stack(frame_shot).to(device),
            kv_index=torch.cat(kv_index).to(device),
            cu_seqlens_q=torch.tensor(q_off, dtype=torch.int32, device=device),
            cu_seqlens_k=torch.tensor(kv_off, dtype=torch.int32, device=device),
            q_segment=torch.cat(q_seg).to(device), kv_segment=torch.cat(kv_seg).to(device),
            own_rows=torch.cat(own_rows).to(device), bank_tokens=tuple(bank_tokens),
            bank_row_ranges=tuple(bank_ranges),
        )

    @classmethod
    def stack(cls, layouts: list[ShotLayout]) -> ShotLayout:
        """One batch layout from single-sample layouts of equal shape (same ``F_lat`` and
        tokens per frame; the shots may differ).

        Raises:
            ValueError: empty list or shapes differ.
        """
        if not layouts:
            raise ValueError("no layouts to stack")
        first = layouts[0]
        if any((lay.num_latent_frames, lay.tokens_per_frame) !=
               (first.num_latent_frames, first.tokens_per_frame) for lay in layouts):
            raise ValueError("stacked layouts need equal num_latent_frames and tokens_per_frame")
        return cls.from_shot_starts([list(s) for lay in layouts for s in lay.shot_starts],
                                    first.num_latent_frames, first.tokens_per_frame,
                                    first.frame_shot.device)

    # ---- derived quantities ---------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return len(self.shot_starts)

    @property
    def seq_len(self) -> int:
        """Tokens per sample, ``F_lat · tokens_per_frame``."""
        return self.num_latent_frames * self.tokens_per_frame

    @property
    def num_shots(self) -> int:
        """Shots over the whole batch (packed segments)."""
        return len(self.q_offsets) - 1

    def token_shot(self) -> torch.Tensor:
        """Shot index of every token, ``[B, L]`` int64 (on the layout's device)."""
        return self.frame_shot.repeat_interleave(self.tokens_per_frame, dim=1)

    def token_in_bank(self) -> torch.Tensor:
        """Whether every token is in its sample's global bank (the first latent frame of a
        shot), ``[B, L]`` bool (on the layout's device)."""
        first = torch.ones_like(self.frame_shot, dtype=torch.bool)
        first[:, 1:] = self.frame_shot[:, 1:] != self.frame_shot[:, :-1]
        return first.repeat_interleave(self.tokens_per_frame, dim=1)

    def attention_pairs(self) -> int:
        """Query-key pairs the sparse pattern computes over the batch, counting the duplicated
        own first frame: ``sum_i N_i · (N_i + G)`` (for FLOP counts)."""
        return sum((q1 - q0) * (k1 - k0) for q0, q1, k0, k1 in
                   zip(self.q_offsets, self.q_offsets[1:], self.kv_offsets, self.kv_offsets[1:]))
