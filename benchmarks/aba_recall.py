"""Issue 32 [L]: recall in issue 30's world — a causal DiT tuned by teacher forcing on A-B-A
films streams held-out ones with CAMR on (``camr``) and with the local window alone
(``local_window``: ``routed_frames: 0``); the world's classifier scores "A recall" on the
decoded frames. The experiment, its numbers (chunk, window, routed frames, shot lengths) and
its metrics are :mod:`multishot.learn_recall`'s docstring.

    python benchmarks/aba_recall.py --device cpu --max-seconds 420 \\
        --out benchmarks/results/causal/aba_recall_cpu.json
    python benchmarks/aba_recall.py --device cuda --train-films 4000 --eval-films 48 --steps 2000 \\
        --batch 32 --lr 5e-4 --dim 256 --layers 6 --heads 4 --sample-steps 16 --seeds 0 \\
        --stream-seeds 0 --max-seconds 90 --out benchmarks/results/causal/aba_recall_h100.json

Needs the committed world encoders (``checkpoints/learn/vae``, ``checkpoints/learn/text_encoder``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from harness import device_name, write_report

ROWS = ("camr", "local_window")
COLUMNS = ("aba_recall", "character_recall", "scene_recall", "first_character_seen", "b_empty",
           "sca", "caption_following", "return_passes_attending_a")


def markdown(report: dict) -> str:
    r = report["result"]
    fmt = lambda v: "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["# A-B-A recall in the synthetic world: CAMR vs the local window alone", "",
             f"Device: {report['device']}; total wall {report['wall_s']:.0f} s. "
             f"`benchmarks/aba_recall.py`, experiment and metric definitions in "
             f"`multishot/learn_recall.py`.", "",
             f"Causal DiT dim {r['dit']['dim']}, {r['dit']['layers']} blocks, "
             f"{r['dit']['heads']} heads; teacher forcing with CAMR on {r['train_films']} "
             f"A-B-A films, {r['steps']} steps (or the time stop) at batch {r['batch']}, lr "
             f"{r['lr']}; {r['eval_films']} held-out prompts streamed chunk by chunk "
             f"(ChunkStreamer, Euler {r['sample_steps']} steps a chunk, no CFG), decoded by the "
             "world VAE, read by the world classifier.", "",
             "Films: 49 frames (13 latent frames of 8×8): shot A latent 0–4, B 5–8 (character "
             "away), A 9–12; anonymous captions. Causal config: chunks of 2 latent frames "
             f"(chunk 0 alone), `camr` = {r['configs']['camr']}; `local_window` = the same with "
             "`routed_frames: 0` (attends the last 4 frames: B during the return shot).", "",
             f"Example prompt: `{r['example_prompt']}`", "",
             "| row | train seed | stream seed | " + " | ".join(COLUMNS) + " | routed_in_a |",
             "|" + "---|" * (len(COLUMNS) + 4)]
    for name in ROWS:
        for s in r["rows"][name]["per_seed"]:
            lines.append(f"| {name} | {s['train_seed']} | {s['stream_seed']} | " +
                         " | ".join(fmt(s[c]) for c in COLUMNS) + f" | {fmt(s['routed_in_a'])} |")
        lines.append(f"| **{name} mean** | | | " +
                     " | ".join(fmt(r["rows"][name][c]) for c in COLUMNS) + " | |")
    c = r["vae_ceiling"]
    lines.append("| vae_ceiling (ground truth through the VAE) | | | " +
                 " | ".join(fmt(c.get(k)) for k in COLUMNS) + " | |")
    lines += ["", "Training: " + "; ".join(
        f"seed {t['seed']}: {t['steps']} steps in {t['train_s']:.0f} s, loss "
        f"{t['first_loss']:.3f} → {t['final_loss']:.3f}" for t in r["training"]), "",
        f"Chance for character_recall ≈ 1/24 = {1 / 24:.3f} (a character drawn at random). "
        "return_passes_attending_a: share of the return shot's chunk passes (per block) whose "
        "attended history holds a frame of shot A; routed_in_a: share of CAMR's routed frames "
        "in shot A.", ""]
    for metric in ("aba_recall", "character_recall"):
        camr, local = r["rows"]["camr"][metric], r["rows"]["local_window"][metric]
        verdict = "higher with CAMR" if camr > local else "NOT higher with CAMR"
        lines.append(f"- **{metric}**: camr {camr:.3f} vs local_window {local:.3f}: {verdict} "
                     "than with the local window alone (issue 32 expects higher).")
    lines.append("")
    if report.get("note"):
        lines += [report["note"], ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", required=True)
    parser.add_argument("--train-films", type=int, default=48)
    parser.add_argument("--eval-films", type=int, default=8)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--sample-steps", type=int, default=8)
    parser.add_argument("--dim", type=int, default=96)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--seeds", default="0", help="training seeds, comma-separated")
    parser.add_argument("--stream-seeds", default="0", help="noise seeds of the streams")
    parser.add_argument("--max-seconds", type=float, default=float("inf"),
                        help="time stop of each training run")
    parser.add_argument("--note", default="", help="a sentence for the markdown")
    args = parser.parse_args()
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
        stream_seeds = [int(s) for s in args.stream_seeds.split(",")]
    except ValueError as err:
        print(f"aba_recall: bad seed list: {err}", file=sys.stderr)
        return 2
    if args.batch > args.train_films:
        print(f"aba_recall: --batch {args.batch} exceeds --train-films {args.train_films}",
              file=sys.stderr)
        return 2
    import torch

    from multishot.learn_recall import run

    start = time.perf_counter()
    result = run(args.device, train_films=args.train_films, eval_films=args.eval_films,
                 steps=args.steps, batch=args.batch, lr=args.lr, sample_steps=args.sample_steps,
                 dim=args.dim, layers=args.layers, heads=args.heads, seeds=seeds,
                 stream_seeds=stream_seeds, max_seconds=args.max_seconds,
                 log=lambda m: print(f"[{time.strftime('%H:%M:%S')}] {m}", flush=True))
    for row in result["rows"].values():     # the attended frames of the first 4 films only
        for s in row["per_seed"]:
            s["attended_return"] = s["attended_return"][:4]
    report = {"device": device_name(torch.device(args.device)), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "wall_s": time.perf_counter() - start,
              "command": " ".join(sys.argv), "note": args.note, "result": result}
    write_report(Path(args.out), report, markdown)
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
