"""Stage 3, shot analysis: brightness, OCR text-area ratio and aesthetic score per shot.

All three come from **one decode pass** over the source: ``frames_per_shot`` frames are picked
evenly inside each shot (at the centres of equal parts), decoded in one sequential sweep, and
scored as they arrive, so memory holds one shot's frames at a time.

* brightness: mean BT.709 luma ``Y' = 0.2126 R' + 0.7152 G' + 0.0722 B'`` over the sampled
  frames, 0-255 (on the gamma-encoded values, as video luma is defined).
* OCR text-area ratio: the largest ratio over the first ``ocr_frames_per_shot`` sampled frames
  (see :mod:`pipeline.ocr`).
* aesthetic: the mean LAION score of the sampled frames (see :mod:`pipeline.aesthetic`), or
  ``None`` when the config gives no weights; the run then reports ``aesthetic: skipped``.

On a worker given a GPU the pass decodes on the GPU's decoder (:mod:`pipeline.gpu_video`), the
sampled frames stay on the GPU, brightness is computed there and CLIP scores them in batches of
``CLIP_BATCH`` across shots; only the frames OCR reads are copied to the host.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow.fs as pafs

from multishot.pipeline.config import AnalyseConfig
from multishot.pipeline.detect import DetectedShot
from multishot.pipeline.video import DecodeStats, iter_frames

if TYPE_CHECKING:
    from multishot.pipeline.gpu_video import FrameSource


BT709 = np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)
CLIP_BATCH = 64  # sampled frames per CLIP forward on a GPU (a ViT-L/14 batch of 64 is ~1 GiB)


@dataclass(frozen=True)
class ShotScores:
    """Scores of one shot; all ``None`` when none of its sampled frames decoded."""

    brightness: float | None
    ocr_text_ratio: float | None
    aesthetic: float | None


def sample_indices(shot: DetectedShot, count: int) -> list[int]:
    """``count`` source frame indices at the centres of ``count`` equal parts of the shot."""
    length = shot.end_frame - shot.start_frame
    picks = {shot.start_frame + int((k + 0.5) * length / count) for k in range(count)}
    return sorted(picks)


def mean_luma(frame: np.ndarray) -> float:
    """Mean BT.709 luma (0-255) of an RGB uint8 frame ``[H, W, 3]``."""
    return float(frame.reshape(-1, 3).mean(axis=0) @ BT709)


class ShotAnalyser:
    """Holds the OCR engine and (when weights are configured) the aesthetic model; one per actor.

    Args:
        decoder: the pipeline's ``detect.decoder``: ``auto`` decodes on the GPU's decoder when
            this worker has a GPU, ``cpu`` never does.
        source: where sampled frames come from as tensors (the tensor path); default: a GPU
            source when CUDA is available, else NumPy frames from PyAV.
    """

    def __init__(self, config: AnalyseConfig, decoder: str = "auto", source: FrameSource | None = None):
        import torch

        self.config = config
        self.source = source
        if source is None and torch.cuda.is_available():
            from multishot.pipeline.gpu_video import FrameSource

            self.source = FrameSource("cuda", use_gpu_decoder=decoder == "auto")
        self.text = None
        if config.ocr_backend != "none" and config.ocr_frames_per_shot > 0:
            from multishot.pipeline.ocr import TextDetector

            self.text = TextDetector(config)
        self.aesthetic = None
        if config.aesthetic_enabled:
            from multishot.pipeline.aesthetic import AestheticScorer

            self.aesthetic = AestheticScorer(config.clip_model, config.clip_weights, config.aesthetic_head_weights)

    def analyse(
        self, source: str, fs: pafs.FileSystem, fps: float, shots: list[DetectedShot], stats: DecodeStats
    ) -> list[ShotScores]:
        """Scores for each of ``shots`` (in order) from one decode pass over ``source``."""
        owner: dict[int, int] = {}
        for s, shot in enumerate(shots):
            for index in sample_indices(shot, self.config.frames_per_shot):
                owner.setdefault(index, s)
        if self.source is not None:
            return self._analyse_gpu(source, fs, fps, len(shots), owner, stats)
        scores: list[ShotScores | None] = [None] * len(shots)
        pending: dict[int, list[np.ndarray]] = {}
        wanted = np.array(sorted(owner))
        for index, frame in iter_frames(source, fs, fps=fps, wanted=wanted, stats=stats):
            s = owner[index]
            for done in [d for d in pending if d < s]:
                scores[done] = self._score(pending.pop(done))
            pending.setdefault(s, []).append(frame)
        for done, frames in pending.items():
            scores[done] = self._score(frames)
        return [s if s is not None else ShotScores(None, None, None) for s in scores]

    def _score(self, frames: list[np.ndarray]) -> ShotScores:
        brightness = float(np.mean([mean_luma(f) for f in frames]))
        ocr = None
        if self.text is not None:
            ocr = max(self.text.ratio(f) for f in frames[: self.config.ocr_frames_per_shot])
        aesthetic = None
        if self.aesthetic is not None:
            aesthetic = float(np.mean(self.aesthetic.score(frames)))
        return ShotScores(brightness, 0.0 if ocr is None else ocr, aesthetic)

    def _analyse_gpu(self, source: str, fs: pafs.FileSystem, fps: float, count: int, owner: dict[int, int],
                     stats: DecodeStats) -> list[ShotScores]:
        """:meth:`analyse` with the sampled frames decoded, kept and scored on the GPU; the same
        scores as the CPU path up to the decoders' colour conversion (about one level of 255)."""
        import torch

        wanted = np.array(sorted(owner))
        luma = torch.tensor(BT709, device=self.source.device)
        shot_of, brightness, aesthetic, batch = [], [], [], []
        ocr: list[float | None] = [None] * count
        seen = [0] * count
        frames = self.source.frames(source, fs, fps=fps, small=None, analysis=None, analysis_wanted=wanted,
                                    wanted=wanted, stats=stats)
        for index, _, frame in frames:
            s = owner[index]
            shot_of.append(s)
            brightness.append(frame.float().mean(dim=(0, 1)) @ luma)
            if self.text is not None and seen[s] < self.config.ocr_frames_per_shot:
                ocr[s] = max(ocr[s] or 0.0, self.text.ratio(frame.cpu().numpy()))
            seen[s] += 1
            if self.aesthetic is not None:
                batch.append(frame)
                if len(batch) == CLIP_BATCH:
                    aesthetic.append(self.aesthetic.score_tensors(torch.stack(batch)))
                    batch = []
        if batch:
            aesthetic.append(self.aesthetic.score_tensors(torch.stack(batch)))
        # one copy to the host for the whole video
        bright = torch.stack(brightness).cpu().numpy() if brightness else np.zeros(0)
        aes = torch.cat(aesthetic).cpu().numpy() if aesthetic else None
        shot_of = np.array(shot_of, dtype=int)
        scores = []
        for s in range(count):
            mine = shot_of == s
            if not mine.any():
                scores.append(ShotScores(None, None, None))
                continue
            scores.append(ShotScores(float(bright[mine].mean()), 0.0 if ocr[s] is None else ocr[s],
                                     None if aes is None else float(aes[mine].mean())))
        return scores
