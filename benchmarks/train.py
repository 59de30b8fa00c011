"""Training-step benchmark: a Wan DiT shape (random weights), by default 5B at 241 frames 480×832.

Runs the trainer's own step (``Trainer.step``: flow matching, FSDP2 with bf16 parameters and
fp32 reduction, activation checkpointing, AdamW, grad clipping) on one random
precomputed-shape batch: latents [B, C, F_lat, H_lat, W_lat] (5B: Wan2.2-VAE [48, 61, 30, 52],
23,790 tokens after the (1, 2, 2) patch) and a 512-token context, cut into HoloCine's
default-like 6 shots (cuts [37, 73, 113, 169, 205] at 241 frames, scaled to ``--frames``).
Sparse inter-shot vs full self-attention; the blocks regionally compiled (``model.compile``)
unless ``--no-compile``; ``--checkpoint-skip-last N`` keeps the last N blocks' activations
instead of recomputing them, ``--checkpoint-policy selective`` recomputes only element-wise and
norm ops; ``--lora-rank R`` trains LoRA adapters on a frozen bf16 base, ``--cpu-offload``
keeps parameters, gradients and AdamW state in CPU memory; ``--batch-size`` and ``--frames``
measure batches of short samples (81 frames = 21 latent frames, a 5 s sample at 16 fps).

    torchrun --standalone --nproc-per-node N benchmarks/train.py --attention sparse --out R.json
    python benchmarks/train.py --model 5B --lora-rank 32 --out lora.json          # one GPU
    python benchmarks/train.py --model 5B --frames 81 --batch-size 4 --out b4.json
    torchrun --standalone --nproc-per-node 4 benchmarks/train.py --frames 961 --context 4 --out R.json

``--frames 961`` is a 60 s sample (241 latent frames, 93,990 tokens at 5B); ``--context N``
splits every sample over N GPUs (Ulysses context parallelism, ``parallel.context``).

Reports the median step time over the timed steps, tokens/s per GPU, MFU (model FLOPs over
``run.peak_tflops``, the 989 TFLOP/s dense bf16 datasheet peak; recompute not counted; LoRA's
adapter FLOPs not counted, its frozen base's weight-gradient matmuls still counted as done,
so LoRA MFU is an upper bound of useful work) and peak memory. ``--profile`` writes a
``torch.profiler`` Chrome trace of the last step and a table of the top kernels next to
``--out``. No data loading or encoders are timed (training reads precomputed latents). Runs
on CPU at tiny sizes (``--model tiny``) for tests.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

from multishot.dataset.loader import Batch
from multishot.dataset.record import num_latent_frames
from multishot.trainer.config import TrainConfig
from multishot.trainer.metrics import peak_memory_gib, step_flops
from multishot.trainer.trainer import Trainer

from harness import device_name, sync, write_report

CUTS_241 = [37, 73, 113, 169, 205]
#: latent height × width per model at 480×832 (Wan2.2 VAE: /16 for 5B; Wan2.1 VAE: /8)
LATENT_HW = {"5B": (30, 52), "14B": (60, 104), "1.3B": (60, 104), "tiny": (4, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attention", choices=["sparse", "full"], default="sparse")
    parser.add_argument("--backend", default="sdpa", help="sparse attention backend (model.attention)")
    parser.add_argument("--no-compile", action="store_true", help="run the blocks eagerly")
    parser.add_argument("--checkpoint-skip-last", type=int, default=0,
                        help="last N blocks without activation checkpointing")
    parser.add_argument("--checkpoint-policy", choices=["full", "selective"], default="full",
                        help="whole-block recompute, or keep matmul / attention outputs")
    parser.add_argument("--lora-rank", type=int, default=0, help="LoRA rank (0: full fine-tune)")
    parser.add_argument("--cpu-offload", action="store_true",
                        help="FSDP2 CPUOffloadPolicy: parameters, grads, AdamW state on the CPU")
    parser.add_argument("--model", default="5B")
    parser.add_argument("--frames", type=int, default=241, help="pixel frames per sample (4k+1)")
    parser.add_argument("--latent-hw", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help="latent height and width (default: 480×832 for --model)")
    parser.add_argument("--batch-size", type=int, default=1, help="samples per step per GPU")
    parser.add_argument("--context", type=int, default=1,
                        help="parallel.context: GPUs that split each sample (Ulysses)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--profile", action="store_true",
                        help="torch.profiler trace of the last step: <out>.trace.json, <out>.kernels.txt")
    parser.add_argument("--out", required=True, help="JSON results file (rank 0)")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp())
    (tmp / "unused.tar").write_bytes(b"")  # the trainer's loader lists shards; batches come from here
    lora = {"rank": args.lora_rank, "alpha": float(args.lora_rank)} if args.lora_rank else None
    config = TrainConfig.model_validate({
        "model": {"name": args.model, "attention_backend": args.backend,
                  "sparse_self_attention": args.attention == "sparse",
                  "window_cross_attention": False, "activation_checkpointing": True,
                  "checkpoint_policy": args.checkpoint_policy,
                  "checkpoint_skip_last": args.checkpoint_skip_last, "compile": not args.no_compile,
                  "cpu_offload": args.cpu_offload, "lora": lora},
        "data": {"shards": [str(tmp / "unused.tar")], "kind": "latents", "num_workers": 0},
        "optim": {"lr": 1e-5, "warmup_steps": 0},
        "run": {"output_dir": str(tmp / "run"), "max_steps": 10_000, "resume": False,
                "tensorboard": False, "export_safetensors": False},
        "parallel": {"context": args.context},
    })
    trainer = Trainer(config)
    mc = trainer.model_config
    latent = (mc.in_channels, num_latent_frames(args.frames), *(args.latent_hw or LATENT_HW[args.model]))
    cuts = [round(c * (args.frames - 1) / 240) for c in CUTS_241]
    cuts = sorted({c for c in cuts if 0 < c < args.frames})
    torch.manual_seed(trainer.dp_rank)  # the context-parallel ranks of a sample share its batch
    b = args.batch_size
    dtype = torch.bfloat16 if trainer.device.type == "cuda" else torch.float32
    batch = Batch([f"bench{i}" for i in range(b)], [cuts] * b, args.frames, [""] * b,
                  latents=torch.randn(b, *latent, dtype=dtype),
                  context=torch.randn(b, mc.text_len, mc.text_dim, dtype=dtype))
    times = []
    for i in range(args.warmup + args.steps):
        profiling = args.profile and i == args.warmup + args.steps - 1
        if profiling:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if trainer.device.type == "cuda":
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            profiler = torch.profiler.profile(activities=activities)
            profiler.__enter__()
        sync(trainer.device)
        start = time.perf_counter()
        loss, grad_norm, layout = trainer.step(batch)
        sync(trainer.device)
        if profiling:
            profiler.__exit__(None, None, None)
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
        if trainer.rank == 0:
            print(f"step {i}: {time.perf_counter() - start:.3f} s, loss {loss.item():.4f}", flush=True)
    step_time = statistics.median(times)
    # per GPU: the ``context`` GPUs of a sample share its work
    flops = step_flops(mc, layout, args.attention == "sparse") / args.context
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)  # DTensor: global
    result = {
        "device": device_name(trainer.device),
        "gpus": trainer.world_size, "torch": torch.__version__,
        "model": args.model, "attention": args.attention,
        "backend": args.backend if args.attention == "sparse" else "dense sdpa",
        "lora_rank": args.lora_rank, "trainable_parameters": trainable,
        "cpu_offload": args.cpu_offload,
        "adamw_fused": bool(trainer.optimizer.defaults.get("fused")),
        "alloc_conf": os.environ.get("PYTORCH_ALLOC_CONF"),
        "compiled": not args.no_compile, "checkpoint_policy": args.checkpoint_policy,
        "checkpointed_blocks": mc.num_layers - args.checkpoint_skip_last,
        "frames": args.frames, "latents": list(latent), "batch_per_gpu": b,
        "tokens_per_sample": layout.seq_len, "shots_per_sample": layout.num_shots // b,
        "timed_steps": len(times), "step_time_s": step_time, "step_times_s": times,
        "context_parallel": args.context,
        "tokens_per_s_per_gpu": b * layout.seq_len / args.context / step_time,
        "model_tflop_per_step_per_gpu": flops / 1e12,
        "mfu": flops / step_time / (config.run.peak_tflops * 1e12),
        "peak_memory_gib": peak_memory_gib(trainer.device),
    }
    if trainer.rank == 0:
        out = Path(args.out)
        write_report(out, result)
        if args.profile:
            profiler.export_chrome_trace(str(out.with_suffix(".trace.json")))
            sort = "cuda_time_total" if trainer.device.type == "cuda" else "cpu_time_total"
            out.with_suffix(".kernels.txt").write_text(
                profiler.key_averages().table(sort_by=sort, row_limit=40))
        print(json.dumps({k: v for k, v in result.items() if k != "step_times_s"}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
