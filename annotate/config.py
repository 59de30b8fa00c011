"""The annotation config: which backend and model, which prompt, how hard to push the service.

Loaded from ``configs/annotate/*.yaml`` with :func:`multishot.config.load_config`; every default
lives here. The API key is deliberately *not* a field: it comes from the environment only
(Gemini: ``GEMINI_API_KEY`` / ``GOOGLE_API_KEY``, or Vertex AI settings; openai: the variable
``api_key_env`` names), so it can never end up in a resolved config written next to the outputs.
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

    backend: Literal["gemini", "openai"] = Field(
        "gemini",
        description="gemini: Google's API (google-genai SDK); openai: any OpenAI-compatible chat "
        "endpoint serving a vision-language model (vLLM or SGLang with Qwen2.5-VL / Qwen3-VL)",
    )
    model: str = Field(
        "gemini-2.5-flash",
        description="model name: Gemini's (HoloCine used 2.5 Flash), or the name the openai endpoint "
        "serves (vLLM: the --served-model-name, by default the Hugging Face id); required for openai",
    )
    base_url: str | None = Field(
        None, description="openai backend: the endpoint's base URL, e.g. http://gpu-node:8000/v1 (required there)"
    )
    api_key_env: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="openai backend: the NAME of the environment variable holding the endpoint's API "
        "key (the key itself is never a config value); None: the server needs no key (vLLM without --api-key)",
    )
    media: Literal["frames", "video"] = Field(
        "frames",
        description="openai backend: how the sample is shown: frames (JPEG image parts of evenly "
        "spaced frames, each labelled with its time) or video (the mp4 as a video_url data URL, "
        "for servers that take one, e.g. vLLM with Qwen2.5-VL)",
    )
    frames: int = Field(
        8, ge=1, le=64,
        description="openai backend, media frames: evenly spaced frames per sample (a shot none of "
        "them falls in gets its middle frame as well)",
    )
    frame_size: int = Field(
        448, ge=28, le=4096, description="openai backend, media frames: longest side of a frame in pixels"
    )
    jpeg_quality: int = Field(85, ge=1, le=100, description="openai backend, media frames: JPEG quality")
    max_output_tokens: int = Field(
        1024, ge=64,
        description="openai backend: max_tokens per reply (a reply cut off there is invalid JSON and is "
        "asked again); bounds a model that loops",
    )
    structured_output: bool = Field(
        True,
        description="openai backend: ask for response_format json_schema (vLLM's guided decoding); a "
        "server that refuses it is asked again without, and replies are parsed as plain JSON "
        "(a ```json fence or prose around the object is tolerated)",
    )
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
    requests_per_minute: float = Field(
        60.0, gt=0, description="cap on caption requests (generateContent / chat completions) started per minute"
    )
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
    def _openai_needs_endpoint(self) -> AnnotateConfig:
        if self.backend == "openai":
            if not self.base_url:
                raise ValueError("base_url: required with backend openai (e.g. http://gpu-node:8000/v1)")
            if "model" not in self.model_fields_set:
                raise ValueError("model: required with backend openai (the name the endpoint serves, "
                                 "e.g. Qwen/Qwen2.5-VL-7B-Instruct)")
        return self

    @model_validator(mode="after")
    def _backoff_order(self) -> AnnotateConfig:
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("backoff_max_s must be >= backoff_initial_s")
        return self
