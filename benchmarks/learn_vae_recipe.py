"""Which change to the world VAE's training buys the most per unit of compute, at the CPU's scale:
``benchmarks/results/learn/vae_recipe_<device>.{json,md}``.

Arms, each continuing the committed VAE (``checkpoints/learn/vae``) with
:func:`multishot.learn.train_vae` for the same wall budget, run at the same time (one thread
each, so they share the machine's load alike), on the same 200 training films:

- ``whole``: whole 33-frame films, batch 1 (33 frames a step);
- ``clip17``: 17-frame clips, batch 2 (34 frames a step: the committed VAE's recipe);
- ``none``: no step (the committed VAE itself, re-measured by the same code).

Measured on the first 16 evaluation prompts' ground truth (:func:`multishot.learn.eval_films`),
encode → decode as the product does (:func:`multishot.learn.reconstruct`): PSNR (dB) of pixel
frames 0-16 and 17-32, and the fraction of those frames whose read character
(:func:`dataset.synthetic_world.classify_character`) is the true one; with each arm's steps,
CPU seconds and final loss.

    python benchmarks/learn_vae_recipe.py --seconds 420
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness

ARMS = {"whole": dict(clip=33, batch=1), "clip17": dict(clip=17, batch=2), "none": dict(clip=33, batch=1)}


def arm(name: str, seconds: float, lr: float, folder: str) -> dict:
    """Train (unless ``none``) and measure one arm in this process."""
    import numpy as np
    import torch

    from multishot import learn
    from multishot.dataset.synthetic_world import classify_character, classify_scene, sample_film
    from multishot.model.encoders import FrozenEncoders
    from multishot.model.settings import EncodersConfig

    torch.set_num_threads(1)
    frames = learn.render_many([sample_film(1_000_000 + i) for i in range(200)])
    cpu = time.process_time()
    info = learn.train_vae(Path(folder) / name, frames, 0 if name == "none" else 100_000,
                           torch.device("cpu"), lr=lr, init=str(harness.REPO / "checkpoints/learn/vae"),
                           max_seconds=seconds, log=lambda m: None, **ARMS[name])
    info["cpu_s"] = time.process_time() - cpu
    encoders = FrozenEncoders.load(EncodersConfig(vae=str(Path(folder) / name), dtype="float32"), "cpu")
    films = learn.eval_films(16)
    truth = learn.render_many(films)
    rec = learn.reconstruct(encoders, truth, torch.device("cpu"))

    def read(lo, hi):
        return float(np.mean([classify_character(r[i], classify_scene(r[i])) == f.character
                              for f, r in zip(films, rec) for i in range(lo, hi)]))

    return {**info, "psnr_db": learn.psnr(rec, truth), "psnr_frames_0_16": learn.psnr(rec[:, :17], truth[:, :17]),
            "psnr_frames_17_32": learn.psnr(rec[:, 17:], truth[:, 17:]), "character_read_frames_0_16": read(0, 17),
            "character_read_frames_17_32": read(17, 33)}


def markdown(report: dict) -> str:
    cols = ("steps", "cpu_s", "final_loss", "psnr_db", "psnr_frames_0_16", "psnr_frames_17_32",
            "character_read_frames_0_16", "character_read_frames_17_32")
    fmt = lambda v: "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    rows = ["| arm | clip | batch | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 3)]
    for name, r in report["arms"].items():
        rows.append(f"| {name} | {r['clip_frames']} | {r['batch']} | " + " | ".join(fmt(r.get(c)) for c in cols) + " |")
    return ("# The world VAE's training recipe per unit of compute (CPU scale)\n\n"
            f"Device: {report['device']}, the arms at once, one thread each, {report['seconds']} s wall each, "
            f"lr {report['lr']} (cosine over the budget); all continue `checkpoints/learn/vae`. "
            "Definitions: benchmarks/learn_vae_recipe.py. Films: the first 16 evaluation prompts' ground truth.\n\n"
            + "\n".join(rows) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=420)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--arm", choices=list(ARMS), help="internal: run one arm, print its JSON")
    parser.add_argument("--folder", help="internal: where the arm saves its VAE")
    parser.add_argument("--out", default=str(harness.results_dir("learn") / "vae_recipe_cpu.json"))
    args = parser.parse_args(argv)
    if args.arm:
        print(json.dumps(arm(args.arm, args.seconds, args.lr, args.folder)))
        return 0
    with tempfile.TemporaryDirectory() as folder:
        procs = {name: subprocess.Popen([sys.executable, __file__, "--arm", name, "--folder", folder,
                                         "--seconds", str(args.seconds), "--lr", str(args.lr)],
                                        stdout=subprocess.PIPE, text=True) for name in ARMS}
        arms = {}
        for name, proc in procs.items():
            out, _ = proc.communicate()
            if proc.returncode:
                print(f"learn_vae_recipe: arm {name} failed", file=sys.stderr)
                return 1
            arms[name] = json.loads(out.strip().splitlines()[-1])
    report = {"device": harness.device_name(), "seconds": args.seconds, "lr": args.lr, "arms": arms}
    harness.write_report(args.out, report, markdown)
    print(Path(args.out).with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
