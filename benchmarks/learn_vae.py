"""The ceiling the world's Wan VAE puts on issue 30's decoded-pixel scores, and where it loses the
character: ``benchmarks/results/learn/vae_ceiling_<device>.{json,md}``.

For each VAE folder given (diffusers ``AutoencoderKLWan``, loaded by the product's
:class:`model.encoders.FrozenEncoders`):

- :func:`multishot.learn.measure_vae`: PSNR and the classifier's read-back on held-out films,
  and :func:`multishot.learn.vae_ceiling` on the ground truth of the ablation's evaluation
  prompts (:func:`multishot.learn.eval_films`): every score on the renders (must be 1.0: checks
  the metric), on their encode → decode reconstructions (the VAE's ceiling on each column), and
  per latent frame / per shot index where the character is lost; and :func:`multishot.learn.second_half` (frames 17-32 decoded from the whole film against
  the same frames encoded as a 17-frame clip of their own: does the causal VAE drift in latent
  frames past its training clips' length?).

The VAE's training record (``vae.json`` beside the folder, written by ``python -m multishot.learn
vae``) is copied into the report when present.

    python benchmarks/learn_vae.py --vae checkpoints/learn/vae --device cpu
    python benchmarks/learn_vae.py --records /tmp/a/vae.json /tmp/b/vae.json --out X.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import harness

COLUMNS = ("sca", "caption_following", "named_character", "held_out_character",
           "character_consistency", "aba_recall")


def measure(folder: str, device, probe_films: int, eval_films: int) -> dict:
    """:func:`multishot.learn.measure_vae` of the VAE in ``folder`` with its config and, when a
    ``vae.json`` lies beside the folder, its training record."""
    from multishot import learn
    from multishot.model.encoders import FrozenEncoders
    from multishot.model.settings import EncodersConfig

    encoders = FrozenEncoders.load(EncodersConfig(vae=folder, dtype="float32"), device)
    result = {"vae": folder, **learn.measure_vae(encoders, probe_films, eval_films, device)}
    result["config"] = {k: encoders.vae.config[k] for k in ("base_dim", "z_dim", "dim_mult", "num_res_blocks")}
    record = Path(folder).parent / "vae.json"
    if record.exists():
        result["training"] = _training(json.loads(record.read_text()))
    return result


def _training(record: dict) -> dict:
    return {k: record[k] for k in ("steps", "seconds", "final_loss", "init", "batch", "clip_frames", "lr",
                                   "base_dim", "device", "train_films") if k in record}


def from_record(path: str) -> dict:
    """A report entry from the ``vae.json`` of ``python -m multishot.learn vae`` (the same
    :func:`multishot.learn.measure_vae`, run where the VAE was trained)."""
    record = json.loads(Path(path).read_text())
    config = json.loads((Path(path).parent / "vae" / "config.json").read_text())
    return {"vae": str(Path(path).parent / "vae"), **{k: record[k] for k in (
        "psnr_db", "probe_films", "reconstruction_scene_accuracy", "reconstruction_character_accuracy", "ceiling")},
        "config": {k: config[k] for k in ("base_dim", "z_dim", "dim_mult", "num_res_blocks")},
        "training": _training(record)}


def markdown(report: dict) -> str:
    fmt = lambda v: "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["# The Wan VAE's ceiling on issue 30's decoded-pixel scores", "",
             *([report["note"], ""] if report.get("note") else []),
             f"Device: {report['device']}. Definitions: benchmarks/learn_vae.py and "
             "`multishot.learn.vae_ceiling` (fixed before measuring). Films: the ablation's "
             f"{report['eval_films']} evaluation prompts' ground truth "
             f"(`multishot.learn.eval_films`); PSNR and read-back also on {report['probe_films']} "
             "held-out training-distribution films.", ""]
    for r in report["vaes"]:
        c, w = r["ceiling"], r["ceiling"]["where"]
        t = r.get("training", {})
        lines += [f"## `{r['vae']}`", "",
                  f"Config {r['config']}; training: {t or 'no vae.json beside it'}.", "",
                  f"Held-out films: PSNR **{r['psnr_db']:.2f} dB**, scene read-back "
                  f"{r['reconstruction_scene_accuracy']:.3f}, character read-back (shots) "
                  f"{r['reconstruction_character_accuracy']:.3f}. Evaluation films: PSNR "
                  f"{c['psnr_db']:.2f} dB.", "",
                  "| films | " + " | ".join(COLUMNS) + " |", "|" + "---|" * (len(COLUMNS) + 1),
                  "| ground truth (renders) | " + " | ".join(fmt(c["ground_truth"].get(k)) for k in COLUMNS) + " |",
                  "| VAE encode → decode | " + " | ".join(fmt(c["reconstruction"].get(k)) for k in COLUMNS) + " |",
                  *[f"| {name} | " + " | ".join(fmt(row.get(k)) for k in COLUMNS) + " |"
                    for name, row in report.get("generated", {}).items()],
                  "", "Where the character is lost (pixel frames of each latent frame):", "",
                  "| latent frame | " + " | ".join(str(i) for i in range(len(w["latent_frame_psnr_db"]))) + " |",
                  "|" + "---|" * (len(w["latent_frame_psnr_db"]) + 1)]
        for key in ("character_read", "shape_wrong", "colour_wrong", "texture_wrong", "no_character", "psnr_db"):
            lines.append(f"| {key} | " + " | ".join(fmt(v) for v in w[f"latent_frame_{key}"]) + " |")
        s = c["second_half"]
        lines += ["", "Per shot index (shots whose majority read character is the true one): " + ", ".join(
            f"shot {i + 1}: {v:.3f} ({n})" for i, (v, n) in enumerate(zip(w["shot_index_character_read"],
                                                                           w["shot_index_shots"]))) + ".", "",
                  f"Frames 17-32 decoded from the whole film: character read {s['in_whole_film']['character_read']:.3f}, "
                  f"PSNR {s['in_whole_film']['psnr_db']:.2f} dB; encoded as a 17-frame clip of their own: "
                  f"{s['as_own_clip']['character_read']:.3f}, {s['as_own_clip']['psnr_db']:.2f} dB.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vae", nargs="+", default=[str(harness.REPO / "checkpoints/learn/vae")],
                        help="AutoencoderKLWan folders to measure here")
    parser.add_argument("--records", nargs="+", default=[],
                        help="instead: vae.json files of `python -m multishot.learn vae` runs (measured there)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--eval-films", type=int, default=64)
    parser.add_argument("--probe-films", type=int, default=64)
    parser.add_argument("--generated", nargs="*", default=[str(harness.results_dir("learn") / "full_eval_h100.json")],
                        help="`multishot.learn evaluate` JSONs of the same prompts, shown beside the ceiling")
    parser.add_argument("--note", default="", help="a paragraph put at the top of the markdown")
    parser.add_argument("--out", default=None, help="the JSON (default results/learn/vae_ceiling_<cpu|gpu>.json)")
    args = parser.parse_args(argv)
    import torch

    missing = [r for r in args.records if not Path(r).exists()] or [
        v for v in (args.vae if not args.records else []) if not (Path(v) / "config.json").exists()]
    if missing:
        print(f"learn_vae: not found: {missing}", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    report = {"device": harness.device_name(device), "eval_films": args.eval_films,
              "probe_films": args.probe_films,
              "vaes": [from_record(r) for r in args.records] if args.records else
              [measure(v, device, args.probe_films, args.eval_films) for v in args.vae]}
    generated = {}
    for path in args.generated:
        if Path(path).exists():
            g = json.loads(Path(path).read_text())
            generated[f"{g['variant']} DiT, generated ({g.get('eval_device', '?')}, {Path(path).name})"] = g
    if generated:
        report["generated"] = {k: {c: v.get(c) for c in COLUMNS} for k, v in generated.items()}
    if args.note:
        report["note"] = args.note
    if args.records:
        first = json.loads(Path(args.records[0]).read_text())
        report.update(device=first["device"], eval_films=first["ceiling"]["films"],
                      probe_films=first["probe_films"])
    out = args.out or harness.results_dir("learn") / f"vae_ceiling_{'gpu' if device.type == 'cuda' else 'cpu'}.json"
    harness.write_report(out, report, markdown)
    print(Path(out).with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
