"""Stage 2's work: one decode of a video, in segments, feeds shot detection and analysis.

A video is split into **segments**, half-open source-frame ranges of about ``detect.segment_s``
seconds (:func:`plan_segments`), each scanned by one actor (:class:`SegmentScanner`) in one
sequential decode of the segment plus 25 frames of context on each side:

* every frame, scaled to 48×27, goes to the shot detector, which predicts the segment's frames
  (its windows aligned with those of an unsplit run, so the stitched predictions equal an
  unsplit run's: :meth:`pipeline.detect.TransNetV2Detector.predict`);
* **candidate frames** (``analyse.candidates_per_s`` per second, :func:`pipeline.analyse.is_candidate`),
  scaled to the fixed analysis scale, get their brightness right away and are kept as JPEG
  (quality 95: a 5-minute segment's 600 candidates take ~40 MB) until the segment's predictions
  are in; then OCR and the aesthetic model read only the candidates that can be a shot's pick
  (:func:`pipeline.analyse.pick_candidates`): the picks of every shot that lies wholly inside
  the segment and is not too short (too-short shots are never analysed), and every candidate
  of the shots that reach a segment edge (their extent is known only after stitching). An
  unsplit video has no such shots: OCR runs once per shot, or with ``analyse.ocr_every_candidate``
  (the default) on every candidate of every shot analysed, not on those of too-short shots and
  of transitions (frames in no shot);
* each candidate's **motion** from the candidate before it (optical flow, :mod:`pipeline.motion`)
  as it passes; a segment's decode starts early enough to hold the candidate before its first
  one (in the 25 frames of context at 2 candidates a second up to 50 fps), so every pair is
  measured as in an unsplit scan.

A segment's result (:class:`SegmentResult`: per-frame predictions and candidate scores, with
each OCR'd candidate's text boxes for the per-video overlay search, a few bytes per frame) is saved under the output's ``_work/segments/`` as it finishes
(:class:`SegmentStore`): a resume point, so a killed run redoes only unfinished segments. The
detect stage stitches a video's results (:func:`stitch`) and makes its shots.

Where segments run: :class:`LocalScans` in this process (``ray.runner: sequential``), or
:class:`RayScans`, a pool of actors holding :class:`SegmentScanner`\\ s that the detect stage of
every video feeds (so one long film uses every actor).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import resource
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Protocol

import cv2
import numpy as np
import pyarrow.fs as pafs
from pydantic import BaseModel, Field

from multishot.dataset.storage import read_json, resolve, write_json
from multishot.pipeline.analyse import (CandidateScore, FrameScorer, is_candidate, mean_luma, pick_candidates,
                                        previous_candidate)
from multishot.pipeline.config import PipelineConfig
from multishot.pipeline.dedup import keyframe_hash, pack_embedding
from multishot.pipeline.detect import CONTEXT, DetectedShot, make_detector, min_shot_frames, shots_of
from multishot.pipeline.motion import FlowMeter
from multishot.pipeline.ocr import TextBox
from multishot.pipeline.picture import ActiveArea, black_frames, frame_darkness, trimmed_shot
from multishot.pipeline.transitions import THUMB, decode_thumbnails, encode_thumbnails, thumbnails
from multishot.pipeline.decode import DecodeStats

JPEG_QUALITY = 95
SCAN_NICENESS = 5  # the scanning actors yield the CPU to renders (:class:`_ScanActor`)


class FrameSource(Protocol):
    """What a segment scan reads frames from (the CPU one is :func:`pipeline.decode.iter_scan_frames`).

    Called with ``(source, fs, *, fps, start_frame, end_frame, detect_size, analysis_size,
    is_candidate, stats)``, it yields ``(index, detector_frame, analysis_frame)`` for **every**
    source frame ``index`` in ``[start_frame, end_frame)`` in order without holes (``end_frame``
    None: to the end of the stream), on the grid of :func:`pipeline.decode.iter_grid` (frame
    ``i`` is the picture shown at ``i / fps`` s):

    * ``detector_frame``: RGB uint8 ``[h, w, 3]`` at ``detect_size = (w, h)`` (48×27): a numpy
      array, or a CUDA tensor from the GPU source (:class:`pipeline.decode_gpu.GpuFrameSource`),
      which the detector reads where it is;
    * ``analysis_frame``: RGB uint8 ``[H, W, 3]`` at ``analysis_size = (W, H)`` where
      ``is_candidate(index)``, else ``None``.

    Frames are upright (rotation applied), scaled with an area filter. ``stats`` (a
    :class:`~pipeline.decode.DecodeStats`) is filled with the frames decoded in the range,
    decoding errors and substituted slots. A start past 0 must give the same pictures as a
    decode from the start (seek to the keyframe before it). Raises
    :class:`~pipeline.decode.ProbeError` when the file cannot be opened.
    """

    def __call__(self, source: str, fs: pafs.FileSystem | None, *, fps: float, start_frame: int,
                 end_frame: int | None, detect_size: tuple[int, int], analysis_size: tuple[int, int],
                 is_candidate: Callable[[int], bool], stats: DecodeStats
                 ) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]: ...


@dataclass(frozen=True)
class Segment:
    """Source frames ``[start_frame, end_frame)`` of a video; ``end_frame`` None: to its end."""

    start_frame: int
    end_frame: int | None

    @property
    def name(self) -> str:
        return f"{self.start_frame:010d}-{'end' if self.end_frame is None else self.end_frame}"


class SegmentResult(BaseModel):
    """What a segment scan found (the resume point of one segment).

    ``start_frame``/``end_frame``: the source frames it covers; ``end_frame`` is where decoding
    ended when that is before the planned end (the last segment: the stream's end).
    ``single``/``many``: the detector's per-frame probabilities ``[end - start]``;
    ``black``/``luma``: each frame's black pixel fraction and mean luma (0-255) inside the
    video's active area, at the detector's scale (:func:`pipeline.picture.frame_darkness`);
    ``thumbs``: each frame's 16×9 luma thumbnail, for fitting gradual transitions' spans;
    ``candidates``: the scores of its candidate frames (:class:`pipeline.analyse.CandidateScore`,
    OCR text boxes included);
    ``stats``: its decode (frames in range only); ``cpu_s``/``wall_s``: what the scan cost;
    ``peak_rss_mib``: the scanning process's peak resident memory so far (MiB).
    """

    start_frame: int
    end_frame: int
    single: list[float]
    many: list[float]
    candidates: list[CandidateScore]
    black: list[float] = Field(default_factory=list)
    luma: list[float] = Field(default_factory=list)
    thumbs: str = ""  # base64 of [end - start, 9, 16] uint8 luma thumbnails (pipeline.transitions)
    stats: DecodeStats = Field(default_factory=DecodeStats)
    cpu_s: float = 0.0
    wall_s: float = 0.0
    peak_rss_mib: float = 0.0


def plan_segments(num_frames: int, fps: float, config: PipelineConfig) -> list[Segment]:
    """Segments of a video of ``num_frames`` (the container's claim) at ``fps``: about
    ``detect.segment_s`` long, starting at multiples of ``stride · batch_windows`` frames (so
    windows and batches align with an unsplit run's); the last runs to the stream's end, so a
    wrong claim costs nothing but balance.
    """
    detect = config.detect
    unit = (detect.window - 2 * CONTEXT) * detect.batch_windows
    length = max(unit, unit * round(detect.segment_s * fps / unit))
    starts = list(range(0, max(num_frames, 1), length))
    return [Segment(s, e) for s, e in zip(starts, starts[1:])] + [Segment(starts[-1], None)]


def scan_hash(config: PipelineConfig) -> str:
    """16 hex digits naming the settings a segment result depends on (detection and analysis,
    not placement): a result saved with other settings is not reused."""
    parts = {"detect": config.detect.model_dump(mode="json", exclude=set(config.detect.PLACEMENT)),
             "analyse": config.analyse.model_dump(mode="json", exclude={"resources", "overlay"}),
             "keyframe_hash": "imagehash.phash 8x8",  # results made before candidates were hashed are redone
             # results whose picks were trimmed on unrounded darkness (stored_picture) are redone
             "picks_from": "stored picture values"}
    if config.analyse.aesthetic_enabled:
        # results made before the aesthetic picks kept their CLIP embeddings are redone (only
        # where CLIP runs: without weights nothing changed)
        parts["keyframe_embedding"] = "clip image embedding, L2-normalised, float16"
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


class SegmentStore:
    """Where a video's segment results live: ``{work_dir}/segments/{source_id}-{scan_hash}/``,
    one JSON per segment, written atomically (temporary name, then moved)."""

    def __init__(self, fs: pafs.FileSystem, folder: str):
        self.fs, self.dir = fs, folder

    @classmethod
    def of_video(cls, fs: pafs.FileSystem, work_dir: str, source_id: str, settings: str) -> SegmentStore:
        """The store of video ``source_id`` scanned with settings ``settings`` (:func:`scan_hash`)."""
        return cls(fs, f"{work_dir}/segments/{source_id}-{settings}")

    def path(self, segment: Segment) -> str:
        return f"{self.dir}/{segment.name}.json"

    def load(self, segment: Segment) -> SegmentResult | None:
        """The saved result, or None (never saved, or unreadable: then it is redone)."""
        try:
            return SegmentResult.model_validate(read_json(self.fs, self.path(segment)))
        except (OSError, ValueError):
            return None

    def save(self, segment: Segment, result: SegmentResult) -> None:
        write_json(self.fs, self.path(segment), result.model_dump(mode="json"))


def stitch(results: Sequence[SegmentResult]) -> tuple[np.ndarray, np.ndarray, list[CandidateScore], DecodeStats]:
    """A video's per-frame predictions ``([N], [N])``, candidate scores and decode stats from
    its segments' results, in order. Results after the first that ended early (the stream
    ended inside it) are empty and skipped.

    Raises:
        RuntimeError: the results leave a hole or overlap (a broken invariant).
    """
    single, many, candidates, stats, at = [], [], [], DecodeStats(), 0
    decoders: set[str] = set()
    for r in results:
        if r.end_frame <= r.start_frame:
            continue
        if r.start_frame != at:
            raise RuntimeError(f"segment results do not join: one starts at {r.start_frame}, expected {at}")
        single.append(np.asarray(r.single, np.float32))
        many.append(np.asarray(r.many, np.float32))
        candidates += r.candidates
        stats.frames += r.stats.frames
        stats.errors += r.stats.errors
        stats.substituted += r.stats.substituted
        stats.last_error = r.stats.last_error or stats.last_error
        stats.last_time_s = max(stats.last_time_s, r.stats.last_time_s)
        decoders.add(r.stats.decoder)
        stats.note = stats.note or r.stats.note
        at = r.end_frame
    stats.decoder = "+".join(sorted(decoders)) or stats.decoder  # "cpu+nvdec": segments differed
    if not single:
        return np.zeros(0, np.float32), np.zeros(0, np.float32), [], stats
    return np.concatenate(single), np.concatenate(many), candidates, stats


def stored_picture(black: np.ndarray, luma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame black pixel fractions and mean luma ``([N], [N])`` as a segment result stores
    them (3 and 1 decimals, float32) and :func:`stitch_picture` reads them back, bit for bit. The
    scan trims fades (its picks, :meth:`SegmentScanner._pickable`) on these same values, as the
    detect stage does on the stitched ones: on an H100 the unrounded values moved one fade's trim
    by a frame, and the analyse stage found a pick the scan had not scored."""
    return (np.round(np.asarray(black, np.float32), 3).astype(np.float32),
            np.round(np.asarray(luma, np.float32), 1).astype(np.float32))


def stitch_picture(results: Sequence[SegmentResult]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A video's per-frame black pixel fraction and mean luma ``([N], [N])`` and luma
    thumbnails ``[N, 9, 16]`` from its segments' results, in the order and extent of
    :func:`stitch`'s predictions."""
    used = [r for r in results if r.end_frame > r.start_frame]
    if not used:
        return np.zeros(0, np.float32), np.zeros(0, np.float32), np.zeros((0, THUMB[1], THUMB[0]), np.uint8)
    return (np.concatenate([np.asarray(r.black, np.float32) for r in used]),
            np.concatenate([np.asarray(r.luma, np.float32) for r in used]),
            np.concatenate([decode_thumbnails(r.thumbs) for r in used]))


def _stack(frames: list) -> np.ndarray:
    """Frames ``[h, w, 3]`` stacked to ``[N, h, w, 3]``: NumPy, or a tensor on the frames' device
    (the GPU source's stay on the GPU for the detector)."""
    if frames and not isinstance(frames[0], np.ndarray):
        import torch

        return torch.stack(frames)
    return np.stack(frames)


class SegmentScanner:
    """The per-segment work: holds the shot detector and the frame scorers (one per actor).

    ``frame_source`` decodes (:class:`FrameSource`); by default the GPU's decoder on an actor
    given a GPU, else PyAV on the CPU (:func:`pipeline.decode_gpu.choose_frame_source`; why a GPU
    actor decodes on the CPU is kept as ``note`` in each segment's stats).
    """

    def __init__(self, config: PipelineConfig, frame_source: FrameSource | None = None):
        self.config = config
        self.detector = make_detector(config.detect)
        self.scorer = FrameScorer(config.analyse)
        # OCR of picked candidates, shared by the sessions scanning at once (detect.ocr_threads)
        threads = config.detect.ocr_threads
        self.ocr_pool = ThreadPoolExecutor(threads, thread_name_prefix="ocr") if threads > 1 else None
        self.note = ""
        if frame_source is None:
            from multishot.pipeline.decode_gpu import choose_frame_source

            frame_source, self.note = choose_frame_source(config.detect)
        self.frame_source = frame_source

    def scan(self, source: str, fs: pafs.FileSystem | None, fps: float, start_frame: int, end_frame: int | None,
             context: int = CONTEXT, *, analysis_size: tuple[int, int], area: ActiveArea = ActiveArea()) -> SegmentResult:
        """Scan source frames ``[start_frame, end_frame)`` (``None``: to the end) of ``source``
        with ``context`` frames decoded on each side for the detector (the module docstring
        says what is measured). ``analysis_size`` is ``(W, H)`` of the fixed analysis scale;
        ``area`` the video's active picture (:mod:`pipeline.picture`): candidates' brightness and
        OCR and every frame's darkness are measured inside it.

        Raises:
            pipeline.decode.ProbeError: the file cannot be opened.
        """
        cpu, wall = time.process_time(), time.perf_counter()
        analyse = self.config.analyse
        stats = DecodeStats(note=self.note)  # a GPU frame source sets its decoder
        frames: list = []  # 48x27 frames from start_frame - context on (CUDA tensors from a GPU source)
        kept: dict[int, bytes] = {}  # JPEG of each candidate, until OCR/aesthetic are decided
        brightness: dict[int, float] = {}
        hashes: dict[int, str] = {}  # each candidate's perceptual hash (near-duplicates: pipeline.dedup)
        lo = max(0, start_frame - context)
        hi = None if end_frame is None else end_frame + context
        # motion: the candidate before the segment is decoded too (the pair into its first one)
        meter = FlowMeter(fps) if analyse.motion_backend == "dis" else None
        before = previous_candidate(start_frame, fps, analyse.candidates_per_s) if meter is not None else None
        first = lo if before is None else min(lo, before)
        motion: dict[int, float | None] = {}

        def candidate(i: int) -> bool:
            return i == before or (start_frame <= i and (end_frame is None or i < end_frame)
                                   and is_candidate(i, fps, analyse.candidates_per_s))

        for index, small, big in self.frame_source(source, fs, fps=fps, start_frame=first, end_frame=hi,
                                                   detect_size=self.detector.size, analysis_size=analysis_size,
                                                   is_candidate=candidate, stats=stats):
            if index != first + len(frames):
                raise RuntimeError(f"frame source skipped from {first + len(frames) - 1} to {index}")
            frames.append(small)
            if big is not None:
                big = area.crop(big)
                if meter is not None:
                    motion[index] = meter.measure(index, big)
                if index < start_frame:
                    continue  # the pair's first frame only
                brightness[index] = mean_luma(big)
                hashes[index] = keyframe_hash(big)
                if self.scorer.text is not None or self.scorer.aesthetic is not None:
                    kept[index] = cv2.imencode(".jpg", big[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])[1].tobytes()
        del frames[: lo - first]  # before the detector's context: decoded for the motion pair only
        eof = lo + len(frames)  # one past the last frame decoded
        end = eof if end_frame is None else min(end_frame, eof)
        at = start_frame - lo
        if end > start_frame:
            stack = _stack(frames)
            del frames
            single, many = self.detector.predict(stack[at : end - lo], stack[:at], stack[end - lo :], fps=fps)
            black, luma = stored_picture(*frame_darkness(stack[at : end - lo], area,
                                                         self.config.detect.black_pixel_threshold))
            thumbs = thumbnails(stack[at : end - lo])
        else:
            single = many = black = luma = np.zeros(0, np.float32)
            thumbs = np.zeros((0, THUMB[1], THUMB[0]), np.uint8)
        ocr, aesthetic = self._pickable(single, many, start_frame, fps, first=start_frame == 0,
                                        last=end_frame is None or eof <= end_frame, candidates=sorted(brightness),
                                        black=black, luma=luma, thumbs=thumbs)
        scores = self._score(ocr, aesthetic, kept)
        unread = (None, None, None)
        candidates = [CandidateScore(i, brightness[i], text, score, motion=motion.get(i), phash=hashes[i],
                                     embedding=embedding)
                      for i in sorted(brightness) for text, score, embedding in [scores.get(i, unread)]]
        # frames of this segment only (contexts overlap the neighbours'); errors and the last
        # decoded time as the decode saw them
        inner = DecodeStats(frames=max(0, end - start_frame), errors=stats.errors, last_error=stats.last_error,
                            last_time_s=stats.last_time_s, substituted=stats.substituted,
                            decoder=stats.decoder, note=stats.note)
        return SegmentResult(start_frame=start_frame, end_frame=max(start_frame, end), single=single.tolist(),
                             many=many.tolist(), candidates=candidates, stats=inner,
                             black=black.tolist(), luma=luma.tolist(),
                             thumbs=encode_thumbnails(thumbs),
                             cpu_s=time.process_time() - cpu, wall_s=time.perf_counter() - wall,
                             peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)

    def _pickable(self, single: np.ndarray, many: np.ndarray, start: int, fps: float, first: bool, last: bool,
                  candidates: list[int], black: np.ndarray, luma: np.ndarray, thumbs: np.ndarray
                  ) -> tuple[list[int], list[int]]:
        """The candidates OCR and the aesthetic model must read (two sorted lists): those that
        can be a shot's (first ``ocr_frames_per_shot``) picks once the segments are stitched.

        The shots between the first and the last local shot boundary that keep a margin from
        the segment's edges are the video's shots (their boundaries come from prediction runs
        wholly inside the segment, which stitching does not change): their picks. Before and
        after those, every candidate (a first segment's start and a last segment's end are the
        video's, not edges). Their picks are those of the shots less their fades to and from
        black (:func:`pipeline.picture.trimmed_shot`, a function of the shot's own frames); with
        ``analyse.ocr_every_candidate`` OCR reads every candidate of those shots (what
        :func:`pipeline.analyse.shot_scores` reads) and the candidates before and after them.
        """
        analyse = self.config.analyse
        if not len(single):
            return [], []
        local = shots_of(self.config.detect, single, many, fps, thumbs)
        n = len(single)
        m = 3 + int(round(self.config.detect.gradual_max_s * fps))  # a fitted span reaches this far
        shortest = min_shot_frames(self.config.detect, fps)
        dark = black_frames(black, self.config.detect)

        def trimmed(shot: DetectedShot) -> DetectedShot:
            return shot if shot.too_short else trimmed_shot(shot, dark, luma, self.config.detect, shortest)[0]

        # the prediction runs of a boundary lie within 2 frames before a shot's start (a hard
        # cut) or fill the gap before it (gradual): margins of 3 frames keep them off the edges,
        # and a gradual span's fit looks gradual_max_s further
        exact = [replace(t, start_frame=t.start_frame + start, end_frame=t.end_frame + start)
                 for k, s in enumerate(local) for t in [trimmed(s)]
                 if (first or (k > 0 and local[k - 1].end_frame > m - 1 and s.start_frame > m))
                 and (last or (k + 1 < len(local) and s.end_frame < n - m and local[k + 1].start_frame < n - 1 - m + 3))]
        if not exact:
            return candidates, candidates
        head, tail = exact[0].start_frame, exact[-1].end_frame
        edges = {c for c in candidates if c < head or c >= tail}
        picks = [pick_candidates(shot, candidates, analyse.frames_per_shot) for shot in exact if not shot.too_short]
        ocr = edges.union(*(p[: analyse.ocr_frames_per_shot] for p in picks))
        if analyse.ocr_every_candidate:
            # every candidate of the shots that are analysed; those of too-short shots and of
            # transitions' frames (in no shot) are never read: 51 of the trailer's 105
            ocr = edges.union(*(candidates[bisect.bisect_left(candidates, shot.start_frame):
                                           bisect.bisect_left(candidates, shot.end_frame)]
                                for shot in exact if not shot.too_short))
        return sorted(ocr), sorted(edges.union(*picks))

    def _score(self, ocr: list[int], aesthetic: list[int], kept: dict[int, bytes]
               ) -> dict[int, tuple[tuple[TextBox, ...] | None, float | None, str | None]]:
        """``{index: (text_boxes, aesthetic, embedding)}`` of the candidates OCR / the aesthetic
        model read; ``embedding``: the CLIP image embedding the aesthetic head read
        (:func:`pipeline.dedup.pack_embedding`), kept for near-duplicate removal."""
        if not kept:
            return {}

        def image(i: int) -> np.ndarray:
            return cv2.imdecode(np.frombuffer(kept[i], np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]

        read = {}
        if self.scorer.text is not None:
            reader = self.ocr_pool.map if self.ocr_pool is not None else map
            read = dict(zip(ocr, reader(lambda i: self.scorer.text_boxes(image(i)), ocr)))
        looked = {}
        if self.scorer.aesthetic is not None:
            found = self.scorer.aesthetic_scores([image(i) for i in aesthetic])
            looked = {i: (score, pack_embedding(embedding)) for i, (score, embedding) in zip(aesthetic, found)}
        return {i: (read.get(i), *looked.get(i, (None, None))) for i in sorted(set(read) | set(looked))}


@dataclass(frozen=True)
class ScanJob:
    """One segment to scan and where its result goes (a :class:`SegmentStore` on the output)."""

    source: str  # path or URI (opened with dataset.storage.resolve)
    fps: float
    segment: Segment
    analysis_size: tuple[int, int]
    output: str  # the output's URI or path
    store_dir: str  # SegmentStore.dir on the output's filesystem
    area: ActiveArea = ActiveArea()  # the video's active picture (pipeline.picture)


def run_job(scanner: SegmentScanner, job: ScanJob) -> SegmentResult:
    """Scan ``job``'s segment and save its result (the resume point); returns it."""
    fs, path = resolve(job.source)
    result = scanner.scan(path, fs, job.fps, job.segment.start_frame, job.segment.end_frame,
                          analysis_size=job.analysis_size, area=job.area)
    SegmentStore(resolve(job.output)[0], job.store_dir).save(job.segment, result)
    return result


class LocalScans:
    """Segments scanned in this process (``ray.runner: sequential``), ``detect.sessions`` at a
    time in threads sharing one :class:`SegmentScanner`; results in the jobs' order."""

    def __init__(self, config: PipelineConfig):
        self.scanner = SegmentScanner(config)
        self.sessions = config.detect.sessions

    def run(self, jobs: list[ScanJob]) -> Iterator[SegmentResult]:
        if self.sessions == 1:
            yield from (run_job(self.scanner, job) for job in jobs)
            return
        with ThreadPoolExecutor(self.sessions, thread_name_prefix="scan") as pool:
            yield from pool.map(lambda job: run_job(self.scanner, job), jobs)


class _ScanActor:
    """A Ray actor holding one :class:`SegmentScanner`, at a lower CPU priority (``nice`` +5)
    than the stages after it: where it shares cores with renders, the videos already scanned
    finish first instead of every video's render waiting behind the scans (on the idle 2-core
    machine a long video's render used to run alone at the end). Threaded: ``detect.sessions``
    calls of :meth:`run` at once share the scanner (its models are only read)."""

    def __init__(self, config: PipelineConfig):
        import os

        self.scanner = SegmentScanner(config)
        # after loading: at start-up the models are what the first segment waits for
        os.nice(SCAN_NICENESS)

    def run(self, job: ScanJob) -> SegmentResult:
        return run_job(self.scanner, job)


class _Dispatcher:
    """An async Ray actor (no CPU) that hands each segment to a scanning actor as soon as one is
    free, first come first served. The detect tasks of several videos run in separate
    processes: each one's own ``ActorPool`` would see every actor free and queue its segments
    on the first, leaving the others idle (measured: all 4 demo videos on one actor)."""

    def __init__(self, actors: list):
        import asyncio

        self.free: asyncio.Queue = asyncio.Queue()
        for actor in actors:
            self.free.put_nowait(actor)

    async def run(self, job: ScanJob) -> SegmentResult:
        actor = await self.free.get()
        try:
            return await actor.run.remote(job)
        finally:
            self.free.put_nowait(actor)


class RayScans:
    """A pool of ``detect.resources.actors`` Ray actors, each a :class:`SegmentScanner`
    placed by ``detect.resources`` and scanning ``detect.sessions`` segments at once (Ray's
    ``max_concurrency``), behind one dispatcher (:class:`_Dispatcher`, which holds every actor
    once per session): the detect stage of every video sends its segments here, so a long
    film's segments run on all actors at once and no actor waits while another has a queue.
    Picklable (actor handles)."""

    def __init__(self, config: PipelineConfig):
        import ray

        res, sessions = config.detect.resources, config.detect.sessions
        place = {"num_cpus": res.cpus, "num_gpus": res.gpus, "max_concurrency": sessions}
        if res.memory_gib:
            place["memory"] = int(res.memory_gib * 2**30)
        self.actors = [ray.remote(_ScanActor).options(**place).remote(config) for _ in range(res.actors)]
        # max_concurrency: every segment of every video may wait in it at once
        self.dispatcher = ray.remote(_Dispatcher).options(num_cpus=0, max_concurrency=10_000).remote(
            self.actors * sessions)

    def close(self) -> None:
        """End the actors and the dispatcher: their CPUs, GPU shares and memory go back to Ray
        for the stages after the scan (on a GPU node, ``gpu_node.yaml``'s 6 actors × 2 CPUs hold
        12 of 16 cores, which the renders would otherwise never get). Only once nothing will
        scan again (:func:`pipeline.run._execute`: at the barrier after the detect stage)."""
        import ray

        for actor in [*self.actors, self.dispatcher]:
            ray.kill(actor)

    def run(self, jobs: list[ScanJob]) -> Iterator[SegmentResult]:
        import ray

        pending = [self.dispatcher.run.remote(job) for job in jobs]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])
