"""Captioning one rendered sample with Gemini: video + known shot boundaries in, captions out.

Per sample (HoloCine §3.1 hierarchical captions; google-genai SDK):
cache lookup → video part (inline bytes, or Files API upload → poll until ACTIVE) →
``generate_content`` with :class:`annotate.reply.CaptionReply` as ``response_schema`` →
:func:`annotate.reply.check_reply` → on problems, the conversation continues with a corrective
message (``correction_attempts`` times) → cache store → uploaded file deleted. Service errors
never escape :meth:`Captioner.annotate`; they come back as ``caption_status="failed"`` with the
reason in ``caption_error``.
"""

from __future__ import annotations

import io
import logging
import os
import threading
import time
from collections.abc import Callable

from google import genai
from google.genai import types
from pydantic import ValidationError

from multishot.annotate.cache import ResponseCache, sample_hash
from multishot.annotate.config import AnnotateConfig
from multishot.annotate.prompt import PromptTemplate, correction
from multishot.annotate.reply import CaptionReply, check_reply, final_captions, parse_reply
from multishot.annotate.retry import RateLimiter, ServiceError, call_with_retries
from multishot.dataset.record import SampleRecord

log = logging.getLogger(__name__)

MP4 = "video/mp4"


class CaptionFailure(Exception):
    """Captioning one sample failed for good; the message becomes ``caption_error``."""


def api_key_from_env() -> str | None:
    """The Gemini API key the SDK will use (``GOOGLE_API_KEY`` wins over ``GEMINI_API_KEY``, as in the SDK)."""
    return (os.environ.get("GOOGLE_API_KEY") or os.environ.get("GEMINI_API_KEY") or "").strip() or None


def vertexai_from_env() -> bool:
    """True when ``GOOGLE_GENAI_USE_VERTEXAI`` selects Vertex AI (the SDK's variable)."""
    return os.environ.get("GOOGLE_GENAI_USE_VERTEXAI", "").lower() in ("1", "true")


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
    """Thread-safe Gemini captioner for :class:`dataset.record.SampleRecord` samples.

    At most ``config.concurrency`` samples are in flight and at most
    ``config.requests_per_minute`` ``generateContent`` calls start per minute, however many
    threads call :meth:`annotate`.
    """

    def __init__(
        self,
        client: genai.Client,
        config: AnnotateConfig,
        cache: ResponseCache | None = None,
        *,
        secret: str | None = None,
        uploads: bool = True,
    ):
        """``secret``: the API key, only to scrub it from error texts; ``uploads``: Files API usable."""
        self.client = client
        self.config = config
        self.cache = cache
        self.template = PromptTemplate.load(config.prompt_template, config.language, config.templates_dir)
        self._secret = secret
        self._uploads = uploads
        self._count_tokens = prompt_token_counter(config.text_tokenizer) if config.text_tokenizer else None
        self._slots = threading.BoundedSemaphore(config.concurrency)
        self._limiter = RateLimiter(config.requests_per_minute)

    @classmethod
    def from_env(cls, config: AnnotateConfig, cache_dir: str | None = None) -> Captioner | None:
        """A captioner using the environment's credentials, or None when none are configured.

        Credentials: ``GEMINI_API_KEY`` / ``GOOGLE_API_KEY`` (Gemini Developer API), or
        ``GOOGLE_GENAI_USE_VERTEXAI=true`` with ``GOOGLE_CLOUD_PROJECT`` (+ ``GOOGLE_CLOUD_LOCATION``,
        application default credentials) or a Vertex API key. ``GOOGLE_GEMINI_BASE_URL`` /
        ``GOOGLE_VERTEX_BASE_URL`` point the SDK at another endpoint. The cache lives at
        ``config.cache_dir``, else ``cache_dir``, else there is none. On Vertex AI the Files API
        does not exist, so videos always go inline.

        Raises:
            ValueError: Vertex AI is selected but the SDK cannot build a client (no project, no
                application default credentials); the message is the SDK's.
        """
        key = api_key_from_env()
        vertex = vertexai_from_env()
        if not key and not (vertex and os.environ.get("GOOGLE_CLOUD_PROJECT")):
            return None
        http = types.HttpOptions(timeout=int(config.request_timeout_s * 1000))
        if not vertex:
            http.api_version = config.api_version
        client = genai.Client(http_options=http)  # no retry_options: the SDK tries once, we retry
        where = config.cache_dir or cache_dir
        return cls(client, config, ResponseCache(where) if where else None, secret=key, uploads=not vertex)

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
        cache_key = ResponseCache.key(sample_hash(record, mp4), self.config.model, self.prompt_version)
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
                cache_key, reply.model_dump(), model=self.config.model,
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
        video, uploaded = self._video_part(record, mp4)
        try:
            contents = [types.Content(role="user", parts=[video, types.Part.from_text(text=self.template.render(record))])]
            settings = types.GenerateContentConfig(
                response_mime_type="application/json",
                response_schema=CaptionReply,
                temperature=self.config.temperature,
                automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),  # no tools here
            )
            for attempt in range(self.config.correction_attempts + 1):
                response = self._retrying(
                    lambda: self.client.models.generate_content(
                        model=self.config.model, contents=contents, config=settings
                    ),
                    f"generateContent {record.key}",
                    rate_limited=True,
                )
                if response.prompt_feedback and response.prompt_feedback.block_reason:
                    raise CaptionFailure(f"prompt blocked: {response.prompt_feedback.block_reason}")
                text = response.text
                reply, why = parse_reply(text)
                problems = [why] if reply is None else self._check(reply, record.num_shots)
                if not problems:
                    return reply
                log.info("%s: invalid reply (try %d): %s", record.key, attempt + 1, "; ".join(problems))
                contents += [
                    types.Content(role="model", parts=[types.Part.from_text(text=text or "(no reply)")]),
                    types.Content(role="user", parts=[types.Part.from_text(text=correction(problems, record.num_shots))]),
                ]
            raise CaptionFailure(
                f"invalid reply after {self.config.correction_attempts + 1} tries: {'; '.join(problems)}"
            )
        finally:
            if uploaded:
                self._delete(uploaded)

    def _video_part(self, record: SampleRecord, mp4: bytes) -> tuple[types.Part, str | None]:
        """The video as a Part, and the uploaded file's name to delete afterwards (or None)."""
        meta = types.VideoMetadata(fps=self.config.video_fps) if self.config.video_fps else None
        if len(mp4) <= self.config.inline_max_bytes or not self._uploads:
            return types.Part(inline_data=types.Blob(data=mp4, mime_type=MP4), video_metadata=meta), None
        upload = types.UploadFileConfig(mime_type=MP4, display_name=record.key)
        file = self._retrying(
            lambda: self.client.files.upload(file=io.BytesIO(mp4), config=upload), f"files.upload {record.key}"
        )
        try:
            deadline = time.monotonic() + self.config.file_active_timeout_s
            while file.state != types.FileState.ACTIVE:
                if file.state == types.FileState.FAILED:
                    raise CaptionFailure(f"uploaded video {file.name} failed processing: {file.error}")
                if time.monotonic() > deadline:
                    raise CaptionFailure(
                        f"uploaded video {file.name} not ACTIVE after {self.config.file_active_timeout_s} s"
                    )
                time.sleep(self.config.file_poll_interval_s)
                name = file.name
                file = self._retrying(lambda: self.client.files.get(name=name), f"files.get {name}")
        except BaseException:
            self._delete(file.name)
            raise
        part = types.Part(file_data=types.FileData(file_uri=file.uri, mime_type=file.mime_type or MP4), video_metadata=meta)
        return part, file.name

    def _delete(self, name: str) -> None:
        """Delete an uploaded video; a failure is logged (the service expires files after 48 h)."""
        try:
            self._retrying(lambda: self.client.files.delete(name=name), f"files.delete {name}")
        except ServiceError as err:
            log.warning("could not delete uploaded video: %s", self._scrub(str(err)))
