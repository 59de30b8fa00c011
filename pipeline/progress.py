"""What the pipeline's progress bar says after each finished video: its status and name, the
source frames per second and the realtime factor so far (over the videos finished in this run
and the wall time since the run began), and the stage that took longest for that video.

tqdm's own part of the line gives videos done / to do, elapsed time and the ETA (remaining
videos at the mean time per video so far)."""

from __future__ import annotations

import os
import time

from multishot.pipeline.task import VideoTask


class Throughput:
    """Source frames and seconds of finished videos over the wall time since construction."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.frames = 0
        self.source_s = 0.0

    def add(self, task: VideoTask) -> None:
        if task.info is not None:
            self.frames += task.info.num_frames
            self.source_s += task.info.duration_s

    def postfix(self, task: VideoTask) -> str:
        """``STATUS: NAME · F frames/s · R× realtime · slowest STAGE S s`` for the bar."""
        wall = max(time.perf_counter() - self.start, 1e-9)
        parts = [f"{task.status}: {os.path.basename(task.name)}",
                 f"{self.frames / wall:.0f} frames/s", f"{self.source_s / wall:.2f}× realtime"]
        if task.seconds:
            stage, seconds = max(task.seconds.items(), key=lambda kv: kv[1])
            parts.append(f"slowest {stage} {seconds:.0f} s")
        return " · ".join(parts)
