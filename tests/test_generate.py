"""`multishot generate` on small random models saved to a temp dir and loaded by the real code:
the mp4 and its JSON, determinism, CFG, the Euler schedule against HoloCine's formula, the A14B
expert switch, and the whole sampler against diffusers' WanPipeline on the same weights."""

from __future__ import annotations

import json

import av
import pytest
import torch

from multishot.cli import main as multishot_main
from multishot.generate.config import GenerateConfig, GenModelConfig, RuntimeConfig, VideoConfig
from multishot.generate.generator import Generator
from multishot.generate.random_models import make_random_models
from multishot.model.sampling import SamplingConfig, guided_velocity, make_scheduler
from multishot.generate.shots import even_cut_frames, resolve_request
from multishot.model.settings import EncodersConfig

PROMPT = "[global caption] a scene [per shot caption] a shot [shot cut] the shot [shot cut] a video"


@pytest.fixture(scope="session")
def random_models(tmp_path_factory) -> dict[str, str]:
    return make_random_models(tmp_path_factory.mktemp("random_models"))


def config(random_models, **sections) -> GenerateConfig:
    """A CPU config on the random models; ``sections`` update model / sampling / video."""
    model = dict(name="tiny", checkpoint=random_models["dit"], attention_backend="sdpa")
    model.update(sections.get("model", {}))
    sampling = dict(sampler="euler", steps=3, shift=5.0, cfg_scale=5.0)
    sampling.update(sections.get("sampling", {}))
    video = dict(num_frames=17, height=32, width=48)
    video.update(sections.get("video", {}))
    return GenerateConfig(
        model=GenModelConfig(**model),
        encoders=EncodersConfig(vae=random_models["vae"], text_encoder=random_models["text_encoder"],
                                dtype="float32"),
        sampling=SamplingConfig(**sampling), video=VideoConfig(**video),
        runtime=RuntimeConfig(device="cpu", progress=False))


def test_tiny_cpu_config_writes_mp4_and_json(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)  # random_weights: out/random_models is relative to the run

    out = tmp_path / "gen" / "scene.mp4"
    config = __import__("pathlib").Path(__file__).parents[1] / "configs/generate/tiny_cpu.yaml"
    with caplog.at_level("WARNING"):
        assert multishot_main(["generate", "--config", str(config), "--prompt", PROMPT,
                               "--cut-frames", "5,13", "--seed", "3", "-o", str(out)]) == 0
    assert "RANDOM weights" in caplog.text
    with av.open(str(out)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        rate = container.streams.video[0].average_rate
    assert len(frames) == 17 and frames[0].shape == (64, 64, 3) and rate == 16
    info = json.loads(out.with_suffix(".json").read_text())
    assert info["cut_frames"] == [5, 13] and info["latent_shot_starts"] == [0, 2, 4]
    assert (info["seed"], info["steps"], info["sampler"], info["shift"]) == (3, 4, "euler", 5.0)
    assert info["cfg_scale"] == {"high_noise": 5.0, "low_noise": 3.0}
    assert info["random_weights"] is True and len(info["checkpoints"]) == 2
    assert all(len(h) == 64 for h in info["checkpoints"].values())
    assert info["seconds_per_step"] > 0 and info["peak_memory_gib"] > 0


def test_shot_count_must_match_cut_frames(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="the prompt has 3 shots .* 1 cut frames give 2"):
        resolve_request(PROMPT, 17, [5])
    with pytest.raises(ValueError, match="not of the form 4t\\+1"):
        resolve_request(PROMPT, 17, [6, 13])
    # HoloCine's even spread (prepare_multishot_inputs): 241 frames, 5 shots
    assert even_cut_frames(241, 5) == [49, 97, 145, 193]
    assert resolve_request(PROMPT, 17).cut_frames == even_cut_frames(17, 3) == [5, 9]  # round(11.33) = 11 → 4t+1 tie → 9


def test_same_seed_same_latents_and_cfg_batch_equals_two_passes(random_models):
    gen = Generator(config(random_models))
    request = resolve_request(PROMPT, 17, None, seed=7)
    a, trace = gen.denoise(request)
    b, _ = gen.denoise(request)
    assert torch.equal(a, b) and len(trace.step_seconds) == 3
    other, _ = gen.denoise(resolve_request(PROMPT, 17, None, seed=8))
    assert not torch.allclose(a, other)
    sequential = Generator(config(random_models, sampling={"cfg_batch": False}))
    c, _ = sequential.denoise(request)
    torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-5)


def test_cfg_scale_one_is_the_conditional_prediction(random_models):
    gen = Generator(config(random_models, sampling={"cfg_scale": 1.0, "steps": 1}))
    request = resolve_request(PROMPT, 17, None, seed=1)
    cond = gen.conditioning(request)
    noise = gen.noise(request)
    model = gen.experts[0].model
    t = torch.tensor([1000.0])
    with torch.no_grad():
        v_c = model(noise, t, cond.context[None], cond.layout, [cond.spans])
        v_u = model(noise, t, cond.negative_context[None], cond.layout, None)
        assert torch.equal(guided_velocity(model, noise, t, cond, 1.0, True), v_c)
        torch.testing.assert_close(guided_velocity(model, noise, t, cond, 4.0, True),
                                   v_u + 4.0 * (v_c - v_u), rtol=1e-5, atol=1e-6)
        assert not torch.allclose(v_c, v_u)  # the guidance would have had something to do
        # one Euler step from σ=1 to σ=0 with scale 1: x0 = ε + (0 − 1)·v_c
        latents, _ = gen.denoise(request)
    torch.testing.assert_close(latents, noise - v_c, rtol=1e-5, atol=1e-6)


def test_euler_sigmas_and_update_equal_holocine_formula():
    shift, steps = 5.0, 50
    scheduler = make_scheduler(SamplingConfig(sampler="euler", steps=steps, shift=shift))
    # DiffSynth FlowMatchScheduler(shift=5, sigma_min=0, extra_one_step=True).set_timesteps(50)
    s = torch.linspace(1, 0, steps + 1, dtype=torch.float64)[:-1]
    sigmas = shift * s / (1 + (shift - 1) * s)
    torch.testing.assert_close(scheduler.sigmas[:-1].double(), sigmas, rtol=1e-6, atol=1e-7)
    assert scheduler.sigmas[-1] == 0 and len(scheduler.timesteps) == steps
    torch.testing.assert_close(scheduler.timesteps.double(), sigmas * 1000, rtol=1e-6, atol=1e-4)
    # one update: x_{i+1} = x_i + (σ_{i+1} − σ_i)·v (DiffSynth FlowMatchScheduler.step)
    x, v = torch.randn(1, 4, 2, 3, 3), torch.randn(1, 4, 2, 3, 3)
    out = scheduler.step(v, scheduler.timesteps[0], x, return_dict=False)[0]
    torch.testing.assert_close(out, x + float(sigmas[1] - sigmas[0]) * v)


def test_a14b_switches_experts_at_the_boundary(random_models):
    gen = Generator(config(random_models, model={"low_noise_checkpoint": random_models["low_noise_dit"]},
                           sampling={"steps": 8, "cfg_scale": 4.0, "cfg_scale_low_noise": 3.0}))
    calls = {"high_noise": [], "low_noise": []}
    for expert in gen.experts:
        expert.model.register_forward_hook(
            lambda m, args, out, name=expert.name: calls[name].append(float(args[1][0])))
    _, trace = gen.denoise(resolve_request(PROMPT, 17, None))
    high = [t for t in trace.timesteps if t >= 875]
    assert 0 < len(high) < 8  # the schedule crosses the boundary
    assert calls["high_noise"] == high and calls["low_noise"] == [t for t in trace.timesteps if t < 875]
    assert trace.experts == ["high_noise"] * len(high) + ["low_noise"] * (8 - len(high))
    assert [e.cfg_scale for e in gen.experts] == [4.0, 3.0]


@pytest.mark.parametrize("a14b", [False, True], ids=["one_dit", "a14b"])
def test_equals_diffusers_wan_pipeline(tmp_path, random_models, a14b):
    """One shot and full self-attention, no caption windows: our whole sampler (noise, CFG,
    UniPC, expert switch) against diffusers' WanPipeline on the same diffusers-format weights.

    By design the peer comparison needs: ``sparse_self_attention: false`` (with one shot our
    sparse pattern still repeats the shot's first latent frame in the keys, as HoloCine's does),
    no window cross-attention (diffusers has none), and the prompt embeddings zero-padded to
    the text length, which Wan's DiT does itself and WanPipeline's encode_prompt does too."""
    from multishot.torchvision_cpu import import_torchvision

    import_torchvision()
    from diffusers import AutoencoderKLWan, WanPipeline, WanTransformer3DModel

    dits = []
    for i in range(2 if a14b else 1):
        torch.manual_seed(10 + i)
        dit = WanTransformer3DModel(num_attention_heads=2, attention_head_dim=32, text_dim=32,
                                    freq_dim=32, ffn_dim=128, num_layers=2)
        dit.save_pretrained(tmp_path / f"dit{i}")
        dits.append(dit.eval())
    sampling = {"sampler": "unipc", "steps": 4, "shift": 5.0, "cfg_scale": 4.0,
                "cfg_scale_low_noise": 2.5 if a14b else None}
    model = {"checkpoint": str(tmp_path / "dit0"), "sparse_self_attention": False,
             "window_cross_attention": False,
             "low_noise_checkpoint": str(tmp_path / "dit1") if a14b else None}
    gen = Generator(config(random_models, model=model, sampling=sampling,
                           video={"num_frames": 9, "height": 32, "width": 32}))
    request = resolve_request("a scene", 9, None, seed=5)
    ours, trace = gen.denoise(request)
    assert len(request.cut_frames) == 0 and trace.experts[-1] == ("low_noise" if a14b else "dit")

    context, negative = gen.encode(request.prompt)
    pad = lambda c: torch.nn.functional.pad(c, (0, 0, 0, 16 - c.shape[0]))[None]  # noqa: E731
    pipe = WanPipeline(tokenizer=None, text_encoder=None,
                       vae=AutoencoderKLWan.from_pretrained(random_models["vae"]),
                       transformer=dits[0], transformer_2=dits[1] if a14b else None,
                       scheduler=make_scheduler(gen.config.sampling),
                       boundary_ratio=0.875 if a14b else None)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(prompt_embeds=pad(context), negative_prompt_embeds=pad(negative), height=32,
                  width=32, num_frames=9, num_inference_steps=4, guidance_scale=4.0,
                  guidance_scale_2=2.5 if a14b else None,
                  generator=torch.Generator("cpu").manual_seed(5), output_type="latent").frames
    assert theirs.shape == ours.shape
    rel = (ours - theirs).norm() / theirs.norm()
    print(f"final latents vs WanPipeline: relative error {rel:.2e}")
    assert rel < 1e-4, f"relative error {rel:.2e}"


def test_benchmark_script_runs_tiny_on_cpu(tmp_path):
    """benchmarks/generate.py --tiny: every part (ours and diffusers' WanTransformer3DModel per
    step, whole samples with their decodes, the exactness check) and the --profile mode."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "bench.json"
    script = [sys.executable, str(repo / "benchmarks/generate.py"), "--tiny", "--mode", "eager",
              "--warmup", "1", "--out", str(out)]
    result = subprocess.run(script + ["--steps", "1", "--sample-steps", "2", "--check-steps", "2"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    cases = {c["model"]: c for c in report["cases"]}
    assert list(cases) == ["ours sparse", "ours dense", "ours dense unmasked", "diffusers dense"]
    assert all(c["step_s"] > 0 for c in cases.values())
    for name, tiled in (("ours sparse", False), ("diffusers dense", True)):  # CPU auto: untiled
        c = cases[name]
        assert c["sample_s"] > c["sampling_s"] > 0 and c["vae_tiling"] is tiled
        assert len(c["step_s_all"]) == c["sample_steps"] == 2
    assert "ours dense / diffusers dense, per step" in report["ratios"]["tiny"]
    exact = {r["speed_up"]: r for r in report["exact"]}
    assert exact["step cache, threshold 0"]["rel_err"] == 0.0
    assert exact["step cache, threshold 0.05"]["claims_exact"] is False
    assert "| tiny | diffusers dense | 12 |" in out.with_suffix(".md").read_text()

    result = subprocess.run(script + ["--profile"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    profiles = json.loads(out.read_text())["profile"]
    assert [p["model"] for p in profiles] == ["ours dense", "ours dense unmasked", "diffusers dense"]
    for p in profiles:
        assert p["self_time_total_ms"] > 0 and "aten::" in (tmp_path / p["table"]).read_text()


def test_prompt_past_the_text_length_falls_back_to_unmasked_cross_attention(random_models):
    gen = Generator(config(random_models))
    long = ("[global caption] a scene of the video [per shot caption] a shot of the scene "
            "[shot cut] the shot of a video [shot cut] a video")  # > 16 tokens: shot 3 cut off
    request = resolve_request(long, 17, None)
    cond = gen.conditioning(request)
    assert cond.spans.global_span is None  # HoloCine's inference: no window mask
    assert "3 shots but only" in request.extra["unmasked_cross_attention"]
    assert gen.conditioning(resolve_request(PROMPT, 17, None)).spans.num_shots == 3


def test_from_shards_recreates_captioned_samples(tmp_path, monkeypatch, train_footage_shards):
    from pathlib import Path

    monkeypatch.chdir(tmp_path)
    config = Path(__file__).parents[1] / "configs/generate/tiny_cpu.yaml"
    out = tmp_path / "gen"
    assert multishot_main(["generate", "--config", str(config), "--from-shards",
                           train_footage_shards["clean"], "--limit", "2", "-o", str(out)]) == 0
    # clip00 (shots of 17 + 16 frames) and clip02 (9 + 24) are the first captioned samples
    assert sorted(p.name for p in out.glob("*.mp4")) == ["clip00.mp4", "clip02.mp4"]
    info = json.loads((out / "clip02.json").read_text())
    assert info["num_frames"] == 33 and info["cut_frames"] == [9] == info["source_cut_frames"]
    assert info["prompt"].startswith("[global caption] Blender films")
    with av.open(str(out / "clip00.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 33


def test_bf16_load_keeps_the_time_embedding_float32(random_models):
    from multishot.model.checkpoint import load_dit

    model = load_dit("tiny", random_models["dit"], torch.device("cpu"), torch.bfloat16)
    assert model.blocks[0].self_attn.q.weight.dtype == torch.bfloat16
    assert {p.dtype for p in model.time_embedding.parameters()} == {torch.float32}
    assert {p.dtype for p in model.time_projection.parameters()} == {torch.float32}
    reference = load_dit("tiny", random_models["dit"], torch.device("cpu"), torch.float32)
    torch.testing.assert_close(model.time_projection[1].weight, reference.time_projection[1].weight,
                               rtol=0, atol=0)  # loaded without a round trip through bf16
    x, t, ctx = torch.randn(1, 16, 2, 4, 4), torch.tensor([500.0]), torch.randn(1, 5, 32)
    with torch.no_grad():
        ours, ref = model(x, t, ctx).float(), reference(x, t, ctx)
    assert ref.abs().max() > 0 and (ours - ref).norm() / ref.norm() < 0.02  # bf16 blocks only


def test_lora_file_merges_into_the_dit_at_its_scale(tmp_path, random_models):
    """``multishot generate --lora F --lora-scale S``: scale 0 leaves the latents of the base;
    a nonzero scale changes them, and equals merging W + S·B·A into the checkpoint by hand."""
    from safetensors.torch import load_file, save_file

    from multishot.model.lora import LoraConfig, save_adapter

    torch.manual_seed(0)
    base = load_file(random_models["dit"])
    adapter, merged = {}, dict(base)
    for module in ("blocks.0.self_attn.q", "blocks.1.ffn.2"):
        w = base[f"{module}.weight"]
        a, b = torch.randn(2, w.shape[1]) * 0.1, torch.randn(w.shape[0], 2) * 0.1
        adapter[f"diffusion_model.{module}.lora_A.weight"] = a
        adapter[f"diffusion_model.{module}.lora_B.weight"] = b
        merged[f"{module}.weight"] = w + 0.5 * (b @ a)
    lora = save_adapter(adapter, tmp_path / "lora.safetensors", LoraConfig(rank=2))
    save_file(merged, str(tmp_path / "merged.safetensors"))
    request = resolve_request(PROMPT, 17, None, seed=3)
    plain, _ = Generator(config(random_models)).denoise(request)
    off, _ = Generator(config(random_models), str(lora), 0.0).denoise(request)
    half, _ = Generator(config(random_models), str(lora), 0.5).denoise(request)
    by_hand, _ = Generator(config(random_models, model={"checkpoint": str(tmp_path / "merged.safetensors")})
                           ).denoise(request)
    assert torch.equal(plain, off)
    assert not torch.allclose(plain, half, atol=1e-4)
    torch.testing.assert_close(half, by_hand, rtol=1e-5, atol=1e-6)
