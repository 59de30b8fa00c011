"""What the opt-in step cache costs in quality, measured in the synthetic world (issue 35).

Written before any setting ran; results in ``benchmarks/results/learn/step_cache_<device>.{json,md}``.

**Question.** ``runtime.step_cache`` (:mod:`model.step_cache`, diffusers' FirstBlockCache) skips
blocks 2…n on a denoising step whose first block's residual changed by less than
``runtime.step_cache_threshold`` since the last computed step, reusing the cached residual: the
output is not the exact sampler's. How much shot-cut accuracy and caption following does it cost
the world's trained ``full`` DiT, at which thresholds, for how many skipped DiT calls and how
much wall time?

**Settings.** The committed ``full`` checkpoint with its VAE and text encoder, sampled exactly as
``multishot generate --config configs/generate/learn_full.yaml`` samples (its Euler sampler,
steps, shift, no CFG, float32, untiled decode), through the product's
:class:`generate.generator.Generator` built from that file with only ``runtime.step_cache`` /
``runtime.step_cache_threshold`` overridden (and ``runtime.progress`` off). Rows: ``exact``
(cache off) and the cache at each ``--thresholds`` value (default 0, 0.05, 0.1, 0.2; 0 is the
check that the cache path reproduces the exact latents bit for bit). Prompts: the first
``--prompts`` (default 64) held-out evaluation prompts of the world
(:func:`multishot.learn.eval_films`, the ablation's prompts: 2-4 shots, half named, A-B-A likely,
held-out characters), prompt ``i`` with noise seed ``--seed + i`` in every row (the same ε per
prompt). The rows run interleaved per prompt (prompt 0 in every row, then prompt 1, …) so that
the shared machine's load falls on all rows alike; ``--threads`` torch threads (default 1).

**Metrics**, per row: ``sca`` and ``caption_following`` (the decision metrics) and, for context,
``named_character``, ``character_consistency``, ``aba_recall``, all as
:func:`multishot.learn.score` defines them on the decoded pixels read by the world's classifier;
``reused``: the fraction of the DiT calls (one per step here, no CFG) that reused the cached
residual (blocks 2…n skipped; block 1, the embeddings and the head still run);
``latent_rel_l2``: ``‖x − x_exact‖₂ / ‖x_exact‖₂`` of each prompt's final latents (mean and max
over prompts), and how many prompts' latents equal the exact ones bit for bit; wall seconds per
video of sampling and of sampling + decode (``Generated.info``) on this machine, and the sampling
speed-up against ``exact``.

**Cost and noise.** The cost is the drop of ``sca`` / ``caption_following`` against the
``exact`` row on the same prompts and noise, with a paired bootstrap over the prompts (10,000
resamples of the prompts, seed 0; 95% percentile interval of the mean per-prompt difference). A
drop whose interval contains 0 is reported as *within the noise of N prompts*; the ``exact``
row's own 95% bootstrap interval is given beside it. No target: the thresholds are set before
the run and none is chosen afterwards to make the cost look small.

    python benchmarks/learn_step_cache.py                       # ~15-20 CPU-minutes at 64 prompts
    python benchmarks/learn_step_cache.py --prompts 2 --thresholds 0 0.2 --out /tmp/x.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import harness

CONFIG = "configs/generate/learn_full.yaml"
DECISION = ("sca", "caption_following")
CONTEXT = ("named_character", "character_consistency", "aba_recall")
RESAMPLES = 10_000


def settings(thresholds: list[float]) -> dict[str, dict]:
    """Row name → the ``runtime`` overrides of ``learn_full.yaml`` (``exact``: the cache off)."""
    rows = {"exact": {"step_cache": False}}
    for t in thresholds:
        rows[f"cache {t:g}"] = {"step_cache": True, "step_cache_threshold": t}
    return rows


def bootstrap(values, resamples: int = RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean of ``values`` ``[N]`` over ``resamples`` resamples of
    its entries with replacement (for a paired difference: of the per-prompt differences)."""
    import numpy as np

    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (resamples, len(values)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def verdict(drop: float, interval: tuple[float, float]) -> str:
    """``within noise`` when the paired interval of (row − exact) contains 0, else ``lower`` /
    ``higher``; ``no change`` when every prompt scored the same."""
    lo, hi = interval
    if lo == hi == 0.0 and drop == 0.0:
        return "no change"
    if lo <= 0.0 <= hi:
        return "within noise"
    return "lower" if hi < 0 else "higher"


def run(args) -> dict:
    import numpy as np
    import torch

    from multishot import learn
    from multishot.config import load_config
    from multishot.generate.config import GenerateConfig
    from multishot.generate.generator import Generator
    from multishot.generate.shots import resolve_request

    torch.set_num_threads(args.threads)
    rows = settings(args.thresholds)
    config_path = harness.REPO / CONFIG
    generators = {name: Generator(load_config(config_path, GenerateConfig, {
        "runtime": {**runtime, "progress": False}})) for name, runtime in rows.items()}
    sampling = next(iter(generators.values())).config.sampling
    films = learn.eval_films(args.prompts)
    requests = [resolve_request(f.prompt, f.num_frames, f.cut_frames, seed=args.seed + i, name=f.name)
                for i, f in enumerate(films)]
    out = {name: {"videos": [], "latents": [], "reused": [], "sampling_s": [], "total_s": []}
           for name in rows}
    start = time.perf_counter()
    for i, request in enumerate(requests):
        for name, gen in generators.items():
            g = gen.generate(request)
            o = out[name]
            o["videos"].append(g.video)
            o["latents"].append(g.latents)
            o["reused"].append((g.info["step_cache"] or {}).get("reused_steps", 0))
            o["sampling_s"].append(g.info["sampling_s"])
            o["total_s"].append(g.info["total_s"])
        print(f"[{time.strftime('%H:%M:%S')}] prompt {i + 1}/{len(requests)}: reused steps "
              + ", ".join(f"{n} {out[n]['reused'][-1]}" for n in rows), flush=True)
    generate_s = time.perf_counter() - start

    exact = out["exact"]
    per_prompt = {name: [learn.score([f], o["videos"][i][None]) for i, f in enumerate(films)]
                  for name, o in out.items()}
    report_rows = {}
    for name, o in out.items():
        scores = learn.score(films, np.stack(o["videos"]))
        rel = [harness.rel_err(x, ref) for x, ref in zip(o["latents"], exact["latents"])]
        row = {"runtime": rows[name],
               **{k: scores[k] for k in (*DECISION, "shot_count_error", *CONTEXT, "named_colour")},
               "reused": sum(o["reused"]) / (len(films) * sampling.steps),
               "reused_steps_per_video": float(np.mean(o["reused"])),
               "latent_rel_l2_mean": float(np.mean(rel)), "latent_rel_l2_max": float(np.max(rel)),
               "latents_bit_identical": sum(bool(torch.equal(x, ref))
                                            for x, ref in zip(o["latents"], exact["latents"])),
               "sampling_s_per_video": float(np.mean(o["sampling_s"])),
               "total_s_per_video": float(np.mean(o["total_s"])),
               "sampling_speed_up": float(np.mean(exact["sampling_s"]) / np.mean(o["sampling_s"]))}
        for k in DECISION:
            mine = [p[k] for p in per_prompt[name]]
            diff = [a - p[k] for a, p in zip(mine, per_prompt["exact"])]
            row[f"{k}_ci95"] = bootstrap(mine)
            row[f"{k}_change"] = float(np.mean(diff))
            row[f"{k}_change_ci95"] = bootstrap(diff)
            row[f"{k}_verdict"] = verdict(row[f"{k}_change"], row[f"{k}_change_ci95"])
        row["per_prompt"] = [{"name": f.name, "seed": r.seed, "reused_steps": o["reused"][i],
                              "latent_rel_l2": rel[i], "sca": p["sca"],
                              "caption_following": p["caption_following"],
                              "detected_cuts": p["per_film"][0]["detected_cuts"]}
                             for i, (f, r, p) in enumerate(zip(films, requests, per_prompt[name]))]
        report_rows[name] = row
    gen = generators["exact"]
    return {"device": harness.device_name(), "torch_threads": args.threads, "config": CONFIG,
            "checkpoint": gen.config.model.checkpoint, "checkpoint_sha256": gen.checkpoints,
            "prompts": len(films), "seed": args.seed, "steps": sampling.steps,
            "shift": sampling.shift, "sampler": sampling.sampler,
            "blocks": gen.model_config.num_layers, "thresholds": args.thresholds,
            "bootstrap_resamples": RESAMPLES, "generate_wall_s": generate_s,
            "total_wall_s": time.perf_counter() - start, "rows": report_rows}


def changed(row: dict, exact: dict, key: str) -> tuple[int, int]:
    """How many prompts scored ``key`` lower / higher in ``row`` than in ``exact``."""
    diffs = [p[key] - q[key] for p, q in zip(row["per_prompt"], exact["per_prompt"])]
    return sum(d < 0 for d in diffs), sum(d > 0 for d in diffs)


def markdown(report: dict) -> str:
    f3 = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    ci = lambda v: f"[{v[0]:+.3f}, {v[1]:+.3f}]"  # noqa: E731
    rows = report["rows"]
    head = ("| setting | DiT calls reused | SCA | SCA change [95% CI] | caption following | "
            "change [95% CI] | latent rel. L2 mean / max | bit-identical | sampling s/video | "
            "speed-up | total s/video | named character | character consistency | A-B-A recall |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, r in rows.items():
        change = lambda k: "-" if name == "exact" else (  # noqa: E731
            f"{r[k + '_change']:+.3f} {ci(r[k + '_change_ci95'])} {r[k + '_verdict']}; "
            "prompts down / up: {} / {}".format(*changed(r, rows["exact"], k)))
        lines.append(
            f"| {name} | {r['reused']:.3f} | {r['sca']:.3f} | {change('sca')} | "
            f"{r['caption_following']:.3f} | {change('caption_following')} | "
            f"{r['latent_rel_l2_mean']:.4f} / {r['latent_rel_l2_max']:.4f} | "
            f"{r['latents_bit_identical']}/{report['prompts']} | {r['sampling_s_per_video']:.3f} | "
            f"{r['sampling_speed_up']:.2f}× | {r['total_s_per_video']:.3f} | "
            f"{f3(r['named_character'])} | {f3(r['character_consistency'])} | {f3(r['aba_recall'])} |")
    e = rows["exact"]
    doc = __doc__.split("\n\n")
    return "\n".join([
        "# The step cache's quality cost in the synthetic world (issue 35)", "",
        *[p.strip() + "\n" for p in doc[2:6]],
        f"**Run.** Device: {report['device']}, shared with other work (wall times are "
        f"indicative; the rows ran interleaved), {report['torch_threads']} torch thread(s). "
        f"`{report['config']}` ({report['checkpoint']}), {report['sampler']} {report['steps']} "
        f"steps, shift {report['shift']:g}, {report['blocks']} blocks; {report['prompts']} "
        f"prompts, noise seeds {report['seed']}…{report['seed'] + report['prompts'] - 1}. "
        f"Wall time of the whole run {report['total_wall_s']:.0f} s. Script: "
        "`benchmarks/learn_step_cache.py`.", "",
        *lines, "",
        f"`exact`'s own 95% bootstrap interval over the {report['prompts']} prompts: SCA "
        f"[{e['sca_ci95'][0]:.3f}, {e['sca_ci95'][1]:.3f}], caption following "
        f"[{e['caption_following_ci95'][0]:.3f}, {e['caption_following_ci95'][1]:.3f}]. A change "
        "is the mean per-prompt (row − exact) with its paired-bootstrap 95% interval; "
        "'within noise' when that interval contains 0 (with few prompts changed, the percentile "
        "interval is narrow: the counts of prompts down / up say how many carry a change). "
        "'DiT calls reused': the fraction of "
        "denoising calls whose blocks 2…n were skipped.", ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.0, 0.05, 0.1, 0.2])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(harness.results_dir("learn") / "step_cache_cpu.json"))
    args = parser.parse_args(argv)
    if args.prompts < 1 or args.threads < 1 or min(args.thresholds) < 0:
        parser.error("--prompts and --threads must be >= 1 and --thresholds >= 0")
    report = run(args)
    harness.write_report(Path(args.out), report, markdown)
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
