"""``multishot shards audit``: check rendered samples themselves for what an editor would reject.

Every check reads the sample's mp4 (decoded whole), never the pipeline's own records, so it
audits any shard set, whichever run or settings made it:

* **bars**: rows (columns) at the picture's edges whose mean luma stays at or below
  ``detect.crop_limit`` on every frame (FFmpeg ``cropdetect``'s rule, :mod:`pipeline.picture`);
  a sample fails with any edge bar of ``MIN_BAR`` of the side or more.
* **black frames**: the fraction of frames that are black by ``blackdetect``'s rule
  (:func:`pipeline.picture.frame_darkness` at the shot detector's 48×27 scale, as the scan
  measures it); fails above ``filter.max_black_fraction``.
* **text**: OCR (:class:`pipeline.ocr.TextDetector`) on ``TEXT_PER_S`` frames per second at the
  analysis scale; fails on a title, credit or persistent text (:func:`pipeline.analyse.shot_title_boxes`) or a text-area
  ratio over ``filter.max_ocr_text_ratio`` on any of them.
* **scene changes inside a shot**: TransNetV2 on the sample's frames (48×27) with the pipeline's
  rule (hard cuts, and gradual transitions from either head, :func:`pipeline.detect.shots_of`);
  a detected boundary more than ``CUT_SLACK`` frames from every annotated cut of the record
  fails (a missing one is fine: two shots of one scene may look alike).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import av
import cv2
import numpy as np

from multishot.dataset.record import SampleRecord
from multishot.dataset.shards import parse_record, read_samples
from multishot.pipeline.analyse import CandidateScore, mean_luma, shot_title_boxes
from multishot.pipeline.config import PipelineConfig
from multishot.pipeline.ocr import boxes_ratio, counted
from multishot.pipeline.picture import ActiveArea, black_frames, frame_darkness, luma

MIN_BAR = 0.01  # an edge bar of this fraction of the side fails a sample
TEXT_PER_S = 2.0  # frames OCR'd per second of sample
CUT_SLACK = 2  # output frames a detected boundary may lie from an annotated cut


@dataclass
class SampleAudit:
    """What the audit found in one sample (``problems`` empty: it passes).

    ``bars``: px of bars at ``top``, ``bottom``, ``left``, ``right``; ``black_fraction``: of its
    frames; ``text``: the texts read that fail it, with the output frame; ``scene_changes``:
    ``(output frame, kind)`` of boundaries found away from the record's cuts.
    """

    key: str
    bucket: str
    num_shots: int
    num_frames: int
    bars: dict[str, int] = field(default_factory=dict)
    black_fraction: float = 0.0
    text: list[tuple[int, str]] = field(default_factory=list)
    scene_changes: list[tuple[int, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def _bars(profile: np.ndarray, limit: float) -> tuple[int, int]:
    """Rows (columns) at each end of a brightest-mean-luma profile ``[n]`` at or below ``limit``."""
    lit = np.flatnonzero(profile > limit)
    if not len(lit):
        return len(profile), 0
    return int(lit[0]), int(len(profile) - 1 - lit[-1])


class Auditor:
    """Holds the models the checks need (TransNetV2, the OCR engine); one per process."""

    def __init__(self, config: PipelineConfig | None = None):
        from multishot.pipeline.analyse import FrameScorer
        from multishot.pipeline.detect import TransNetV2Detector

        self.config = config or PipelineConfig()
        self.detector = TransNetV2Detector(self.config.detect)
        self.scorer = FrameScorer(self.config.analyse)

    def audit(self, record: SampleRecord, mp4: bytes) -> SampleAudit:
        """Audit one sample (its record gives only the key, bucket and annotated cuts)."""
        from multishot.pipeline.detect import shots_of
        from multishot.pipeline.transitions import thumbnails
        from multishot.pipeline.decode import VideoInfo, analysis_size

        detect, analyse, flt = self.config.detect, self.config.analyse, self.config.filter
        small, rows, cols, sampled = [], None, None, []
        step = max(1, int(round(record.fps / TEXT_PER_S)))
        with av.open(io.BytesIO(mp4)) as container:  # streamed: a 60 s sample is 1 GB decoded
            for i, decoded in enumerate(container.decode(video=0)):
                frame = decoded.to_ndarray(format="rgb24")
                y = luma(frame)
                r, c = y.mean(axis=1), y.mean(axis=0)
                rows = r if rows is None else np.maximum(rows, r)
                cols = c if cols is None else np.maximum(cols, c)
                small.append(cv2.resize(frame, self.detector.size, interpolation=cv2.INTER_AREA))
                if i % step == 0:  # kept at the analysis scale
                    h, w = frame.shape[:2]
                    info = VideoInfo(duration_s=0.0, fps=record.fps, num_frames=0, width=w, height=h, codec="")
                    sampled.append((i, cv2.resize(frame, analysis_size(info, analyse.analysis_short_side),
                                                  interpolation=cv2.INTER_AREA)))
        small = np.stack(small)
        n, (h, w) = len(small), (len(rows), len(cols))
        out = SampleAudit(record.key, record.bucket, record.num_shots, n)
        # bars: the brightest mean luma of each row / column over the sample
        top, bottom = _bars(rows, detect.crop_limit)
        left, right = _bars(cols, detect.crop_limit)
        out.bars = {"top": top, "bottom": bottom, "left": left, "right": right}
        if max(top, bottom) >= MIN_BAR * h or max(left, right) >= MIN_BAR * w:
            out.problems.append(f"bars {top}/{bottom}/{left}/{right} px (top/bottom/left/right)")
        # black frames, on the detector's 48x27 frames (as the scan measures them)
        ratio, _ = frame_darkness(small, ActiveArea(), detect.black_pixel_threshold)
        out.black_fraction = float(black_frames(ratio, detect).mean())
        if out.black_fraction > flt.max_black_fraction:
            out.problems.append(f"{out.black_fraction:.0%} of frames black")
        # text on sampled frames at the analysis scale
        if self.scorer.text is not None:
            read = [CandidateScore(i, mean_luma(frame), self.scorer.text_boxes(frame)) for i, frame in sampled]
            titles = {id(b) for b in shot_title_boxes(read, analyse)}
            for candidate in read:
                boxes = [b for b in candidate.text_boxes if id(b) in titles]
                shown = counted(candidate.text_boxes, analyse.ocr_min_confidence)
                if boxes or boxes_ratio(shown) > flt.max_ocr_text_ratio:
                    out.text += [(candidate.index, b.text) for b in (boxes or shown)]
            if out.text:
                out.problems.append(f"text on {len({i for i, _ in out.text})} sampled frames: "
                                    + ", ".join(sorted({t for _, t in out.text}))[:120])
        # scene changes away from the annotated cuts
        single, many = self.detector.predict(small)
        shots = shots_of(detect.model_copy(update={"min_shot_s": 0.0}), single, many, record.fps, thumbnails(small))
        cuts = record.cut_frames
        for previous, shot in zip(shots, shots[1:]):
            kind = "gradual" if shot.start_frame > previous.end_frame else "cut"
            at = (previous.end_frame + shot.start_frame) // 2
            if all(abs(at - c) > CUT_SLACK for c in cuts) and not (
                    kind == "gradual" and any(previous.end_frame - CUT_SLACK <= c <= shot.start_frame + CUT_SLACK for c in cuts)):
                out.scene_changes.append((at, kind))
        if shots and shots[0].start_frame > CUT_SLACK:  # a transition from the first frame
            out.scene_changes.append((0, "gradual"))
        if shots and shots[-1].end_frame < n - CUT_SLACK:  # one into the last frame
            out.scene_changes.append((shots[-1].end_frame, "gradual"))
        if out.scene_changes:
            out.problems.append("scene change inside a shot at output frame "
                                + ", ".join(f"{f} ({k})" for f, k in out.scene_changes))
        return out


def iter_samples(shard_set) -> Iterator[tuple[SampleRecord, bytes]]:
    """``(record, mp4 bytes)`` of every sample of a :class:`dataset.shardset.ShardSet` with an mp4."""
    for name in shard_set.progress_bar(shard_set.shard_names(), "auditing"):
        for sample in read_samples(shard_set.fs, shard_set.layout.shard(name),
                                   max_member_bytes=shard_set.max_member_bytes,
                                   select=lambda m: m.endswith((".json", ".mp4"))):
            if "mp4" in sample and "json" in sample:
                yield parse_record(sample["json"], sample["__key__"]), sample["mp4"]


def audit_set(shard_set, config: PipelineConfig | None = None) -> list[SampleAudit]:
    """Audit every sample of a shard set, in shard order.

    Raises:
        ValueError: the set holds no sample with a video (a latent set).
    """
    auditor = Auditor(config)
    results = [auditor.audit(record, mp4) for record, mp4 in iter_samples(shard_set)]
    if not results:
        raise ValueError(f"{shard_set.layout.root}: no sample with an mp4 to audit (a latent shard set?)")
    return results


def summary(results: list[SampleAudit]) -> dict:
    """Counts over audited samples: how many fail each check, and in all."""
    def failing(check: str) -> int:
        return sum(any(p.startswith(check) for p in r.problems) for r in results)

    return {"samples": len(results), "failing": sum(bool(r.problems) for r in results),
            "bars": failing("bars"), "black": sum(any("black" in p for p in r.problems) for r in results),
            "text": failing("text"), "scene_change": failing("scene change")}


def format_table(results: list[SampleAudit]) -> str:
    """One line per sample: key, shots, bars, black fraction, and what fails it."""
    lines = [f"{'key':<64} {'shots':>5} {'bars t/b/l/r':>13} {'black':>6}  problems"]
    for r in results:
        bars = "/".join(str(r.bars.get(k, 0)) for k in ("top", "bottom", "left", "right"))
        lines.append(f"{r.key:<64} {r.num_shots:>5} {bars:>13} {r.black_fraction:>6.0%}  "
                     + ("; ".join(r.problems) or "ok"))
    return "\n".join(lines)
