"""The caption reply Gemini must give, and the checks a reply must pass before it is used.

HoloCine (arXiv 2510.20822, §3.1) captions each sample hierarchically: a global caption naming
characters ``[character1]``, ``[character2]`` … and ending "This scene contains N shots.", then
one caption per shot. :class:`CaptionReply` is passed to the SDK as ``response_schema`` (the
service constrains its JSON to it; the class and field docstrings are sent as the schema's
descriptions, so they speak to the model); :func:`check_reply` then checks what a schema
cannot say.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

from pydantic import BaseModel, Field, ValidationError

from multishot.dataset.record import (
    CUT_TAG,
    GLOBAL_TAG,
    PER_SHOT_TAG,
    SHOT_COUNT_SENTENCE,
    build_prompt,
    with_shot_count,
)

#: a character tag as the model might write it; only the exact form ``[characterN]`` is accepted
_LOOSE_TAG = re.compile(r"\[\s*character\s*(\d+)\s*\]", re.IGNORECASE)


class ShotCaption(BaseModel):
    """The caption of one shot of the clip."""

    shot: int = Field(description="1-based shot number, in order")
    caption: str = Field(description="shot size, camera movement and action of this shot")


class CaptionReply(BaseModel):
    """Hierarchical captions of one multi-shot video clip."""

    global_caption: str = Field(description="characters as [characterN], environment, plot")
    shot_captions: list[ShotCaption] = Field(description="one entry per shot, in order")


def parse_reply(text: str | None) -> tuple[CaptionReply | None, str | None]:
    """Parse the reply's JSON text; ``(reply, None)`` or ``(None, why it is not a reply)``."""
    if not text or not text.strip():
        return None, "the reply was empty"
    try:
        return CaptionReply.model_validate_json(text), None
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "reply"
        return None, f"the reply is not the requested JSON object ({where}: {first['msg']})"


#: without a tokenizer, a prompt longer than this many characters per text-encoder token is
#: refused: English through UMT5's SentencePiece averages about 4 characters a token, so 8
#: lets every plausible prompt through and stops a runaway reply
CHARS_PER_TOKEN_CAP = 8


def check_reply(
    reply: CaptionReply, num_shots: int, count_tokens: Callable[[str], int] | None = None, max_tokens: int = 512
) -> list[str]:
    """Problems of a parsed reply for a sample of ``num_shots`` shots; empty when usable.

    With ``count_tokens`` (text → text-encoder tokens), a reply whose final prompt
    (:func:`dataset.record.build_prompt` of :func:`final_captions`) is longer than ``max_tokens``
    is a problem too: the text encoder would cut the last shot captions off. Without it, a
    prompt over ``CHARS_PER_TOKEN_CAP * max_tokens`` characters is.

    Checks: exactly ``num_shots`` shot captions numbered 1..N in order; no empty caption; tags
    written exactly ``[characterN]``; the global caption introduces ``[character1]`` …
    ``[characterK]`` in order of first use; shot captions use only tags the global caption
    introduced; a "This scene contains M shots." sentence, if present, says ``M == num_shots``;
    no HoloCine prompt tags (they would break the prompt's span parsing).
    """
    problems: list[str] = []
    shots = reply.shot_captions
    if len(shots) != num_shots:
        problems.append(f"expected exactly {num_shots} shot_captions, got {len(shots)}")
    numbers = [s.shot for s in shots]
    if numbers != list(range(1, len(shots) + 1)):
        problems.append(f"shot numbers must be 1..{len(shots)} in order, got {numbers}")
    if not reply.global_caption.strip():
        problems.append("global_caption is empty")
    for s in shots:
        if not s.caption.strip():
            problems.append(f"the caption of shot {s.shot} is empty")
    texts = [("global_caption", reply.global_caption)] + [(f"shot {s.shot}", s.caption) for s in shots]
    for where, text in texts:
        for m in _LOOSE_TAG.finditer(text):
            if m.group(0) != f"[character{int(m.group(1))}]":
                problems.append(f"{where} writes {m.group(0)!r}; write tags exactly as [character{int(m.group(1))}]")
        for tag in (GLOBAL_TAG, PER_SHOT_TAG, CUT_TAG):
            if tag in text:
                problems.append(f"{where} contains the reserved tag {tag}")
    introduced = list(dict.fromkeys(int(n) for n in _LOOSE_TAG.findall(reply.global_caption)))
    if introduced != list(range(1, len(introduced) + 1)):
        problems.append(
            "global_caption must introduce [character1], [character2], … in order of first use, "
            f"got {['[character%d]' % n for n in introduced]}"
        )
    for s in shots:
        unknown = sorted({int(n) for n in _LOOSE_TAG.findall(s.caption)} - set(introduced))
        if unknown:
            tags = ", ".join(f"[character{n}]" for n in unknown)
            problems.append(f"shot {s.shot} uses {tags}, which global_caption does not introduce")
    stated = SHOT_COUNT_SENTENCE.search(reply.global_caption)
    if stated and int(stated.group(1)) != num_shots:
        problems.append(f"global_caption says {stated.group(1)} shots, the clip has {num_shots}")
    if count_tokens is None and not problems:
        # no tokenizer: a bound in characters instead, so that a runaway reply (megabytes of
        # caption) is never accepted into a record
        prompt = build_prompt(with_shot_count(reply.global_caption.strip(), num_shots), [s.caption for s in shots])
        if len(prompt) > CHARS_PER_TOKEN_CAP * max_tokens:
            problems.append(
                f"the captions make a prompt of {len(prompt)} characters; the text encoder reads {max_tokens} "
                f"tokens (at most {CHARS_PER_TOKEN_CAP * max_tokens} characters): shorten every caption by at "
                f"least {math.ceil(100 * (len(prompt) - CHARS_PER_TOKEN_CAP * max_tokens) / len(prompt))}%"
            )
    if count_tokens is not None and not problems:
        prompt = build_prompt(with_shot_count(reply.global_caption.strip(), num_shots), [s.caption for s in shots])
        tokens = count_tokens(prompt)
        if tokens > max_tokens:
            problems.append(
                f"the captions make a prompt of {tokens} tokens but the text encoder reads {max_tokens}: "
                f"shorten every caption by at least {math.ceil(100 * (tokens - max_tokens) / tokens)}%"
            )
    return problems


def final_captions(reply: CaptionReply, num_shots: int) -> tuple[str, list[str]]:
    """The global caption (ending "This scene contains N shots.", as HoloCine's) and shot captions.

    Raises:
        ValueError: the reply has problems (call :func:`check_reply` first).
    """
    problems = check_reply(reply, num_shots)
    if problems:
        raise ValueError("; ".join(problems))
    return with_shot_count(reply.global_caption.strip(), num_shots), [s.caption.strip() for s in reply.shot_captions]
