"""Per-stage progress of a pipeline run: one bar per stage, in source frames, with frames per
second and an ETA.

Every time a stage is done with a video (processed, or passed through because an earlier stage
rejected it), :func:`report` adds the video's source frames (``info.num_frames``, 0 before the
probe knows them) to that stage's count on a board: a Ray actor named after the job
(``multishot-stage-progress-JOBID``: the driver and its workers share the job id, so two runs
on one cluster never mix) when this process is part of a Ray job, else a board in this process
(``ray.runner: sequential``). The driver calls :func:`start_board` once Ray runs; its :class:`StageBars` polls the board once a second
and moves one tqdm bar per stage; a bar's total is the frames the probe has found so far, so it
settles once every video is probed.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections import Counter

from tqdm import tqdm

from multishot.pipeline.task import VideoTask

log = logging.getLogger(__name__)

POLL_S = 1.0  # seconds between two board reads of the driver


class StageCounts:
    """Frames and videos each stage is done with (also the Ray actor's class)."""

    def __init__(self) -> None:
        self.frames: Counter = Counter()
        self.videos: Counter = Counter()

    def add(self, stage: str, frames: int) -> None:
        self.frames[stage] += frames
        self.videos[stage] += 1

    def read(self) -> tuple[dict[str, int], dict[str, int]]:
        return dict(self.frames), dict(self.videos)


_local = StageCounts()  # the board of a run without Ray
_actor = None  # this process's handle of the job's board actor (looked up once)


def _board_name() -> str | None:
    """The job's board name when this process is part of a Ray job, else None."""
    try:
        import ray
    except ImportError:
        return None
    if not ray.is_initialized():
        return None
    return f"multishot-stage-progress-{ray.get_runtime_context().get_job_id()}"


def start_board():
    """Driver: create the job's board actor (Ray running) or reset the local board (returns
    the actor, or None)."""
    global _actor
    name = _board_name()
    if name is None:
        _local.__init__()
        return None
    import ray

    _actor = ray.remote(num_cpus=0)(StageCounts).options(name=name, get_if_exists=True).remote()
    return _actor


def report(stage: str, task: VideoTask) -> None:
    """Count ``task`` as done by ``stage`` (never raises: progress must not fail a video)."""
    global _actor
    frames = task.info.num_frames if task.info is not None else 0
    try:
        name = _board_name()
        if name is None:
            _local.add(stage, frames)
            return
        if _actor is None:
            import ray

            _actor = ray.get_actor(name)
        _actor.add.remote(stage, frames)
    except Exception as err:  # noqa: BLE001 - no board (a test's bare Ray): no progress, same result
        log.debug("no stage progress for %s: %s", stage, err)


def read_board() -> tuple[dict[str, int], dict[str, int]]:
    """``(frames, videos)`` per stage from this job's board (the local one without Ray).

    Raises:
        ValueError: Ray runs but the job's board is not made yet (:func:`start_board`).
    """
    name = _board_name()
    if name is None:
        return _local.read()
    import ray

    return ray.get(ray.get_actor(name).read.remote())


class StageBars:
    """One tqdm bar per stage (below the videos bar), refreshed from the board by a thread
    every :data:`POLL_S` seconds while the block runs; the first stage (the probe) sets the
    totals. ``enabled=None``: only when ``file`` (default stderr) is a terminal, where the bars
    redraw in place (in a log file every refresh would add a line per stage)."""

    def __init__(self, stages: list[str], videos: int, enabled: bool | None = None, file=None):
        file = file if file is not None else sys.stderr
        if enabled is None:
            enabled = hasattr(file, "isatty") and file.isatty()
        self.stages, self.videos = stages, videos
        self.bars = [tqdm(total=0, desc=f"  {s:<8}", unit="frame", unit_scale=True, position=i + 1,
                          leave=False, disable=not enabled, file=file) for i, s in enumerate(stages)]
        self.enabled = enabled
        self._videos: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="stage-progress", daemon=True)

    def __enter__(self) -> StageBars:
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if self.enabled:
            try:
                self.refresh()
            except Exception as err:  # noqa: BLE001 - Ray already shut down: the bars stay as they were
                log.debug("stage progress: %s", err)
        for bar in self.bars:
            bar.close()

    def refresh(self) -> None:
        """Move the bars to the board's counts."""
        frames, videos = read_board()
        if sum(videos.values()) < sum(self._videos.values()):
            return  # the counts only grow: a smaller board is another one (Ray shut down at the end)
        self._videos = videos
        total = frames.get(self.stages[0], 0)
        for stage, bar in zip(self.stages, self.bars):
            bar.total = max(total, frames.get(stage, 0))
            bar.set_postfix_str(f"{videos.get(stage, 0)}/{self.videos} videos", refresh=False)
            bar.update(frames.get(stage, 0) - bar.n)  # through update: tqdm's rate and ETA
            bar.refresh()

    def _poll(self) -> None:
        while not self._stop.wait(POLL_S):
            try:
                self.refresh()
            except Exception as err:  # noqa: BLE001 - the bars are a view; the run goes on
                log.debug("stage progress: %s", err)
