"""Training-step benchmark: the 5B DiT shape (random weights), 241 frames at 480×832.

Runs the trainer's own step (``Trainer.step``: flow matching, FSDP2 with bf16 parameters and
fp32 reduction, per-block activation checkpointing, AdamW, grad clipping) on one random
precomputed-shape batch: Wan2.2-VAE latents [1, 48, 61, 30, 52] (23,790 tokens after the
(1, 2, 2) patch) and a 512-token context, cut into HoloCine's default-like 6 shots
(cuts [37, 73, 113, 169, 205]). Sparse inter-shot vs full self-attention; the blocks
regionally compiled (``model.compile``) unless ``--no-compile``; ``--checkpoint-skip-last N``
keeps the last N blocks' activations instead of recomputing them. ``--frames 961`` is a 60 s
sample (241 latent frames, 93,990 tokens; cuts spread over 6 shots); ``--context N`` splits
every sample over N GPUs (Ulysses context parallelism, ``parallel.context``).

    torchrun --standalone --nproc-per-node N benchmarks/train.py --attention sparse --out R.json
    torchrun --standalone --nproc-per-node 4 benchmarks/train.py --frames 961 --context 4 --out R.json

Reports the median step time over the timed steps, tokens/s per GPU, MFU (model FLOPs over
the 989 TFLOP/s dense bf16 datasheet peak; recompute not counted) and peak memory. No data
loading or encoders are timed (training reads precomputed latents).
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

CUTS = [37, 73, 113, 169, 205]
#: Wan2.2-VAE latents of one 480×832 frame: 48 channels, 30 × 52
CHANNELS, LATENT_HW = 48, (30, 52)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attention", choices=["sparse", "full"], default="sparse")
    parser.add_argument("--backend", default="sdpa", help="sparse attention backend (model.attention)")
    parser.add_argument("--no-compile", action="store_true", help="run the blocks eagerly")
    parser.add_argument("--checkpoint-skip-last", type=int, default=0,
                        help="last N blocks without activation checkpointing")
    parser.add_argument("--model", default="5B")
    parser.add_argument("--frames", type=int, default=241, help="pixel frames, 4k+1 (961: 60 s)")
    parser.add_argument("--context", type=int, default=1,
                        help="parallel.context: GPUs that split each sample (Ulysses)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--out", required=True, help="JSON results file (rank 0)")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp())
    (tmp / "unused.tar").write_bytes(b"")  # the trainer's loader lists shards; batches come from here
    config = TrainConfig.model_validate({
        "model": {"name": args.model, "attention_backend": args.backend,
                  "sparse_self_attention": args.attention == "sparse",
                  "window_cross_attention": False, "activation_checkpointing": True,
                  "checkpoint_skip_last": args.checkpoint_skip_last, "compile": not args.no_compile},
        "data": {"shards": [str(tmp / "unused.tar")], "kind": "latents", "num_workers": 0},
        "optim": {"lr": 1e-5, "warmup_steps": 0},
        "run": {"output_dir": str(tmp / "run"), "max_steps": 10_000, "resume": False,
                "tensorboard": False, "export_safetensors": False},
        "parallel": {"context": args.context},
    })
    frames = args.frames
    cuts = CUTS if frames == 241 else [4 * round(i * (frames - 1) / 24) + 1 for i in range(1, 6)]
    latent = (CHANNELS, num_latent_frames(frames), *LATENT_HW)
    trainer = Trainer(config)
    torch.manual_seed(trainer.dp_rank)  # the context-parallel ranks of a sample share its batch
    batch = Batch(["bench"], [cuts], frames, [""],
                  latents=torch.randn(1, *latent, dtype=torch.bfloat16),
                  context=torch.randn(1, 512, trainer.model_config.text_dim, dtype=torch.bfloat16))
    times = []
    for i in range(args.warmup + args.steps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        loss, grad_norm, layout = trainer.step(batch)
        torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
        if trainer.rank == 0:
            print(f"step {i}: {time.perf_counter() - start:.3f} s, loss {loss.item():.4f}", flush=True)
    step_time = statistics.median(times)
    # per GPU: the ``context`` GPUs of a sample share its work
    flops = step_flops(trainer.model_config, layout, args.attention == "sparse") / args.context
    result = {
        "device": torch.cuda.get_device_name(), "gpus": trainer.world_size, "torch": torch.__version__,
        "model": args.model, "attention": args.attention,
        "backend": args.backend if args.attention == "sparse" else "dense sdpa",
        "adamw_fused": bool(trainer.optimizer.defaults.get("fused")),
        "alloc_conf": os.environ.get("PYTORCH_ALLOC_CONF"),
        "compiled": not args.no_compile, "checkpointed_blocks":
            trainer.model_config.num_layers - args.checkpoint_skip_last,
        "context_parallel": args.context,
        "frames": frames, "latents": list(latent), "tokens_per_sample": layout.seq_len,
        "shots": layout.num_shots, "batch_per_gpu": 1, "timed_steps": len(times),
        "step_time_s": step_time, "step_times_s": times,
        "tokens_per_s_per_gpu": layout.seq_len / args.context / step_time,
        "model_tflop_per_step_per_gpu": flops / 1e12,
        "mfu": flops / step_time / (config.run.peak_tflops * 1e12),
        "peak_memory_gib": peak_memory_gib(trainer.device),
    }
    if trainer.rank == 0:
        Path(args.out).write_text(json.dumps(result, indent=1))
        print(json.dumps({k: v for k, v in result.items() if k != "step_times_s"}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
