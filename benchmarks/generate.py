"""Generation benchmark: seconds per CFG step and per whole sample, random weights.

Runs the sampler of ``multishot generate`` (:func:`model.sampling.sample`: CFG as one batch of
two, Euler on HoloCine's sigmas) with the repository's ``WanModel`` in bf16 on random weights
at the real shapes, 241 frames at 480×832 cut into 6 shots (HoloCine's example cuts
[37, 73, 113, 169, 205]) with window cross-attention on a 512-token context:

* ``5B``  (Wan2.2 TI2V-5B): latents [1, 48, 61, 30, 52], 23,790 tokens; Wan2.2 VAE
  (diffusers ``AutoencoderKLWan``, Wan2.2-TI2V-5B-Diffusers ``vae/config.json`` geometry);
* ``14B`` (one Wan2.2 A14B expert / HoloCine): latents [1, 16, 61, 60, 104], 95,160 tokens;
  Wan2.1 VAE (diffusers' default ``AutoencoderKLWan`` config).

For each shape, sparse inter-shot vs dense self-attention, eager vs regionally compiled
blocks: the median seconds of the timed CFG steps (after warm-up steps that absorb the
compilation), peak GPU memory, and a whole sample estimated as 50 steps × the step time plus a
measured tiled VAE decode of the final latents. Weights are random, so the video is noise; the
times are those of real weights (no data-dependent work).

    python benchmarks/generate.py --out benchmarks/results/generate/generate_h100.json      # GPU
    python benchmarks/generate.py --tiny       # CPU check: benchmarks/results/generate/generate_tiny.json

Targets (issue 10): a 15 s 5B sample (50 steps with CFG plus VAE decode) in <= 60 s on one
H100; sparse >= 1.9x faster than dense per step at 14B. JSON and a markdown table go to
``--out`` and ``--out`` with ``.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from multishot.model.sampling import Conditioning, Expert, SamplingConfig, sample
from multishot.model.config import WanConfig, get_config
from multishot.model.dit import WanModel
from multishot.model.layout import ShotLayout
from multishot.model.prompt_spans import TextSpans

from harness import device_name, results_dir, sync, write_report

CUTS, FRAMES = [37, 73, 113, 169, 205], 241
#: (latent shape [C, F_lat, H_lat, W_lat], VAE config) per benchmarked model
SHAPES = {
    "5B": ((48, 61, 30, 52), dict(base_dim=160, decoder_base_dim=256, z_dim=48, is_residual=True,
                                  in_channels=12, out_channels=12, patch_size=2,
                                  scale_factor_spatial=16, latents_mean=[0.0] * 48,
                                  latents_std=[1.0] * 48)),
    "14B": ((16, 61, 60, 104), {}),
}
TINY = ((16, 3, 4, 4), dict(base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                            latents_mean=[0.0] * 16, latents_std=[1.0] * 16))
#: targets of issue 10
TARGET_SAMPLE_S, TARGET_SPARSE_SPEEDUP, SAMPLE_STEPS = 60.0, 1.9, 50


def synthetic_spans(num_shots: int, text_len: int) -> TextSpans:
    """Caption windows as a real prompt of ``text_len`` tokens would give: a global caption
    over the first fifth, the shots sharing the rest (only their shapes matter here)."""
    g = text_len // 5
    per = (text_len - g - 1) // num_shots
    return TextSpans((0, g), tuple((g + i * per, g + (i + 1) * per) for i in range(num_shots)))


def build(config: WanConfig, sparse: bool, compiled: bool, device: torch.device,
          dtype: torch.dtype) -> WanModel:
    """A random-weight ``WanModel`` built on meta and initialised on the device."""
    with torch.device("meta"):
        model = WanModel(config, "sdpa", sparse_self_attention=sparse)
    model = model.to(dtype)
    model.time_embedding.float()  # as generate.generator.load_dit keeps them
    model.time_projection.float()
    model = model.to_empty(device=device)
    model.init_weights()
    torch.nn.init.normal_(model.head.head.weight, std=0.02)  # Wan zeroes it; keep outputs alive
    if compiled:
        from multishot.model.compile import apply_compile

        apply_compile(model)
    return model.eval().requires_grad_(False)


def vae_decode_seconds(vae_config: dict, latent_shape: tuple, device: torch.device,
                       dtype: torch.dtype) -> float:
    """Seconds of one tiled decode of random latents ``[1, *latent_shape]`` (random VAE)."""
    from multishot.torchvision_cpu import import_torchvision

    import_torchvision()
    from diffusers import AutoencoderKLWan

    vae = AutoencoderKLWan(**vae_config).to(device, dtype).eval()
    vae.enable_tiling()
    z = torch.randn(1, *latent_shape, device=device, dtype=dtype)
    with torch.no_grad():
        sync(device)
        start = time.perf_counter()
        vae.decode(z)
        sync(device)
    del vae
    return time.perf_counter() - start


def run_case(name: str, config: WanConfig, latent: tuple, sparse: bool, compiled: bool,
             warmup: int, steps: int, device: torch.device, dtype: torch.dtype) -> dict:
    """Time ``warmup + steps`` CFG steps of the real sampler; the median of the timed ones."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    model = build(config, sparse, compiled, device, dtype)
    c, f, h, w = latent
    _, ph, pw = config.patch_size
    frames = (f - 1) * 4 + 1
    cuts = CUTS if frames == FRAMES else [frames // 2 // 4 * 4 + 1]
    layout = ShotLayout.from_cut_frames(frames, cuts, (h // ph) * (w // pw), device)
    generator = torch.Generator("cpu").manual_seed(0)
    cond = Conditioning(
        torch.randn(config.text_len, config.text_dim, generator=generator).to(device),
        torch.randn(config.text_len // 4, config.text_dim, generator=generator).to(device),
        layout, synthetic_spans(len(layout.shot_starts[0]), config.text_len))
    noise = torch.randn(1, c, f, h, w, generator=generator).to(device)
    sampling = SamplingConfig(sampler="euler", steps=warmup + steps, shift=5.0, cfg_scale=5.0)
    _, trace = sample([Expert(model, 5.0)], noise, cond, sampling)
    timed = trace.step_seconds[warmup:]
    result = {
        "model": name, "attention": "sparse" if sparse else "dense",
        "mode": "compiled" if compiled else "eager", "tokens": layout.seq_len,
        "shots": len(layout.shot_starts[0]), "latent_shape": [1, *latent],
        "warmup_step_s": trace.step_seconds[:warmup], "step_s": statistics.median(timed),
        "step_s_all": timed,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30
        if device.type == "cuda" else None,
    }
    del model
    return result


def markdown(report: dict) -> str:
    """The results as a markdown table plus the targets."""
    lines = [f"# Generation benchmark ({report['device']})", "",
             f"CFG as a batch of two, {report['dtype']}, random weights, torch {report['torch']}; "
             f"whole sample = {SAMPLE_STEPS} × the median step + one tiled VAE decode; "
             f"{report['warmup_steps']} warm-up + {report['timed_steps']} timed steps.", "",
             "| model | attention | mode | tokens | s / CFG step | whole sample, s | peak GiB |",
             "|---|---|---|---|---|---|---|"]
    for r in report["cases"]:
        peak = "" if r["peak_memory_gib"] is None else f"{r['peak_memory_gib']:.1f}"
        lines.append(f"| {r['model']} | {r['attention']} | {r['mode']} | {r['tokens']} | "
                     f"{r['step_s']:.3f} | {r['sample_s']:.1f} | {peak} |")
    lines += ["", "VAE decode: " + ", ".join(f"{k} {v:.1f} s" for k, v in
                                             report["vae_decode_s"].items())]
    for name, t in report["targets"].items():
        lines.append(f"- {name}: {t}")
    return "\n".join(lines) + "\n"


def targets(cases: list[dict]) -> dict:
    """Where the results stand against the issue's targets."""
    out = {}
    best5 = [r for r in cases if r["model"] == "5B"]
    if best5:
        best = min(best5, key=lambda r: r["sample_s"])
        out["5B sample <= 60 s"] = (f"{best['sample_s']:.1f} s ({best['attention']}, "
                                    f"{best['mode']}): {'met' if best['sample_s'] <= TARGET_SAMPLE_S else 'not met'}")
    for mode in ("eager", "compiled"):
        pair = {r["attention"]: r["step_s"] for r in cases if r["model"] == "14B" and r["mode"] == mode}
        if len(pair) == 2:
            speedup = pair["dense"] / pair["sparse"]
            out[f"14B sparse speed-up ({mode}) >= 1.9x"] = (
                f"{speedup:.2f}x: {'met' if speedup >= TARGET_SPARSE_SPEEDUP else 'not met'}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["5B", "14B"], choices=list(SHAPES))
    parser.add_argument("--attention", nargs="+", default=["sparse", "dense"],
                        choices=["sparse", "dense"])
    parser.add_argument("--modes", nargs="+", default=["eager", "compiled"],
                        choices=["eager", "compiled"])
    parser.add_argument("--warmup", type=int, default=2, help="untimed CFG steps (compilation)")
    parser.add_argument("--steps", type=int, default=3, help="timed CFG steps")
    parser.add_argument("--tiny", action="store_true",
                        help="the tiny model on CPU in float32 (checks that the script works)")
    parser.add_argument("--out", default=None, help="JSON results; the markdown goes beside it (default: "
                        "benchmarks/results/generate/generate.json, with --tiny generate_tiny.json)")
    args = parser.parse_args()

    if args.tiny:
        device, dtype = torch.device("cpu"), torch.float32
        shapes = {"tiny": TINY}
        configs = {"tiny": get_config("tiny")}
        modes = ["eager"]
    else:
        if not torch.cuda.is_available():
            parser.error("needs a GPU (or --tiny)")
        device, dtype = torch.device("cuda"), torch.bfloat16
        shapes = {m: SHAPES[m] for m in args.models}
        configs = {m: get_config(m) for m in args.models}
        modes = args.modes
    cases, decode = [], {}
    for name, (latent, vae_config) in shapes.items():
        decode[name] = vae_decode_seconds(vae_config, latent, device, dtype)
        for mode in modes:
            for attention in args.attention:
                r = run_case(name, configs[name], latent, attention == "sparse",
                             mode == "compiled", args.warmup, args.steps, device, dtype)
                r["sample_s"] = SAMPLE_STEPS * r["step_s"] + decode[name]
                print(json.dumps({k: v for k, v in r.items() if k != "step_s_all"}), flush=True)
                cases.append(r)
    report = {
        "device": device_name(device),
        "torch": torch.__version__, "dtype": str(dtype).removeprefix("torch."),
        "warmup_steps": args.warmup, "timed_steps": args.steps, "vae_decode_s": decode,
        "cases": cases,
    }
    report["targets"] = targets(cases)
    out = Path(args.out or results_dir("generate") / ("generate_tiny.json" if args.tiny else "generate.json"))
    write_report(out, report, markdown)
    print(markdown(report))


if __name__ == "__main__":
    main()
