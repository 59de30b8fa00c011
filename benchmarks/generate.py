"""Generation benchmark: ours beside diffusers' Wan in one process, random weights.

Runs the sampler of ``multishot generate`` (:func:`model.sampling.sample`: CFG as one batch of
two, Euler on HoloCine's sigmas) at the real shapes, 241 frames at 480×832 cut into 6 shots
(HoloCine's example cuts [37, 73, 113, 169, 205]) on a 512-token context, bf16, random weights:

* ``5B``  (Wan2.2 TI2V-5B): latents [1, 48, 61, 30, 52], 23,790 tokens; Wan2.2 VAE
  (diffusers ``AutoencoderKLWan``, Wan2.2-TI2V-5B-Diffusers ``vae/config.json`` geometry);
* ``14B`` (one Wan2.2 A14B expert / HoloCine): latents [1, 16, 61, 60, 104], 95,160 tokens;
  Wan2.1 VAE (diffusers' default ``AutoencoderKLWan`` config).

The models, each with its blocks compiled the same way when ``--modes compiled`` (regional
``torch.compile`` of every block; the attention call of ours stays an eager island):

* ``ours sparse``: our ``WanModel``, sparse inter-shot self-attention, window cross-attention;
* ``ours dense``: the same with full self-attention;
* ``ours dense unmasked``: full self-attention and unmasked cross-attention: what the peer runs;
* ``diffusers dense``: diffusers' ``WanTransformer3DModel`` of the same shape (parameters in
  bf16 except its ``_keep_in_fp32_modules``, as ``from_pretrained(torch_dtype=bf16)`` loads it),
  called by the same sampler loop (text states zero-padded to 512 as ``WanPipeline`` pads
  them; one timestep per sample, or per token with ``--peer-timesteps per-token`` as
  ``WanPipeline`` runs Wan2.2-TI2V-5B, whose ``model_index.json`` sets ``expand_timesteps``).

Parts (``--parts``, all by default; each fits one 600 s command on one H100 at 5B):

* ``steps``: median seconds per CFG step (after warm-up steps that absorb the compilation),
  peak memory, and the ratios ours / diffusers;
* ``sample``: a whole warm sample, ``--sample-steps`` (50) steps + VAE decode, timed end to end:
  ours sparse with ``runtime.vae_tiling: auto`` (untiled when the GPU has room,
  :mod:`generate.vae_tiling`; the estimate is reported beside the measured peak) against
  diffusers dense with a tiled decode (what ``WanPipeline`` + ``vae.enable_tiling()`` does);
  the per-step figures of these two models come from these runs;
* ``exact``: every speed-up's final latents against today's path (``multishot generate``'s
  default: eager blocks, no cache), same seed, ``--check-steps`` steps, sparse:
  compiled blocks, CUDA graphs of the step (``runtime.step_graphs``, with its captures and
  replays), the step cache at threshold 0 (these claim exactness: relative L2 error
  <= :data:`TOLERANCE`), and the step cache at ``--cache-threshold`` (NOT exact: its error and
  skipped steps are reported, its quality cost is measured in the synthetic world).
  ``--graphs`` runs ours in the other parts through the CUDA graphs too.

``--profile``: instead, a ``torch.profiler`` kernel table of one CFG forward (30 blocks) of ours
dense (masked and unmasked cross-attention) and diffusers dense, written beside the JSON as
``<out>_profile_<model>.txt``: where the per-step gap comes from, kernel by kernel; and the
forward's wall time beside its kernels' total (``busy``): the share a CUDA graph of the step
could at most recover is ``1 − busy``.

    python benchmarks/generate.py --parts steps --out benchmarks/results/generate/generate_5b_steps_h100.json
    python benchmarks/generate.py --parts exact --out benchmarks/results/generate/generate_5b_exact_h100.json
    python benchmarks/generate.py --profile --out benchmarks/results/generate/generate_5b_profile_h100.json
    python benchmarks/generate.py --tiny       # CPU check: benchmarks/results/generate/generate_tiny.json

Targets (issue 35, one H100): ours dense <= diffusers dense per CFG step; a whole 5B sample
<= 45 s (sparse, exact), >= 1.6x faster than the diffusers dense pipeline; 14B sparse >= 1.9x
dense per step. JSON and a markdown table go to ``--out`` and ``--out`` with ``.md``.
"""

from __future__ import annotations

import argparse
import functools
import gc
import importlib.util
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from multishot.generate.graphs import GraphedDenoiser
from multishot.generate.vae_tiling import decode, untiled_peak_bytes
from multishot.model.config import WanConfig, get_config
from multishot.model.dit import WanModel
from multishot.model.layout import ShotLayout
from multishot.model.prompt_spans import TextSpans
from multishot.model.sampling import Conditioning, Expert, SamplingConfig, sample
from multishot.model.step_cache import apply_step_cache

from harness import device_name, rel_err, results_dir, sync, write_report

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
#: "exact within bf16 tolerance": relative L2 error of the final latents, ~2.5 bf16 ulps (2^-8)
TOLERANCE = 1e-2
#: targets of issue 35
TARGET_SAMPLE_S, TARGET_PEER_SPEEDUP, TARGET_SPARSE_SPEEDUP = 45.0, 1.6, 1.9
MODELS = ("ours sparse", "ours dense", "ours dense unmasked", "diffusers dense")


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


def import_diffusers():
    """``import diffusers``, with torchvision made importable first where it is installed but
    cannot load its operators (a CPU torch: :mod:`multishot.torchvision_cpu`); a GPU image
    without torchvision needs nothing."""
    if importlib.util.find_spec("torchvision") is not None:
        from multishot.torchvision_cpu import import_torchvision

        import_torchvision()
    import diffusers

    return diffusers


class PeerDiT(torch.nn.Module):
    """diffusers' ``WanTransformer3DModel`` behind our sampler's call ``(x [B, C, F, H, W],
    timestep [B], context [B, L, text_dim], layout, spans) → velocity``: the layout and spans
    are ignored (dense self-attention, unmasked cross-attention: all the peer has), the text
    zero-padded to ``text_len`` (``WanPipeline``'s ``max_sequence_length``), the timestep
    per sample or, ``per_token``, repeated over the tokens (``WanPipeline`` with
    ``expand_timesteps``)."""

    def __init__(self, transformer: torch.nn.Module, text_len: int, per_token: bool):
        super().__init__()
        self.transformer, self.text_len, self.per_token = transformer, text_len, per_token
        self.dtype = transformer.patch_embedding.weight.dtype

    def forward(self, x, timestep, context, layout=None, spans=None):
        context = F.pad(context.to(self.dtype), (0, 0, 0, self.text_len - context.shape[1]))
        if self.per_token:
            _, ph, pw = self.transformer.config.patch_size
            tokens = x.shape[2] * (x.shape[3] // ph) * (x.shape[4] // pw)
            timestep = timestep[:, None].expand(-1, tokens)
        return self.transformer(x.to(self.dtype), timestep, context, return_dict=False)[0]


def build_peer(config: WanConfig, compiled: bool, device: torch.device, dtype: torch.dtype,
               per_token: bool) -> PeerDiT:
    """diffusers' ``WanTransformer3DModel`` of ``config``'s shape, random weights (PyTorch's
    default initialisation), in ``dtype`` but for its ``_keep_in_fp32_modules``."""
    import_diffusers()
    from diffusers import WanTransformer3DModel

    with torch.device(device):
        model = WanTransformer3DModel(
            patch_size=tuple(config.patch_size), num_attention_heads=config.num_heads,
            attention_head_dim=config.head_dim, in_channels=config.in_channels,
            out_channels=config.out_channels, text_dim=config.text_dim,
            freq_dim=config.freq_dim, ffn_dim=config.ffn_dim, num_layers=config.num_layers,
            cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=config.eps)
    keep = set(model._keep_in_fp32_modules or [])
    for name, param in model.named_parameters():
        if not keep.intersection(name.split(".")):
            param.data = param.data.to(dtype)
    if compiled:
        for block in model.blocks:
            block.compile()
    return PeerDiT(model.eval().requires_grad_(False), config.text_len, per_token)


def make_model(name: str, config: WanConfig, compiled: bool, device, dtype, per_token: bool,
               graphs: bool = False):
    """One of :data:`MODELS` (ours through :class:`GraphedDenoiser` with ``graphs``), and
    whether it runs window cross-attention."""
    if name == "diffusers dense":
        return build_peer(config, compiled, device, dtype, per_token), False
    model = build(config, name == "ours sparse", compiled, device, dtype)
    return GraphedDenoiser(model) if graphs else model, name != "ours dense unmasked"


def make_inputs(config: WanConfig, latent: tuple, device: torch.device,
                window: bool) -> tuple[torch.Tensor, Conditioning]:
    """The noise ``[1, *latent]`` and conditioning (random text states, the shot layout, caption
    windows when ``window``), the same for every model (seed 0)."""
    c, f, h, w = latent
    _, ph, pw = config.patch_size
    frames = (f - 1) * 4 + 1
    cuts = CUTS if frames == FRAMES else [frames // 2 // 4 * 4 + 1]
    layout = ShotLayout.from_cut_frames(frames, cuts, (h // ph) * (w // pw), device)
    generator = torch.Generator("cpu").manual_seed(0)
    cond = Conditioning(
        torch.randn(config.text_len, config.text_dim, generator=generator).to(device),
        torch.randn(config.text_len // 4, config.text_dim, generator=generator).to(device),
        layout, synthetic_spans(len(layout.shot_starts[0]), config.text_len) if window else None)
    noise = torch.randn(1, c, f, h, w, generator=generator).to(device)
    return noise, cond


def run(model, noise, cond, steps: int) -> tuple[torch.Tensor, list[float], list[bool]]:
    """``steps`` Euler steps of the real sampler; the final latents, step seconds, reused."""
    sampling = SamplingConfig(sampler="euler", steps=steps, shift=5.0, cfg_scale=5.0)
    with torch.no_grad():
        latents, trace = sample([Expert(model, 5.0)], noise, cond, sampling)
    return latents, trace.step_seconds, trace.reused


def reset_peak(device: torch.device) -> None:
    """Free what the last case left (its model) and restart the peak-memory count."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def make_vae(vae_config: dict, device: torch.device, dtype: torch.dtype):
    """A random-weight diffusers ``AutoencoderKLWan`` of ``vae_config`` on ``device``."""
    import_diffusers()
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(**vae_config).to(device, dtype).eval()


def timed_decode(vae, latents, device, dtype, setting) -> dict:
    """One decode of ``latents`` with ``runtime.vae_tiling: setting``: seconds, the decision,
    the measured peak and the untiled estimate."""
    cfg = vae.config
    _, _, f, h, w = latents.shape
    estimate = untiled_peak_bytes(cfg, (f - 1) * cfg.scale_factor_temporal + 1,
                                  h * cfg.scale_factor_spatial, w * cfg.scale_factor_spatial, dtype)
    reset_peak(device)
    sync(device)
    start = time.perf_counter()
    _, info = decode(vae, latents, device, dtype, setting)
    sync(device)
    return {"decode_s": time.perf_counter() - start, **info, "decode_peak_gib": peak_gib(device),
            "untiled_estimate_gib": estimate / 2**30}


def model_case(name: str, config: WanConfig, latent: tuple, vae, mode: str, args,
               device, dtype, whole: bool) -> dict:
    """Per-step seconds of one model; with ``whole``, a timed warm sample of
    ``--sample-steps`` steps + the VAE decode (ours: ``auto`` tiling; diffusers: tiled)."""
    reset_peak(device)
    model, window = make_model(name, config, mode == "compiled", device, dtype,
                               args.peer_timesteps == "per-token", args.graphs)
    noise, cond = make_inputs(config, latent, device, window)
    _, warm, _ = run(model, noise, cond, args.warmup)  # compiles
    result = {"model": name, "mode": mode, "tokens": cond.layout.seq_len,
              "shots": len(cond.layout.shot_starts[0]), "latent_shape": list(noise.shape),
              "warmup_step_s": warm}
    if whole:
        sync(device)
        start = time.perf_counter()
        latents, seconds, _ = run(model, noise, cond, args.sample_steps)
        sync(device)
        sampling_s = time.perf_counter() - start
        result["peak_memory_gib"] = peak_gib(device)
        # the DiT stays on the GPU meanwhile, as in `multishot generate`
        d = timed_decode(vae, latents, device, dtype, True if name == "diffusers dense" else "auto")
        result.update(sample_steps=args.sample_steps, sampling_s=sampling_s,
                      sample_s=sampling_s + d["decode_s"], **d)
    else:
        _, seconds, _ = run(model, noise, cond, args.steps)
        result["peak_memory_gib"] = peak_gib(device)
    result.update(step_s=statistics.median(seconds), step_s_all=seconds)
    print(json.dumps({k: v for k, v in result.items() if k != "step_s_all"}), flush=True)
    return result


def exactness(config: WanConfig, latent: tuple, args, device, dtype) -> list[dict]:
    """Final latents of each speed-up against today's path (eager blocks, no cache), sparse,
    ``--check-steps`` steps, the same seed."""
    model = build(config, True, False, device, dtype)
    noise, cond = make_inputs(config, latent, device, True)
    reference, ref_s, _ = run(model, noise, cond, args.check_steps)
    rows = [{"speed_up": "none (today's path: eager blocks)", "claims_exact": True,
             "rel_err": 0.0, "reused_steps": 0, "median_step_s": statistics.median(ref_s)}]

    def check(label: str, claims_exact: bool, runner: torch.nn.Module = model) -> None:
        if args.mode == "compiled":
            run(runner, noise, cond, args.warmup)  # compiles
        latents, seconds, reused = run(runner, noise, cond, args.check_steps)
        err = rel_err(latents, reference)
        row = {"speed_up": label, "claims_exact": claims_exact, "rel_err": err,
               "reused_steps": sum(reused), "median_step_s": statistics.median(seconds)}
        if isinstance(runner, GraphedDenoiser):
            row.update(graph_captures=runner.captures, graph_replays=runner.replays)
        row["verdict"] = ("exact within tolerance" if err <= TOLERANCE else "NOT within tolerance") \
            if claims_exact else "not exact (quality cost: the synthetic world, issue J)"
        print(json.dumps(row), flush=True)
        rows.append(row)

    if args.mode == "compiled":
        from multishot.model.compile import apply_compile

        apply_compile(model)
        check("compiled blocks", True)
    prefix = "compiled blocks + " if args.mode == "compiled" else ""
    check(prefix + "CUDA graphs of the step", True, GraphedDenoiser(model))
    apply_step_cache(model, 0.0)
    check(prefix + "step cache, threshold 0", True)
    apply_step_cache(model, args.cache_threshold)
    check(prefix + f"step cache, threshold {args.cache_threshold}", False)
    return rows


def profile(config: WanConfig, latent: tuple, args, device, dtype, out: Path) -> list[dict]:
    """A ``torch.profiler`` table of one CFG forward of ours dense (masked, unmasked) and
    diffusers dense: ``<out stem>_profile_<model>.txt``; per model the total and the top kernels."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    from multishot.model.sampling import guided_velocity

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    rows = []
    for name in ("ours dense", "ours dense unmasked", "diffusers dense"):
        reset_peak(device)
        model, window = make_model(name, config, args.mode == "compiled", device, dtype,
                                   args.peer_timesteps == "per-token")
        noise, cond = make_inputs(config, latent, device, window)
        t = torch.full((1,), 500.0, device=device)
        batch = cond.batch_of_two()
        step = functools.partial(guided_velocity, model, noise, t, cond, 5.0, True, batch)
        with torch.no_grad():
            for _ in range(max(args.warmup, 1)):
                step()
            walls = []
            for _ in range(3):
                sync(device)
                start = time.perf_counter()
                step()
                sync(device)
                walls.append(time.perf_counter() - start)
            with torch_profile(activities=activities) as prof:
                step()
                sync(device)
        events = prof.key_averages()
        table = events.table(sort_by=key, row_limit=40)
        path = out.with_name(f"{out.stem}_profile_{name.replace(' ', '_')}.txt")
        path.write_text(f"# {name}, {args.mode}, one CFG forward, {device_name(device)}\n{table}\n")
        top = sorted(events, key=lambda e: getattr(e, key), reverse=True)[:15]
        total = sum(getattr(e, key) for e in events if not e.key.startswith("ProfilerStep"))
        wall = statistics.median(walls) * 1e3
        rows.append({"model": name, "table": path.name, "wall_ms": wall,
                     "self_time_total_ms": total / 1e3,
                     "busy": total / 1e3 / wall if cuda else None,  # CPU ops overlap threads
                     "top": [{"name": e.key[:120], "calls": e.count,
                              "self_ms": getattr(e, key) / 1e3} for e in top]})
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "top"}), flush=True)
        del model, step
    return rows


def ratios(cases: list[dict]) -> dict:
    """Per-step and whole-sample ratios (> 1: the first is slower) within one model shape."""
    step = {c["model"]: c["step_s"] for c in cases}
    out = {}
    for a, b in (("ours dense", "diffusers dense"), ("ours dense unmasked", "diffusers dense"),
                 ("ours sparse", "diffusers dense"), ("ours dense", "ours sparse")):
        if a in step and b in step:
            out[f"{a} / {b}, per step"] = step[a] / step[b]
    whole = {c["model"]: c["sample_s"] for c in cases if "sample_s" in c}
    if len(whole) == 2:
        out["diffusers dense / ours sparse, whole sample"] = \
            whole["diffusers dense"] / whole["ours sparse"]
    return out


def targets(report: dict) -> dict:
    """Where the results stand against issue 35's targets."""
    out = {}
    for shape, r in report["ratios"].items():
        x = r.get("ours dense / diffusers dense, per step")
        if x is not None:
            out[f"{shape}: ours dense <= diffusers dense per step"] = \
                f"{x:.3f}x: {'met' if x <= 1 else 'not met'}"
        x = r.get("ours dense / ours sparse, per step")
        if x is not None and shape == "14B":
            out["14B sparse >= 1.9x dense per step"] = \
                f"{x:.2f}x: {'met' if x >= TARGET_SPARSE_SPEEDUP else 'not met'}"
        x = r.get("diffusers dense / ours sparse, whole sample")
        if x is not None:
            out[f"{shape}: whole sample >= 1.6x faster than diffusers dense"] = \
                f"{x:.2f}x: {'met' if x >= TARGET_PEER_SPEEDUP else 'not met'}"
    for c in report["cases"]:
        if c["model"] == "ours sparse" and "sample_s" in c and c["shape"] == "5B":
            out["5B sample <= 45 s (sparse)"] = (f"{c['sample_s']:.1f} s: "
                                                 f"{'met' if c['sample_s'] <= TARGET_SAMPLE_S else 'not met'}")
    if report["exact"]:
        bad = [r["speed_up"] for r in report["exact"] if r["claims_exact"]
               and r["rel_err"] > TOLERANCE]
        out[f"exact speed-ups within {TOLERANCE} (relative L2, final latents)"] = \
            "met" if not bad else "not met: " + ", ".join(bad)
    return out


def markdown(report: dict) -> str:
    """The results as markdown tables plus the targets."""
    lines = [f"# Generation benchmark ({report['device']})", "",
             f"Ours beside diffusers {report['diffusers']} in one process: CFG as a batch of two, "
             f"{report['dtype']}, random weights, torch {report['torch']}, blocks {report['mode']}; "
             f"{report['warmup_steps']} warm-up steps; ours with CUDA graphs of the step: "
             f"{report['step_graphs']}; the diffusers model gets "
             f"{report['peer_timesteps']} timesteps.", ""]
    if report["cases"]:
        lines += ["| shape | model | tokens | s / CFG step | peak GiB | whole sample, s | decode |",
                  "|---|---|---|---|---|---|---|"]
        for r in report["cases"]:
            peak = "" if r["peak_memory_gib"] is None else f"{r['peak_memory_gib']:.1f}"
            whole = decode = ""
            if "sample_s" in r:
                whole = f"{r['sample_s']:.1f} ({r['sample_steps']} steps {r['sampling_s']:.1f} + decode)"
                dpeak = "" if r["decode_peak_gib"] is None else \
                    f", peak {r['decode_peak_gib']:.1f} GiB (untiled estimate {r['untiled_estimate_gib']:.1f})"
                decode = (f"{'tiled' if r['vae_tiling'] else 'untiled'} {r['decode_s']:.1f} s{dpeak}: "
                          f"{r['vae_tiling_reason']}")
            lines.append(f"| {r['shape']} | {r['model']} | {r['tokens']} | {r['step_s']:.3f} | "
                         f"{peak} | {whole} | {decode} |")
        for shape, rs in report["ratios"].items():
            lines += ["", f"Ratios at {shape}: " + "; ".join(f"{k} {v:.3f}" for k, v in rs.items())]
    if report["exact"]:
        lines += ["", f"Exactness ({report['check_steps']} steps, sparse, seed 0; tolerance "
                  f"{TOLERANCE} relative L2 of the final latents vs today's path):", "",
                  "| speed-up | claims exact | rel. error | steps reused | s / step | verdict |",
                  "|---|---|---|---|---|---|"]
        for r in report["exact"]:
            graphs = f" ({r['graph_captures']} captures, {r['graph_replays']} replays)" \
                if "graph_replays" in r else ""
            lines.append(f"| {r['speed_up']}{graphs} | {r['claims_exact']} | {r['rel_err']:.2e} | "
                         f"{r['reused_steps']} | {r['median_step_s']:.3f} | {r.get('verdict', 'reference')} |")
    if report["profile"]:
        lines += ["", "Profile of one CFG forward (self time, all kernels; tables beside this file):", ""]
        for r in report["profile"]:
            top = "; ".join(f"{t['name'][:60]} {t['self_ms']:.1f} ms" for t in r["top"][:5])
            busy = "" if r["busy"] is None else f"busy {r['busy']:.0%}; "
            lines.append(f"- {r['model']}: {r['self_time_total_ms']:.1f} ms of kernels in "
                         f"{r['wall_ms']:.1f} ms wall ({busy}{r['table']}); top: {top}")
    lines.append("")
    for name, t in report["targets"].items():
        lines.append(f"- {name}: {t}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["5B"], choices=list(SHAPES))
    parser.add_argument("--parts", nargs="+", default=["steps", "sample", "exact"],
                        choices=["steps", "sample", "exact"])
    parser.add_argument("--compare", nargs="+", default=list(MODELS), choices=MODELS,
                        help="models of the steps part")
    parser.add_argument("--mode", default="compiled", choices=["eager", "compiled"])
    parser.add_argument("--profile", action="store_true",
                        help="only the kernel tables of one CFG forward (ours dense vs diffusers)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed CFG steps (compilation)")
    parser.add_argument("--steps", type=int, default=3, help="timed CFG steps (steps part)")
    parser.add_argument("--sample-steps", type=int, default=50, help="steps of a whole sample")
    parser.add_argument("--check-steps", type=int, default=20, help="steps of the exactness check")
    parser.add_argument("--cache-threshold", type=float, default=0.05,
                        help="the step cache's threshold in the exactness check")
    parser.add_argument("--graphs", action="store_true", help="steps and sample parts: ours "
                        "with CUDA graphs of the step (runtime.step_graphs)")
    parser.add_argument("--peer-timesteps", default="per-sample", choices=["per-sample", "per-token"])
    parser.add_argument("--tiny", action="store_true",
                        help="the tiny model on CPU in float32 (checks that the script works)")
    parser.add_argument("--out", default=None, help="JSON results; the markdown goes beside it (default: "
                        "benchmarks/results/generate/generate.json, with --tiny generate_tiny.json)")
    args = parser.parse_args()

    if args.tiny:
        device, dtype = torch.device("cpu"), torch.float32
        shapes, configs = {"tiny": TINY}, {"tiny": get_config("tiny")}
    else:
        if not torch.cuda.is_available():
            parser.error("needs a GPU (or --tiny)")
        device, dtype = torch.device("cuda"), torch.bfloat16
        shapes = {m: SHAPES[m] for m in args.models}
        configs = {m: get_config(m) for m in args.models}
    out = Path(args.out or results_dir("generate") / ("generate_tiny.json" if args.tiny else "generate.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"device": device_name(device), "torch": torch.__version__,
              "diffusers": import_diffusers().__version__, "dtype": str(dtype).removeprefix("torch."),
              "mode": args.mode, "warmup_steps": args.warmup, "timed_steps": args.steps,
              "check_steps": args.check_steps, "peer_timesteps": args.peer_timesteps,
              "step_graphs": args.graphs,
              "cases": [], "ratios": {}, "exact": [], "profile": []}
    for shape, (latent, vae_config) in shapes.items():
        config = configs[shape]
        if args.profile:
            report["profile"] += profile(config, latent, args, device, dtype, out)
            continue
        cases = []
        vae = make_vae(vae_config, device, dtype) if "sample" in args.parts else None
        for name in MODELS:
            whole = "sample" in args.parts and name in ("ours sparse", "diffusers dense")
            if whole or ("steps" in args.parts and name in args.compare):
                cases.append({"shape": shape, **model_case(name, config, latent, vae, args.mode,
                                                           args, device, dtype, whole)})
        del vae
        report["cases"] += cases
        report["ratios"][shape] = ratios(cases)
        if "exact" in args.parts:
            report["exact"] += exactness(config, latent, args, device, dtype)
    report["targets"] = targets(report)
    write_report(out, report, markdown)
    print(markdown(report))


if __name__ == "__main__":
    main()
