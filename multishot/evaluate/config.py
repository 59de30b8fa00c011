"""Configuration of ``multishot eval`` (``configs/eval/*.yaml``); every default lives here."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from multishot.pipeline.config import AnalyseConfig, DetectConfig


def _detect_default() -> DetectConfig:
    # The pipeline drops shots under 1 s because it wants training material; an evaluation must
    # see every cut the model made, however short the shot, so nothing is dropped here.
    return DetectConfig(min_shot_s=0.0)


class EvalConfig(BaseModel):
    """What ``multishot eval`` measures with, and how.

    A metric whose weights are not given is reported as skipped (never as a number).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # .inf / .nan: refused at load

    detect: DetectConfig = Field(
        default_factory=_detect_default,
        description="cut detector for SCA, the pipeline's own (backend, threshold, min_shot_s=0)",
    )
    clip_model: str = Field(
        AnalyseConfig.model_fields["clip_model"].default, description="open_clip architecture name"
    )
    clip_weights: Path | None = Field(
        None, description="open_clip weights file (the aesthetic stage's ViT-L/14); None: CLIP metrics skipped"
    )
    dino_weights: Path | None = Field(
        None, description="DINOv2 folder in transformers save_pretrained layout; None: DINO metric skipped"
    )
    frames_per_shot: int = Field(16, ge=2, description="frames sampled evenly inside each shot for consistency")
    batch_size: int = Field(32, ge=1, description="frames per CLIP / DINOv2 forward")
