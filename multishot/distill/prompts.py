"""Training prompts of a distillation run and their conditioning on the device.

DMD needs no videos, only prompts (Self-Forcing trains on a prompt list). A prompt is a global
caption and shots, each shot a caption and a length in chunks; the video it describes has
``1 + c·Σ chunks`` latent frames (``c = chunk_latent_frames``): chunk 0 is the lone first
latent frame (Wan's VAE encodes the first video frame alone) and opens shot 0, as in
:mod:`generate.stream`, so every cut falls on a chunk boundary.

File format (one JSON object a line; blank lines and ``#`` lines skipped)::

    {"global_caption": "a kitchen at night.", "shots": [{"caption": "a cook", "chunks": 2},
                                                       {"caption": "a pan", "chunks": 1}]}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from multishot.dataset.record import build_prompt
from multishot.model.causal import ChunkLayout
from multishot.model.layout import ShotLayout
from multishot.model.prompt_spans import TextSpans


@dataclass(frozen=True)
class DistillPrompt:
    """One training prompt: ``global_caption`` and ``shots`` as ``(caption, chunks)`` pairs."""

    global_caption: str
    shots: tuple[tuple[str, int], ...]

    @property
    def text(self) -> str:
        """The HoloCine prompt string of the whole video (:func:`dataset.record.build_prompt`)."""
        return build_prompt(self.global_caption, [caption for caption, _ in self.shots])

    def num_latent_frames(self, chunk_latent_frames: int) -> int:
        """``1 + c·Σ chunks``: chunk 0 is the lone first latent frame."""
        return 1 + chunk_latent_frames * sum(n for _, n in self.shots)

    def shot_starts(self, chunk_latent_frames: int) -> list[int]:
        """First latent frame of every shot (shot 0 also owns chunk 0)."""
        starts, frame = [0], 1
        for _, n in self.shots[:-1]:
            frame += n * chunk_latent_frames
            starts.append(frame)
        return starts


def read_prompts(path: str | Path) -> list[DistillPrompt]:
    """Parse a prompt file (module docstring).

    Raises:
        ValueError: a line is not such an object (the message names the file and line), or the
            file holds no prompt.
        OSError: the file is unreadable.
    """
    prompts = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            obj = json.loads(line)
            shots = tuple((str(s["caption"]), int(s["chunks"])) for s in obj["shots"])
            caption = str(obj["global_caption"])
            if not shots or not caption.strip() or any(n < 1 or not c.strip() for c, n in shots):
                raise ValueError("needs a global caption and shots of >= 1 chunk with captions")
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path}:{number}: not a distillation prompt ({err})") from None
        prompts.append(DistillPrompt(caption, shots))
    if not prompts:
        raise ValueError(f"{path}: no prompt")
    return prompts


@dataclass
class PromptConditioning:
    """One prompt on the device, for the student's chunks and the teacher's whole video.

    ``context``: UMT5 states ``[1, L, text_dim]``; ``negative``: the unconditional prompt's
    ``[1, L_neg, text_dim]``; ``layout``: the shot layout of the ``F_lat`` latent frames;
    ``spans``: window cross-attention spans (``[TextSpans]``) or None (unmasked);
    ``frame_mask``: the student's per-latent-frame mask ``[1, F_lat, text_len]`` bool or None;
    ``chunks``: the student's chunk layout.
    """

    context: torch.Tensor
    negative: torch.Tensor
    layout: ShotLayout
    spans: list[TextSpans | None] | None
    frame_mask: torch.Tensor | None
    chunks: ChunkLayout

    def chunk_mask(self, index: int) -> torch.Tensor | None:
        """Rows of :attr:`frame_mask` of chunk ``index``, ``[1, f, text_len]`` (or None)."""
        if self.frame_mask is None:
            return None
        return self.frame_mask[:, self.chunks.starts[index]:self.chunks.ends[index]]


def encode_prompt(prompt: DistillPrompt, encoders, model, chunk_latent_frames: int,
                  tokens_per_frame: int, negative_prompt: str, window: bool,
                  device: torch.device) -> PromptConditioning:
    """The conditioning of ``prompt``.

    Args:
        encoders: :class:`trainer.encoders.FrozenEncoders` with a text encoder.
        model: a ``WanModel`` (its ``frame_text_mask`` and ``config.text_len``).
        tokens_per_frame: ``h·w`` tokens of one latent frame after patching.
        window: HoloCine's window cross-attention (each frame sees the global caption and its
            shot's caption); a prompt that lost shot captions to ``text_len`` is unmasked.
    """
    text_len = model.config.text_len
    context, negative = encoders.encode_prompts([prompt.text, negative_prompt], text_len)
    frames = prompt.num_latent_frames(chunk_latent_frames)
    layout = ShotLayout.from_shot_starts([prompt.shot_starts(chunk_latent_frames)], frames,
                                         tokens_per_frame, device)
    spans = frame_mask = None
    if window:
        spans = [encoders.text_spans([prompt.text], [len(prompt.shots)], text_len)[0][0]]
        frame_mask = model.frame_text_mask(layout, spans, text_len)
    return PromptConditioning(context[None].to(device), negative[None].to(device), layout,
                              spans, frame_mask, ChunkLayout.build(frames, chunk_latent_frames))
