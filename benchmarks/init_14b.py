"""Initialising the 14B DiT from a sharded safetensors checkpoint: GPU memory and time.

Two ways, each in its own process on the same checkpoint (random bf16 weights in Wan's shape,
14B by default, written once as ``diffusion_pytorch_model-0000x-of-0000N.safetensors`` + index):

* ``sharded`` (the trainer's, :func:`trainer.parallelize.build_model`): built on ``meta``,
  FSDP2-sharded, materialised with Wan's init, then each rank reads only its slices;
* ``whole`` (the trainer before): the fp32 model built on the GPU, the whole state dict loaded
  onto the GPU (``load_state_dict_file(device="cuda")``), copied in, and only then sharded.

    torchrun --standalone --nproc-per-node N benchmarks/init_14b.py --checkpoint DIR --way sharded --out R.json
    python benchmarks/init_14b.py --checkpoint DIR --write        # the random checkpoint, once

Reports per rank the peak allocated GPU memory (``torch.cuda.max_memory_allocated``), seconds,
and for ``sharded`` the bytes each rank read; ``whole`` may run out of memory, which is reported.
Without a GPU it runs on CPU ranks (gloo, no memory figures): ``--model tiny`` checks the script.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import types
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from multishot.model.checkpoint import load_into, load_state_dict_file, save_safetensors
from multishot.model.config import get_config
from multishot.model.dit import WanModel

from harness import device_name, sync

#: shard size of the written checkpoint (Wan2.1 T2V-14B ships six files of up to ~10 GB)
SHARD_BYTES = 5 * 10**9


def write_checkpoint(folder: Path, model: str) -> None:
    """Random N(0, 0.02) bf16 weights of every parameter, drawn on the GPU if there is one,
    saved sharded."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in WanModel(get_config(model)).state_dict().items()}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    generator = torch.Generator(device).manual_seed(0)
    state = {k: (torch.randn(s, generator=generator, device=device, dtype=torch.bfloat16) * 0.02).cpu()
             for k, s in shapes.items()}
    total = sum(v.nbytes for v in state.values())
    files = save_safetensors(state, folder / "diffusion_pytorch_model.safetensors",
                             min(SHARD_BYTES, total // 3 + 1))
    print(f"wrote {len(files)} files, {sum(v.nbytes for v in state.values()) / 2**30:.1f} GiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint folder")
    parser.add_argument("--write", action="store_true", help="write the random checkpoint and exit")
    parser.add_argument("--way", choices=["sharded", "whole"], default="sharded")
    parser.add_argument("--model", default="14B", help="architecture (model.config.get_config)")
    parser.add_argument("--out", type=Path, help="JSON results file (rank 0)")
    args = parser.parse_args()
    if args.write:
        args.checkpoint.mkdir(parents=True, exist_ok=True)
        write_checkpoint(args.checkpoint, args.model)
        return

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(minutes=30))
    rank = dist.get_rank()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    result: dict = {"way": args.way, "device": device_name(device),
                    "ranks": dist.get_world_size(), "torch": torch.__version__, "model": args.model}
    try:
        if args.way == "sharded":
            from multishot.trainer.parallelize import build_model

            # the fields of the train config's model section that build_model reads
            config = types.SimpleNamespace(
                attention_backend="sdpa", sparse_self_attention=True, compile=False,
                activation_checkpointing=True, checkpoint_skip_last=0, init_from=str(args.checkpoint))
            model, loaded = build_model(get_config(args.model), config, device, seed=0,
                                        mixed_precision=cuda)
            result.update(bytes_read=loaded.bytes_read, largest_read=loaded.largest_read,
                          checkpoint_bytes=loaded.checkpoint_bytes)
        else:
            from multishot.trainer.parallelize import apply_fsdp

            with torch.device(device):
                model = WanModel(get_config(args.model), "sdpa")
            report = load_into(model, load_state_dict_file(args.checkpoint, device=str(device)))
            assert report.ok, report
            apply_fsdp(model, mixed_precision=cuda)
        sync(device)
        result["ok"] = True
    except torch.OutOfMemoryError as err:
        result.update(ok=False, error=str(err).splitlines()[0])
    result["seconds"] = time.perf_counter() - start
    if cuda:
        result.update(peak_allocated_gib=torch.cuda.max_memory_allocated(device) / 2**30,
                      gpu_memory_gib=torch.cuda.get_device_properties(device).total_memory / 2**30)
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, result)
    if rank == 0:
        print(json.dumps(gathered))
        if args.out:
            args.out.write_text(json.dumps(gathered, indent=1))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
