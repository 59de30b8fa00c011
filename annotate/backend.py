"""The captioner's backend interface: how one captioning conversation is held with one service.

:class:`annotate.captioner.Captioner` owns everything the backends share (the prompt, the reply
schema and its checks, corrective re-asks, retries, the rate limit, concurrency, the response
cache, scrubbing the key from error texts); a backend only turns a sample into the service's
request and the service's response into reply text. Two exist: Gemini
(:mod:`annotate.backend_gemini`, the google-genai SDK) and any OpenAI-compatible chat endpoint
(:mod:`annotate.backend_openai`, the ``openai`` client; vLLM or SGLang serving a Qwen-VL model).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from multishot.dataset.record import SampleRecord

#: ``retrying(fn, what)``: ``fn()`` under the captioner's retry policy (raises ServiceError)
Retrying = Callable[[Callable[[], Any], str], Any]


class CaptionFailure(Exception):
    """Captioning one sample failed for good; the message becomes ``caption_error``."""


@dataclass(frozen=True)
class Answer:
    """One reply of the service: its text (None when it gave none) and its token counts."""

    text: str | None
    input_tokens: int | None = None
    output_tokens: int | None = None


class Backend(Protocol):
    """One service. Methods may raise the SDK's errors (the captioner retries the retryable
    ones through :func:`annotate.retry.call_with_retries`) or
    :class:`CaptionFailure` (final, the message becomes ``caption_error``)."""

    #: ``"gemini"`` / ``"openai"``
    name: str
    #: the request's name in retry messages and failure reasons (``generateContent``)
    request_name: str
    #: the secret the client sends (only to scrub it from error texts), or None
    secret: str | None

    @property
    def identity(self) -> str:
        """What, besides the prompt, decides the reply (model, and how the video is shown): the
        model part of the response-cache key. Never holds credentials."""

    def start(self, record: SampleRecord, mp4: bytes, prompt: str, retrying: Retrying) -> Any:
        """A new conversation: the video (in the backend's form) and the prompt as the first turn."""

    def ask(self, conversation: Any) -> Answer:
        """One request with the conversation so far (a single try: the captioner retries it)."""

    def follow_up(self, conversation: Any, reply_text: str, correction: str) -> None:
        """Append the model's invalid reply and the corrective user message."""

    def finish(self, conversation: Any, retrying: Retrying) -> None:
        """Release what :meth:`start` created (an uploaded file); never raises ServiceError."""
