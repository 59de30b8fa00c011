"""Evaluate one generated video: detect its cuts, score SCA, and the consistency metrics.

The video's shots are taken two ways. The **detected** shots (the pipeline's TransNetV2, or the
backend named in ``config.detect``) give SCA and the intra-shot consistency (HoloCine splits
with TransNetV2 before VBench's metrics). The **requested** shots (the cut frames the prompt
asked for; the detected ones when none were given) give the inter-shot and per-shot text
similarities, because those pair a shot with its caption.
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
    ClipEncoder,
    DinoEncoder,
    character_pairs,
    inter_shot_similarity,
    shot_embedding,
    text_similarity,
    vbench_consistency,
)
from multishot.evaluate.sca import cuts_from_shots, shot_cut_accuracy
from multishot.pipeline.detect import make_detector
from multishot.pipeline.decode import DecodeStats, iter_frames, probe


#: every metric a video may get, in table order
METRICS = (
    "sca", "inter_shot_clip", "inter_shot_clip_same_character", "intra_shot_clip",
    "intra_shot_dino", "text_clip_global", "text_clip_shot",
)


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
    """

    def __init__(self, config: EvalConfig):
        self.config = config
        self.detector = make_detector(config.detect)
        self.clip = ClipEncoder(config.clip_model, config.clip_weights, config.batch_size) if config.clip_weights else None
        self.dino = DinoEncoder(config.dino_weights, config.batch_size) if config.dino_weights else None

    def evaluate(self, path: str | Path, cut_frames: Sequence[int] | None, prompt: str | None) -> dict:
        """Metrics of the mp4 at ``path``.

        Args:
            cut_frames: the requested cuts, pixel frames where each shot after the first starts
                (the sample record's ``cut_frames``); ``None``: unknown, SCA is skipped.
            prompt: the HoloCine prompt (``[global caption] … [per shot caption] … [shot cut] …``);
                ``None``: the text metrics are skipped.

        Returns:
            ``{"video", "num_frames", "fps", "requested_cuts", "detected_cuts", "sca" (the
            :class:`SCAResult` as a dict, or None), "metrics" {name: float}, "skipped" {name:
            reason}}``; every name of :data:`METRICS` is in exactly one of ``metrics`` and ``skipped``.

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
        captions = None
        if prompt is not None:
            global_caption, shot_captions = split_prompt(prompt)
            captions = (global_caption, shot_captions)
        layout = _ranges(detected if cut_frames is None else cut_frames, num_frames)
        self._consistency(path, info.fps, _ranges(detected, num_frames), layout, captions, metrics, skipped)
        assert set(metrics) | set(skipped) == set(METRICS), (metrics, skipped)
        return {
            "video": path, "num_frames": num_frames, "fps": info.fps,
            "requested_cuts": None if cut_frames is None else sorted(int(c) for c in cut_frames),
            "detected_cuts": detected, "sca": None if sca is None else sca.to_dict(),
            "metrics": metrics, "skipped": skipped,
        }

    def _consistency(self, path, fps, detected, requested, captions, metrics, skipped) -> None:
        if self.clip is None:
            for name in METRICS[1:]:
                if name != "intra_shot_dino":
                    skipped[name] = "no clip_weights in the config"
        if self.dino is None:
            skipped["intra_shot_dino"] = "no dino_weights in the config"
        if self.clip is None and self.dino is None:
            return
        n = self.config.frames_per_shot
        wanted = sorted({i for shot in detected + requested for i in _sample(shot, n)})
        frames = dict(iter_frames(path, fps=fps, wanted=np.asarray(wanted)))

        def embed(encoder, shots):
            return [encoder.images([frames[i] for i in _sample(s, n) if i in frames]) for s in shots]

        for name, encoder in (("intra_shot_clip", self.clip), ("intra_shot_dino", self.dino)):
            if encoder is not None:
                per_shot = [vbench_consistency(e) for e in embed(encoder, detected) if len(e) >= 2]
                if per_shot:
                    metrics[name] = float(np.mean(per_shot))
                else:
                    skipped[name] = "no shot has two frames"
        if self.clip is None:
            return
        shot_frames = embed(self.clip, requested)
        shots = torch.stack([shot_embedding(e) for e in shot_frames])
        value = inter_shot_similarity(shots)
        _put(metrics, skipped, "inter_shot_clip", value, "one shot only")
        if captions is None:
            skipped["inter_shot_clip_same_character"] = "no prompt"
            skipped["text_clip_global"] = skipped["text_clip_shot"] = "no prompt"
            return
        global_caption, shot_captions = captions
        pairs = character_pairs(shot_captions) if len(shot_captions) == len(requested) else []
        _put(metrics, skipped, "inter_shot_clip_same_character", inter_shot_similarity(shots, pairs),
             "no two shots name the same [characterK]" if len(shot_captions) == len(requested)
             else f"the prompt has {len(shot_captions)} shots, the video {len(requested)}")
        texts = self.clip.texts([global_caption, *shot_captions])
        metrics["text_clip_global"] = text_similarity(torch.cat(shot_frames), texts[0])
        if len(shot_captions) == len(requested):
            metrics["text_clip_shot"] = float(np.mean([text_similarity(e, t) for e, t in zip(shot_frames, texts[1:])]))
        else:
            skipped["text_clip_shot"] = f"the prompt has {len(shot_captions)} shots, the video {len(requested)}"


def _put(metrics: dict, skipped: dict, name: str, value: float | None, reason: str) -> None:
    if value is None:
        skipped[name] = reason
    else:
        metrics[name] = value


def evaluate_video(path: str | Path, cut_frames: Sequence[int] | None, prompt: str | None,
                   config: EvalConfig | None = None) -> dict:
    """Metrics of one mp4 (see :meth:`Evaluator.evaluate`); loads the models for this call only."""
    return Evaluator(config or EvalConfig()).evaluate(path, cut_frames, prompt)
