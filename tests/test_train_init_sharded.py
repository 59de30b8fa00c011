"""A 14B-shaped DiT, built on meta and sharded by FSDP2 over two CPU ranks (gloo), initialises
from a sharded Wan-named safetensors checkpoint without any rank reading the whole of it.

The checkpoint is written by a plain single-process ``WanModel`` with random weights in bf16
(as Wan ships), split into ``diffusion_pytorch_model-0000x-of-0000N.safetensors`` + index; the
ranks run the trainer's real :func:`trainer.parallelize.build_model`.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from multishot.model.checkpoint import load_state_dict_file, read_headers, save_safetensors
from multishot.model.config import get_config
from multishot.model.dit import WanModel

#: 14B's structure (head dim 128, FFN 2.7× the width, 16 latent channels, patch (1, 2, 2),
#: frequency dim 256) at a width and depth a CPU test can hold
SMALL_14B = dataclasses.replace(get_config("14B"), dim=256, ffn_dim=704, num_heads=2, num_layers=3,
                                text_dim=128, text_len=16)
WORLD = 2


def _rank(rank: int, port: int, checkpoint: str, results: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        from multishot.trainer.config import ModelConfig
        from multishot.trainer.parallelize import build_model

        config = ModelConfig(name="14B", init_from=checkpoint, attention_backend="sdpa",
                             activation_checkpointing=True, compile=False)
        model, loaded = build_model(SMALL_14B, config, torch.device("cpu"), seed=0,
                                    mixed_precision=False)
        headers = read_headers([p for p in Path(checkpoint).glob("*.safetensors")])
        own = {name: p.to_local() for name, p in model.named_parameters()}
        # the bytes of the slices this rank owns, in the file's dtype
        owned = sum(t.numel() * headers[name.replace("_checkpoint_wrapped_module.", "")].dtype.itemsize
                    for name, t in own.items())
        full = {name.replace("_checkpoint_wrapped_module.", ""): p.full_tensor().detach()
                for name, p in model.named_parameters()}  # all-gather, for the comparison only
        results[rank] = {"bytes_read": loaded.bytes_read, "largest_read": loaded.largest_read,
                         "checkpoint_bytes": loaded.checkpoint_bytes, "owned": owned,
                         "sharded": all(p.to_local().numel() < p.numel() or p.shape[0] == 1
                                        for p in model.parameters()),
                         "full": full if rank == 0 else None}
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("wan14b_small")
    torch.manual_seed(1)
    model = WanModel(SMALL_14B)
    with torch.no_grad():  # Wan's init zeroes the head and biases: fill them so every value counts
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.02)
    state = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    files = save_safetensors(state, folder / "diffusion_pytorch_model.safetensors",
                             max_shard_bytes=sum(v.nbytes for v in state.values()) // 3)
    assert len(files) == 5 and files[-1].name == "diffusion_pytorch_model.safetensors.index.json"
    return folder


def test_sharded_init_reads_only_each_ranks_slices(checkpoint):
    results = mp.Manager().dict()
    mp.spawn(_rank, args=(29400 + os.getpid() % 500, str(checkpoint), results), nprocs=WORLD)
    expected = {k: v.float() for k, v in load_state_dict_file(checkpoint).items()}
    total = sum(v.numel() * 2 for v in expected.values())  # bf16 bytes
    largest = max(v.numel() * 2 for v in expected.values())
    for rank in range(WORLD):
        r = results[rank]
        assert r["sharded"], rank
        assert r["checkpoint_bytes"] == total
        # each rank read exactly the slices it owns, about half of the checkpoint, and never
        # more than one slice beyond its shards at a time
        assert r["bytes_read"] == r["owned"] < 0.6 * total, (rank, r["bytes_read"], total)
        assert r["largest_read"] <= largest // 2 + 1, (rank, r["largest_read"], largest)
    assert sum(results[r]["bytes_read"] for r in range(WORLD)) == total  # every byte read once
    full = results[0]["full"]
    assert full.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.equal(full[name], value), name  # bf16 → fp32 is exact
