"""Where issue 30's inter-shot character consistency is lost, attribute by attribute:
``benchmarks/results/learn/consistency_diagnosis_cpu.{json,md}``.

Question: of a character's colour, shape and texture, which does each ablation variant's DiT keep
across the shots of ``anonymous`` films (no caption names the character) more often than chance,
and which does the world's VAE already lose?

Rows (the same 64 evaluation prompts, :func:`multishot.learn.eval_films`): the four variants'
generated videos, read back by the world's classifier on the H100 run
(``<variant>_eval_h100.json``, its ``per_film`` reads), and the VAE's ceiling: the prompts'
ground truth encoded and decoded by the committed VAE (``checkpoints/learn/vae``,
:func:`multishot.learn.reconstruct`) and read by the same classifier (:func:`multishot.learn.score`).

Metric, fixed before measuring (:func:`multishot.learn.attribute_consistency`): per attribute
(and for the whole character, the existing ``character_consistency``) the fraction of later
shots whose read attribute equals shot 1's, a shot with no character read counting as a miss;
its chance level: the same with each film's shot 1 replaced by another film's (the generator's
own distribution of reads, so a collapsed shape is not credited). Beside them:

- ``excess`` = consistency − chance; ``kappa`` = excess / (1 − chance) (Cohen's form);
- ``p``: one-sided permutation test of "shot 1 and the later shots are independent": the
  films' shot-1 reads permuted among the anonymous films (10,000 permutations, seed 0), p the
  fraction whose consistency reaches the observed one (with the observed counted once);
- ``full − X``: a paired bootstrap (films resampled with replacement, the same draws for both
  rows: the prompts are the same; 2,000 draws, seed 0) of the difference in excess between
  ``full`` and each other row, its 95% percentile interval;
- the distribution of reads over all shots of the anonymous films (mode collapse), and, as a
  secondary view, the same consistency on ``named`` films (where the caption names it);
- ``confusion``: on ``named`` films (whose character is requested, so known to the DiT), the
  count of shots per (true, read) shape, colour and texture: what each row draws for what;
- ``shots 3-4``: the consistency, chance and p of the anonymous films' shots 3-4 alone (each
  film's shot 1 and shots 3-4, :func:`multishot.learn.attribute_consistency`), where the
  decoder's carry below does not reach (added after the carry was measured, before this
  column was computed).

A path across shots that every variant shares, ``no_global`` included (whose DiT has none: each
shot attends only itself): the causal VAE decoder, which decodes the whole film. ``decoder
carry`` measures it on the ground truth (:func:`decoder_carry`): each evaluation film F and F'
(F's shots with another character, differing in colour, shape and texture) are encoded whole;
the latents are spliced at the first cut (F's latent frames before it, F''s after) and decoded;
per attribute, the fraction of later shots reading F's attribute in the spliced decode against
F''s own decode (the control: the latents hold no trace of F), paired per shot, exact McNemar
test; shot 2 (next to the cut) and shots 3-4 apart.

Decision rules, fixed before measuring: a row *keeps* an attribute above chance when p < 0.05;
``no_global`` keeps less than ``full`` (HoloCine's direction: the summary bank carries the
character) when the interval of ``full − no_global`` lies above 0, more when below, and the two
are not told apart when it contains 0. The VAE limits an attribute when its ceiling consistency
is below 0.90 (issue 30's target for the whole character): a DiT whose latents were exactly the
encoder's would still miss there. The decoder carries an attribute across the cut when the
spliced decode reads F's attribute in more later shots than the control with McNemar p < 0.05;
then a generated row's above-chance agreement on that attribute is not evidence of the DiT.

    python benchmarks/learn_consistency.py                       # measures the ceiling and the carry (CPU, ~4 min)
    python benchmarks/learn_consistency.py --reuse benchmarks/results/learn/consistency_diagnosis_cpu.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

import harness
from multishot import learn
from multishot.dataset.synthetic_world import COLOURS, SHAPES, TEXTURES, Character

VARIANT_ROWS = ("full", "no_window", "full_self_attention", "no_global")
CEILING = "vae_ceiling"
KEYS = (*learn.CHARACTER_ATTRIBUTES, "character")
COLUMNS = ("character", *learn.CHARACTER_ATTRIBUTES)   # the tables' column order
VALUES = {"colour": list(COLOURS), "shape": list(SHAPES), "texture": list(TEXTURES)}
CHARACTERS = [Character(s, c, t) for s in SHAPES for c in COLOURS for t in TEXTURES]


def character(words: str | None) -> Character | None:
    """``"red dotted circle"`` (:meth:`Character.words`, as ``per_film`` stores reads) → Character."""
    if words is None:
        return None
    colour, texture, shape = words.split()
    return Character(shape, colour, texture)


def split_reads(per_film: list[dict], films) -> dict[str, list[list[Character | None]]]:
    """Per caption mode, each film's per-shot reads. ``per_film`` must list ``films`` (the
    evaluation prompts) in order, by name and prompt.

    Raises:
        ValueError: a film's name or prompt differs (the reads are of other prompts).
    """
    out: dict[str, list] = {"anonymous": [], "named": []}
    if len(per_film) != len(films):
        raise ValueError(f"{len(per_film)} films read, {len(films)} evaluation prompts")
    for row, film in zip(per_film, films):
        if (row["name"], row["prompt"]) != (film.name, film.prompt):
            raise ValueError(f"{row['name']}: not the evaluation prompt {film.name}")
        out[film.caption_mode].append([character(w) for w in row["characters"]])
    return out


def _codes(reads, a: str):
    """Shot-1 codes per film and (film index, code) per later shot; no read is -1 in shot 1
    and -2 later (never equal)."""
    films = [r for r in reads if len(r) > 1]
    code = lambda c, none: none if c is None else (  # noqa: E731
        CHARACTERS.index(c) if a == "character" else VALUES[a].index(getattr(c, a)))
    first = np.array([code(r[0], -1) for r in films])
    film = np.array([i for i, r in enumerate(films) for _ in r[1:]])
    later = np.array([code(c, -2) for r in films for c in r[1:]])
    return first, film, later


def permutation_p(reads, a: str, count: int = 10_000, seed: int = 0) -> float:
    """One-sided permutation p of the observed consistency of ``a`` (module docstring)."""
    first, film, later = _codes(reads, a)
    observed = np.mean(first[film] == later)
    rng = np.random.default_rng(seed)
    perms = np.stack([rng.permutation(first) for _ in range(count)])
    null = (perms[:, film] == later).mean(1)
    return float((1 + np.sum(null >= observed - 1e-12)) / (count + 1))


def marginals(reads) -> dict[str, dict[str, float]]:
    """Per attribute, the fraction of all shots (of ``reads``' films) reading each value, and
    ``none`` (no character read)."""
    shots = [c for r in reads for c in r]
    return {a: {**{v: sum(c is not None and getattr(c, a) == v for c in shots) / len(shots) for v in VALUES[a]},
                "none": sum(c is None for c in shots) / len(shots)} for a in learn.CHARACTER_ATTRIBUTES}


def confusion(per_film: list[dict], films) -> dict[str, dict[str, dict[str, int]]]:
    """Per attribute, shots of ``named`` films counted by true value → read value (``none``: no
    character read)."""
    out = {a: {v: dict.fromkeys([*VALUES[a], "none"], 0) for v in VALUES[a]} for a in learn.CHARACTER_ATTRIBUTES}
    for row, film in zip(per_film, films):
        if film.caption_mode != "named":
            continue
        for w in row["characters"]:
            c = character(w)
            for a in learn.CHARACTER_ATTRIBUTES:
                out[a][getattr(film.character, a)]["none" if c is None else getattr(c, a)] += 1
    return out


def diagnose(reads: dict[str, list]) -> dict:
    """One row: :func:`multishot.learn.attribute_consistency` of the anonymous films with excess,
    kappa and permutation p; the marginals; the named films' consistency."""
    kept = learn.attribute_consistency(reads["anonymous"])
    named = learn.attribute_consistency(reads["named"])
    later = [c for r in reads["anonymous"] if len(r) > 1 for c in r[1:]]
    rows = {}
    for a in KEYS:
        c, p = kept["consistency"][a], kept["chance"][a]
        rows[a] = {"consistency": c, "chance": p, "excess": c - p,
                   "kappa": (c - p) / (1 - p) if p < 1 else None,
                   "p": permutation_p(reads["anonymous"], a)}
    far_reads = [[r[0], *r[2:]] for r in reads["anonymous"]]
    far = learn.attribute_consistency(far_reads)
    rows_far = {a: {"consistency": far["consistency"][a], "chance": far["chance"][a],
                    "p": permutation_p(far_reads, a)} for a in KEYS}
    return {"anonymous": rows, "later_shots": kept["later_shots"], "films": kept["films"],
            "shots_3_4": {**rows_far, "later_shots": far["later_shots"], "films": far["films"]},
            "later_no_read": sum(c is None for c in later) / len(later),
            "marginals": marginals(reads["anonymous"]),
            "named": {a: {"consistency": named["consistency"][a], "chance": named["chance"][a]} for a in KEYS}}


def paired_difference(a_reads, b_reads, draws: int = 2_000, seed: int = 0) -> dict:
    """Bootstrap 95% interval of excess(a) − excess(b) per attribute, the anonymous films
    resampled with the same indices for both (module docstring)."""
    def difference(idx):
        ka = learn.attribute_consistency([a_reads[i] for i in idx])
        kb = learn.attribute_consistency([b_reads[i] for i in idx])
        return {k: (ka["consistency"][k] - ka["chance"][k]) - (kb["consistency"][k] - kb["chance"][k])
                for k in KEYS}

    rng = np.random.default_rng(seed)
    n = len(a_reads)
    draws_ = [difference(rng.integers(0, n, n)) for _ in range(draws)]
    observed = difference(range(n))
    return {k: {"difference": observed[k], "low": float(np.percentile([d[k] for d in draws_], 2.5)),
                "high": float(np.percentile([d[k] for d in draws_], 97.5))} for k in KEYS}


def ceiling_reads(vae: str, device: str, count: int) -> tuple[list[dict], dict]:
    """The evaluation prompts' ground truth through ``vae`` (encode → decode) read by
    :func:`multishot.learn.score`: its ``per_film`` and its scores (``per_film`` dropped)."""
    import torch

    from multishot.model.encoders import FrozenEncoders
    from multishot.model.settings import EncodersConfig

    encoders = FrozenEncoders.load(EncodersConfig(vae=vae, dtype="float32"), torch.device(device))
    films = learn.eval_films(count)
    frames = learn.render_many(films)
    rec = learn.reconstruct(encoders, frames, torch.device(device))
    scores = learn.score(films, rec)
    return scores.pop("per_film"), {**scores, "psnr_db": learn.psnr(rec, frames)}


def decoder_carry(vae: str, device: str, count: int) -> dict:
    """The causal VAE decoder as a path across the cut (module docstring), on the first
    ``count`` evaluation films: per attribute, later shots reading F's attribute in the spliced
    and in the control decode, and the exact McNemar p of the paired difference."""
    from dataclasses import replace

    import torch
    from scipy.stats import binomtest

    from multishot.model.encoders import FrozenEncoders
    from multishot.model.layout import latent_shot_starts
    from multishot.model.settings import EncodersConfig

    dev = torch.device(device)
    encoders = FrozenEncoders.load(EncodersConfig(vae=vae, dtype="float32"), dev)
    films = learn.eval_films(count)
    turn = lambda values, v: values[(values.index(v) + 1) % len(values)]  # noqa: E731
    others = [replace(f, character=Character(turn(list(SHAPES), f.character.shape),
                                             turn(list(COLOURS), f.character.colour),
                                             turn(list(TEXTURES), f.character.texture))) for f in films]

    def encode(fs):
        frames = learn.render_many(fs)
        with torch.no_grad():
            return torch.cat([encoders.encode_video(learn.to_video_tensor(frames[i:i + 16]))
                              for i in range(0, len(fs), 16)])

    z, z_other = encode(films), encode(others)
    spliced = z_other.clone()
    for i, f in enumerate(films):
        cut = latent_shot_starts(f.num_frames, f.cut_frames)[1]
        spliced[i, :, :cut] = z[i, :, :cut]
    reads = {}
    for arm, latents in (("spliced", spliced), ("control", z_other)):
        videos = np.concatenate([learn.decode(encoders.vae, latents[i:i + 16], dev) for i in range(0, count, 16)])
        reads[arm] = [[character(w) for w in row["characters"]] for row in learn.score(others, videos)["per_film"]]
    out = {"films": count}
    for a in learn.CHARACTER_ATTRIBUTES:
        for part, shots in (("shot_2", lambda r: r[1:2]), ("shots_3_4", lambda r: r[2:])):
            pairs = [(c is not None and getattr(c, a) == getattr(f.character, a),
                      d is not None and getattr(d, a) == getattr(f.character, a))
                     for f, rs, rc in zip(films, reads["spliced"], reads["control"])
                     for c, d in zip(shots(rs), shots(rc))]
            b = sum(s and not c for s, c in pairs)
            c = sum(c and not s for s, c in pairs)
            out[f"{a}_{part}"] = {"shots": len(pairs), "spliced": sum(s for s, _ in pairs) / len(pairs),
                                  "control": sum(c for _, c in pairs) / len(pairs),
                                  "p": binomtest(b, b + c).pvalue if b + c else 1.0}
    return out


def build(report: dict) -> dict:
    """Every row's diagnosis and the paired differences, from the per-film reads in ``report``
    (the ceiling's) or in the evaluation JSON a source names (``results/learn/<file>``)."""
    films = learn.eval_films(report["eval_films"])
    per_film = {name: src["per_film"] if "per_film" in src else
                json.loads((harness.results_dir("learn") / src["file"]).read_text())["per_film"]
                for name, src in report["sources"].items()}
    reads = {name: split_reads(rows, films) for name, rows in per_film.items()}
    for name, r in reads.items():   # the parse reproduces the stored metric
        stored = report["sources"][name]["character_consistency"]
        if abs(learn.attribute_consistency(r["anonymous"])["consistency"]["character"] - stored) > 1e-9:
            raise ValueError(f"{name}: character_consistency {stored} not reproduced from its reads")
    report["rows"] = {name: {**diagnose(r), "confusion": confusion(per_film[name], films)}
                      for name, r in reads.items()}
    report["full_minus"] = {name: paired_difference(reads["full"]["anonymous"], reads[name]["anonymous"])
                            for name in reads if name != "full"}
    return report


def markdown(report: dict) -> str:
    f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    pv = lambda p: "< 0.001" if p < 0.001 else f"{p:.3f}"  # noqa: E731
    rows = report["rows"]
    lines = ["# Inter-shot character consistency, attribute by attribute (issue 30)", "",
             f"Device: {report['device']} (this diagnosis: reading JSON, the ceiling's VAE pass and the "
             "statistics); the generated rows' videos were sampled and read on "
             f"{report['generated_device']} (`<variant>_eval_h100.json`, 20 sampling steps). "
             "Definitions, tests and decision rules (fixed before measuring): `benchmarks/learn_consistency.py`, "
             "`multishot.learn.attribute_consistency`; the decoder-carry test and the shots 3-4 view were added "
             "after the first table had been seen, each defined before its own numbers. "
             f"{report['eval_films']} evaluation prompts; anonymous films with a later shot: "
             f"{rows['full']['films']} ({rows['full']['later_shots']} later shots).", "",
             "## Anonymous films: consistency / chance (permutation p)", "",
             "Chance: each film's shot 1 replaced by another film's (the row's own distribution of reads). "
             "Uniform draws would give colour 0.250, shape 0.333, texture 0.500, character 0.042.", "",
             "| row | character | colour | shape | texture | later shots with no read |", "|---|---|---|---|---|---|"]
    for name, r in rows.items():
        cells = [f"{f(r['anonymous'][k]['consistency'])} / {f(r['anonymous'][k]['chance'])} "
                 f"(p {pv(r['anonymous'][k]['p'])})" for k in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {f(r['later_no_read'])} |")
    lines += ["", "Excess over chance (consistency − chance) and kappa = excess / (1 − chance):", "",
              "| row | character | colour | shape | texture |", "|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join(
            f"{r['anonymous'][k]['excess']:+.3f} (κ {f(r['anonymous'][k]['kappa'])})" for k in COLUMNS) + " |")
    lines += ["", "Shots 3-4 only (anonymous films of 3-4 shots, against shot 1; past the decoder's carry): "
              "consistency / chance (permutation p):", "",
              "| row | character | colour | shape | texture |", "|---|---|---|---|---|"]
    for name, r in rows.items():
        far = r["shots_3_4"]
        lines.append(f"| {name} ({far['later_shots']} shots) | " + " | ".join(
            f"{f(far[k]['consistency'])} / {f(far[k]['chance'])} (p {pv(far[k]['p'])})" for k in COLUMNS) + " |")
    lines += ["", "## `full` − each row: difference in excess, paired bootstrap 95% interval", "",
              "| row | character | colour | shape | texture |", "|---|---|---|---|---|"]
    for name, d in report["full_minus"].items():
        lines.append(f"| full − {name} | " + " | ".join(
            f"{d[k]['difference']:+.3f} [{d[k]['low']:+.3f}, {d[k]['high']:+.3f}]" for k in COLUMNS) + " |")
    lines += ["", "## What is drawn: reads over all shots of the anonymous films", "",
              "| row | " + " | ".join(f"{a}: {v}" for a in learn.CHARACTER_ATTRIBUTES for v in VALUES[a]) + " | none |",
              "|---|" + "---|" * (sum(len(v) for v in VALUES.values()) + 1)]
    for name, r in rows.items():
        m = r["marginals"]
        lines.append(f"| {name} | " + " | ".join(f"{m[a][v]:.2f}" for a in learn.CHARACTER_ATTRIBUTES
                                                 for v in VALUES[a]) + f" | {m['colour']['none']:.2f} |")
    lines += ["", "## What is drawn for what: named films, shots by true → read value", "",
              "Each cell lists the read values' counts for one true value (order: the values, then none).", "",
              "| row | " + " | ".join(f"{a}: {v}" for a in ("shape", "colour") for v in VALUES[a]) + " |",
              "|---|" + "---|" * (len(VALUES["shape"]) + len(VALUES["colour"]))]
    for name, r in rows.items():
        cm = r["confusion"]
        lines.append(f"| {name} | " + " | ".join(
            " ".join(str(n) for n in cm[a][v].values()) for a in ("shape", "colour") for v in VALUES[a]) + " |")
    lines += ["", "## Secondary: the same consistency on named films (the caption names the character)", "",
              "| row | character | colour | shape | texture |", "|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join(
            f"{f(r['named'][k]['consistency'])} / {f(r['named'][k]['chance'])}" for k in COLUMNS) + " |")
    carry = report["decoder_carry"]
    lines += ["", "## Decoder carry: does the causal VAE decoder take F's character across the cut?", "",
              f"{carry['films']} evaluation films; later shots reading F's attribute when F's latents precede "
              "the cut (spliced) and when they do not (control); exact McNemar p of the paired shots.", "",
              "| attribute | shot 2: spliced / control (p) | shots 3-4: spliced / control (p) |", "|---|---|---|"]
    for a in learn.CHARACTER_ATTRIBUTES:
        lines.append(f"| {a} | " + " | ".join(
            f"{carry[f'{a}_{part}']['spliced']:.3f} / {carry[f'{a}_{part}']['control']:.3f} "
            f"(p {pv(carry[f'{a}_{part}']['p'])}, {carry[f'{a}_{part}']['shots']} shots)"
            for part in ("shot_2", "shots_3_4")) + " |")
    if report.get("conclusion"):
        lines += ["", "## Conclusion", "", report["conclusion"].strip()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vae", default=str(harness.REPO / "checkpoints/learn/vae"),
                        help="the VAE of the ceiling row (encode → decode of the ground truth)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--eval-films", type=int, default=64)
    parser.add_argument("--reuse", default=None,
                        help="a report of this script: take its sources (the ceiling's reads too) instead of measuring")
    parser.add_argument("--conclusion", default=None, help="a text file: the report's conclusion section")
    parser.add_argument("--out", default=str(harness.results_dir("learn") / "consistency_diagnosis_cpu.json"))
    args = parser.parse_args(argv)
    if args.reuse:
        old = json.loads(Path(args.reuse).read_text())
        report = {k: old[k] for k in ("device", "generated_device", "eval_films", "sources", "decoder_carry",
                                      "conclusion") if k in old}
    else:
        sources = {}
        for name in VARIANT_ROWS:
            path = harness.results_dir("learn") / f"{name}_eval_h100.json"
            if not path.exists():
                print(f"learn_consistency: {path} not found", file=sys.stderr)
                return 2
            g = json.loads(path.read_text())
            sources[name] = {"file": path.name, "device": g.get("eval_device"),
                             "character_consistency": g["character_consistency"]}
        per_film, scores = ceiling_reads(args.vae, args.device, args.eval_films)
        sources[CEILING] = {"file": f"{args.vae} (encode → decode here)", "device": harness.device_name(args.device),
                            "character_consistency": scores["character_consistency"],
                            "psnr_db": scores["psnr_db"], "per_film": per_film}
        report = {"device": harness.device_name(args.device),
                  "generated_device": sources["full"]["device"], "eval_films": args.eval_films, "sources": sources,
                  "decoder_carry": decoder_carry(args.vae, args.device, args.eval_films)}
    if args.conclusion:
        report["conclusion"] = Path(args.conclusion).read_text()
    harness.write_report(args.out, build(report), markdown)
    print(Path(args.out).with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
