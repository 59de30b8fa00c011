"""The sample record: the one schema of a multi-shot sample, shared by every part.

A sample travels video → shots → sample → shard → batch → loss. Its JSON (the ``{key}.json``
member of a WebDataset shard, next to ``{key}.mp4``) is defined here and nowhere else: the
pipeline writes it, the annotator and the shards CLI read and extend it, the training loader
reads it. Bump :data:`SCHEMA_VERSION` when a field changes meaning.

Units
-----
* ``*_s``: seconds. Source times are in the source video's clock, output times in the sample's.
* ``*_frame`` / ``num_frames``: frames of the rendered sample (``fps``, usually 16) unless the name
  says ``source_``; frame ranges are half-open ``[start, end)``.
* latent frames: Wan's VAE encodes frame 0 alone and every 4 frames after it into one latent
  frame, so ``F`` frames (``F = 4k + 1``) give ``(F - 1) // 4 + 1`` latent frames and a cut at
  pixel frame ``f`` starts latent frame ``(f - 1) // 4 + 1`` (HoloCine ``shot_cut_frames``
  handling; see ``../shared/REFERENCE.md``).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

SCHEMA_VERSION = 1

#: Wan VAE temporal stride: 4 pixel frames per latent frame after the first.
VAE_TEMPORAL_STRIDE = 4

#: HoloCine prompt tags (inference code ``WanPrompter``; paper §3).
GLOBAL_TAG = "[global caption]"
PER_SHOT_TAG = "[per shot caption]"
CUT_TAG = "[shot cut]"

#: WebDataset splits a member name at the first dot, so keys use only these characters.
KEY_PATTERN = re.compile(r"^[A-Za-z0-9_-]+$")

CaptionStatus = Literal["pending", "ok", "failed"]
AestheticStatus = Literal["scored", "skipped"]


def num_latent_frames(num_frames: int) -> int:
    """Latent frames of a clip of ``num_frames`` pixel frames: ``(F - 1) // 4 + 1``.

    Raises:
        ValueError: ``num_frames`` is not of the form ``4k + 1`` (Wan's VAE needs it).
    """
    if num_frames < 1 or (num_frames - 1) % VAE_TEMPORAL_STRIDE:
        raise ValueError(f"num_frames must be 4k+1, got {num_frames}")
    return (num_frames - 1) // VAE_TEMPORAL_STRIDE + 1


def latent_cut_frame(cut_frame: int) -> int:
    """The latent frame that a shot starting at pixel frame ``cut_frame`` (> 0) starts in.

    ``(f - 1) // 4 + 1``, as HoloCine maps ``shot_cut_frames``; e.g. 241 frames with cuts
    ``[37, 73, 113, 169, 205]`` give latent cuts ``[10, 19, 29, 43, 52]`` of 61 latent frames.

    Raises:
        ValueError: ``cut_frame < 1`` (frame 0 starts the first shot, it is no cut).
    """
    if cut_frame < 1:
        raise ValueError(f"a cut frame is >= 1, got {cut_frame}")
    return (cut_frame - 1) // VAE_TEMPORAL_STRIDE + 1


def build_prompt(global_caption: str, shot_captions: list[str]) -> str:
    """HoloCine's hierarchical prompt: ``[global caption] G [per shot caption] S1 [shot cut] S2 …``.

    Raises:
        ValueError: no shot captions.
    """
    if not shot_captions:
        raise ValueError("a prompt needs at least one shot caption")
    shots = f" {CUT_TAG} ".join(c.strip() for c in shot_captions)
    return f"{GLOBAL_TAG} {global_caption.strip()} {PER_SHOT_TAG} {shots}"


#: HoloCine's closing sentence of a global caption, "This scene contains N shots."
SHOT_COUNT_SENTENCE = re.compile(r"this scene contains (\d+) shots?\.?", re.IGNORECASE)


def with_shot_count(global_caption: str, num_shots: int) -> str:
    """``global_caption`` whose "This scene contains N shots." says ``num_shots``: the sentence
    is rewritten where present, appended where absent (HoloCine's global captions end with it)."""
    plural = "s" if num_shots != 1 else ""
    sentence = f"This scene contains {num_shots} shot{plural}."
    if SHOT_COUNT_SENTENCE.search(global_caption):
        return SHOT_COUNT_SENTENCE.sub(sentence, global_caption, count=1)
    return f"{global_caption.strip()} {sentence}"


def split_prompt(prompt: str) -> tuple[str, list[str]]:
    """The inverse of :func:`build_prompt`: ``(global caption, shot captions)``, tags removed.

    Raises:
        ValueError: the prompt lacks ``[global caption]`` or ``[per shot caption]``.
    """
    head, sep, shots = prompt.partition(PER_SHOT_TAG)
    if not sep or GLOBAL_TAG not in head:
        raise ValueError(f"a multi-shot prompt has {GLOBAL_TAG} and then {PER_SHOT_TAG}: {prompt[:80]!r}")
    return head.split(GLOBAL_TAG, 1)[1].strip(), [s.strip() for s in shots.split(CUT_TAG)]


class Shot(BaseModel):
    """One shot inside a sample, with where it came from and how it scored."""

    model_config = ConfigDict(extra="forbid")

    index: int = Field(ge=0, description="0-based position in the sample")
    source_start_frame: int = Field(ge=0, description="first source frame (inclusive)")
    source_end_frame: int = Field(description="source frame after the last (exclusive)")
    source_start_s: float = Field(ge=0)
    source_end_s: float
    start_frame: int = Field(ge=0, description="first output frame (inclusive)")
    end_frame: int = Field(description="output frame after the last (exclusive)")
    latent_start_frame: int = Field(ge=0, description="first latent frame of the shot")
    brightness: float = Field(description="mean BT.709 luma, 0-255")
    ocr_text_ratio: float = Field(ge=0, le=1, description="fraction of frame area in text boxes")
    aesthetic: float | None = Field(description="LAION aesthetic score (1-10), None if skipped")
    caption: str = ""

    @model_validator(mode="after")
    def _ranges(self) -> Shot:
        if self.source_end_frame <= self.source_start_frame:
            raise ValueError("source_end_frame must exceed source_start_frame")
        if self.end_frame <= self.start_frame:
            raise ValueError("end_frame must exceed start_frame")
        return self


class SampleRecord(BaseModel):
    """A multi-shot sample: the ``{key}.json`` of a shard.

    Invariants checked on construction (a violation raises ``pydantic.ValidationError``):
    the key is dot-free; ``num_frames`` is ``4k + 1``; shots tile ``[0, num_frames)`` in order;
    ``cut_frames`` are the shots' start frames after the first and ``latent_cut_frames`` their
    latent frames; captions, once ``caption_status == "ok"``, are non-empty for every shot.
    """

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    key: str
    source: str = Field(description="path or URI of the source video")
    source_id: str = Field(description="content fingerprint of the source video")
    bucket: str = Field(description="target-duration bucket name, e.g. '15s'")
    target_duration_s: float = Field(gt=0)
    fps: float = Field(gt=0, description="output frame rate")
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    num_frames: int = Field(description="output frames, 4k+1")
    num_latent_frames: int
    duration_s: float = Field(gt=0, description="num_frames / fps")
    cut_frames: list[int] = Field(description="output frame where each shot after the first starts")
    latent_cut_frames: list[int]
    shots: list[Shot]
    aesthetic_status: AestheticStatus
    caption_status: CaptionStatus = "pending"
    caption_error: str | None = None
    caption_model: str | None = None
    global_caption: str = ""
    config_hash: str

    @model_validator(mode="after")
    def _consistent(self) -> SampleRecord:
        if not KEY_PATTERN.match(self.key):
            raise ValueError(f"key {self.key!r} must match {KEY_PATTERN.pattern} (no dots)")
        if self.schema_version != SCHEMA_VERSION:
            raise ValueError(f"schema_version {self.schema_version}, this code reads {SCHEMA_VERSION}")
        if self.num_latent_frames != num_latent_frames(self.num_frames):
            raise ValueError("num_latent_frames disagrees with num_frames")
        if not self.shots:
            raise ValueError("a sample has at least one shot")
        if [s.index for s in self.shots] != list(range(len(self.shots))):
            raise ValueError("shot indices must be 0..n-1 in order")
        if self.shots[0].start_frame != 0 or self.shots[-1].end_frame != self.num_frames:
            raise ValueError("shots must cover [0, num_frames)")
        for a, b in zip(self.shots, self.shots[1:]):
            if a.end_frame != b.start_frame:
                raise ValueError(f"shots {a.index} and {b.index} are not contiguous")
        if self.cut_frames != [s.start_frame for s in self.shots[1:]]:
            raise ValueError("cut_frames disagree with the shots' start frames")
        if self.latent_cut_frames != [latent_cut_frame(f) for f in self.cut_frames]:
            raise ValueError("latent_cut_frames disagree with cut_frames")
        if self.caption_status == "ok" and (
            not self.global_caption.strip() or any(not s.caption.strip() for s in self.shots)
        ):
            raise ValueError("caption_status 'ok' needs a global caption and every shot caption")
        return self

    @property
    def num_shots(self) -> int:
        return len(self.shots)

    def prompt(self) -> str:
        """The HoloCine prompt of this sample (see :func:`build_prompt`).

        Raises:
            ValueError: captions are not filled in (``caption_status != "ok"``).
        """
        if self.caption_status != "ok":
            raise ValueError(f"sample {self.key} has caption_status {self.caption_status!r}")
        return build_prompt(self.global_caption, [s.caption for s in self.shots])

    def to_json(self) -> bytes:
        """UTF-8 JSON, the bytes of the shard's ``{key}.json``."""
        return self.model_dump_json(indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> SampleRecord:
        """Parse and validate; raises ``pydantic.ValidationError`` naming the bad field."""
        return cls.model_validate_json(data)
