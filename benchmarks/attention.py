"""Sparse inter-shot self-attention on a GPU: do the backends agree, and how fast are they?

1. Agreement (bf16, small shapes): every backend of :mod:`model.attention` against the float32
   ``reference`` on the same bf16 inputs, forward and the gradients of q, k, v; and a small bf16
   DiT (head dim 128) per backend against the same model on the reference backend (output and
   all parameter gradients together). Passes at rel. err < 1e-2.
2. Speed: HoloCine's shapes at 480×832 (1560 tokens per latent frame), (a) 241 frames, 5 shots
   (95,160 tokens) and (b) 961 frames (60 s at 16 fps), 13 shots, at 24 and 40 heads of 128:
   forward and forward+backward ms per backend, useful TFLOP/s (only the pairs the sparse
   pattern needs; backward = 2.5 × forward), speedup over dense cuDNN SDPA, and that speedup
   over the FLOP-ideal one (dense pairs / sparse pairs). Timed with CUDA events: warm-up runs,
   then the median of ``--iters`` runs; the packing gathers and output concatenation are
   inside the timing, building the layout (once per batch) and the flex BlockMasks are not
   (their build time is in the row). ``flex_inplace`` reads the own first frame once, so it
   computes fewer pairs than counted (the packed pattern's count, one metric for all backends).
   Where dense attention would take too long (``--dense-max-tokens``), its time is estimated
   from its FLOPs at the dense throughput measured on case (a) with the same heads, and the
   row says so.
3. Exactness at the real shape (the float32 reference does not fit there): every backend's
   output and gradients of q, k, v (bf16, one forward+backward with the timing's ``grad``)
   against ``--exact-against``'s (default ``varlen``, the kernel with no mask of its own),
   rel. err., pass < 1e-2 as in 1.

Writes ``attention.json`` and ``attention.md`` into ``--out`` (default benchmarks/results/attention).
Needs CUDA. Usage: ``python benchmarks/attention.py [--cases a,b] [--heads 24,40]``; the 5B
shape alone, both flex backends beside the others (compiling FlexAttention per shape and grad
mode takes most of its expected 4–6 min; the report is rewritten after every part):
``python benchmarks/attention.py --cases a --heads 24 --backends flex_inplace,flex,sdpa,varlen``.

On a GPU machine with torch but not this project's other packages: the project through
``benchmarks/gpu_bundle/env.sh``'s links, and pydantic (its layouts' records) and pyyaml as
cp312 wheels carried in ``.whl/`` (3.6 MB: ``pip download --no-deps --only-binary :all:
--python-version 3.12 --platform manylinux2014_x86_64 -d .whl pydantic==2.14.4
pydantic-core==2.50.5 annotated-types typing-inspection typing-extensions pyyaml``), unzipped::

    BUNDLE_DIR=/tmp/ms; source benchmarks/gpu_bundle/env.sh && for w in .whl/*.whl; do
      python3 -m zipfile -e "$w" $BUNDLE_DIR/site; done && python3 benchmarks/attention.py \\
      --cases a --heads 24 --backends flex_inplace,flex,sdpa,varlen --out "$OUT"
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from multishot.model.attention import (BACKENDS, dense_attention, flex_block_mask,  # noqa: E402
                                       flex_inplace_mask, sparse_self_attention,
                                       varlen_implementation)
from multishot.model.config import WanConfig  # noqa: E402
from multishot.model.dit import WanModel  # noqa: E402
from multishot.model.flops import ATTENTION_BACKWARD_RATIO, attention_flops  # noqa: E402
from multishot.model.layout import ShotLayout, enforce_4t_plus_1  # noqa: E402

from harness import cuda_ms, device_name, rel_err, results_dir, write_report

TOKENS_PER_FRAME = 30 * 52  # 480×832, VAE stride 8, patch 2
HEAD_DIM = 128
CASES = {"a": (241, 5), "b": (961, 13)}
SPARSE_BACKENDS = [b for b in BACKENDS if b != "reference"]
#: the backends whose BlockMask is built (and timed) before the timing
MASK_BUILDERS = {"flex": flex_block_mask, "flex_inplace": flex_inplace_mask}


def even_cuts(num_frames: int, num_shots: int) -> list[int]:
    """Pixel-frame cuts splitting ``num_frames`` into ``num_shots`` near-equal shots (4t+1)."""
    return [enforce_4t_plus_1(round(i * (num_frames - 1) / num_shots)) for i in range(1, num_shots)]


def check_agreement(device: torch.device, backends: list[str]) -> dict:
    """bf16 backends vs the float32 reference: attention alone and a small DiT."""
    torch.backends.cuda.matmul.allow_tf32 = False  # a true float32 reference
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    rows = {}
    layout = ShotLayout.from_shot_starts([[0, 4, 9], [0, 6]], 13, 8 * 16, device)
    shape = (2, layout.seq_len, 4, HEAD_DIM)
    q, k, v, grad = (torch.randn(shape, device=device, dtype=torch.bfloat16) for _ in range(4))
    leaves = [t.float().requires_grad_() for t in (q, k, v)]
    ref = sparse_self_attention(*leaves, layout, "reference")
    ref.backward(grad.float())
    for backend in backends:
        ins = [t.clone().requires_grad_() for t in (q, k, v)]
        try:
            out = sparse_self_attention(*ins, layout, backend)
            out.backward(grad)
        except RuntimeError as e:  # record and go on: the table shows it
            rows[f"attention/{backend}"] = {"error": str(e)[:300]}
            continue
        rows[f"attention/{backend}"] = {
            "out": rel_err(out, ref),
            **{f"d{n}": rel_err(t.grad, r.grad) for n, t, r in zip("qkv", ins, leaves)}}
    # A small DiT with head dim 128 and a random (non-zero) head, in bf16: every backend
    # against the reference backend (float32 attention inside the same bf16 model).
    config = WanConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=2, text_len=64)
    model = WanModel(config, "reference").to(device, torch.bfloat16)
    torch.nn.init.normal_(model.head.head.weight, std=0.02)
    layout = ShotLayout.from_cut_frames(49, [17, 33], 8 * 12, device)  # 13 latent frames
    x = torch.randn(1, 16, 13, 16, 24, device=device)
    t = torch.tensor([700.0], device=device)
    ctx = torch.randn(1, 40, 4096, device=device)

    def run(backend):
        model.zero_grad()
        model.attention_backend = backend
        out = model(x, t, ctx, layout)
        out.float().square().mean().backward()
        return out, torch.cat([p.grad.float().flatten() for p in model.parameters()])

    out_ref, grads_ref = run("reference")
    for backend in backends:
        try:
            out, grads = run(backend)
        except RuntimeError as e:
            rows[f"dit/{backend}"] = {"error": str(e)[:300]}
            continue
        rows[f"dit/{backend}"] = {"out": rel_err(out, out_ref), "grads": rel_err(grads, grads_ref)}
    for row in rows.values():
        row["pass"] = "error" not in row and all(v < 1e-2 for v in row.values())
    return rows


def outputs_and_grads(q, k, v, grad, layout: ShotLayout, backend: str) -> list[torch.Tensor]:
    """One forward+backward of ``backend``: ``[out, dq, dk, dv]`` (detached copies)."""
    for t in (q, k, v):
        t.grad = None
    out = sparse_self_attention(q, k, v, layout, backend)
    out.backward(grad)
    return [out.detach()] + [t.grad.clone() for t in (q, k, v)]


def agreement_with(base: list[torch.Tensor], ours: list[torch.Tensor]) -> dict:
    """Rel. errors of ``[out, dq, dk, dv]`` against the same of another backend, and pass."""
    errs = {n: rel_err(a, b) for n, a, b in zip(("out", "dq", "dk", "dv"), ours, base)}
    return {**errs, "pass": all(e < 1e-2 for e in errs.values())}


def bench_case(case: str, heads: int, backends: list[str], dense: dict, args) -> list[dict]:
    num_frames, num_shots = CASES[case]
    device = torch.device("cuda")
    layout = ShotLayout.from_cut_frames(num_frames, even_cuts(num_frames, num_shots),
                                        TOKENS_PER_FRAME, device)
    seq = layout.seq_len
    sparse_fwd = attention_flops(layout.attention_pairs(), heads, HEAD_DIM)
    dense_fwd = attention_flops(seq * seq, heads, HEAD_DIM)
    ideal = dense_fwd / sparse_fwd
    fb = 1 + ATTENTION_BACKWARD_RATIO
    shape = (1, seq, heads, HEAD_DIM)
    torch.manual_seed(0)
    q, k, v = (torch.randn(shape, device=device, dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    grad = torch.randn(shape, device=device, dtype=torch.bfloat16)
    rows = []

    def run(fn):
        def fwd():
            with torch.no_grad():
                fn()

        def fwd_bwd():
            for t in (q, k, v):
                t.grad = None
            fn().backward(grad)
        iters = args.iters if seq < 200_000 else max(2, args.iters // 2)
        return cuda_ms(fwd, 2, iters), cuda_ms(fwd_bwd, 2, iters)

    key = (case, heads)
    if seq <= args.dense_max_tokens:
        f_ms, fb_ms = run(lambda: dense_attention(q, k, v))
        dense[heads] = {"fwd_tflops": dense_fwd / f_ms / 1e9,
                        "fwd_bwd_tflops": fb * dense_fwd / fb_ms / 1e9}
        dense[key] = {"fwd_ms": f_ms, "fwd_bwd_ms": fb_ms, "estimated": False}
    elif heads in dense:
        dense[key] = {"fwd_ms": dense_fwd / dense[heads]["fwd_tflops"] / 1e9,
                      "fwd_bwd_ms": fb * dense_fwd / dense[heads]["fwd_bwd_tflops"] / 1e9,
                      "estimated": True}
    ref = dense.get(key)
    if ref is not None:
        rows.append(_row(case, heads, seq, num_shots, "dense cuDNN SDPA", ref["fwd_ms"],
                         ref["fwd_bwd_ms"], dense_fwd, fb, ref, 1.0, ref["estimated"]))
    base = None
    if args.exact_against:
        try:
            base = outputs_and_grads(q, k, v, grad, layout, args.exact_against)
        except (RuntimeError, torch.OutOfMemoryError) as e:
            rows.append({"case": case, "heads": heads, "backend": args.exact_against,
                         "error": f"exactness baseline: {str(e)[:280]}"})
    for backend in backends:
        extra = {}
        if backend in MASK_BUILDERS:
            start = time.perf_counter()
            MASK_BUILDERS[backend](layout)
            torch.cuda.synchronize()
            extra["block_mask_build_s"] = time.perf_counter() - start
        try:
            f_ms, fb_ms = run(lambda: sparse_self_attention(q, k, v, layout, backend))
            if base is not None and backend != args.exact_against:
                extra["exact"] = agreement_with(
                    base, outputs_and_grads(q, k, v, grad, layout, backend))
        except (RuntimeError, torch.OutOfMemoryError) as e:  # record, go on with the others
            rows.append({"case": case, "heads": heads, "backend": backend, "error": str(e)[:300]})
            torch.cuda.empty_cache()
            continue
        name = f"varlen ({varlen_implementation()})" if backend == "varlen" else backend
        rows.append(_row(case, heads, seq, num_shots, name, f_ms, fb_ms, sparse_fwd, fb, ref,
                         ideal, False, **extra))
        torch.cuda.empty_cache()
    return rows


def _row(case, heads, seq, shots, backend, f_ms, fb_ms, flops, fb, ref, ideal, estimated,
         **extra) -> dict:
    row = {"case": case, "heads": heads, "tokens": seq, "shots": shots, "backend": backend,
           "fwd_ms": f_ms, "fwd_bwd_ms": fb_ms, "fwd_tflops": flops / f_ms / 1e9,
           "fwd_bwd_tflops": fb * flops / fb_ms / 1e9, "ideal_speedup": ideal,
           "dense_estimated": estimated, **extra}
    if ref is not None:
        row["fwd_speedup"] = ref["fwd_ms"] / f_ms
        row["fwd_bwd_speedup"] = ref["fwd_bwd_ms"] / fb_ms
        row["fwd_ratio_to_ideal"] = row["fwd_speedup"] / ideal
        row["fwd_bwd_ratio_to_ideal"] = row["fwd_bwd_speedup"] / ideal
    return row


def markdown(results: dict) -> str:
    lines = [f"# Sparse inter-shot attention on {results['device']}", "",
             f"torch {results['torch']}, cuDNN {results['cudnn']}, varlen kernel: "
             f"{results['varlen']}. bf16, head dim 128, 1560 tokens per latent frame. "
             "Useful TFLOP/s count only the pairs the sparse pattern needs (backward = 2.5× "
             "forward). Speedup is over dense cuDNN SDPA; 'of ideal' divides it by the "
             "FLOP-ideal speedup (dense pairs / sparse pairs). `*`: dense time estimated from "
             "its FLOPs at the dense throughput measured on case (a). `flex_inplace` reads each "
             "shot's own first frame once (the packed backends twice): it computes fewer pairs "
             "than counted.", "",
             "## Agreement with the reference (bf16 inputs; rel. err.)", "",
             "| check | out | grads (all params, or worst of dq/dk/dv) | pass |", "|---|---|---|---|"]
    for name, row in results["agreement"].items():
        if "error" in row:
            lines.append(f"| {name} | error: {row['error'][:80]} | | False |")
            continue
        grads = row.get("grads", max(row.get(f"d{c}", 0.0) for c in "qkv"))
        lines.append(f"| {name} | {row['out']:.2e} | {grads:.2e} | {row['pass']} |")
    against = results.get("exact_against") or "–"
    lines += ["", "## Speed", "",
              "| case | heads | tokens | backend | fwd ms | fwd TFLOP/s | fwd speedup (of ideal) "
              f"| fwd+bwd ms | fwd+bwd TFLOP/s | fwd+bwd speedup (of ideal) | vs {against}: out "
              "/ worst of dq, dk, dv (pass) |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        if "error" in r:
            lines.append(f"| {r['case']} | {r['heads']} | | {r['backend']} | error: "
                         f"{r['error'][:80]} | | | | | | |")
            continue
        star = "*" if r["dense_estimated"] else ""

        def exact(r):
            if "exact" not in r:
                return ""
            e = r["exact"]
            return f"{e['out']:.2e} / {max(e['dq'], e['dk'], e['dv']):.2e} ({e['pass']})"

        def sp(kind):
            if f"{kind}_speedup" not in r:
                return "n/a"
            return f"{r[f'{kind}_speedup']:.2f}×{star} ({r[f'{kind}_ratio_to_ideal']:.0%})"
        lines.append(f"| {r['case']} | {r['heads']} | {r['tokens']:,} | {r['backend']} | "
                     f"{r['fwd_ms']:.1f}{star if r['backend'].startswith('dense') else ''} | "
                     f"{r['fwd_tflops']:.0f} | {sp('fwd')} | {r['fwd_bwd_ms']:.1f} | "
                     f"{r['fwd_bwd_tflops']:.0f} | {sp('fwd_bwd')} | {exact(r)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="a,b", help="comma list of a, b")
    parser.add_argument("--heads", default="24,40", help="comma list of head counts")
    parser.add_argument("--backends", default=",".join(SPARSE_BACKENDS))
    parser.add_argument("--iters", type=int, default=5, help="timed runs per measurement")
    parser.add_argument("--dense-max-tokens", type=int, default=100_000,
                        help="measure dense attention only up to this many tokens")
    parser.add_argument("--skip-check", action="store_true", help="skip the agreement check")
    parser.add_argument("--exact-against", default="varlen",
                        help="backend whose output and gradients at the real shape every other "
                             "backend is compared with ('' to skip)")
    parser.add_argument("--out", default=str(results_dir("attention")))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmarks/attention.py needs a CUDA GPU")
    out = Path(args.out)
    results = {"device": device_name(), "torch": torch.__version__,
               "cudnn": torch.backends.cudnn.version(), "varlen": varlen_implementation(),
               "python": platform.python_version(), "exact_against": args.exact_against,
               "agreement": {}, "rows": []}

    def save():
        write_report(out / "attention.json", results, markdown)

    if not args.skip_check:
        results["agreement"] = check_agreement(torch.device("cuda"), args.backends.split(","))
        print(json.dumps(results["agreement"], indent=1), flush=True)
        save()
    dense: dict = {}
    for case in args.cases.split(","):
        for heads in (int(h) for h in args.heads.split(",")):
            for row in bench_case(case, heads, args.backends.split(","), dense, args):
                results["rows"].append(row)
                print(json.dumps(row), flush=True)
                save()
    print(markdown(results))


if __name__ == "__main__":
    main()
