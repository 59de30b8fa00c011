"""The unit of work: one source video, as it moves through the stages.

A :class:`VideoTask` is one typed (pydantic) model: Ray Data carries it as its JSON in a string
column (:meth:`VideoTask.to_row`), the sequential runner passes it as is, and the finished task
(less the rendered mp4 bytes) is the per-video result file in ``_work/`` that makes a rerun skip
the video (the resume marker). Each stage fills in its part; a stage that finds the input bad
sets ``status`` and ``reason`` and later stages pass the task through untouched.
"""

from __future__ import annotations

import hashlib
import re
import time
from contextlib import contextmanager
from typing import Literal
from urllib.parse import unquote

import pyarrow.fs as pafs
from pydantic import BaseModel, ConfigDict, Field

from multishot.dataset.record import SampleRecord
from multishot.errors import short_reason
from multishot.pipeline.analyse import CandidateScore, ShotScores
from multishot.pipeline.detect import DetectedShot, transition_before
from multishot.pipeline.overlay import Overlay
from multishot.pipeline.pack import PackedSample
from multishot.pipeline.picture import ActiveArea
from multishot.pipeline.decode import DecodeStats, VideoInfo

Status = Literal["ok", "partial", "rejected", "error"]
CHUNK_BYTES = 8 << 20


def fingerprint(fs: pafs.FileSystem, path: str) -> str:
    """16 hex digits of sha256 over the whole file: a source's content identity.

    Moving or renaming a file keeps its identity, so reruns and resumes line up (Cosmos-Curate
    names clips from the source identity the same way); a copy damaged anywhere, even in the
    middle with its size unchanged, is a different source. One sequential read per video
    (sha256 runs at GB/s, far below the cost of decoding).

    Raises:
        OSError / FileNotFoundError: the file cannot be read.
    """
    digest = hashlib.sha256()
    with fs.open_input_stream(path) as stream:
        while chunk := stream.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def slug(path: str, limit: int = 40) -> str:
    """The file stem (of a path or a percent-encoded URI) reduced to ``[A-Za-z0-9_-]`` (sample
    keys must hold no dots)."""
    stem = unquote(path.split("?", 1)[0]).rstrip("/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return re.sub(r"[^A-Za-z0-9_-]+", "_", stem)[:limit].strip("_") or "video"


class ShotRow(BaseModel):
    """A detected shot with its scores and the filter's decision (a row of ``shots.parquet``)."""

    shot: DetectedShot
    scores: ShotScores | None = None  # None until the analyse stage has run (never for too_short)
    reason: str = ""  # '' = kept, else comma-separated reasons
    # fraction of the shot's frames that are black (pipeline.picture), after its fades are trimmed
    black_fraction: float | None = None
    # 16 hex digits of each keyframe's perceptual hash (the candidates inside it: pipeline.dedup)
    keyframe_hashes: list[str] = Field(default_factory=list)
    # the CLIP image embedding of each of its picks when CLIP ran (pipeline.dedup.pack_embedding);
    # in the result file only (2 KB of base64 each at ViT-L/14), not in shots.parquet
    keyframe_embeddings: list[str] = Field(default_factory=list)
    # reason duplicate: the kept twin (source id, shot index) and the keyframes' distance (bits)
    # when found by pHash (None when found by CLIP embedding)
    duplicate_of: tuple[str, int, int | None] | None = None
    duplicate_cosine: float | None = None  # found by CLIP embedding: the keyframes' cosine similarity

    @property
    def kept(self) -> bool:
        """Kept by the filter; a shot never scored (too short, or analysis failed) is not kept."""
        return not self.reason and self.scores is not None


class RenderedSample(BaseModel):
    """A rendered sample on its way from the render stage through captioning to the writer."""

    # the mp4 travels as base64 in the task's JSON row; the result file never holds it (the
    # write stage empties ``VideoTask.rendered``)
    model_config = ConfigDict(ser_json_bytes="base64", val_json_bytes="base64")

    record: SampleRecord
    mp4: bytes


class VideoTask(BaseModel):
    """One source video and everything the stages learned about it.

    ``source`` is a local path or a percent-encoded URI (``s3://bucket/a%20b.mp4``: opened with
    :func:`multishot.dataset.storage.resolve`, shown decoded by :attr:`name`). ``samples_hash`` is
    set by the write stage: the settings the result was made with.
    """

    source: str
    source_id: str
    # [size bytes, mtime ns] the fingerprint was taken at (pipeline.source_stamp); None: unknown
    source_stamp: list[int] | None = None
    status: Status = "ok"
    reason: str = ""
    stage: str = ""  # the stage that set a non-ok status
    info: VideoInfo | None = None
    active_area: ActiveArea | None = None  # the picture inside letterbox / pillarbox bars (pipeline.picture)
    decode: dict[str, DecodeStats] = Field(default_factory=dict)  # per decode pass
    shots: list[ShotRow] = Field(default_factory=list)
    # the scan's candidate-frame scores, detect → analyse (emptied there: not in the result file)
    candidates: list[CandidateScore] = Field(default_factory=list)
    analysis_size: tuple[int, int] | None = None  # (W, H) px the shots were scored at
    overlays: list[Overlay] = Field(default_factory=list)  # burned-in text found by the analyse stage
    samples: list[PackedSample] = Field(default_factory=list)
    rendered: list[RenderedSample] = Field(default_factory=list)  # render → caption → write
    index_rows: list[dict] = Field(default_factory=list)  # rows of samples.parquet
    shards: list[dict] = Field(default_factory=list)  # manifest entries (ShardInfo dicts)
    dropped_samples: list[dict] = Field(default_factory=list)  # {key, reason}
    seconds: dict[str, float] = Field(default_factory=dict)  # wall seconds per stage
    cpu_seconds: dict[str, float] = Field(default_factory=dict)  # CPU seconds per stage, its workers' included
    samples_hash: str = ""

    def to_row(self) -> dict[str, str]:
        """The Ray Data row that carries this task: its JSON in an Arrow string column."""
        return {"task": self.model_dump_json()}

    @staticmethod
    def from_row(row: dict) -> VideoTask:
        return VideoTask.model_validate_json(row["task"])

    @property
    def name(self) -> str:
        """The source as a person reads it (a URI decoded)."""
        return unquote(self.source)

    @property
    def alive(self) -> bool:
        """Whether later stages should work on it (partial = processed up to the damage)."""
        return self.status in ("ok", "partial")

    def fail(self, stage: str, reason: str, status: Status = "rejected") -> None:
        """Set a non-ok status; ``reason`` is stored as one short line (:func:`short_reason`:
        no traceback, ANSI code or other processes' command lines in the tables)."""
        self.status, self.stage, self.reason = status, stage, short_reason(reason)

    @contextmanager
    def timed(self, stage: str):
        """Add the wall seconds of the ``with`` body to ``seconds[stage]`` and this process's
        CPU seconds to ``cpu_seconds[stage]`` (a Ray worker runs one stage at a time)."""
        start, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start
            self.cpu_seconds[stage] = self.cpu_seconds.get(stage, 0.0) + time.process_time() - cpu

    def reject_row(self) -> dict:
        """The video's row in ``index/rejects.parquet`` (for a status other than ``ok``)."""
        return {"source": self.name, "source_id": self.source_id, "status": self.status,
                "stage": self.stage, "reason": self.reason}

    def shot_rows(self) -> list[dict]:
        """Rows of ``index/shots.parquet`` (columns: :data:`pipeline.index.SHOT_COLUMNS`): every
        detected shot, too-short ones included, the transition into it, its scores and decision."""
        fps = self.info.fps if self.info else float("nan")  # shots exist only after a probe
        unscored = ShotScores(None, None, None)
        detected = [row.shot for row in self.shots]
        rows = []
        for i, row in enumerate(self.shots):
            transition = transition_before(detected, i)
            rows.append({
                "source": self.name, "source_id": self.source_id, "shot_index": i,
                "start_frame": row.shot.start_frame, "end_frame": row.shot.end_frame,
                "start_s": row.shot.start_frame / fps, "end_s": row.shot.end_frame / fps,
                "gap_before": row.shot.gap_before,
                "transition": transition.kind if transition else None,
                "transition_start_frame": transition.start_frame if transition else None,
                "transition_end_frame": transition.end_frame if transition else None,
                "transition_start_s": transition.start_frame / fps if transition else None,
                "transition_end_s": transition.end_frame / fps if transition else None,
                "brightness": (row.scores or unscored).brightness,
                "ocr_text_ratio": (row.scores or unscored).ocr_text_ratio,
                "aesthetic": (row.scores or unscored).aesthetic,
                "motion": (row.scores or unscored).motion,
                "black_fraction": row.black_fraction,
                "keyframe_hashes": row.keyframe_hashes,
                "duplicate_of_source_id": row.duplicate_of[0] if row.duplicate_of else None,
                "duplicate_of_shot": row.duplicate_of[1] if row.duplicate_of else None,
                "duplicate_distance": row.duplicate_of[2] if row.duplicate_of else None,
                "duplicate_cosine": row.duplicate_cosine,
                "kept": row.kept,
                "reason": row.reason or ("not analysed" if row.scores is None else ""),
            })
        return rows

    def video_row(self) -> dict:
        """The video's row in ``index/videos.parquet`` (columns: :data:`pipeline.index.VIDEO_COLUMNS`)."""
        return {
            "source": self.name, "source_id": self.source_id, "status": self.status,
            "duration_s": self.info.duration_s if self.info else None,
            "fps": self.info.fps if self.info else None,
            "shots": len(self.shots), "shots_kept": sum(r.kept for r in self.shots),
            "active_area": None if self.active_area is None else {
                "x0": self.active_area.x0, "y0": self.active_area.y0,
                "x1": self.active_area.x1, "y1": self.active_area.y1},
            "overlays": [{"x0": o.rect[0], "y0": o.rect[1], "x1": o.rect[2], "y1": o.rect[3], "text": o.text,
                          "shots": o.shots, "shot_fraction": o.shot_fraction} for o in self.overlays],
        }
