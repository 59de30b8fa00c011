"""Stage 5, packing: consecutive kept shots of one video → multi-shot samples per duration bucket.

HoloCine §3.1: "we sequentially aggregate continuous shots based on target durations until the
threshold is reached, with tolerance", giving 5 s / 15 s / 60 s samples of up to 13 shots.

Everything is counted in **output frames** at the render frame rate ``fps`` (16), because the
sample must end up with ``4k + 1`` frames and every cut on a latent-frame boundary:

* A shot of ``d`` seconds contributes ``4·⌊d·fps / 4⌋`` frames, or ``4·⌊(d·fps − 1) / 4⌋ + 1``
  when it opens the sample. So every cut lands on a frame ``4t + 1`` (the first frame of latent
  frame ``t + 1``: no latent frame mixes two shots), and each shot loses at most 3 frames
  (< 0.25 s) from its end. A shot needs at least 4 frames (one latent frame) to be packed.
* The target of bucket ``(T, τ)`` is ``F_T = 4·round(T·fps / 4) + 1`` frames (15 s → 241), and
  the tolerance is ``τ·fps`` frames.

The rule, per bucket, over each **run** (maximal sequence of kept shots that are adjacent in the
source: no removed shot, no dropped transition, no frame gap between them):

1. Start at the run's first shot ``i``. Add shots ``i, i+1, …`` until the frame total reaches
   ``F_T − τ·fps`` (the threshold) or ``max_shots`` shots are in.
2. Threshold not reached: if the run ran out, stop; if ``max_shots`` shots are in, drop shot
   ``i`` and start again at ``i + 1``; if shot ``j`` is too short to hold a latent frame after a
   cut (under 4 frames), start again at ``j`` (at ``j + 1`` if ``j == i``).
3. Total within ``F_T + τ·fps``: emit shots ``i..j`` whole. Next start: ``j + 1``.
4. Total above ``F_T + τ·fps`` (the last shot ``j`` overshoots): cut shot ``j`` short so the
   sample has exactly ``F_T`` frames, if that leaves it at least ``min_last_shot_s`` (a single
   long shot always qualifies); emit and start at ``j + 1``. Otherwise drop shots ``i..j−1``
   and start again at ``j``.
5. A sample with fewer than ``min_shots`` shots is not emitted (start again at ``i + 1``).

Consequences (tested as properties): within a bucket samples never overlap and never span a
removed shot or a gap; a sample has ``min_shots``–``max_shots`` shots and ``4k + 1`` frames,
within ``F_T ± τ·fps``; each shot's frames lie inside that shot; the result is deterministic.
Buckets are packed independently, so a shot may appear in a 5 s and in a 15 s sample.
"""

from __future__ import annotations

from dataclasses import dataclass

from multishot.pipeline.config import Bucket, PackConfig

LATENT_STRIDE = 4


@dataclass(frozen=True)
class PackShot:
    """A detected shot as the packer sees it: source frames ``[start_frame, end_frame)``."""

    index: int  # position in the video's shot list
    start_frame: int
    end_frame: int
    kept: bool
    gap_before: bool = False


@dataclass(frozen=True)
class PackedShot:
    """A shot inside a sample: its video shot ``index`` and how many output frames it gives."""

    index: int
    frames: int


@dataclass(frozen=True)
class PackedSample:
    """One sample: a bucket and its shots in order. ``num_frames`` is ``4k + 1``."""

    bucket: str
    shots: tuple[PackedShot, ...]

    @property
    def num_frames(self) -> int:
        return sum(s.frames for s in self.shots)

    @property
    def cut_frames(self) -> list[int]:
        """Output frame where each shot after the first starts (all of the form ``4t + 1``)."""
        cuts, at = [], 0
        for shot in self.shots[:-1]:
            at += shot.frames
            cuts.append(at)
        return cuts


def target_frames(bucket: Bucket, fps: float) -> int:
    """``F_T = 4·round(T·fps / 4) + 1``: 5 s → 81, 15 s → 241, 60 s → 961 frames at 16 fps."""
    return LATENT_STRIDE * round(bucket.target_s * fps / LATENT_STRIDE) + 1


def shot_frames(duration_s: float, fps: float, first: bool) -> int:
    """Output frames a shot of ``duration_s`` seconds gives (see the module docstring)."""
    n = duration_s * fps + 1e-6  # guard against 4.0 * 16 = 63.99999
    if first:
        return max(0, LATENT_STRIDE * int((n - 1) // LATENT_STRIDE) + 1)
    return LATENT_STRIDE * int(n // LATENT_STRIDE)


def runs(shots: list[PackShot]) -> list[list[PackShot]]:
    """Maximal sequences of kept shots adjacent in the source (no removed shot, no gap)."""
    out: list[list[PackShot]] = []
    previous: PackShot | None = None
    for shot in shots:
        if not shot.kept:
            previous = None
            continue
        adjacent = previous is not None and not shot.gap_before and shot.start_frame == previous.end_frame
        if adjacent:
            out[-1].append(shot)
        else:
            out.append([shot])
        previous = shot
    return out


def pack_run(run: list[PackShot], bucket: Bucket, config: PackConfig, source_fps: float, fps: float) -> list[PackedSample]:
    """Samples of one bucket from one run of adjacent kept shots (the rule in the module docstring)."""
    target = target_frames(bucket, fps)
    tolerance = int(bucket.tolerance_s * fps)
    low, high = target - tolerance, target + tolerance
    min_last = config.min_last_shot_s * fps
    samples: list[PackedSample] = []
    duration = [(s.end_frame - s.start_frame) / source_fps for s in run]
    i = 0
    while i < len(run):
        frames: list[int] = []  # output frames of shots i, i+1, ...
        j, ended = i, "threshold"
        while sum(frames) < low:
            if j == len(run):
                ended = "run"
                break
            if len(frames) == config.max_shots:
                ended = "max_shots"
                break
            n = shot_frames(duration[j], fps, first=not frames)
            if n < (1 if not frames else LATENT_STRIDE):
                ended = "short"  # shot j cannot hold a latent frame after a cut
                break
            frames.append(n)
            j += 1
        if ended == "run":
            break  # later starts have even fewer frames left
        if ended == "short":
            i = j if j > i else j + 1
            continue
        if ended == "max_shots":
            i += 1
            continue
        last = j - 1  # the shot that reached the threshold
        if sum(frames) > high:
            keep = target - (sum(frames) - frames[-1])
            if keep < min_last and len(frames) > 1:
                i = last
                continue
            frames[-1] = keep
        if len(frames) < config.min_shots:
            i += 1
            continue
        samples.append(PackedSample(bucket.name, tuple(PackedShot(run[i + k].index, n) for k, n in enumerate(frames))))
        i = last + 1
    return samples


def pack_video(shots: list[PackShot], config: PackConfig, source_fps: float, fps: float) -> list[PackedSample]:
    """All samples of one video: every bucket over every run, in bucket then source order."""
    return [
        sample
        for bucket in config.buckets
        for run in runs(shots)
        for sample in pack_run(run, bucket, config, source_fps, fps)
    ]
