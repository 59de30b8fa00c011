"""The causal mode's self-attention on a GPU (:mod:`model.causal`): do the backends agree, and
how fast is teacher forcing and a streamed chunk at the Wan2.2-5B shape?

1. Agreement: (a) the teacher-forcing attention of each backend (``sdpa``: per-chunk calls over
   gathered keys, rotated by Block-Relative RoPE; ``flex`` runs the same per-chunk SDPA since
   issue 32) on bf16 inputs against the
   float32 ``reference`` on the same inputs, forward and the gradients of q, k, v, with CAMR off
   and on; passes at rel. err < 1e-2. (b) Training equals inference on the GPU: a small
   float32 DiT (head dim 128), teacher forcing against a streaming KV-cache rollout of the same
   clean chunks, noise and timestep, per backend, CAMR off and on (TF32 off); passes at < 1e-4.
2. Speed at the 5B shape, 241 frames at 480×832: 61 latent frames of 390 tokens (Wan2.2 VAE,
   stride 16, patch 2), teacher forcing over ``2 × 23,790`` tokens, 24 heads of 128, bf16:
   forward and forward+backward ms per backend, useful TFLOP/s (only the pairs the causal
   pattern needs, :func:`model.causal.teacher_forcing_attention_pairs`; backward = 2.5 ×
   forward), against dense cuDNN SDPA over the same ``2L`` tokens. Then one streamed chunk
   (3 latent frames, the last of the video: 58 cached frames) through the cache's attention.
   CUDA events, the median of ``--iters`` runs after warm-up; CAMR's routing and the masks are
   inside the timing (they are per layer and data-dependent).

Writes ``causal_attention.json`` and ``.md`` into ``--out`` (default benchmarks/results/causal_attention).
Needs CUDA. Usage: ``python benchmarks/causal_attention.py [--iters 10]``.
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import torch

from multishot.model.attention import dense_attention
from multishot.model.causal import (CausalConfig, ChunkAttention, ChunkLayout, ChunkPlan,
                                    KVCache, TeacherForcingAttention,
                                    teacher_forcing_attention_pairs)
from multishot.model.config import WanConfig, get_config
from multishot.model.dit import WanModel
from multishot.model.rope import rope_cos_sin
from multishot.model.flops import ATTENTION_BACKWARD_RATIO, attention_flops

from harness import cuda_ms, device_name, rel_err, results_dir, write_report

F_LAT, TOKENS_PER_FRAME, HEADS, HEAD_DIM = 61, 15 * 26, 24, 128
CONFIGS = {"off": CausalConfig(routed_frames=0),
           "camr": CausalConfig(local_window_chunks=2, routed_frames=6)}
BACKENDS = ("sdpa", "flex")


def rope_table(h: int, w: int, device: torch.device):
    """Block-Relative RoPE tables of head dim 128 (the 5B's) for an ``h × w`` frame grid."""
    return lambda frames: rope_cos_sin(get_config("5B"), (frames, h, w), device)


def attention_agreement(device: torch.device) -> dict:
    """bf16 backends against the float32 reference on the same inputs (13 frames × 128)."""
    chunks, hw = ChunkLayout.build(13, 3), 128
    torch.manual_seed(0)
    shape = (2, 2 * 13 * hw, 4, HEAD_DIM)
    q, k, v, grad = (torch.randn(shape, device=device, dtype=torch.bfloat16) for _ in range(4))
    rows = {}
    for name, config in (("off", CONFIGS["off"]),
                         ("camr", CausalConfig(local_window_chunks=1, routed_frames=2))):
        ref_in = [t.float().requires_grad_() for t in (q, k, v)]
        rope = rope_table(8, 16, device)
        ref = TeacherForcingAttention(chunks, config, hw, "reference", rope)(*ref_in)
        ref.backward(grad.float())
        for backend in BACKENDS:
            ins = [t.clone().requires_grad_() for t in (q, k, v)]
            out = TeacherForcingAttention(chunks, config, hw, backend, rope)(*ins)
            out.backward(grad)
            err_grad = max(rel_err(a.grad, b.grad) for a, b in zip(ins, ref_in))
            rows[f"attention/{backend}/{name}"] = {
                "out": rel_err(out, ref), "grads": err_grad,
                "pass": rel_err(out, ref) < 1e-2 and err_grad < 1e-2}
    return rows


def rollout_agreement(device: torch.device) -> dict:
    """Teacher forcing = streaming on the GPU, float32, a 2-block DiT of head dim 128."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    config = WanConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=2, text_dim=64, text_len=32,
                       freq_dim=64)
    torch.manual_seed(0)
    model = WanModel(config).to(device).eval()
    with torch.no_grad():
        model.head.head.weight.normal_(std=0.1)  # Wan zero-inits the head
    shape = (2, 16, 13, 8, 8)
    clean, noisy = torch.randn(shape, device=device), torch.randn(shape, device=device)
    context, t = torch.randn(2, 20, 64, device=device), torch.tensor([700.0, 250.0], device=device)
    rows = {}
    for name, causal in (("off", CONFIGS["off"]),
                         ("camr", CausalConfig(local_window_chunks=1, routed_frames=2))):
        for backend in ("reference",) + BACKENDS:
            model.attention_backend = backend
            chunks = ChunkLayout.build(13, 3)
            with torch.no_grad():
                taught = model.forward_teacher_forcing(clean, noisy, t, context, causal)
                cache, worst = KVCache.empty(2), 0.0
                for i, (s, e) in enumerate(zip(chunks.starts, chunks.ends)):
                    out = model.forward_chunk(noisy[:, :, s:e], t, context, cache, i, causal)
                    model.forward_chunk(clean[:, :, s:e], torch.zeros_like(t), context, cache, i,
                                        causal, write_cache=True)
                    worst = max(worst, rel_err(out, taught[:, :, s:e]))
            rows[f"rollout/{backend}/{name}"] = {"out": worst, "pass": worst < 1e-4}
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return rows


def speed(device: torch.device, warmup: int, iters: int) -> list[dict]:
    chunks, hw = ChunkLayout.build(F_LAT, 3), TOKENS_PER_FRAME
    seq = 2 * F_LAT * hw
    torch.manual_seed(0)
    q, k, v, grad = (torch.randn(1, seq, HEADS, HEAD_DIM, device=device, dtype=torch.bfloat16)
                     for _ in range(4))
    rows = []

    def timed(label, backend, camr, pairs, fn_fwd):
        ins = [t.clone().requires_grad_() for t in (q, k, v)]

        def fwd_bwd():
            fn_fwd(*ins).backward(grad)
        with torch.no_grad():
            fwd = cuda_ms(lambda: fn_fwd(q, k, v), warmup, iters)
        both = cuda_ms(fwd_bwd, warmup, iters)
        flops = attention_flops(pairs, HEADS, HEAD_DIM)
        rows.append({"case": label, "backend": backend, "camr": camr, "tokens": seq,
                     "pairs": pairs, "fwd_ms": fwd, "fwd_tflops": flops / fwd / 1e9,
                     "fwd_bwd_ms": both,
                     "fwd_bwd_tflops": flops * (1 + ATTENTION_BACKWARD_RATIO) / both / 1e9})
        print(rows[-1], flush=True)

    timed("teacher forcing", "dense cuDNN SDPA (no mask)", "-", seq * seq,
          lambda q, k, v: dense_attention(q, k, v))
    for name, config in CONFIGS.items():
        pairs = teacher_forcing_attention_pairs(F_LAT, hw, config)
        for backend in BACKENDS:
            attn = TeacherForcingAttention(chunks, config, hw, backend, rope_table(15, 26, device))
            timed("teacher forcing", backend, name, pairs, attn)
    # one streamed chunk: the last 3 latent frames against 58 cached frames
    prefix = ChunkLayout.build(F_LAT - 3, 3)
    kk, vv = (t[:, :(F_LAT - 3) * hw] for t in (k, v))
    qc, kc, vc = (t[:, -3 * hw:] for t in (q, k, v))
    for name, config in CONFIGS.items():
        cache = KVCache.empty(1)
        for i, (s, e) in enumerate(zip(prefix.starts, prefix.ends)):
            cache.layers[0].append(kk[:, s * hw:e * hw], vv[:, s * hw:e * hw], hw, i,
                                   config.recent_frames, config.memory_frames)
            cache.recent_starts.append(s)
        cache.num_chunks, cache.num_frames = prefix.num_chunks, F_LAT - 3
        cache.tokens_per_frame = hw
        plan = ChunkPlan.build(cache, config, 3, rope_table(15, 26, device), False)
        attn = ChunkAttention(cache, plan, 3, hw, "sdpa").layer(0)
        with torch.no_grad():
            ms = cuda_ms(lambda: attn(qc, kc, vc), warmup, iters)
        window = 3 * config.local_window_chunks  # chunks of 3 before the last one
        hist = (F_LAT - 3) if not config.routing else \
            min(config.routed_frames, F_LAT - 3 - window) + window
        pairs = 3 * hw * (hist + 3) * hw
        rows.append({"case": f"streamed chunk (noisy pass, {F_LAT - 3} cached frames)",
                     "backend": "sdpa",
                     "camr": name, "tokens": 3 * hw, "pairs": pairs, "fwd_ms": ms,
                     "fwd_tflops": attention_flops(pairs, HEADS, HEAD_DIM) / ms / 1e9,
                     "fwd_bwd_ms": None, "fwd_bwd_tflops": None})
        print(rows[-1], flush=True)
    return rows


def markdown(report: dict) -> str:
    lines = [f"# Causal-mode attention on {report['device']}", "",
             f"torch {report['torch']}. {report['shape']}. Useful TFLOP/s count only the pairs "
             "the pattern needs (backward = 2.5× forward). CAMR: local window 2 chunks, 6 routed "
             "frames; `off` attends all history.", "",
             "## Agreement (rel. err.)", "", "| check | out | grads | pass |", "|---|---|---|---|"]
    for key, row in report["agreement"].items():
        g = row.get("grads")
        lines.append(f"| {key} | {row['out']:.2e} | {'' if g is None else f'{g:.2e}'} | "
                     f"{row['pass']} |")
    lines += ["", "## Speed (one layer, batch 1, bf16)", "",
              "| case | backend | CAMR | query tokens | pairs | fwd ms | fwd TFLOP/s | "
              "fwd+bwd ms | fwd+bwd TFLOP/s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in report["speed"]:
        fb = "–" if r["fwd_bwd_ms"] is None else f"{r['fwd_bwd_ms']:.1f}"
        fbt = "–" if r["fwd_bwd_tflops"] is None else f"{r['fwd_bwd_tflops']:.0f}"
        lines.append(f"| {r['case']} | {r['backend']} | {r['camr']} | {r['tokens']:,} | "
                     f"{r['pairs']:,} | {r['fwd_ms']:.2f} | {r['fwd_tflops']:.0f} | {fb} | "
                     f"{fbt} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", default=str(results_dir("causal_attention")))
    parser.add_argument("--name", default="causal_attention")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/causal_attention.py needs CUDA")
    device = torch.device("cuda")
    agreement = {**attention_agreement(device), **rollout_agreement(device)}
    for key, row in agreement.items():
        print(key, row, flush=True)
    report = {"device": device_name(), "torch": torch.__version__,
              "python": platform.python_version(),
              "shape": (f"5B shape: {F_LAT} latent frames × {TOKENS_PER_FRAME} tokens, "
                        f"{HEADS} heads × {HEAD_DIM}, chunks of 3 (first chunk 1 frame)"),
              "agreement": agreement, "speed": speed(device, args.warmup, args.iters)}
    write_report(Path(args.out) / f"{args.name}.json", report, markdown)
    print(markdown(report))


if __name__ == "__main__":
    main()
