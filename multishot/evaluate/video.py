"""Evaluate one generated video: the columns of HoloCine's Table 1, each as its source computes it.

| column | source | how |
|---|---|---|
| ``sca`` | HoloCine app. A.1 | TransNetV2 cuts matched to the requested ones (:mod:`.sca`) |
| ``inter_shot_viclip`` | HoloCine §4 | ViCLIP video–video cosine over shot pairs whose captions name the same ``[characterK]`` |
| ``inter_shot_dinov2`` | CausalCine | DINOv2 shot embeddings, cosine over the same character-matched pairs |
| ``subject_consistency`` | VBench | DINO v1 ViT-B/16, every frame vs the first and the previous, inside each detected shot |
| ``background_consistency`` | VBench | the same with CLIP ViT-B/32 |
| ``semantic_global`` | HoloCine §4 (VBench ``overall_consistency``) | ViCLIP: global caption vs the whole video (8 middle frames) |
| ``semantic_shot`` | HoloCine §4 | ViCLIP: each shot caption vs its shot, mean over shots |
| ``aesthetic`` | VBench ``aesthetic_quality`` | LAION linear head on CLIP ViT-L/14, every frame, / 10, mean |

The video's shots are taken two ways. The **detected** shots (TransNetV2, or ``config.detect``)
give SCA and the intra-shot columns (HoloCine splits with TransNetV2 before VBench's metrics;
each shot is one VBench clip, pooled VBench's way: ``Σ sim / Σ (frames − 1)``). The **requested**
shots (the prompt's cut frames; the detected ones when none were given) give the inter-shot and
per-shot semantic columns, because those pair a shot with its caption.

Not from the papers (their evaluation code is not public): CausalCine compares subject crops
(detector + segmenter) with DINOv2; without a detector we embed whole frames
(``dinov2_frames_per_shot`` spread over the shot, mean of L2-normalised CLS tokens).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import torch

from multishot.dataset.record import split_prompt
from multishot.evaluate.config import EvalConfig
from multishot.evaluate.consistency import (
    ClipImageEncoder,
    DinoV1Encoder,
    Dinov2Encoder,
    LinearAestheticHead,
    character_pairs,
    pair_similarity,
    shot_embedding,
)
from multishot.evaluate.sca import cuts_from_shots, shot_cut_accuracy
from multishot.evaluate.vbench import clip_transform, consistency_sums, middle_frame_indices, pooled
from multishot.evaluate.viclip import ViCLIP
from multishot.pipeline.decode import DecodeStats, iter_frames, probe
from multishot.pipeline.detect import make_detector

#: every column a video may get, in table order (HoloCine's Table 1, then CausalCine's DINOv2)
METRICS = (
    "sca", "inter_shot_viclip", "inter_shot_dinov2", "subject_consistency", "background_consistency",
    "semantic_global", "semantic_shot", "aesthetic",
)
#: the columns VBench pools frame-weighted over clips (``Σ sim / Σ cnt``), per video and overall
POOLED = ("subject_consistency", "background_consistency")


def _ranges(cuts: Sequence[int], num_frames: int) -> list[tuple[int, int]]:
    """Half-open frame ranges of the shots that ``cuts`` (first frames of new shots) delimit."""
    edges = [0, *sorted(cuts), num_frames]
    return [(a, b) for a, b in zip(edges, edges[1:]) if b > a]


def _sample(shot: tuple[int, int], count: int) -> list[int]:
    """Up to ``count`` frame indices spread evenly over a half-open range, both ends included."""
    a, b = shot
    return sorted(set(np.linspace(a, b - 1, min(count, b - a)).round().astype(int).tolist()))


class Evaluator:
    """Holds the detector and encoders for many videos (they load once).

    Raises:
        FileNotFoundError: a weights path in ``config`` does not exist.
        RuntimeError: a weights file does not fit its architecture.
    """

    def __init__(self, config: EvalConfig):
        c = self.config = config
        self.detector = make_detector(c.detect)
        self.dino_v1 = DinoV1Encoder(c.dino_v1_weights) if c.dino_v1_weights else None
        self.background = (ClipImageEncoder(c.background_clip_model, c.background_clip_weights, c.batch_size)
                           if c.background_clip_weights else None)
        self.aesthetic = self.aesthetic_head = None
        if c.aesthetic_clip_weights and c.aesthetic_head_weights:
            self.aesthetic = ClipImageEncoder(c.aesthetic_clip_model, c.aesthetic_clip_weights, c.batch_size)
            self.aesthetic_head = LinearAestheticHead.load(c.aesthetic_head_weights, self.aesthetic.model.visual.output_dim)
        self.viclip = ViCLIP.load(c.viclip_weights) if c.viclip_weights else None
        if self.viclip is not None and torch.cuda.is_available():
            self.viclip = self.viclip.cuda()
        self.dinov2 = Dinov2Encoder(c.dinov2_weights, c.batch_size) if c.dinov2_weights else None

    def evaluate(self, path: str | Path, cut_frames: Sequence[int] | None, prompt: str | None) -> dict:
        """Metrics of the mp4 at ``path``.

        Args:
            cut_frames: the requested cuts, pixel frames where each shot after the first starts
                (the sample record's ``cut_frames``); ``None``: unknown, SCA is skipped.
            prompt: the HoloCine prompt (``[global caption] … [per shot caption] … [shot cut] …``);
                ``None``: the text columns and the character-matched pairs are skipped.

        Returns:
            ``{"video", "num_frames", "fps", "requested_cuts", "detected_cuts", "sca" (the
            :class:`SCAResult` as a dict, or None), "metrics" {name: float}, "skipped" {name:
            reason}, "pooled" {name: [Σ sim, Σ cnt]} for :data:`POOLED`}``; every name of
            :data:`METRICS` is in exactly one of ``metrics`` and ``skipped``.

        Raises:
            pipeline.decode.ProbeError: the file is not a readable video.
            ValueError: a requested cut lies outside the video; the prompt is not a multi-shot prompt.
        """
        path = str(path)
        info = probe(path)
        stats = DecodeStats()
        shots = self.detector.detect(path, pafs.LocalFileSystem(), info.fps, stats)
        num_frames = stats.frames or info.num_frames
        detected = cuts_from_shots(shots)
        metrics: dict[str, float] = {}
        skipped: dict[str, str] = {}
        sca = None
        if cut_frames is None:
            skipped["sca"] = "no requested cut frames"
        else:
            sca = shot_cut_accuracy(detected, cut_frames, num_frames)
            metrics["sca"] = sca.sca
        captions = split_prompt(prompt) if prompt is not None else None
        requested = _ranges(detected if cut_frames is None else cut_frames, num_frames)
        sums = self._columns(path, info.fps, _ranges(detected, num_frames), requested, captions, metrics, skipped)
        assert set(metrics) | set(skipped) == set(METRICS), (metrics, skipped)
        return {
            "video": path, "num_frames": num_frames, "fps": info.fps,
            "requested_cuts": None if cut_frames is None else sorted(int(c) for c in cut_frames),
            "detected_cuts": detected, "sca": None if sca is None else sca.to_dict(),
            "metrics": metrics, "skipped": skipped, "pooled": sums,
        }

    def _columns(self, path, fps, detected, requested, captions, metrics, skipped) -> dict:
        missing = {
            "subject_consistency": (self.dino_v1, "dino_v1_weights"),
            "background_consistency": (self.background, "background_clip_weights"),
            "aesthetic": (self.aesthetic, "aesthetic_clip_weights and aesthetic_head_weights"),
            "inter_shot_viclip": (self.viclip, "viclip_weights"),
            "semantic_global": (self.viclip, "viclip_weights"),
            "semantic_shot": (self.viclip, "viclip_weights"),
            "inter_shot_dinov2": (self.dinov2, "dinov2_weights"),
        }
        for name, (model, key) in missing.items():
            if model is None:
                skipped[name] = f"no {key} in the config"
        if all(model is None for model, _ in missing.values()):
            return {}
        # every frame, as VBench's load_video reads a clip: [T, 3, H, W] uint8
        frames = torch.from_numpy(np.stack([f for _, f in iter_frames(path, fps=fps)])).permute(0, 3, 1, 2)
        num = len(frames)
        detected = [(a, min(b, num)) for a, b in detected if a < num]
        requested = [(a, min(b, num)) for a, b in requested if a < num]
        sums: dict[str, list[float]] = {}
        for name, encoder in (("subject_consistency", self.dino_v1), ("background_consistency", self.background)):
            if encoder is not None:
                per_shot = [consistency_sums(encoder.images(frames[a:b])) for a, b in detected]
                value = pooled(per_shot)
                sums[name] = [sum(s for s, _ in per_shot), sum(c for _, c in per_shot)]
                _put(metrics, skipped, name, value, "no shot has two frames")
        if self.aesthetic is not None:
            with torch.inference_mode():
                scores = self.aesthetic_head(self.aesthetic.images(frames).to(self.aesthetic_head.weight)).squeeze(-1)
            metrics["aesthetic"] = float((scores / 10).mean())
        pairs = None
        if captions is not None:
            global_caption, shot_captions = captions
            if len(shot_captions) == len(requested):
                pairs = character_pairs(shot_captions)
                no_pair = "no two shots name the same [characterK]"
            else:
                no_pair = f"the prompt has {len(shot_captions)} shots, the video {len(requested)}"
        else:
            no_pair = "no prompt"
        if self.viclip is not None:
            def clip_of(a: int, b: int) -> torch.Tensor:
                index = [a + i for i in middle_frame_indices(self.viclip.num_frames, b - a)]
                return clip_transform(frames[index], self.viclip.resolution)

            shot_videos = self.viclip.encode_video(torch.stack([clip_of(a, b) for a, b in requested]))
            _put(metrics, skipped, "inter_shot_viclip", pair_similarity(shot_videos, pairs) if pairs else None, no_pair)
            if captions is None:
                skipped["semantic_global"] = skipped["semantic_shot"] = "no prompt"
            else:
                texts = self.viclip.encode_text([global_caption, *shot_captions])
                whole = self.viclip.encode_video(clip_of(0, num)[None])
                metrics["semantic_global"] = float(whole[0] @ texts[0])
                if pairs is not None:
                    metrics["semantic_shot"] = float((shot_videos * texts[1:]).sum(-1).mean())
                else:
                    skipped["semantic_shot"] = no_pair
        if self.dinov2 is not None:
            n = self.config.dinov2_frames_per_shot
            shots = torch.stack([shot_embedding(self.dinov2.images([frames[i].permute(1, 2, 0).numpy()
                                                                    for i in _sample(s, n)])) for s in requested])
            _put(metrics, skipped, "inter_shot_dinov2", pair_similarity(shots, pairs) if pairs else None, no_pair)
        return sums


def _put(metrics: dict, skipped: dict, name: str, value: float | None, reason: str) -> None:
    if value is None:
        skipped[name] = reason
    else:
        metrics[name] = value


def evaluate_video(path: str | Path, cut_frames: Sequence[int] | None, prompt: str | None,
                   config: EvalConfig | None = None) -> dict:
    """Metrics of one mp4 (see :meth:`Evaluator.evaluate`); loads the models for this call only."""
    return Evaluator(config or EvalConfig()).evaluate(path, cut_frames, prompt)
