"""Captioning one rendered sample: video + known shot boundaries in, captions out.

Per sample (HoloCine §3.1 hierarchical captions), whichever backend
(:mod:`annotate.backend`: Gemini, or an OpenAI-compatible endpoint serving a VLM):
cache lookup → the backend's first turn (video or frames + prompt) → one request, with
:class:`annotate.reply.CaptionReply` as the reply schema → :func:`annotate.reply.check_reply` →
on problems, the conversation continues with a corrective message (``correction_attempts``
times) → cache store → the backend's cleanup (an uploaded file deleted). Service errors never
escape :meth:`Captioner.annotate`; they come back as ``caption_status="failed"`` with the
reason in ``caption_error``.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from collections.abc import Callable

from pydantic import ValidationError

from multishot.annotate.backend import Backend, CaptionFailure
from multishot.annotate.cache import ResponseCache, sample_hash
from multishot.annotate.config import AnnotateConfig
from multishot.annotate.prompt import PromptTemplate, correction
from multishot.annotate.reply import CaptionReply, check_reply, final_captions, parse_reply
from multishot.annotate.retry import RateLimiter, ServiceError, call_with_retries
from multishot.dataset.record import SampleRecord

log = logging.getLogger(__name__)


def prompt_token_counter(folder: str | os.PathLike) -> Callable[[str], int]:
    """``prompt → tokens`` as the trainer's text encoder sees it: cleaned
    (:func:`model.prompt_spans.clean_prompt`), tokenized with special tokens by the fast
    tokenizer in ``folder`` (transformers ``AutoTokenizer``), untruncated.

    Raises:
        OSError: ``folder`` holds no tokenizer.
    """
    from transformers import AutoTokenizer

    from multishot.model.prompt_spans import clean_prompt

    tokenizer = AutoTokenizer.from_pretrained(folder)
    return lambda prompt: len(tokenizer(clean_prompt(prompt), add_special_tokens=True)["input_ids"])


class Captioner:
    """Thread-safe captioner for :class:`dataset.record.SampleRecord` samples, one backend behind it.

    At most ``config.concurrency`` samples are in flight and at most
    ``config.requests_per_minute`` requests start per minute, however many threads call
    :meth:`annotate`. :attr:`usage` counts requests and the tokens the service reported.
    """

    def __init__(self, backend: Backend, config: AnnotateConfig, cache: ResponseCache | None = None):
        self.backend = backend
        self.config = config
        self.cache = cache
        self.template = PromptTemplate.load(config.prompt_template, config.language, config.templates_dir)
        self._secret = backend.secret
        self._count_tokens = prompt_token_counter(config.text_tokenizer) if config.text_tokenizer else None
        self._slots = threading.BoundedSemaphore(config.concurrency)
        self._limiter = RateLimiter(config.requests_per_minute)
        self._usage_lock = threading.Lock()
        #: ``requests`` answered, ``input_tokens`` / ``output_tokens`` as the service reported them
        self.usage: Counter[str] = Counter()

    @classmethod
    def from_env(cls, config: AnnotateConfig, cache_dir: str | None = None) -> Captioner | None:
        """A captioner with ``config.backend``'s credentials from the environment, or None when
        none are set (Gemini: :meth:`annotate.backend_gemini.GeminiBackend.from_env`; openai:
        the variable ``config.api_key_env`` names, :meth:`annotate.backend_openai.OpenAIBackend.from_env`).
        The cache lives at ``config.cache_dir``, else ``cache_dir``, else there is none.

        Raises:
            ValueError: Vertex AI is selected but the SDK cannot build a client (the SDK's message).
        """
        if config.backend == "openai":
            from multishot.annotate.backend_openai import OpenAIBackend

            backend = OpenAIBackend.from_env(config)
        else:
            from multishot.annotate.backend_gemini import GeminiBackend

            backend = GeminiBackend.from_env(config)
        if backend is None:
            return None
        where = config.cache_dir or cache_dir
        return cls(backend, config, ResponseCache(where) if where else None)

    @property
    def prompt_version(self) -> str:
        return self.template.version

    def annotate(self, record: SampleRecord, mp4: bytes) -> SampleRecord:
        """``record`` with captions filled (``caption_status="ok"``) or ``"failed"`` with the reason.

        Args:
            record: the sample; its shots' frame ranges / ``fps`` give the cut times (seconds).
            mp4: the rendered sample's bytes.

        Never raises for service or reply errors; the returned record always validates.
        """
        cache_key = ResponseCache.key(sample_hash(record, mp4), self.backend.identity, self.prompt_version)
        cached = self.cache.get(cache_key) if self.cache else None
        if cached is not None:
            try:
                reply = CaptionReply.model_validate(cached)
                problems = self._check(reply, record.num_shots)
            except ValidationError as err:
                problems = [str(err)]
            if not problems:
                log.debug("%s: cached captions", record.key)
                return self._ok(record, reply)
            log.warning("%s: cached reply no longer valid (%s), asking again", record.key, "; ".join(problems))
        with self._slots:
            try:
                reply = self._caption(record, mp4)
            except (CaptionFailure, ServiceError) as err:
                return self._failed(record, str(err))
            except Exception as err:  # the SDK raises ValueError/KeyError on odd replies too
                log.exception("%s: unexpected error while captioning", record.key)
                return self._failed(record, f"{type(err).__name__}: {err}")
        if self.cache:
            self.cache.put(
                cache_key, reply.model_dump(), model=self.backend.identity,
                prompt_version=self.prompt_version, sample_key=record.key,
            )
        return self._ok(record, reply)

    def _check(self, reply: CaptionReply, num_shots: int) -> list[str]:
        return check_reply(reply, num_shots, self._count_tokens, self.config.max_prompt_tokens)

    def _ok(self, record: SampleRecord, reply: CaptionReply) -> SampleRecord:
        global_caption, shot_captions = final_captions(reply, record.num_shots)
        return self._with_captions(record, global_caption, shot_captions, "ok", None)

    def _failed(self, record: SampleRecord, reason: str) -> SampleRecord:
        """``record`` marked failed; any earlier captions are cleared (failed = no usable captions)."""
        reason = self._scrub(reason)
        log.warning("%s: captioning failed: %s", record.key, reason)
        return self._with_captions(record, "", [""] * record.num_shots, "failed", reason)

    def _with_captions(
        self, record: SampleRecord, global_caption: str, shot_captions: list[str], status: str, error: str | None
    ) -> SampleRecord:
        data = record.model_dump()
        for shot, caption in zip(data["shots"], shot_captions):
            shot["caption"] = caption
        data.update(global_caption=global_caption, caption_status=status, caption_error=error,
                    caption_model=self.config.model)
        return SampleRecord.model_validate(data)

    def _scrub(self, text: str) -> str:
        return text.replace(self._secret, "[redacted]") if self._secret else text

    def _retrying(self, fn, what: str, rate_limited: bool = False):
        c = self.config
        return call_with_retries(
            fn, what, max_attempts=c.max_attempts, initial_s=c.backoff_initial_s, max_s=c.backoff_max_s,
            retry_after_max_s=c.retry_after_max_s, before_each=self._limiter.acquire if rate_limited else None,
        )

    def _caption(self, record: SampleRecord, mp4: bytes) -> CaptionReply:
        """Ask, check, correct. Raises CaptionFailure / ServiceError."""
        backend = self.backend
        conversation = backend.start(record, mp4, self.template.render(record), self._retrying)
        try:
            for attempt in range(self.config.correction_attempts + 1):
                answer = self._retrying(
                    lambda: backend.ask(conversation), f"{backend.request_name} {record.key}", rate_limited=True
                )
                with self._usage_lock:
                    self.usage.update(requests=1, input_tokens=answer.input_tokens or 0,
                                      output_tokens=answer.output_tokens or 0)
                reply, why = parse_reply(answer.text)
                problems = [why] if reply is None else self._check(reply, record.num_shots)
                if not problems:
                    return reply
                log.info("%s: invalid reply (try %d): %s", record.key, attempt + 1, "; ".join(problems))
                backend.follow_up(conversation, answer.text or "(no reply)", correction(problems, record.num_shots))
            raise CaptionFailure(
                f"invalid reply after {self.config.correction_attempts + 1} tries: {'; '.join(problems)}"
            )
        finally:
            backend.finish(conversation, self._retrying)
