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
    """One prompt on the device: the student's text per chunk, the teacher's per video.

    The student streams: chunk ``i`` of shot ``s`` sees the UMT5 states of the prompt of the
    global caption and shots ``0 … s`` (the future is unknown while streaming) through the
    window of the global caption and shot ``s``'s caption, exactly as
    :class:`generate.stream.StreamingGenerator` conditions it. The teacher and the critic
    score the whole video by teacher forcing, as the causal base was tuned: the whole prompt,
    its shot layout and every shot's window (:meth:`video_mask`).

    ``shot_context[s]``: ``[1, L_s, text_dim]``; ``shot_spans[s]``: the window
    (``TextSpans`` of the global caption and shot ``s``) or None (unmasked);
    ``chunk_shot[i]``: shot of chunk ``i``; ``context``: the whole prompt's states
    ``[1, L, text_dim]``; ``negative``: the unconditional prompt's ``[1, L_neg, text_dim]``;
    ``layout``: the shot layout of the ``F_lat`` latent frames; ``spans``: ``[TextSpans]`` of
    the whole prompt or None; ``chunks``: the student's chunk layout.
    """

    shot_context: list[torch.Tensor]
    shot_spans: list[TextSpans | None]
    chunk_shot: list[int]
    context: torch.Tensor
    negative: torch.Tensor
    layout: ShotLayout
    spans: list[TextSpans | None] | None
    chunks: ChunkLayout
    model: object = None

    def video_mask(self) -> torch.Tensor | None:
        """The teacher's window cross-attention over the whole video, per latent frame
        ``[1, F_lat, text_len]`` bool (every shot's window in the whole prompt), or None
        (unmasked)."""
        if self.spans is None:
            return None
        return self.model.frame_text_mask(self.layout, self.spans)

    def chunk_context(self, index: int) -> torch.Tensor:
        """The student's text states for chunk ``index``, ``[1, L_s, text_dim]``."""
        return self.shot_context[self.chunk_shot[index]]

    def chunk_mask(self, index: int) -> torch.Tensor | None:
        """The student's window cross-attention of chunk ``index``'s frames,
        ``[1, f, text_len]`` bool, or None (unmasked)."""
        spans = self.shot_spans[self.chunk_shot[index]]
        if spans is None:
            return None
        f = self.chunks.ends[index] - self.chunks.starts[index]
        layout = ShotLayout.from_shot_starts([[0]], f, self.layout.tokens_per_frame,
                                             self.layout.frame_shot.device)
        return self.model.frame_text_mask(layout, [spans])


def encode_prompt(prompt: DistillPrompt, encoders, model, chunk_latent_frames: int,
                  tokens_per_frame: int, negative_prompt: str, window: bool,
                  device: torch.device) -> PromptConditioning:
    """The conditioning of ``prompt`` (:class:`PromptConditioning`).

    Args:
        encoders: :class:`model.encoders.FrozenEncoders` with a text encoder.
        model: a ``WanModel`` (its ``frame_text_mask`` and ``config.text_len``).
        tokens_per_frame: ``h·w`` tokens of one latent frame after patching.
        window: HoloCine's window cross-attention; a prompt that lost shot captions to
            ``text_len`` is unmasked.
    """
    text_len = model.config.text_len
    captions = [caption for caption, _ in prompt.shots]
    texts = [build_prompt(prompt.global_caption, captions[:s + 1]) for s in range(len(captions))]
    states = encoders.encode_prompts(texts + [negative_prompt], text_len)
    shot_spans: list[TextSpans | None] = [None] * len(texts)
    spans = None
    if window:
        for s, text in enumerate(texts):
            full = encoders.text_spans([text], [s + 1], text_len)[0][0]
            shot_spans[s] = full if full.global_span is None else \
                TextSpans(full.global_span, (full.shot_spans[s],))
        spans = [encoders.text_spans([texts[-1]], [len(texts)], text_len)[0][0]]
    frames = prompt.num_latent_frames(chunk_latent_frames)
    layout = ShotLayout.from_shot_starts([prompt.shot_starts(chunk_latent_frames)], frames,
                                         tokens_per_frame, device)
    chunk_shot = [0] + [s for s, (_, n) in enumerate(prompt.shots) for _ in range(n)]
    return PromptConditioning([x[None].to(device) for x in states[:-1]], shot_spans, chunk_shot,
                              states[-2][None].to(device), states[-1][None].to(device), layout,
                              spans, ChunkLayout.build(frames, chunk_latent_frames), model)
