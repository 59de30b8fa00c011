"""Window cross-attention spans: which text tokens each shot's video tokens may attend to.

Follows HoloCine's released inference code (``diffsynth/prompters/wan_prompter.py:
WanPrompter.encode_prompt`` for the spans, ``pipelines/wan_video_holocine.py:
model_fn_wan_video`` for the mask):

* character spans of the cleaned prompt ``[global caption] G [per shot caption] S0 [shot cut]
  S1 …``: global = from the start of ``[global caption]`` to the start of
  ``[per shot caption]``; shot 0 = from the start of ``[per shot caption]`` to the end of the
  first ``[shot cut]``; shot i = from the end of the i-th ``[shot cut]`` to the end of the next;
  the last shot runs to the end of the prompt (tags belong to the spans);
* every token with a non-empty offset is assigned to the first span it overlaps (special tokens
  and padding, whose offsets are empty, to none); a span's token range is stored as
  ``[first, last + 1]``;
* the mask admits, for a video token of shot s, the global range and shot s's range **with
  inclusive ends** (``[first, last + 1]`` inclusive, one token more than the span), and every
  position from ``max(range ends) + 1`` on (the padding). Both quirks are the default here,
  switchable off.

A prompt without ``[global caption]`` has no spans (:attr:`TextSpans.global_span` is None) and
its cross-attention is unmasked, as for HoloCine's negative prompt.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from multishot.dataset.record import CUT_TAG, GLOBAL_TAG, PER_SHOT_TAG


def clean_prompt(prompt: str) -> str:
    """HoloCine's tokenizer cleaning ``clean='whitespace'``: HTML-unescape twice, strip, collapse
    whitespace runs to one space. (HoloCine also runs ``ftfy.fix_text`` first, which only
    repairs mis-decoded Unicode; we leave it out.) Feed the text encoder this same string."""
    return re.sub(r"\s+", " ", html.unescape(html.unescape(prompt)).strip()).strip()


@dataclass(frozen=True)
class TextSpans:
    """Token ranges of one prompt, HoloCine's ``text_cut_positions``.

    ``global_span`` and each of ``shot_spans`` are ``(first, last + 1)`` token indices (as
    HoloCine stores them); ``global_span is None`` means the prompt has no hierarchical tags and
    its cross-attention is unmasked.
    """

    global_span: tuple[int, int] | None
    shot_spans: tuple[tuple[int, int], ...] = ()

    @property
    def num_shots(self) -> int:
        return len(self.shot_spans)


def char_spans(prompt: str) -> list[tuple[int, int, int]]:
    """``(span id, start char, end char)`` of a cleaned prompt; id -1 is the global span, 0… the
    shots (module docstring for the boundaries). Empty when there is no ``[global caption]``
    and no ``[per shot caption]``."""
    spans = []
    global_m = prompt.find(GLOBAL_TAG)
    per_shot = prompt.find(PER_SHOT_TAG)
    if global_m >= 0:
        spans.append((-1, global_m, per_shot if per_shot >= 0 else len(prompt)))
    if per_shot >= 0:
        start, shot = per_shot, 0
        for cut in re.finditer(re.escape(CUT_TAG), prompt):
            spans.append((shot, start, cut.end()))
            start, shot = cut.end(), shot + 1
        if start < len(prompt):
            spans.append((shot, start, len(prompt)))
    return spans


def token_spans(prompt: str, offsets: Sequence[tuple[int, int]]) -> TextSpans:
    """Map :func:`char_spans` of ``prompt`` to token ranges through a tokenizer's offset mapping
    (``offsets[i]`` = characters ``[start, end)`` of token i in ``prompt``; ``(0, 0)`` for special
    and pad tokens)."""
    spans = char_spans(prompt)
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for i, (t0, t1) in enumerate(offsets):
        if t0 == t1:
            continue
        for sid, s0, s1 in spans:
            if not (t1 <= s0 or t0 >= s1):
                first.setdefault(sid, i)
                last[sid] = i
                break
    if -1 not in first:
        return TextSpans(None)
    # HoloCine lists shots 0..max id; a shot with no token (impossible with tags) would break it.
    shots = []
    for sid in range(max(first) + 1):
        if sid not in first:
            raise ValueError(f"shot {sid} of the prompt has no tokens: {prompt!r}")
        shots.append((first[sid], last[sid] + 1))
    return TextSpans((first[-1], last[-1] + 1), tuple(shots))


def token_offsets(tokenizer: Any, text: str, text_len: int) -> list[tuple[int, int]]:
    """Offset mapping of ``text`` as the text encoder sees it (special tokens added, at most
    ``text_len`` tokens).

    ``tokenizer`` is a Hugging Face fast tokenizer (called with ``return_offsets_mapping``,
    truncation to ``text_len``; UMT5's for Wan) or a ``tokenizers.Tokenizer`` (its ``encode``;
    the result is cut to ``text_len``).
    """
    if callable(tokenizer):
        enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=True,
                        truncation=True, max_length=text_len)
        return [tuple(o) for o in enc["offset_mapping"]]
    return [tuple(o) for o in tokenizer.encode(text).offsets[:text_len]]


def prompt_token_spans(tokenizer: Any, prompt: str, text_len: int = 512) -> TextSpans:
    """:class:`TextSpans` of a raw prompt: clean it (:func:`clean_prompt`), tokenize, map.

    Raises:
        ValueError: a shot span got no tokens.
    """
    text = clean_prompt(prompt)
    return token_spans(text, token_offsets(tokenizer, text, text_len))


def window_spans(tokenizer: Any, prompt: str, num_shots: int, text_len: int = 512) -> tuple[TextSpans, str | None]:
    """Spans for window cross-attention of a video of ``num_shots`` shots: ``(spans, None)``, or
    ``(TextSpans(None), why)`` when the prompt cannot window every shot.

    A HoloCine prompt longer than ``text_len`` tokens (UMT5: 512; a 13-shot prompt can be) loses
    its last shot captions to truncation, and a video shot without a caption has nothing to
    attend to. Rather than raising (:func:`shot_text_mask`), such a sample gets unmasked
    cross-attention, as HoloCine runs a prompt without tags; the caller counts the reason.
    """
    try:
        spans = prompt_token_spans(tokenizer, prompt, text_len)
    except ValueError as err:
        return TextSpans(None), str(err)
    if spans.global_span is not None and spans.num_shots < num_shots:
        return TextSpans(None), (f"the video has {num_shots} shots but only {spans.num_shots} shot "
                                 f"captions fit in {text_len} text tokens")
    return spans, None


def shot_text_mask(spans: TextSpans, num_shots: int, text_len: int, *,
                   inclusive_end: bool = True, admit_padding: bool = True,
                   device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean ``[num_shots, text_len]``: text tokens a video token of each shot may attend to.

    Args:
        spans: the prompt's spans; ``global_span is None`` gives an all-True mask (unmasked).
        num_shots: shots of the video (at most ``spans.num_shots``).
        inclusive_end: admit token ``last + 1`` of each range, as HoloCine does.
        admit_padding: admit every position from ``max(range ends) + 1`` on, as HoloCine does.
    Raises:
        ValueError: the video has more shots than the prompt (HoloCine asserts the same).
    """
    if spans.global_span is None:
        return torch.ones(num_shots, text_len, dtype=torch.bool, device=device)
    if num_shots > spans.num_shots:
        raise ValueError(f"the video has {num_shots} shots but the prompt only "
                         f"{spans.num_shots} shot captions")
    extra = 1 if inclusive_end else 0
    mask = torch.zeros(num_shots, text_len, dtype=torch.bool)
    g0, g1 = spans.global_span
    mask[:, g0:g1 + extra] = True
    for sid in range(num_shots):
        s0, s1 = spans.shot_spans[sid]
        mask[sid, s0:s1 + extra] = True
    if admit_padding:
        mask[:, max([g1] + [e for _, e in spans.shot_spans]) + 1:] = True
    return mask.to(device)
