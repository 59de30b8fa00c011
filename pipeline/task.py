"""The unit of work: one source video, as it moves through the stages.

Ray Data carries one :class:`VideoTask` per row, pickled under ``"task"`` (:meth:`VideoTask.to_row`,
an Arrow binary column, rather than letting Ray fall back to pickling with a warning per
block). Each stage fills in its part;
a stage that finds the input bad sets ``status`` and ``reason`` and later stages pass the task
through untouched. The finished task, serialised by :meth:`VideoTask.result`, is the per-video
result file in ``_work/`` that makes a rerun skip the video.
"""

from __future__ import annotations

import hashlib
import pickle
import re
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Literal

import pyarrow.fs as pafs

from multishot.pipeline.analyse import ShotScores
from multishot.pipeline.detect import DetectedShot
from multishot.pipeline.pack import PackedSample
from multishot.pipeline.video import DecodeStats, VideoInfo

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
    """The file stem reduced to ``[A-Za-z0-9_-]`` (sample keys must hold no dots)."""
    stem = path.rstrip("/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return re.sub(r"[^A-Za-z0-9_-]+", "_", stem)[:limit].strip("_") or "video"


@dataclass
class ShotRow:
    """A detected shot with its scores and the filter's decision (a row of ``shots.parquet``)."""

    shot: DetectedShot
    scores: ShotScores | None  # None until the analyse stage has run
    reason: str = ""  # '' = kept, else comma-separated reasons

    @property
    def kept(self) -> bool:
        return not self.reason


@dataclass
class VideoTask:
    """One source video and everything the stages learned about it."""

    source: str
    source_id: str
    status: Status = "ok"
    reason: str = ""
    stage: str = ""  # the stage that set a non-ok status
    info: VideoInfo | None = None
    decode: dict[str, DecodeStats] = field(default_factory=dict)  # per decode pass
    shots: list[ShotRow] = field(default_factory=list)
    samples: list[PackedSample] = field(default_factory=list)
    index_rows: list[dict] = field(default_factory=list)  # rows of samples.parquet
    shards: list[dict] = field(default_factory=list)  # ShardInfo dicts
    dropped_samples: list[dict] = field(default_factory=list)  # {key, reason}
    seconds: dict[str, float] = field(default_factory=dict)  # wall seconds per stage

    def to_row(self) -> dict:
        """The Ray Data row that carries this task."""
        return {"task": pickle.dumps(self)}

    @staticmethod
    def from_row(row: dict) -> VideoTask:
        return pickle.loads(row["task"])

    @property
    def alive(self) -> bool:
        """Whether later stages should work on it (partial = processed up to the damage)."""
        return self.status in ("ok", "partial")

    def fail(self, stage: str, reason: str, status: Status = "rejected") -> None:
        self.status, self.stage, self.reason = status, stage, reason

    @contextmanager
    def timed(self, stage: str):
        """Add the wall seconds of the ``with`` body to ``seconds[stage]``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start

    def result(self) -> dict:
        """JSON-ready per-video result: what the index, tables and report are built from."""
        data = asdict(self)
        unscored = {"brightness": None, "ocr_text_ratio": None, "aesthetic": None}
        data["shots"] = [
            {
                **asdict(row.shot),
                **(asdict(row.scores) if row.scores else unscored),
                "kept": row.kept and row.scores is not None,
                "reason": row.reason if row.scores else "not analysed",
            }
            for row in self.shots
        ]
        return data
