"""Distilled-student benchmark (CausalCine §3.4, issue E2), random weights at the real shapes.

* ``stream``: 4-step streaming of the causal 5B DiT at 480×832 with the real loop of
  ``multishot generate --causal --checkpoint STUDENT`` (:class:`generate.stream.ChunkStreamer`:
  per chunk the student's 4 Euler steps at shift 5 without CFG, the clean pass that writes the
  KV cache, the streaming Wan2.2 VAE decode of the chunk), bf16, random weights built as
  ``benchmarks/causal.py`` builds them (the times are those of real weights: nothing in the
  loop depends on the values besides CAMR's top-k). ``--graphs`` (default) replays the
  denoising passes from CUDA graphs (:mod:`generate.graphs`), ``--compile`` compiles the DiT
  blocks and the VAE decoder, ``--overlap`` decodes chunk k while chunk k + 1 is denoised (with ``--graphs`` or
  ``--compile`` only once the stream is settled, :meth:`ChunkStreamer.stream`: from chunk 6
  at the default causal config);
  ``--check-graphs N`` runs every replayed pass of an N-chunk stream eagerly too and reports
  the largest difference. Reports video frames per second (12 video frames over the median wall time between two yielded chunks after chunk
  1: the overlapped throughput a viewer sees) and the latency to the first frame (chunk 0:
  the lone first latent frame, denoised, cached and decoded). ``--profile`` prints the top
  CUDA and CPU ops of one steady-state chunk (``torch.profiler``) and writes them to
  ``OUT.profile.txt``. Target ≥ 24 frames/s on one H100; CausalCine reports 16 FPS for its
  14B model on 8 H200.
* ``sca``: Shot Cut Accuracy (``multishot eval``) of the causal base and of a student
  distilled from it by ``multishot distill`` (a few steps), the same schedule and seed, on
  CPU at the ``tiny`` size with RANDOM weights: a check that the path runs end to end; the
  numbers say nothing about a trained model (random DiTs draw noise-like videos, whose
  "cuts" TransNetV2 finds anywhere or nowhere).

    python benchmarks/distill.py --part stream --no-graphs --out benchmarks/results/distill/distill_h100.json
    python benchmarks/distill.py --part stream --compile --check-graphs 8 --out benchmarks/results/distill/distill_h100.json
    python benchmarks/distill.py --part sca --out benchmarks/results/distill/distill_h100.json   # CPU
    python benchmarks/distill.py --part stream --tiny --out /tmp/distill_tiny.json      # CPU check
    python benchmarks/distill.py --part stream --profile --out /tmp/distill_profile.json

Each part updates its own key in ``--out`` (a stream: its variant's row, named by the flags:
``eager``, ``graphs``, ``graphs+compile``, ``+overlap``) and rewrites the markdown table next to
it (``.md``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from harness import device_name, sync, write_report

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_causal", REPO / "benchmarks/causal.py")
causal_bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(causal_bench)  # shares random_dit, the VAE geometry, the reference

TARGET_FPS = 24.0
STUDENT_STEPS = 4


def run_stream(args: argparse.Namespace, causal_dict: dict) -> dict:
    """Stream ``--chunks`` chunks with the student's sampler; time each chunk."""
    from multishot.torchvision_cpu import import_torchvision

    import_torchvision()
    from diffusers import AutoencoderKLWan

    from multishot.model.sampling import SamplingConfig
    from multishot.generate.schedule import PromptSchedule, Shot
    from multishot.generate.stream import ChunkStreamer, ShotText
    from multishot.model.causal import CausalConfig
    from multishot.model.prompt_spans import TextSpans

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    causal = CausalConfig(**causal_dict)
    model = causal_bench.random_dit(args.model, device, dtype, args.compile)
    mc = model.config
    vae_kwargs = causal_bench.VAE_TINY if args.model == "tiny" else causal_bench.VAE_5B
    vae = AutoencoderKLWan(**vae_kwargs).to(device, dtype).eval()
    generator = torch.Generator("cpu").manual_seed(0)
    g = mc.text_len // 5

    def text(schedule: PromptSchedule, shot: int) -> ShotText:
        # random states of a prompt filling the text length; the window: global caption and
        # this shot's caption; one row (no CFG: the student runs without the negative pass)
        context = torch.randn(1, mc.text_len, mc.text_dim, generator=generator).to(device)
        return ShotText(shot, context, TextSpans((0, g), ((g, 2 * g),)))

    sampling = SamplingConfig(sampler="euler", steps=STUDENT_STEPS, shift=5.0, cfg_scale=1.0)
    streamer = ChunkStreamer(model, causal, sampling, vae, text,
                             (mc.in_channels, *args.latent_hw), device, dtype, args.overlap,
                             cuda_graphs=args.graphs, compile_decoder=args.compile)
    schedule = PromptSchedule("a global caption",
                              [Shot(f"shot {i}", 5) for i in range(max(1, (args.chunks + 3) // 5))])
    chunks = []
    for _ in range(args.warmup):  # kernels, cuDNN plans, allocator: not the stream's own cost
        for _chunk in streamer.stream(schedule, seed=1, max_chunks=3):
            pass
    sync(device)
    calls_before = streamer.model_calls
    started = time.perf_counter()
    first_frame_s = None
    for chunk in streamer.stream(schedule, seed=0, max_chunks=args.chunks):
        if first_frame_s is None:
            first_frame_s = time.perf_counter() - started
        chunks.append({"index": chunk.index, "shot": chunk.shot, "frames": len(chunk.frames),
                       **chunk.seconds})
        print(f"chunk {chunk.index} (shot {chunk.shot}): {len(chunk.frames)} frames, denoise "
              f"{chunk.seconds['denoise_s']:.3f} s, decode {chunk.seconds['decode_s']:.3f} s",
              flush=True)
    wall = time.perf_counter() - started
    # chunk 1 waits for its own denoising and chunk 2's (the look-ahead starts there)
    steady = chunks[2:] or chunks[1:] or chunks
    per_chunk = statistics.median(c["wall_s"] for c in steady)
    frames_per_chunk = 4 * causal.chunk_latent_frames
    stride = 8 if args.model == "tiny" else 16
    return {
        "device": device_name(device), "torch": torch.__version__,
        "model": args.model, "weights": "random", "dtype": str(dtype).removeprefix("torch."),
        "height_width": [stride * h for h in args.latent_hw], "causal": causal_dict,
        "compiled": args.compile, "cuda_graphs": streamer.graphed.enabled,
        "graph_captures": streamer.graphed.captures, "graph_replays": streamer.graphed.replays,
        "sampler": "euler", "steps": STUDENT_STEPS, "shift": 5.0,
        "cfg_scale": 1.0, "chunks": len(chunks), "model_calls": streamer.model_calls - calls_before,
        "overlap_decode": args.overlap, "chunk_seconds": chunks, "seconds_per_chunk": per_chunk,
        "sequential_s_per_chunk": statistics.median(c["total_s"] for c in steady),
        "denoise_s_per_chunk": statistics.median(c["denoise_s"] for c in steady),
        "decode_s_per_chunk": statistics.median(c["decode_s"] for c in steady),
        "video_frames_per_chunk": frames_per_chunk,
        "video_frames_per_s": frames_per_chunk / per_chunk,
        "video_frames_per_s_overall": sum(c["frames"] for c in chunks) / wall,
        "first_frame_latency_s": first_frame_s, "target_video_frames_per_s": TARGET_FPS,
        "meets_target": frames_per_chunk / per_chunk >= TARGET_FPS,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30
        if device.type == "cuda" else None,
        "graphs_vs_eager": check_graphs(streamer, schedule, args.check_graphs)
        if args.check_graphs and args.graphs and device.type == "cuda" else None,
        "profile": profile_chunk(streamer, schedule, device) if args.profile else None,
    }


def check_graphs(streamer, schedule, chunks: int) -> dict:
    """Stream ``chunks`` chunks from one seed three times: eagerly, with CUDA graphs, and with
    graphs again (a second stream of the same size, whose cache may be given the first one's
    freed addresses); the largest difference of their latents against the eager stream's."""
    runs = {}
    for name, enabled in (("eager", False), ("graphs", True), ("graphs_again", True)):
        streamer.graphed.enabled = enabled
        runs[name] = [c.latents for c in streamer.stream(schedule, seed=5, max_chunks=chunks)]
    streamer.graphed.enabled = True
    diffs = {name: max((a - b).abs().max().item() for a, b in zip(runs[name], runs["eager"]))
             for name in ("graphs", "graphs_again")}
    print(f"graphs vs eager over {chunks} chunks: max |latent difference| {diffs}", flush=True)
    return {"chunks": chunks, "max_abs_latent_diff": max(diffs.values()), **diffs}


def profile_chunk(streamer, schedule, device: torch.device, rows: int = 15) -> str:
    """``torch.profiler`` tables (top ops by self device time and by self CPU time) of one
    steady-state chunk: the wait for chunk 2, i.e. chunk 3's 5 DiT calls beside chunk 2's VAE
    decode in its worker. Printed; returned for ``OUT.profile.txt``."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    stream = streamer.stream(schedule, seed=2, max_chunks=5)
    next(stream), next(stream)  # chunk 0; chunk 1 (chunk 2 denoised, its decode running)
    sync(device)
    with profile(activities=activities) as prof:
        next(stream)
        sync(device)
    stream.close()
    averages = prof.key_averages()
    tables = []
    if device.type == "cuda":
        tables.append("top ops by self CUDA time\n" +
                      averages.table(sort_by="self_device_time_total", row_limit=rows))
    tables.append("top ops by self CPU time\n" +
                  averages.table(sort_by="self_cpu_time_total", row_limit=rows))
    text = "\n".join(tables)
    print(text, flush=True)
    return text


def _cli(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MASTER_PORT": os.environ.get("MASTER_PORT", "29533")}
    done = subprocess.run([sys.executable, "-m", "multishot", *argv], cwd=cwd, env=env,
                          capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"multishot {argv[0]} failed: {done.stderr[-2000:]}")
    return done


def run_sca(args: argparse.Namespace) -> dict:
    """Distil a random tiny causal base for a few steps, stream one two-shot schedule with the
    base (8 Euler steps, CFG 3) and the student (its 4 steps), score both with ``multishot
    eval`` (SCA). CPU; random weights."""
    import yaml

    from multishot.generate.random_models import make_random_models

    work = Path(tempfile.mkdtemp(prefix="distill_sca-"))
    models = make_random_models(work / "random")
    causal = {"chunk_latent_frames": 2, "local_window_chunks": 1, "routed_frames": 1}
    (work / "prompts.jsonl").write_text(json.dumps({"global_caption": "a scene.", "shots": [
        {"caption": "a rabbit", "chunks": 2}, {"caption": "Trees", "chunks": 2}]}) + "\n")
    distill = yaml.safe_load((REPO / "configs/distill/tiny_cpu.yaml").read_text())
    distill["student"].update(init_from=models["dit"], causal=causal)
    distill["teacher"]["init_from"] = models["dit"]
    distill["encoders"]["text_encoder"] = models["text_encoder"]
    distill["prompts"] = str(work / "prompts.jsonl")
    distill["run"].update(output_dir=str(work / "student"), max_steps=3)
    distill["objective"]["ode_steps"] = 0  # no footage shards here (ODE init needs them): DMD only
    distill.pop("footage")
    (work / "distill.yaml").write_text(yaml.safe_dump(distill))
    _cli("distill", "--config", str(work / "distill.yaml"), cwd=REPO)

    gen = yaml.safe_load((REPO / "configs/generate/tiny_cpu_causal.yaml").read_text())
    gen["model"].update(random_weights=None, checkpoint=models["dit"], causal=causal)
    gen["encoders"].update(vae=models["vae"], text_encoder=models["text_encoder"])
    gen["sampling"].update(sampler="euler", steps=8, cfg_scale=3.0)
    gen["video"].update(height=64, width=64)
    (work / "gen.yaml").write_text(yaml.safe_dump(gen))
    (work / "schedule.txt").write_text(
        '{"global_caption": "a scene."}\n{"caption": "a rabbit", "chunks": 4}\n'
        '{"caption": "Trees", "chunks": 4}\n')
    result = {"weights": "random (tiny DiT, VAE, UMT5)", "device": device_name("cpu"),
              "note": "random weights: the SCA values check the path, they do not rate a model"}
    for name, extra in (("base", []), ("student", ["--checkpoint",
                                                   str(work / "student/student.safetensors")])):
        mp4 = work / f"{name}.mp4"
        _cli("generate", "--causal", "--config", str(work / "gen.yaml"), "--schedule",
             str(work / "schedule.txt"), "-o", str(mp4), *extra, cwd=REPO)
        info = json.loads(mp4.with_suffix(".json").read_text())
        _cli("eval", str(mp4), "--json", str(work / f"{name}_eval.json"), cwd=REPO)
        video = json.loads((work / f"{name}_eval.json").read_text())["videos"][0]
        result[name] = {"steps": info["steps"], "cfg_scale": info["cfg_scale"],
                        "cut_frames": info["cut_frames"], "frames": info["num_frames"],
                        "detected_cuts": video["detected_cuts"], "sca": video["sca"]["sca"]}
    return result


def markdown(report: dict) -> str:
    ref = causal_bench.CAUSALCINE_REFERENCE
    lines = ["# Distilled student: 4-step streaming and SCA", "",
             "Random weights at the real shapes (`benchmarks/distill.py`).", ""]
    streams = report.get("streams", {})
    if streams:
        lines += ["## 4-step streaming (DiT + VAE decode)", "",
                  "| variant | device | model | size | steps / chunk | chunks | "
                  "s / chunk (denoise, decode) | video frames / s | first frame s | target | "
                  "graphs vs eager | peak GiB |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for label, s in streams.items():
            peak = "" if s["peak_memory_gib"] is None else f"{s['peak_memory_gib']:.1f}"
            check = s.get("graphs_vs_eager")
            check = "" if not check else (
                f"max diff {check['max_abs_latent_diff']:g} over {check['chunks']} chunks, 2 streams"
                if "max_abs_latent_diff" in check else
                f"max diff {check['max_abs_velocity_diff']:g} over {check['replays_checked']} replays")
            lines.append(
                f"| {label} | {s['device']} | {s['model']} | "
                f"{s['height_width'][1]}×{s['height_width'][0]} | {s['steps']} (Euler, no CFG) | "
                f"{s['chunks']} | {s['seconds_per_chunk']:.3f} ({s['denoise_s_per_chunk']:.3f}, "
                f"{s['decode_s_per_chunk']:.3f}) | {s['video_frames_per_s']:.1f} | "
                f"{s['first_frame_latency_s']:.2f} | ≥ {s['target_video_frames_per_s']:g}: "
                f"{'met' if s['meets_target'] else 'missed'} | {check} | {peak} |")
        first = next(iter(streams.values()))
        lines += [f"| CausalCine, reported | {ref['gpus']} | 14B | 480×832 | 4 | | | "
                  f"{ref['video_frames_per_s']:g} | | | | |", "",
                  f"A chunk is {first['causal']['chunk_latent_frames']} latent frames = "
                  f"{first['video_frames_per_chunk']} video frames; s / chunk = the median wall "
                  "time between two yielded chunks after chunk 1 (with the decode overlapped "
                  "about max(denoise, decode), without it their sum); frames/s = video frames "
                  "over it. First frame: from the start of a stream (after the warm-up "
                  "streams) to chunk 0's decoded frame. Variants: `eager` (no graphs, no "
                  "compile), `graphs` (CUDA graphs of the denoising passes, "
                  "`generate.graphs`), `compile` (regional torch.compile of the DiT blocks and "
                  "of the VAE decoder), `overlap` (decode in a worker thread beside the next "
                  "chunk's denoising). Graphs vs eager: a stream with graphs and a second one "
                  "after it against an eager stream from the same seed (latents), or every "
                  "replayed pass run eagerly too on the same inputs and cache (velocity).", ""]
    c = report.get("sca")
    if c:
        lines += ["## SCA, base vs student (tiny, RANDOM weights, CPU)", "",
                  "| model | steps | frames | requested cuts | detected cuts | SCA |",
                  "|---|---|---|---|---|---|",
                  *[f"| {n} | {c[n]['steps']} (CFG {c[n]['cfg_scale']:g}) | {c[n]['frames']} | "
                    f"{c[n]['cut_frames']} | {c[n]['detected_cuts']} | {c[n]['sca']:.4f} |"
                    for n in ("base", "student")], "", c["note"] + ".", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["stream", "sca"], default="stream")
    parser.add_argument("--tiny", action="store_true", help="stream: the tiny DiT at 64×64 (CPU check)")
    parser.add_argument("--chunks", type=int, default=21,
                        help="stream: chunks (chunk 0 included; 21 = a 241-frame sample)")
    parser.add_argument("--warmup", type=int, default=2, help=(
        "stream: untimed 3-chunk streams first (compiled: the VAE decoder's recompiles for the "
        "first latent frames of a stream settle in the second)"))
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                        help="stream: regional torch.compile of the blocks and of the VAE decoder")
    parser.add_argument("--graphs", action=argparse.BooleanOptionalAction, default=True,
                        help="stream: CUDA graphs of the denoising passes (generate.graphs)")
    parser.add_argument("--check-graphs", type=int, default=0, metavar="CHUNKS",
                        help="stream: compare CHUNKS chunks streamed with and without graphs")
    parser.add_argument("--overlap", action=argparse.BooleanOptionalAction, default=False,
                        help="stream: decode chunk k while chunk k + 1 is denoised")
    parser.add_argument("--profile", action="store_true",
                        help="stream: print torch.profiler tables of one steady-state chunk")
    parser.add_argument("--out", required=True, help="JSON results (updated per part)")
    args = parser.parse_args()
    if args.tiny:
        args.model, args.latent_hw = "tiny", (8, 8)
        causal = {"chunk_latent_frames": 2, "local_window_chunks": 1, "routed_frames": 1}
    else:
        args.model, args.latent_hw = "5B", (30, 52)
        causal = {"chunk_latent_frames": 3, "local_window_chunks": 2, "routed_frames": 6}
    out = Path(args.out)
    report = json.loads(out.read_text()) if out.exists() else {}
    report["causalcine_reference"] = causal_bench.CAUSALCINE_REFERENCE
    if args.part == "stream":
        result = run_stream(args, causal)
        label = "+".join([n for n, on in (("graphs", result["cuda_graphs"]),
                                          ("compile", args.compile), ("overlap", args.overlap))
                          if on] or ["eager"])
        report.setdefault("streams", {})[label] = result
    else:
        result = report["sca"] = run_sca(args)
    print(json.dumps({k: v for k, v in result.items() if k not in ("chunk_seconds", "profile")}),
          flush=True)
    if result.get("profile"):
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".profile.txt").write_text(result.pop("profile") + "\n")
    write_report(out, report, markdown)


if __name__ == "__main__":
    main()
