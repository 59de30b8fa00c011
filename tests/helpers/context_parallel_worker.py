"""Run under torchrun by tests/test_model_context_parallel.py: a small WanModel's forward output and
parameter gradients with Ulysses context parallelism over all ranks (gloo, float32) against the
same model run on this process alone. Writes the relative errors of every case as JSON."""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist

from multishot.model.config import WanConfig
from multishot.model.dit import WanModel
from multishot.model.layout import ShotLayout
from multishot.model.prompt_spans import TextSpans
from multishot.model.context_parallel import apply_context_parallel

#: 4 heads: divisible by 2 and 4 ranks
CONFIG = WanConfig(dim=64, ffn_dim=96, num_heads=4, num_layers=2, text_dim=32, text_len=16,
                   freq_dim=32)
#: per sample, first latent frame of each shot: uneven shots whose cuts (tokens 9, 18, 27 at
#: 9 tokens a frame) fall inside a rank's slice
SHOT_STARTS = [[0, 2, 3], [0, 1]]
SPANS = [TextSpans((0, 3), ((3, 6), (6, 8), (8, 9))), TextSpans((0, 4), ((4, 9), (9, 12)))]
CASES = [(True, "reference"), (True, "sdpa"), (False, "sdpa")]   # (sparse, backend)
#: FlexAttention has no backward on CPU: its case compares the forward output only
#: latent frames: 5 → 45 tokens (padded on 2 and 4 ranks), 4 → 36 tokens (no padding)
FRAMES = [5, 4]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def run_case(sparse: bool, backend: str, frames: int) -> dict:
    torch.manual_seed(0)   # same weights and inputs on every rank
    model = WanModel(CONFIG, backend, sparse_self_attention=sparse)
    with torch.no_grad():  # Wan zeroes the head: perturb every weight so every gradient is alive
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.randn(2, CONFIG.in_channels, frames, 6, 6)
    timestep = torch.tensor([900.0, 120.0])
    context = torch.randn(2, 14, CONFIG.text_dim)
    weight = torch.randn(2, CONFIG.out_channels, frames, 6, 6)
    layout = ShotLayout.from_shot_starts(SHOT_STARTS, frames, 9)

    def run() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        if backend.startswith("flex"):   # no FlexAttention backward on CPU
            with torch.no_grad():
                return model(x, timestep, context, layout, SPANS), {}
        out = model(x, timestep, context, layout, SPANS)
        (out * weight).sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    out_ref, grads_ref = run()
    apply_context_parallel(model, dist.group.WORLD)
    seen = []   # tokens a block's self-attention gets on this rank: proves the split happened
    hook = model.blocks[0].self_attn.register_forward_hook(lambda m, a, o: seen.append(a[0].shape[1]))
    out_cp, grads_cp = run()
    hook.remove()
    apply_context_parallel(model, None)
    for g in grads_cp.values():   # FSDP2 over the cp ranks averages gradients
        dist.all_reduce(g)
        g /= dist.get_world_size()
    return {
        "local_tokens": seen[0],
        "output": rel_err(out_cp, out_ref),
        "grads": {n: rel_err(grads_cp[n], grads_ref[n]) for n in grads_ref},
        "dead_grads": [n for n, g in grads_ref.items() if not g.abs().max() > 0],
    }


def main(out_path: str) -> None:
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    results = {f"sparse={s} backend={b} frames={f}": run_case(s, b, f)
               for s, b in CASES for f in FRAMES}
    for backend in ("flex", "flex_inplace"):
        results[f"sparse=True backend={backend} frames=5"] = run_case(True, backend, 5)
    if dist.get_rank() == 0:
        with open(out_path, "w") as fh:
            json.dump(results, fh)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
