"""Configuration of ``multishot eval`` (``configs/eval/*.yaml``); every default lives here."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from multishot.config import FrozenSection
from multishot.pipeline.config import DetectConfig


def _detect_default() -> DetectConfig:
    # The pipeline drops shots under 1 s because it wants training material; an evaluation must
    # see every cut the model made, however short the shot, so nothing is dropped here.
    return DetectConfig(min_shot_s=0.0)


class EvalConfig(FrozenSection):
    """What ``multishot eval`` measures with, and how: the models each column of HoloCine's /
    CausalCine's tables is computed with (see :mod:`multishot.evaluate.video`).

    A column whose weights are not given is reported as skipped (never as a number).
    """

    detect: DetectConfig = Field(
        default_factory=_detect_default,
        description="cut detector for SCA and for the shots of the intra-shot columns (TransNetV2, min_shot_s=0)",
    )
    dino_v1_weights: Path | None = Field(None, description=(
        "DINO v1 ViT-B/16 for subject_consistency: dino_vitbase16_pretrain.pth (the file VBench "
        "loads) or a transformers ViTModel folder (facebook/dino-vitb16); None: skipped"))
    background_clip_model: str = Field("ViT-B-32-quickgelu", description=(
        "open_clip name of VBench's background-consistency CLIP (OpenAI ViT-B/32)"))
    background_clip_weights: Path | None = Field(None, description=(
        "OpenAI ViT-B-32.pt (or open_clip's copy) for background_consistency; None: skipped"))
    aesthetic_clip_model: str = Field("ViT-L-14-quickgelu", description=(
        "open_clip name of the aesthetic CLIP (OpenAI ViT-L/14, QuickGELU)"))
    aesthetic_clip_weights: Path | None = Field(None, description=(
        "OpenAI ViT-L-14.pt for the aesthetic column; None: skipped"))
    aesthetic_head_weights: Path | None = Field(None, description=(
        "LAION's sa_0_4_vit_l_14_linear.pth (nn.Linear(768, 1)) that VBench uses; None: aesthetic skipped"))
    viclip_weights: Path | None = Field(None, description=(
        "ViClip-InternVid-10M-FLT.pth (VBench's ViCLIP) for inter_shot_viclip, semantic_global and "
        "semantic_shot; None: skipped"))
    dinov2_weights: Path | None = Field(None, description=(
        "DINOv2 folder in transformers layout (facebook/dinov2-base) for inter_shot_dinov2; None: skipped"))
    dinov2_frames_per_shot: int = Field(16, ge=1, description=(
        "frames spread evenly over each shot for the DINOv2 shot embedding"))
    batch_size: int = Field(32, ge=1, description="frames per image-model forward (VBench's aesthetic uses 32)")
