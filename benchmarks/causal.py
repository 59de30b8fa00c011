"""CausalCine benchmark: causal fine-tuning (teacher forcing) and streaming generation, random
weights at the real shapes.

* ``train``: the trainer's own step (``Trainer.step`` with ``model.causal``: parallel teacher
  forcing, FSDP2 with bf16 parameters, activation checkpointing, AdamW; the ``flex`` backend on
  CUDA, ``--backend`` to change it) on one random precomputed-shape sample of
  Wan2.2-TI2V-5B at 241 frames, 480×832: latents
  [48, 61, 30, 52], clean and noisy copies = 2 × 23,790 tokens, chunks of 3 latent frames with
  CAMR (local window 2 chunks, 6 routed frames), 6 shots (HoloCine's example cuts). MFU as the
  trainer counts it (:func:`trainer.metrics.teacher_forcing_step_flops`: the four quadrants'
  query-key pairs, CAMR's routed frames, recompute not counted; peak ``--peak-tflops``), peak
  memory. One 80 GB GPU does not hold a full 5B fine-tune's AdamW state (benchmarks/results/
  train/train.md), so ``--lora-rank`` (default 32) or ``--cpu-offload``; ``--lora-rank 0`` for a full
  fine-tune on a larger GPU.
* ``long`` (issue 32): a ``--minutes`` stream of a 4-step student (random weights, Euler, no
  CFG, CUDA graphs and compiled blocks on CUDA) through the same loop: video frames per second,
  peak memory and the KV cache's size at 1, 5 and 10 minutes of video, seconds per chunk at the
  start and the end (flat with the bounded cache of :class:`model.causal.LayerKV`).
* ``stream``: :class:`generate.stream.ChunkStreamer` (the loop of ``multishot generate
  --causal``) with the 5B DiT in bf16 and a random Wan2.2 VAE (the Wan2.2-TI2V-5B-Diffusers
  ``vae/config.json`` geometry) at 480×832: per chunk ``--steps`` denoising steps (default 50,
  the full count, UniPC, CFG 5 as a batch of two), the clean pass that writes the KV cache, and
  the streaming VAE decode of the chunk. Seconds per chunk (median over the chunks after the
  warm-up: chunk 0, and chunk 1 too with compiled blocks, which recompile once for the growing
  history) and video frames per second (12 video frames a chunk / seconds a chunk). Text
  states are random (no encoder is timed: a shot's prompt is encoded once, not per chunk).

CausalCine's own figure for comparison: 16 FPS for its 14B model on 8 H200 **after** DMD
distillation to 4 steps (issue [E2]); this benchmark runs the undistilled base at the full
step count on one GPU.

    python benchmarks/causal.py --part train --out benchmarks/results/causal/causal_h100.json
    python benchmarks/causal.py --part stream --chunks 8 --out benchmarks/results/causal/causal_h100.json
    python benchmarks/causal.py --tiny --out /tmp/causal_tiny.json                    # CPU check
    python benchmarks/causal.py --part long --minutes 10 --overlap --out benchmarks/results/causal/causal_long_h100.json

Each part updates its own key in ``--out`` (so two device calls fill one file) and rewrites the
markdown table next to it (``.md``). Progress goes to stdout; ``long`` prints each memory mark as
it is reached. On a GPU image without this project's dependencies the ``long`` and ``stream``
parts need, as wheels, the project itself (``pip wheel --no-deps .``), pydantic (with
pydantic-core, annotated-types, typing-inspection, typing-extensions ≥ 4.16) and diffusers; not
PyAV, Ray or torchvision (nothing here writes an mp4; diffusers runs without torchvision).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from harness import device_name, sync, write_report

#: CausalCine's reported speed (paper, abstract and §4): 14B, 4 steps after DMD, 8 H200
CAUSALCINE_REFERENCE = {"model": "14B (CausalCine)", "steps": 4, "gpus": "8 × H200",
                        "video_frames_per_s": 16.0, "note": "after DMD distillation (issue E2)"}
CUTS_241 = [37, 73, 113, 169, 205]
#: Wan2.2-TI2V-5B-Diffusers vae/config.json geometry (benchmarks/generate.py), random weights
VAE_5B = dict(base_dim=160, decoder_base_dim=256, z_dim=48, is_residual=True, in_channels=12,
              out_channels=12, patch_size=2, scale_factor_spatial=16, latents_mean=[0.0] * 48,
              latents_std=[1.0] * 48)
VAE_TINY = dict(base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                latents_mean=[0.0] * 16, latents_std=[1.0] * 16)


def run_train(args: argparse.Namespace, causal: dict, compiled: bool) -> dict:
    """Time ``--warmup`` + ``--train-steps`` teacher-forcing steps of the trainer."""
    import torch.distributed as dist

    from multishot.dataset.loader import Batch
    from multishot.dataset.record import num_latent_frames
    from multishot.trainer.config import TrainConfig
    from multishot.trainer.metrics import peak_memory_gib, teacher_forcing_step_flops
    from multishot.trainer.trainer import Trainer

    tmp = Path(tempfile.mkdtemp())
    (tmp / "unused.tar").write_bytes(b"")  # the loader lists shards; the batch comes from here
    lora = {"rank": args.lora_rank, "alpha": float(args.lora_rank)} if args.lora_rank else None
    config = TrainConfig.model_validate({
        "model": {"name": args.model, "attention_backend": args.backend,
                  "window_cross_attention": False, "activation_checkpointing": True,
                  "compile": compiled, "cpu_offload": args.cpu_offload, "lora": lora,
                  "causal": causal},
        "data": {"shards": [str(tmp / "unused.tar")], "kind": "latents", "num_workers": 0},
        "optim": {"lr": 1e-5, "warmup_steps": 0},
        "run": {"output_dir": str(tmp / "run"), "max_steps": 10_000, "resume": False,
                "tensorboard": False, "export_safetensors": False,
                "peak_tflops": args.peak_tflops},
    })
    trainer = Trainer(config)
    mc = trainer.model_config
    latent = (mc.in_channels, num_latent_frames(args.frames), *args.latent_hw)
    cuts = sorted({c for c in (round(c * (args.frames - 1) / 240) for c in CUTS_241)
                   if 0 < c < args.frames})
    cuts = [(c - 1) // 4 * 4 + 1 for c in cuts]
    torch.manual_seed(0)
    dtype = torch.bfloat16 if trainer.device.type == "cuda" else torch.float32
    batch = Batch(["bench"], [cuts], args.frames, [""], latents=torch.randn(1, *latent, dtype=dtype),
                  context=torch.randn(1, mc.text_len, mc.text_dim, dtype=dtype))
    times = []
    for i in range(args.warmup + args.train_steps):
        sync(trainer.device)
        start = time.perf_counter()
        loss, _, layout = trainer.step(batch)
        sync(trainer.device)
        seconds = time.perf_counter() - start
        if i >= args.warmup:
            times.append(seconds)
        print(f"train step {i}{' (warm-up)' if i < args.warmup else ''}: {seconds:.3f} s, "
              f"loss {loss.item():.4f}", flush=True)
    step_time = statistics.median(times)
    flops = teacher_forcing_step_flops(mc, layout, trainer.causal)
    result = {
        "device": device_name(trainer.device), "torch": torch.__version__, "model": args.model,
        "frames": args.frames, "latents": list(latent), "causal": causal,
        "tokens_per_step": 2 * layout.seq_len, "shots": len(layout.shot_starts[0]),
        "attention_backend": args.backend,
        "lora_rank": args.lora_rank, "cpu_offload": args.cpu_offload, "compiled": compiled,
        "activation_checkpointing": "full", "window_cross_attention": False,
        "timed_steps": len(times), "step_time_s": step_time, "step_times_s": times,
        "tokens_per_s": 2 * layout.seq_len / step_time,
        "model_tflop_per_step": flops / 1e12, "peak_tflops": args.peak_tflops,
        "mfu": flops / step_time / (args.peak_tflops * 1e12),
        "peak_memory_gib": peak_memory_gib(trainer.device),
    }
    del trainer
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    dist.destroy_process_group()
    return result


def import_diffusers() -> None:
    """Make ``import diffusers`` work: a CUDA torchvision wheel beside a CPU torch needs
    :func:`multishot.torchvision_cpu.import_torchvision` first (diffusers imports torchvision
    when installed); a GPU box without torchvision needs nothing."""
    import importlib.util

    if importlib.util.find_spec("torchvision") is not None:
        from multishot.torchvision_cpu import import_torchvision

        import_torchvision()


def random_dit(name: str, device: torch.device, dtype: torch.dtype, compiled: bool):
    """A random-weight ``WanModel`` built on meta and initialised on the device (as
    benchmarks/generate.py; the head made non-zero so outputs are not constant)."""
    from multishot.model.config import get_config
    from multishot.model.dit import WanModel

    with torch.device("meta"):
        model = WanModel(get_config(name), "sdpa")
    model = model.to(dtype)
    model.time_embedding.float()  # as generate.generator.load_dit keeps them
    model.time_projection.float()
    model = model.to_empty(device=device)
    model.init_weights()
    torch.nn.init.normal_(model.head.head.weight, std=0.02)
    if compiled:
        from multishot.model.compile import apply_compile

        apply_compile(model)
    return model.eval().requires_grad_(False)


def run_stream(args: argparse.Namespace, causal_dict: dict, compiled: bool) -> dict:
    """Stream ``--chunks`` chunks with the real loop; time each chunk (denoise, decode)."""
    import_diffusers()
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
    model = random_dit(args.model, device, dtype, compiled)
    mc = model.config
    vae = AutoencoderKLWan(**(VAE_TINY if args.model == "tiny" else VAE_5B)).to(device, dtype).eval()
    generator = torch.Generator("cpu").manual_seed(0)
    g = mc.text_len // 5

    def text(schedule: PromptSchedule, shot: int) -> ShotText:
        # random states of a prompt filling the text length; the window: global caption and
        # this shot's caption (a fifth each), as a real prompt would give
        context = torch.randn(2, mc.text_len, mc.text_dim, generator=generator).to(device)
        return ShotText(shot, context, TextSpans((0, g), ((g, 2 * g),)))

    sampling = SamplingConfig(sampler="unipc", steps=args.steps, shift=5.0, cfg_scale=5.0)
    streamer = ChunkStreamer(model, causal, sampling, vae, text,
                             (mc.in_channels, *args.latent_hw), device, dtype)
    shots = max(1, (args.chunks - 1 + 4) // 5)  # a new shot every 5 chunks
    schedule = PromptSchedule("a global caption", [Shot(f"shot {i}", 5) for i in range(shots)])
    chunks = []
    started = time.perf_counter()
    for chunk in streamer.stream(schedule, seed=0, max_chunks=args.chunks):
        chunks.append({"index": chunk.index, "shot": chunk.shot, "frames": len(chunk.frames),
                       **chunk.seconds})
        print(f"chunk {chunk.index} (shot {chunk.shot}): {len(chunk.frames)} frames, denoise "
              f"{chunk.seconds['denoise_s']:.2f} s, decode {chunk.seconds['decode_s']:.2f} s",
              flush=True)
    wall = time.perf_counter() - started
    # chunk 0 (one latent frame) and, compiled, chunk 1 (dynamo's dynamic-shape recompile as
    # the history grows) are warm-up; later chunks reuse the graphs
    steady = chunks[2 if compiled else 1:] or chunks
    per_chunk = statistics.median(c["total_s"] for c in steady)
    frames_per_chunk = 4 * causal.chunk_latent_frames
    result = {
        "device": device_name(device), "torch": torch.__version__, "model": args.model,
        "dtype": str(dtype).removeprefix("torch."), "height_width": [16 * h for h in args.latent_hw]
        if args.model != "tiny" else [8 * h for h in args.latent_hw],
        "latent_hw": list(args.latent_hw), "causal": causal_dict, "compiled": compiled,
        "sampler": "unipc", "steps": args.steps, "cfg_scale": 5.0, "cfg_batch_of_two": True,
        "chunks": len(chunks), "tokens_per_chunk": causal.chunk_latent_frames
        * (args.latent_hw[0] // 2) * (args.latent_hw[1] // 2),
        "model_calls": streamer.model_calls, "chunk_seconds": chunks,
        "seconds_per_chunk": per_chunk,
        "denoise_s_per_chunk": statistics.median(c["denoise_s"] for c in steady),
        "decode_s_per_chunk": statistics.median(c["decode_s"] for c in steady),
        "video_frames_per_chunk": frames_per_chunk,
        "video_frames_per_s": frames_per_chunk / per_chunk,
        "first_chunk_s": chunks[0]["total_s"],
        "wall_s": wall, "video_frames": sum(c["frames"] for c in chunks),
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30
        if device.type == "cuda" else None,
    }
    del streamer, model, vae
    gc.collect()
    return result


def run_long(args: argparse.Namespace, causal_dict: dict, compiled: bool,
             partial: Callable[[dict], None] | None = None) -> dict:
    """The long stream (issue 32): ``--minutes`` of video at ``--fps`` streamed by a 4-step
    student (Euler, shift 5, no CFG; random weights) with the real loop (CUDA graphs and
    compiled blocks on CUDA), decode included. Reports video frames per second over the whole
    stream, peak memory (allocated on CUDA; the KV cache's bytes everywhere) when the video
    reaches each ``--marks`` minute, and seconds per chunk at the start and the end (median of
    the first and last ten chunks after the first two). ``--overlap`` decodes chunk k while
    chunk k + 1 is denoised (``ChunkStreamer(overlap_decode=True)``) once the stream is
    settled (compiled and graphed: from chunk 6 at the 5B defaults,
    :meth:`ChunkStreamer.stream`). At each mark ``partial`` (if given) receives what was
    measured so far, so a run stopped at a time limit keeps it."""
    import_diffusers()
    from diffusers import AutoencoderKLWan

    from multishot.generate.schedule import PromptSchedule, Shot
    from multishot.generate.stream import ChunkStreamer, ShotText
    from multishot.model.causal import CausalConfig
    from multishot.model.prompt_spans import TextSpans
    from multishot.model.sampling import SamplingConfig

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    causal = CausalConfig(**causal_dict)
    model = random_dit(args.model, device, dtype, compiled)
    mc = model.config
    vae = AutoencoderKLWan(**(VAE_TINY if args.model == "tiny" else VAE_5B)).to(device, dtype).eval()
    generator = torch.Generator("cpu").manual_seed(0)
    g = mc.text_len // 5

    def text(schedule: PromptSchedule, shot: int) -> ShotText:
        context = torch.randn(1, mc.text_len, mc.text_dim, generator=generator).to(device)
        return ShotText(shot, context, TextSpans((0, g), ((g, 2 * g),)))

    steps = 4
    sampling = SamplingConfig(sampler="euler", steps=steps, shift=5.0, cfg_scale=1.0)
    streamer = ChunkStreamer(model, causal, sampling, vae, text,
                             (mc.in_channels, *args.latent_hw), device, dtype,
                             overlap_decode=args.overlap, cuda_graphs=device.type == "cuda",
                             compile_decoder=compiled)
    frames_per_chunk = 4 * causal.chunk_latent_frames
    total_frames = args.minutes * 60 * args.fps
    num_chunks = 1 + math.ceil((total_frames - 1) / frames_per_chunk)
    schedule = PromptSchedule("a global caption", [Shot(f"shot {i}", 10)
                                                   for i in range(math.ceil(num_chunks / 10))])
    marks = sorted(m for m in args.marks if m <= args.minutes) or [args.minutes]
    at_marks, chunks, video_frames = {}, [], 0
    cache_bytes = 0
    started = time.perf_counter()
    stream = streamer.stream(schedule, seed=0, max_chunks=num_chunks)
    for chunk in stream:
        video_frames += len(chunk.frames)
        chunks.append({"index": chunk.index, "frames": len(chunk.frames), **chunk.seconds})
        minute = video_frames / args.fps / 60
        while marks and minute >= marks[0] - 1e-9:
            cache = streamer.cache
            cache_bytes = sum(t.numel() * t.element_size() for kv in cache.layers
                              for t in kv.storages() if t is not None) if cache else 0
            at_marks[f"{marks.pop(0):g}"] = {
                "chunk": chunk.index, "wall_s": time.perf_counter() - started,
                "kv_cache_gib": cache_bytes / 2**30,
                # Linux reports ru_maxrss in KiB
                "peak_host_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30
                if device.type == "cuda" else None}
            # on stdout as it happens: a run stopped at a time limit still shows its marks
            mark = next(reversed(at_marks))
            print(f"mark {mark} min: {json.dumps(at_marks[mark])}", flush=True)
            if partial is not None:  # a run stopped at a time limit keeps the marks it reached
                partial({"device": device_name(device), "model": args.model,
                         "overlap_decode": args.overlap, "minutes": args.minutes,
                         "stopped_after_mark": mark, "at_minutes": at_marks,
                         "chunk_wall_s": [c["wall_s"] for c in chunks]})
        if chunk.index % 50 == 0:
            print(f"chunk {chunk.index}: {minute:.2f} min of video, {chunk.seconds['wall_s']:.3f}"
                  f" s", flush=True)
    wall = time.perf_counter() - started
    body = chunks[2:] or chunks
    head, tail = body[:10], body[-10:]
    return {
        "device": device_name(device), "torch": torch.__version__, "model": args.model,
        "weights": "random", "dtype": str(dtype).removeprefix("torch."),
        "latent_hw": list(args.latent_hw), "causal": causal_dict, "compiled": compiled,
        "cuda_graphs": streamer.graphed.enabled, "overlap_decode": args.overlap,
        "sampler": "euler", "steps": steps,
        "cfg_scale": 1.0, "fps": args.fps, "minutes": args.minutes, "chunks": len(chunks),
        "video_frames": video_frames, "wall_s": wall,
        "video_frames_per_s": video_frames / wall,
        "start_s_per_chunk": statistics.median(c["wall_s"] for c in head),
        "end_s_per_chunk": statistics.median(c["wall_s"] for c in tail),
        "at_minutes": at_marks,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30
        if device.type == "cuda" else None,
    }


def markdown(report: dict) -> str:
    """The results table of ``report`` (``train``, ``stream`` keys; either may be missing)."""
    lines = ["# CausalCine benchmark: causal fine-tuning and streaming generation", "",
             "Random weights at the real shapes (`benchmarks/causal.py`); the times are those of "
             "real weights (no data-dependent work besides CAMR's top-k).", ""]
    t = report.get("train")
    if t:
        what = f"LoRA r{t['lora_rank']}" if t["lora_rank"] else "full fine-tune"
        lines += ["## Teacher-forcing training step", "",
                  "| device | model | frames | tokens (clean + noisy) | chunks / CAMR | what | "
                  "attention | compiled | s / step | MFU | peak GiB |",
                  "|---|---|---|---|---|---|---|---|---|---|---|",
                  f"| {t['device']} | {t['model']} | {t['frames']} | {t['tokens_per_step']:,} | "
                  f"{t['causal']['chunk_latent_frames']} latent frames / window "
                  f"{t['causal']['local_window_chunks']}, routed {t['causal']['routed_frames']} | "
                  f"{what}{', CPU offload' if t['cpu_offload'] else ''} | "
                  f"{t['attention_backend']} | {t['compiled']} | "
                  f"{t['step_time_s']:.2f} | {t['mfu']:.1%} | {t['peak_memory_gib']:.1f} |", "",
                  f"MFU = {t['model_tflop_per_step']:.0f} TFLOP a step (3 × forward, the four "
                  f"quadrants' pairs) / step time / {t['peak_tflops']:.0f} TFLOP/s; "
                  f"{t['timed_steps']} timed steps, median.", ""]
    s = report.get("stream")
    if s:
        lines += ["## Streaming generation", "",
                  "| device | model | size | steps / chunk | chunks | s / chunk (denoise + decode) "
                  "| video frames / s | first chunk s | peak GiB |",
                  "|---|---|---|---|---|---|---|---|---|",
                  f"| {s['device']} | {s['model']} | {s['height_width'][1]}×{s['height_width'][0]} | "
                  f"{s['steps']} ({s['sampler']}, CFG {s['cfg_scale']:g}) | {s['chunks']} | "
                  f"{s['seconds_per_chunk']:.2f} ({s['denoise_s_per_chunk']:.2f} + "
                  f"{s['decode_s_per_chunk']:.2f}) | {s['video_frames_per_s']:.2f} | "
                  f"{s['first_chunk_s']:.2f} | "
                  f"{'' if s['peak_memory_gib'] is None else format(s['peak_memory_gib'], '.1f')} |",
                  f"| 8 × H200 (CausalCine, reported) | 14B | 480×832 | 4 (after DMD) | | | "
                  f"{CAUSALCINE_REFERENCE['video_frames_per_s']:g} | | |", "",
                  f"A chunk is {s['causal']['chunk_latent_frames']} latent frames = "
                  f"{s['video_frames_per_chunk']} video frames ({s['tokens_per_chunk']:,} tokens); "
                  "seconds per chunk are the median after the warm-up chunks (chunk 0, the lone "
                  "first frame, and when compiled chunk 1), with the clean pass that writes the KV "
                  "cache and the causal VAE decode of the chunk.", ""]
    long = report.get("long")
    if long:
        marks = "; ".join(f"{m} min: cache {v['kv_cache_gib'] * 1024:.2f} MiB, "
                          + (f"host RSS {v['peak_host_rss_gib']:.2f} GiB"
                             if v["peak_memory_gib"] is None
                             else f"GPU peak {v['peak_memory_gib']:.1f} GiB")
                          for m, v in long["at_minutes"].items())
        lines += ["## Long stream (bounded KV cache)", "",
                  "| device | model | video | steps | chunks | video frames / s | s / chunk start "
                  "→ end | memory at marks |", "|---|---|---|---|---|---|---|---|",
                  f"| {long['device']} | {long['model']} | {long['minutes']:g} min at "
                  f"{long['fps']} fps | {long['steps']} (Euler, no CFG) | {long['chunks']} | "
                  f"{long['video_frames_per_s']:.2f} | {long['start_s_per_chunk']:.3f} → "
                  f"{long['end_s_per_chunk']:.3f} | {marks} |", "",
                  "Seconds per chunk: the median of the first and the last ten chunks after "
                  "chunk 1 (wall time between chunks, decode included).", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["train", "stream", "long", "all"], default="all",
                        help="all = train and stream; long = the long stream of --minutes")
    parser.add_argument("--overlap", action=argparse.BooleanOptionalAction, default=False,
                        help="long: decode chunk k while chunk k + 1 is denoised")
    parser.add_argument("--minutes", type=float, default=10.0,
                        help="long: minutes of video to stream (at --fps)")
    parser.add_argument("--fps", type=int, default=16, help="long: video frames per second")
    parser.add_argument("--marks", type=lambda s: [float(m) for m in s.split(",")],
                        default=[1.0, 5.0, 10.0], help="long: minutes of video at which memory "
                        "is reported (comma-separated)")
    parser.add_argument("--tiny", action="store_true", help="the tiny DiT at 64×64 (CPU check)")
    parser.add_argument("--backend", choices=["sdpa", "flex", "reference"], default=None,
                        help="train: causal attention backend (default: flex on CUDA, the "
                        "fastest teacher forcing in causal_attention_h100.md; sdpa on CPU)")
    parser.add_argument("--lora-rank", type=int, default=32, help="train: LoRA rank; 0 = full")
    parser.add_argument("--cpu-offload", action="store_true", help="train: FSDP2 CPU offload")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="regional torch.compile of the blocks (default: on CUDA)")
    parser.add_argument("--warmup", type=int, default=2, help="train: untimed steps")
    parser.add_argument("--train-steps", type=int, default=3, help="train: timed steps")
    parser.add_argument("--steps", type=int, default=50, help="stream: denoising steps a chunk")
    parser.add_argument("--chunks", type=int, default=8, help="stream: chunks (chunk 0 included)")
    parser.add_argument("--peak-tflops", type=float, default=989.0,
                        help="dense bf16 peak per GPU for MFU (H100/H200 SXM: 989)")
    parser.add_argument("--out", required=True, help="JSON results (updated per part)")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    args.backend = args.backend or ("flex" if cuda else "sdpa")  # flex has no CPU backward
    if args.tiny:
        args.model, args.frames, args.latent_hw = "tiny", 25, (8, 8)
        # the tiny fine-tune's 25-frame samples: a 7-latent-frame horizon
        causal = {"chunk_latent_frames": 2, "local_window_chunks": 1, "routed_frames": 1,
                  "horizon_frames": 7, "memory_frames": 6}
    else:
        args.model, args.frames, args.latent_hw = "5B", 241, (30, 52)
        causal = {"chunk_latent_frames": 3, "local_window_chunks": 2, "routed_frames": 6}
    out = Path(args.out)
    report = json.loads(out.read_text()) if out.exists() else {}
    report["causalcine_reference"] = CAUSALCINE_REFERENCE
    for part in (["train", "stream"] if args.part == "all" else [args.part]):
        print(f"== {part}", flush=True)
        compiled = args.compile if args.compile is not None else cuda
        if part == "long":
            def partial(result: dict, part: str = part) -> None:
                write_report(out, {**report, f"{part}_partial": result}, markdown)
            report[part] = run_long(args, causal, compiled, partial)
            report.pop(f"{part}_partial", None)
        else:
            report[part] = {"train": run_train, "stream": run_stream}[part](args, causal, compiled)
        print(json.dumps({k: v for k, v in report[part].items()
                          if k not in ("step_times_s", "chunk_seconds")}), flush=True)
        write_report(out, report, markdown)


if __name__ == "__main__":
    main()
