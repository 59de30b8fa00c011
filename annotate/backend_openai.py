"""The OpenAI-compatible backend: any chat-completions endpoint serving a vision-language model
(vLLM or SGLang serving Qwen2.5-VL / Qwen3-VL), through the official ``openai`` client.

The sample goes as image parts: ``frames`` evenly spaced frames of the rendered mp4 (decoded
with PyAV, longest side scaled to ``frame_size``, JPEG, base64 ``data:`` URLs), each after a
text part giving its time, then the prompt, which lists the shots' times (OpenAI chat API
``image_url`` content parts; vLLM's multimodal inputs take the same). With ``media: video`` the
mp4 goes whole as one ``video_url`` part (vLLM's extension for video models). The reply is
constrained by ``response_format={"type": "json_schema", ...}`` with
:class:`annotate.reply.CaptionReply`'s schema (vLLM's structured outputs); a server that
refuses it is asked without, and the text is parsed as plain JSON (a Markdown fence or prose
around the object is tolerated).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import re
from dataclasses import dataclass

import av
import openai

from multishot.annotate.backend import Answer, CaptionFailure, Retrying
from multishot.annotate.config import AnnotateConfig
from multishot.annotate.reply import CaptionReply
from multishot.dataset.record import SampleRecord

log = logging.getLogger(__name__)

#: the response_format asking for :class:`CaptionReply` (OpenAI structured outputs, vLLM guided decoding)
RESPONSE_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "caption_reply", "schema": CaptionReply.model_json_schema()},
}

_FENCE = re.compile(r"```(?:json)?\s*(\{.*\})\s*```", re.DOTALL)


def json_text(text: str | None) -> str | None:
    """The JSON object in a reply: the text itself when it parses, else the body of a
    ```json fence, else the span from the first ``{`` to the last ``}``; else the text unchanged."""
    if not text:
        return text
    try:
        json.loads(text)
        return text
    except ValueError:
        pass
    if m := _FENCE.search(text):
        return m.group(1)
    start, end = text.find("{"), text.rfind("}")
    return text[start : end + 1] if 0 <= start < end else text


def frame_indices(num_frames: int, count: int, shot_ranges: list[tuple[int, int]]) -> list[int]:
    """Which frames to send: ``count`` evenly spaced (the centre of each of ``count`` equal
    spans of ``[0, num_frames)``), plus the middle frame of any shot ``[start, end)`` none of
    them falls in, so every shot the prompt lists is seen. Sorted, unique."""
    picked = {min(num_frames - 1, int((i + 0.5) * num_frames / count)) for i in range(count)}
    for start, end in shot_ranges:
        if end > start and not any(start <= f < end for f in picked):
            picked.add(min(num_frames - 1, (start + end - 1) // 2))
    return sorted(picked)


def sample_frames(mp4: bytes, record: SampleRecord, count: int, size: int, quality: int) -> list[tuple[float, bytes]]:
    """``(time s, JPEG bytes)`` of the frames :func:`frame_indices` picks, decoded from ``mp4``
    with PyAV, scaled (aspect kept) so the longest side is at most ``size`` pixels.

    Raises:
        av.FFmpegError: the mp4 cannot be decoded.
        ValueError: it holds no frames.
    """
    with av.open(io.BytesIO(mp4)) as container:
        frames = list(container.decode(video=0))
    if not frames:
        raise ValueError("the rendered sample holds no video frames")
    shots = [(s.start_frame, s.end_frame) for s in record.shots]
    out = []
    for index in frame_indices(len(frames), count, shots):
        image = frames[index].to_image()
        image.thumbnail((size, size))
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=quality)
        out.append((index / record.fps, buf.getvalue()))
    return out


def _data_url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


@dataclass
class _Conversation:
    key: str
    messages: list[dict]


class OpenAIBackend:
    """An OpenAI-compatible chat endpoint through ``openai.OpenAI`` (see :class:`annotate.backend.Backend`)."""

    name = "openai"
    request_name = "chat.completions"

    def __init__(self, client: openai.OpenAI, config: AnnotateConfig, *, secret: str | None = None):
        """``secret``: the API key, only to scrub it from error texts."""
        self.client = client
        self.config = config
        self.secret = secret
        self._structured = config.structured_output

    @classmethod
    def from_env(cls, config: AnnotateConfig) -> OpenAIBackend | None:
        """A client of ``config.base_url`` with the key from the variable ``config.api_key_env``
        names; None when that variable is unset or empty. Without ``api_key_env`` the client
        sends the placeholder key ``EMPTY`` (a vLLM server started without ``--api-key`` takes
        any). The client's own retries are off (the captioner retries, honouring Retry-After)."""
        key = None
        if config.api_key_env:
            key = (os.environ.get(config.api_key_env) or "").strip() or None
            if key is None:
                return None
        client = openai.OpenAI(base_url=config.base_url, api_key=key or "EMPTY",
                               timeout=config.request_timeout_s, max_retries=0)
        return cls(client, config, secret=key)

    @property
    def identity(self) -> str:
        c = self.config
        shown = f"frames {c.frames}x{c.frame_size}px q{c.jpeg_quality}" if c.media == "frames" else "video"
        return f"openai:{c.model}:{shown}"

    def start(self, record: SampleRecord, mp4: bytes, prompt: str, retrying: Retrying) -> _Conversation:
        c = self.config
        parts: list[dict] = []
        if c.media == "video":
            parts.append({"type": "video_url", "video_url": {"url": _data_url("video/mp4", mp4)}})
        else:
            for t, jpeg in sample_frames(mp4, record, c.frames, c.frame_size, c.jpeg_quality):
                parts.append({"type": "text", "text": f"Frame at {t:.2f} s:"})
                parts.append({"type": "image_url", "image_url": {"url": _data_url("image/jpeg", jpeg)}})
        parts.append({"type": "text", "text": prompt})
        return _Conversation(record.key, [{"role": "user", "content": parts}])

    def ask(self, conversation: _Conversation) -> Answer:
        try:
            return self._ask(conversation)
        except (ValueError, openai.APIResponseValidationError) as err:  # a 200 that is no chat completion
            raise CaptionFailure(
                f"the endpoint's answer is not a chat completion ({type(err).__name__}: {str(err)[:200]})"
            ) from None

    def _ask(self, conversation: _Conversation) -> Answer:
        c = self.config
        args = dict(model=c.model, messages=conversation.messages, temperature=c.temperature,
                    max_tokens=c.max_output_tokens)
        if self._structured:
            try:
                response = self.client.chat.completions.create(**args, response_format=RESPONSE_FORMAT)
            except openai.BadRequestError as err:
                if "response_format" not in str(err) and "json_schema" not in str(err):
                    raise
                log.warning("%s: the endpoint refuses response_format json_schema; asking for plain JSON "
                            "from now on (%s)", conversation.key, err.message)
                self._structured = False
                response = self.client.chat.completions.create(**args)
        else:
            response = self.client.chat.completions.create(**args)
        text = response.choices[0].message.content if response.choices else None
        usage = response.usage
        return Answer(json_text(text), usage.prompt_tokens if usage else None, usage.completion_tokens if usage else None)

    def follow_up(self, conversation: _Conversation, reply_text: str, correction: str) -> None:
        conversation.messages += [
            {"role": "assistant", "content": reply_text},
            {"role": "user", "content": correction},
        ]

    def finish(self, conversation: _Conversation, retrying: Retrying) -> None:
        pass  # nothing uploaded
