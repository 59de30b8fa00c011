"""The Gemini backend (google-genai SDK): the video inline or through the Files API, the reply
constrained by :class:`annotate.reply.CaptionReply` as ``response_schema``.

Per conversation: video part (inline bytes, or Files API upload → poll until ACTIVE) + prompt →
``generate_content`` (once per :meth:`GeminiBackend.ask`; the captioner retries) → the uploaded
file deleted in :meth:`GeminiBackend.finish`.
"""

from __future__ import annotations

import io
import logging
import os
import time
from dataclasses import dataclass, field

from google import genai
from google.genai import types

from multishot.annotate.backend import Answer, CaptionFailure, Retrying
from multishot.annotate.config import AnnotateConfig
from multishot.annotate.reply import CaptionReply
from multishot.annotate.retry import ServiceError
from multishot.dataset.record import SampleRecord

log = logging.getLogger(__name__)

MP4 = "video/mp4"


def api_key_from_env() -> str | None:
    """The Gemini API key the SDK will use (``GOOGLE_API_KEY`` wins over ``GEMINI_API_KEY``, as in the SDK)."""
    return (os.environ.get("GOOGLE_API_KEY") or os.environ.get("GEMINI_API_KEY") or "").strip() or None


def vertexai_from_env() -> bool:
    """True when ``GOOGLE_GENAI_USE_VERTEXAI`` selects Vertex AI (the SDK's variable)."""
    return os.environ.get("GOOGLE_GENAI_USE_VERTEXAI", "").lower() in ("1", "true")


@dataclass
class _Conversation:
    key: str
    contents: list[types.Content]
    uploaded: str | None = None
    settings: types.GenerateContentConfig | None = field(default=None, repr=False)


class GeminiBackend:
    """Gemini through a ``genai.Client`` (see :class:`annotate.backend.Backend`)."""

    name = "gemini"
    request_name = "generateContent"

    def __init__(self, client: genai.Client, config: AnnotateConfig, *, secret: str | None = None, uploads: bool = True):
        """``secret``: the API key, only to scrub it from error texts; ``uploads``: Files API usable."""
        self.client = client
        self.config = config
        self.secret = secret
        self._uploads = uploads

    @classmethod
    def from_env(cls, config: AnnotateConfig) -> GeminiBackend | None:
        """A backend using the environment's credentials, or None when none are configured.

        Credentials: ``GEMINI_API_KEY`` / ``GOOGLE_API_KEY`` (Gemini Developer API), or
        ``GOOGLE_GENAI_USE_VERTEXAI=true`` with ``GOOGLE_CLOUD_PROJECT`` (+ ``GOOGLE_CLOUD_LOCATION``,
        application default credentials) or a Vertex API key. ``GOOGLE_GEMINI_BASE_URL`` /
        ``GOOGLE_VERTEX_BASE_URL`` point the SDK at another endpoint. On Vertex AI the Files API
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
        return cls(client, config, secret=key, uploads=not vertex)

    @property
    def identity(self) -> str:
        return self.config.model  # as before the second backend: earlier caches stay valid

    def start(self, record: SampleRecord, mp4: bytes, prompt: str, retrying: Retrying) -> _Conversation:
        video, uploaded = self._video_part(record, mp4, retrying)
        settings = types.GenerateContentConfig(
            response_mime_type="application/json",
            response_schema=CaptionReply,
            temperature=self.config.temperature,
            automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),  # no tools here
        )
        contents = [types.Content(role="user", parts=[video, types.Part.from_text(text=prompt)])]
        return _Conversation(record.key, contents, uploaded, settings)

    def ask(self, conversation: _Conversation) -> Answer:
        response = self.client.models.generate_content(
            model=self.config.model, contents=conversation.contents, config=conversation.settings
        )
        if response.prompt_feedback and response.prompt_feedback.block_reason:
            raise CaptionFailure(f"prompt blocked: {response.prompt_feedback.block_reason}")
        usage = response.usage_metadata
        return Answer(
            response.text,
            usage.prompt_token_count if usage else None,
            usage.candidates_token_count if usage else None,
        )

    def follow_up(self, conversation: _Conversation, reply_text: str, correction: str) -> None:
        conversation.contents += [
            types.Content(role="model", parts=[types.Part.from_text(text=reply_text)]),
            types.Content(role="user", parts=[types.Part.from_text(text=correction)]),
        ]

    def finish(self, conversation: _Conversation, retrying: Retrying) -> None:
        if conversation.uploaded:
            self._delete(conversation.uploaded, retrying)

    def _video_part(self, record: SampleRecord, mp4: bytes, retrying: Retrying) -> tuple[types.Part, str | None]:
        """The video as a Part, and the uploaded file's name to delete afterwards (or None)."""
        meta = types.VideoMetadata(fps=self.config.video_fps) if self.config.video_fps else None
        if len(mp4) <= self.config.inline_max_bytes or not self._uploads:
            return types.Part(inline_data=types.Blob(data=mp4, mime_type=MP4), video_metadata=meta), None
        upload = types.UploadFileConfig(mime_type=MP4, display_name=record.key)
        file = retrying(lambda: self.client.files.upload(file=io.BytesIO(mp4), config=upload), f"files.upload {record.key}")
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
                file = retrying(lambda: self.client.files.get(name=name), f"files.get {name}")
        except BaseException:
            self._delete(file.name, retrying)
            raise
        part = types.Part(file_data=types.FileData(file_uri=file.uri, mime_type=file.mime_type or MP4), video_metadata=meta)
        return part, file.name

    def _delete(self, name: str, retrying: Retrying) -> None:
        """Delete an uploaded video; a failure is logged (the service expires files after 48 h)."""
        try:
            retrying(lambda: self.client.files.delete(name=name), f"files.delete {name}")
        except ServiceError as err:
            text = str(err).replace(self.secret, "[redacted]") if self.secret else str(err)
            log.warning("could not delete uploaded video: %s", text)
