"""Does Wan's timestep shift keep the small DiT from learning the named character? (issue 30)

Written before any arm ran; results in ``benchmarks/results/learn/character_shift_<device>.{json,md}``.

**Question.** ``benchmarks/results/learn/character_diagnosis_cpu.md`` proposes a mechanism for the
``full`` DiT drawing the named character at chance: with the flow-matching shift 5 (Wan's, the
trainer's default) only 17% of training draws have σ < 0.5, where x_t fixes the character's position
and so where its shape and texture can pay off on the loss; at shift 1 (σ uniform) 50% do. If that
is the cause, the same DiT trained the same way at shift 1 draws the named shape and texture more
often than at shift 5.

**Arms.** ``shift5`` (training and sampling at shift 5, the baseline) and ``shift1`` (both at
shift 1: uniform σ, since :class:`trainer.flow_matching.FlowMatching` draws a uniform index into
its shifted table). Nothing else differs: the same data (one ``python -m multishot.learn prepare``
folder: the committed VAE and UMT5 of ``checkpoints/learn``, the world's training films as
tensors), the ``full`` variant (:func:`multishot.learn.train_variant`) at a CPU size (``--dim``,
``--layers``, ``--heads``; the ``learn`` config otherwise), steps, batch, learning rate and seed;
a second seed if time allows. No other σ sampler is added (the trainer has none; shift 1 is
already uniform σ).

**Metric.** On the first ``--eval-films`` evaluation prompts (:func:`multishot.learn.eval_films`,
fresh seeds, half named) sampled with the arm's shift (Euler, ``--sample-steps``, no CFG, the same
noise in both arms), decoded by the VAE and read by the world's classifier
(:func:`multishot.learn.score`): ``named_colour`` / ``named_shape`` / ``named_texture`` (the
fraction of named films' shots whose read attribute is the named one; chance 1/4, 1/3, 1/2) and
``named_character``, beside ``sca`` and ``caption_following`` (so that a gain in one does not hide
a loss in another), with the VAE's ceiling on each (the same prompts' ground truth through encode →
decode) and the chance levels. Also, not part of the decision, the mechanism's own trace:
:func:`multishot.learn.caption_sensitivity` on 16 named training films (how much a wrong colour /
shape / texture word moves the prediction on character positions against background positions,
per σ).

**Decision rule** (shots pooled over seeds; two-sided Fisher exact test per attribute, shift 1 vs
shift 5; one-sided binomial test of each arm against chance):

* *shift 1 helps*: shape or texture higher at shift 1 with p < 0.05, no attribute lower with
  p < 0.05, and ``sca`` and ``caption_following`` not lower than shift 5's by more than 0.05 →
  the learn configs and ``multishot.learn`` train and sample at shift 1;
* *shift 1 hurts*: an attribute lower with p < 0.05, or ``sca`` / ``caption_following`` lower by
  more than 0.05 with no attribute higher with p < 0.05 → keep shift 5; the mechanism is not
  supported;
* otherwise *no difference shown at this size* → keep shift 5 (the default stays where it is) and
  leave the question to the GPU run (``benchmarks/learn_character_gpu.sh``). When neither arm's
  shape nor texture is above chance (binomial p ≥ 0.05), the size cannot test the mechanism at
  all, and the report says so.

Usage (one arm per process, so the arms run side by side on the cores; ``report`` reads them)::

    python -m multishot.learn prepare --out DATA --device cpu --train-films 3000 \\
        --vae-init checkpoints/learn/vae --vae-steps 0 --probe-films 8 --eval-films 64
    python benchmarks/learn_character_shift.py arm --data DATA --shift 5 --seed 0
    python benchmarks/learn_character_shift.py arm --data DATA --shift 1 --seed 0
    python benchmarks/learn_character_shift.py report --data DATA
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

import harness

ATTRIBUTES = ("colour", "shape", "texture")
CHANCE = {"colour": 1 / 4, "shape": 1 / 3, "texture": 1 / 2}
#: the columns that must not fall by more than this at shift 1 (decision rule)
GUARD = ("sca", "caption_following")
GUARD_DROP = 0.05
ALPHA = 0.05


def sigma_share_below(shift: float, sigma: float = 0.5, steps: int = 1000) -> float:
    """The fraction of :class:`trainer.flow_matching.FlowMatching`'s table entries (drawn
    uniformly in training) with σ below ``sigma`` at ``shift``."""
    s = np.linspace(1.0, 0.0, steps + 1)[:-1]
    return float(np.mean(shift * s / (1 + (shift - 1) * s) < sigma))


def run_arm(args) -> dict:
    """Train, sample, decode and score one arm into ``DATA/arms/shift<S>_seed<N>.json``."""
    import torch

    torch.set_num_threads(args.threads)
    from multishot.torchvision_cpu import import_torchvision

    import_torchvision()
    from dataclasses import replace

    from multishot import learn
    from multishot.model.checkpoint import save_safetensors
    from multishot.model.config import get_config
    from multishot.model.encoders import FrozenEncoders
    from multishot.model.settings import EncodersConfig

    data_dir = Path(args.data)
    name = f"shift{args.shift:g}_seed{args.seed}"
    sample_shift = args.shift if args.sample_shift is None else args.sample_shift
    tag = name if sample_shift == args.shift else f"{name}_sample{sample_shift:g}"
    out = data_dir / "arms"
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cpu")
    config = replace(get_config(learn.MODEL), dim=args.dim, ffn_dim=4 * args.dim, num_heads=args.heads,
                     num_layers=args.layers)
    log = lambda m: print(f"[{name} {time.strftime('%H:%M:%S')}] {m}", flush=True)  # noqa: E731
    trained = out / f"{name}_train.json"
    if trained.exists() and (out / f"{name}.safetensors").exists():   # a killed arm resumes here
        from safetensors.torch import load_file

        from multishot.model.dit import WanModel

        info = json.loads(trained.read_text())
        model = WanModel(config, learn.ATTENTION_BACKEND).eval()
        model.load_state_dict(load_file(out / f"{name}.safetensors"))
        log(f"trained weights of {trained} loaded")
    else:
        data = torch.load(data_dir / "train_data.pt", weights_only=False)
        model, losses, train_s = learn.train_variant("full", data, args.steps, args.batch, args.lr, device,
                                                     args.seed, log, config=config, shift=args.shift)
        info = {"train_films": len(data["prompts"]), "losses": losses, "train_s": train_s}
        del data
        save_safetensors({k: v.detach().cpu() for k, v in model.state_dict().items()}, out / f"{name}.safetensors")
        trained.write_text(json.dumps(info))
    losses, train_s, train_films = info["losses"], info["train_s"], info["train_films"]
    t_eval = time.perf_counter()
    encoders = FrozenEncoders.load(EncodersConfig(vae=str(data_dir / "vae"),
                                                  text_encoder=str(data_dir / "text_encoder"),
                                                  dtype="float32"), device)
    films = learn.eval_films(args.eval_films)
    t1 = time.perf_counter()
    latents = learn.generate_all(model, encoders, films, device, args.sample_steps, window=True,
                                 shift=sample_shift)
    videos = np.concatenate([learn.decode(encoders.vae, latents[i:i + 4], device)
                             for i in range(0, len(latents), 4)])
    generate_s = time.perf_counter() - t1
    scores = learn.score(films, videos)
    named = [f for f in learn.training_films(400) if f.caption_mode == "named"][:16]
    sensitivity = learn.caption_sensitivity(model, encoders, named, changes=ATTRIBUTES)
    result = {"arm": tag, "shift": args.shift, "sample_shift": sample_shift, "seed": args.seed,
              "steps": len(losses),
              "batch": args.batch, "lr": args.lr, "dim": args.dim, "layers": args.layers,
              "heads": args.heads, "train_films": train_films,
              "sigma_below_half_share": sigma_share_below(args.shift),
              "sample_steps": args.sample_steps, "threads": args.threads,
              "first_loss": float(np.mean(losses[:20])), "final_loss": float(np.mean(losses[-100:])),
              "loss_curve": [float(np.mean(losses[i:i + 100])) for i in range(0, len(losses), 100)],
              "train_s": train_s, "generate_s": generate_s, "wall_s": train_s + time.perf_counter() - t_eval,
              "device": learn.device_name(device), "peak_rss_gib": peak_rss_gib(), "scores": scores,
              "caption_sensitivity": sensitivity}
    (out / f"{tag}.json").write_text(json.dumps(result, indent=1))
    log("done: " + json.dumps({k: scores[k] for k in ("sca", "caption_following", "named_character",
                                                      "named_colour", "named_shape", "named_texture")}))
    return result


def peak_rss_gib() -> float:
    """This process's peak resident memory (GiB; ``ru_maxrss``, KiB on Linux)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def vae_ceiling(data_dir: Path, count: int) -> dict:
    """:func:`multishot.learn.score` of the evaluation prompts' ground truth through the arms' VAE
    (encode → decode): the ceiling of every decoded-pixel column."""
    import torch

    torch.set_num_threads(1)
    from multishot.torchvision_cpu import import_torchvision

    import_torchvision()
    from multishot import learn
    from multishot.model.encoders import FrozenEncoders
    from multishot.model.settings import EncodersConfig

    encoders = FrozenEncoders.load(EncodersConfig(vae=str(data_dir / "vae"), dtype="float32"), "cpu")
    films = learn.eval_films(count)
    frames = learn.render_many(films)
    scores = learn.score(films, learn.reconstruct(encoders, frames, torch.device("cpu")))
    return {k: v for k, v in scores.items() if k != "per_film"}


def majority_levels(count: int) -> dict:
    """Per attribute, the score of a model that always draws the attribute's most common value
    among the named shots of the first ``count`` evaluation prompts (a reference beside chance:
    a DiT that draws one value everywhere gets this without reading the word)."""
    from collections import Counter

    from multishot import learn

    films = [f for f in learn.eval_films(count) if f.caption_mode == "named"]
    out = {}
    for a in ATTRIBUTES:
        c = Counter(getattr(f.character, a) for f in films for _ in f.shots)
        value, n = c.most_common(1)[0]
        out[a] = {"value": value, "rate": n / sum(c.values())}
    return out


def counts(arms: list[dict], key: str) -> tuple[int, int]:
    """(right, total) named shots of ``key`` pooled over ``arms``."""
    right = sum(round(a["scores"][key] * a["scores"]["named_shots"]) for a in arms)
    return right, sum(a["scores"]["named_shots"] for a in arms)


def decide(by_shift: dict[float, list[dict]]) -> dict:
    """The module docstring's decision rule on the arms grouped by shift (needs shifts 1 and 5)."""
    from scipy.stats import binomtest, fisher_exact

    one, five = by_shift[1.0], by_shift[5.0]
    tests, above = {}, {}
    for a in ATTRIBUTES:
        (r1, n1), (r5, n5) = counts(one, f"named_{a}"), counts(five, f"named_{a}")
        tests[a] = {"shift1": [r1, n1], "shift5": [r5, n5], "difference": r1 / n1 - r5 / n5,
                    "fisher_p": float(fisher_exact([[r1, n1 - r1], [r5, n5 - r5]])[1])}
        above[a] = {s: float(binomtest(r, n, CHANCE[a], alternative="greater").pvalue)
                    for s, (r, n) in (("shift1", (r1, n1)), ("shift5", (r5, n5)))}
    mean = lambda arms, k: float(np.mean([x["scores"][k] for x in arms]))  # noqa: E731
    guard = {k: mean(one, k) - mean(five, k) for k in GUARD}
    better = [a for a in ("shape", "texture") if tests[a]["difference"] > 0 and tests[a]["fisher_p"] < ALPHA]
    higher = [a for a in ATTRIBUTES if tests[a]["difference"] > 0 and tests[a]["fisher_p"] < ALPHA]
    worse = [a for a in ATTRIBUTES if tests[a]["difference"] < 0 and tests[a]["fisher_p"] < ALPHA]
    dropped = [k for k, d in guard.items() if d < -GUARD_DROP]
    if better and not worse and not dropped:
        verdict = "shift 1 helps"
    elif worse or (dropped and not higher):
        verdict = "shift 1 hurts"
    else:
        verdict = "no difference shown at this size"
    testable = any(p < ALPHA for a in ("shape", "texture") for p in above[a].values())
    return {"fisher": tests, "above_chance_binomial_p": above, "guard_difference": guard,
            "verdict": verdict, "shape_or_texture_above_chance_in_an_arm": testable}


def markdown(r: dict) -> str:
    arms, ceiling, d = r["arms"], r["vae_ceiling"], r["decision"]
    a0 = arms[0]
    cols = ["sca", "caption_following", "named_character", "named_colour", "named_shape", "named_texture",
            "character_consistency"]
    lines = [
        "# Does Wan's timestep shift keep the small DiT from learning the named character? (issue 30)", "",
        f"Device: {r['device']} (shared with other jobs; one thread per arm, arms side by side). "
        "Question, arms, metric and decision rule: `benchmarks/learn_character_shift.py`'s docstring, "
        "written before the arms ran.", "",
        f"Same for every arm: the `full` variant at dim {a0['dim']}, {a0['layers']} blocks, {a0['heads']} heads "
        f"(the `learn` config otherwise), {a0['steps']} steps at batch {a0['batch']}, lr {a0['lr']}, "
        f"{a0['train_films']} training films as tensors through the committed VAE and UMT5 "
        f"(`python -m multishot.learn prepare --vae-init checkpoints/learn/vae --vae-steps 0`), "
        f"{a0['scores']['films']} evaluation prompts ({a0['scores']['named_shots']} named shots), "
        f"{a0['sample_steps']} Euler steps at the arm's shift, no CFG. Shift 5 draws σ < 0.5 "
        f"{sigma_share_below(5):.0%} of the time, shift 1 {sigma_share_below(1):.0%}.", "",
        "## Decoded pixels, read by the world's classifier", "",
        "| arm | " + " | ".join(cols) + " | final loss | train s | wall s |", "|" + "---|" * (len(cols) + 4)]
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for a in arms:
        lines.append(f"| {a['arm']} | " + " | ".join(fmt(a["scores"].get(c)) for c in cols) +
                     f" | {a['final_loss']:.4f} | {a['train_s']:.0f} | {a['wall_s']:.0f} |")
    lines.append("| VAE ceiling (ground truth encode → decode) | " + " | ".join(fmt(ceiling.get(c)) for c in cols)
                 + " | | | |")
    lines.append("| chance | 0.532 (never cuts) | 0.167 | 0.042 | 0.250 | 0.333 | 0.500 | 0.042 | | | |")
    m = r["majority_levels"]
    lines.append("| one value drawn everywhere (the most common among the named shots) | | | | " + " | ".join(
        f"{m[a]['rate']:.3f} ({m[a]['value']})" for a in ATTRIBUTES) + " | | | | |")
    lines += ["", "The chance SCA is the `learn.md` level of a video that never cuts on the same 64 prompts. "
              "Rows `…_sample<X>` sample an arm's trained DiT at shift X instead of its own (exploratory, "
              "added after the arms ran: is a difference made in training or in sampling?), not in the "
              "test below; their train s is the arm's, their wall s that plus their own sampling and scoring.", "",
              "## The test (shots pooled over seeds)", "",
              "| attribute | shift 1 right / shots | shift 5 right / shots | difference | Fisher p (two-sided) | "
              "binomial p above chance: shift 1 / shift 5 |", "|---|---|---|---|---|---|"]
    for a in ATTRIBUTES:
        t, b = d["fisher"][a], d["above_chance_binomial_p"][a]
        lines.append(f"| {a} | {t['shift1'][0]} / {t['shift1'][1]} | {t['shift5'][0]} / {t['shift5'][1]} | "
                     f"{t['difference']:+.3f} | {t['fisher_p']:.3f} | {b['shift1']:.3f} / {b['shift5']:.3f} |")
    lines += ["", "Shift 1 minus shift 5, mean over seeds: " + ", ".join(
        f"{k} {v:+.3f}" for k, v in d["guard_difference"].items()) + f" (rule: a drop over {GUARD_DROP} counts).",
        "", f"**Verdict by the rule: {d['verdict']}.** Shape or texture above chance in some arm: "
        f"{'yes' if d['shape_or_texture_above_chance_in_an_arm'] else 'no'}.", "",
        "## The mechanism's trace: how much a wrong character word moves the prediction", "",
        "`multishot.learn.caption_sensitivity` on 16 named training films: mean squared change of the "
        "prediction on character positions / on background positions when one word is wrong "
        "(a word the DiT ignores moves both alike).", "",
        "| arm | σ | colour Δchar / Δbg | shape Δchar / Δbg | texture Δchar / Δbg |", "|---|---|---|---|---|"]
    for a in arms:
        for key, row in a["caption_sensitivity"].items():
            if key.startswith("sigma_"):
                lines.append(f"| {a['arm']} | {key[6:]} | " + " | ".join(
                    f"{row[c]['change_character']:.5f} / {row[c]['change_background']:.5f}" for c in ATTRIBUTES)
                    + " |")
    lines += ["", "## Reading", "", r.get("reading", ""), ""]
    return "\n".join(lines)


def report(args) -> int:
    data_dir = Path(args.data)
    arms = [json.loads(p.read_text()) for p in sorted((data_dir / "arms").glob("shift*_seed*.json"))
            if not p.name.endswith("_train.json")]
    by_shift: dict[float, list[dict]] = {}
    for a in arms:
        if a.get("sample_shift", a["shift"]) == a["shift"]:   # the decision's arms
            by_shift.setdefault(float(a["shift"]), []).append(a)
    if set(by_shift) != {1.0, 5.0}:
        print(f"learn_character_shift: report needs arms at shifts 1 and 5, found {sorted(by_shift)}",
              file=sys.stderr)
        return 2
    out = args.out or str(harness.results_dir("learn") / "character_shift_cpu.json")
    previous = json.loads(Path(out).read_text()) if args.reading is None and Path(out).exists() else {}
    films = arms[0]["scores"]["films"]
    result = {"device": arms[0]["device"], "arms": arms, "vae_ceiling": vae_ceiling(data_dir, films),
              "decision": decide(by_shift), "majority_levels": majority_levels(films),
              "reading": args.reading or previous.get("reading", "")}
    for a in result["arms"]:
        a["scores"].pop("per_film", None)
    harness.write_report(out, result, markdown)
    print(markdown(result))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("stage", choices=["arm", "report"])
    parser.add_argument("--data", required=True, help="a `python -m multishot.learn prepare` folder")
    parser.add_argument("--shift", type=float, default=5.0, help="arm: training and sampling shift")
    parser.add_argument("--sample-shift", type=float, default=None,
                        help="arm: sample at another shift than trained (exploratory rows, not in the "
                             "decision; needs the arm trained)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=1800)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--eval-films", type=int, default=64)
    parser.add_argument("--sample-steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="report: the JSON (default results/learn/character_shift_cpu.json)")
    parser.add_argument("--reading", default=None, help="report: the measured reading for the markdown")
    args = parser.parse_args(argv)
    if not (Path(args.data) / "train_data.pt").exists():
        print(f"learn_character_shift: {args.data} has no train_data.pt (run multishot.learn prepare)",
              file=sys.stderr)
        return 2
    trained = Path(args.data) / "arms" / f"shift{args.shift:g}_seed{args.seed}_train.json"
    if args.stage == "arm" and args.sample_shift not in (None, args.shift) and not trained.exists():
        print(f"learn_character_shift: --sample-shift needs {trained} (the arm trained first)", file=sys.stderr)
        return 2
    if args.stage == "arm":
        run_arm(args)
        return 0
    return report(args)


if __name__ == "__main__":
    sys.exit(main())
