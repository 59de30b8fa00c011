"""The annotation config: which Gemini model, which prompt, how hard to push the service.

Loaded from ``configs/annotate/*.yaml`` with :func:`multishot.config.load_config`; every default
lives here. The API key is deliberately *not* a field: it comes from the environment only
(``GEMINI_API_KEY`` / ``GOOGLE_API_KEY``, or Vertex AI settings), so it can never end up in a
resolved config written next to the outputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from multishot.config import Section

#: the repository's ``configs/annotate/`` folder, where the default prompt template lives
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs" / "annotate"


class AnnotateConfig(Section):
    """How :class:`annotate.captioner.Captioner` captions samples (HoloCine §3.1 annotation)."""

    model: str = Field("gemini-2.5-flash", description="Gemini model name (HoloCine used 2.5 Flash)")
    language: str = Field("English", description="language the captions are written in")
    templates_dir: Path = Field(
        CONFIG_DIR, description="the folder prompt templates are read from (nothing outside it is read)"
    )
    prompt_template: Path = Field(
        CONFIG_DIR / "prompt.txt",
        description="prompt template file inside templates_dir, using $num_shots, $duration_s, "
        "$shot_list and $language; a relative path is taken from templates_dir",
    )
    api_version: Literal["v1", "v1beta"] = Field(
        "v1beta", description="Gemini REST API version (the Files API and JSON schemas live in v1beta)"
    )
    temperature: float = Field(0.2, ge=0, le=2)
    video_fps: float | None = Field(
        None, gt=0, le=24, description="frames per second the model samples (None: service default, 1)"
    )
    inline_max_bytes: int = Field(
        14 * 2**20,
        ge=0,
        description="videos up to this size go inline (base64, 20 MB request limit); larger ones "
        "through the Files API",
    )
    file_poll_interval_s: float = Field(2.0, gt=0, description="seconds between Files API state polls")
    file_active_timeout_s: float = Field(300.0, gt=0, description="give up if an upload is not ACTIVE by then")
    requests_per_minute: float = Field(60.0, gt=0, description="cap on generateContent calls per minute")
    concurrency: int = Field(4, ge=1, description="samples captioned at once")
    request_timeout_s: float = Field(300.0, gt=0, description="per HTTP request")
    max_attempts: int = Field(6, ge=1, description="tries per request on 429 / 5xx / timeouts")
    backoff_initial_s: float = Field(2.0, ge=0, description="first backoff; doubles each retry")
    backoff_max_s: float = Field(60.0, ge=0, description="cap on one backoff")
    retry_after_max_s: float = Field(300.0, ge=0, description="cap on a server's Retry-After")
    correction_attempts: int = Field(
        1, ge=0, description="re-asks with a corrective message after an invalid reply"
    )
    text_tokenizer: Path | None = Field(
        None,
        description="the text encoder's tokenizer folder (UMT5, transformers layout): replies whose "
        "prompt exceeds max_prompt_tokens are asked to be shorter, then failed; None: not counted",
    )
    max_prompt_tokens: int = Field(
        512, ge=8, description="tokens the text encoder reads (UMT5 in Wan: 512); longer prompts lose shot captions"
    )
    cache_dir: str | None = Field(
        None,
        description="response cache folder or URI (None: the caller's default, e.g. OUT/_work/captions)",
    )

    @model_validator(mode="after")
    def _template_inside_its_folder(self) -> AnnotateConfig:
        from multishot.annotate.prompt import PromptTemplate

        try:  # checked (read) at load, so a bad template is a config error naming the key
            PromptTemplate.load(self.prompt_template, self.language, self.templates_dir)
        except (OSError, ValueError) as err:
            raise ValueError(f"prompt_template: {err}") from None
        return self

    @model_validator(mode="after")
    def _backoff_order(self) -> AnnotateConfig:
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("backoff_max_s must be >= backoff_initial_s")
        return self
