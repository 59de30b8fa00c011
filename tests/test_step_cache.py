"""The opt-in first-block step cache (model.step_cache, runtime.step_cache): off is the sampler
as it was, threshold 0 gives the same latents, a large threshold skips steps, counts them and
is recorded as not exact."""

from __future__ import annotations

import pytest
import torch

from multishot.generate.config import GenerateConfig, GenModelConfig, RuntimeConfig, VideoConfig
from multishot.generate.generator import Generator
from multishot.generate.random_models import make_random_models
from multishot.generate.shots import resolve_request
from multishot.model.sampling import SamplingConfig, guided_velocity, make_scheduler
from multishot.model.settings import EncodersConfig
from multishot.model.step_cache import FirstBlockCache, apply_step_cache

PROMPT = "[global caption] a scene [per shot caption] a shot [shot cut] the shot"


@pytest.fixture(scope="module")
def random_models(tmp_path_factory) -> dict[str, str]:
    return make_random_models(tmp_path_factory.mktemp("random_models"))


def generator(random_models, cfg_batch: bool = True, **runtime) -> Generator:
    return Generator(GenerateConfig(
        model=GenModelConfig(name="tiny", checkpoint=random_models["dit"], attention_backend="sdpa"),
        encoders=EncodersConfig(vae=random_models["vae"], text_encoder=random_models["text_encoder"],
                                dtype="float32"),
        sampling=SamplingConfig(sampler="euler", steps=6, shift=5.0, cfg_scale=5.0,
                                cfg_batch=cfg_batch),
        video=VideoConfig(num_frames=17, height=32, width=48),
        runtime=RuntimeConfig(device="cpu", progress=False, **runtime)))


def plain_euler(gen: Generator, request) -> torch.Tensor:
    """The sampler written out step by step with every block run: what ``sample`` computed
    before the cache existed (CFG as one batch, Euler on the configured sigmas)."""
    cond = gen.conditioning(request)
    x = gen.noise(request)
    scheduler = make_scheduler(gen.config.sampling)
    model = gen.experts[0].model
    assert model.step_cache is None
    with torch.no_grad():
        for t in scheduler.timesteps:
            v = guided_velocity(model, x, t.reshape(1).float(), cond, 5.0, True)
            x = scheduler.step(v, t, x, return_dict=False)[0].float()
    return x


def test_off_threshold_zero_and_large(random_models):
    request = resolve_request(PROMPT, 17, None, seed=4)
    off = generator(random_models)
    exact = plain_euler(off, request)
    latents, trace = off.denoise(request)
    assert torch.equal(latents, exact) and trace.reused == [False] * 6

    zero = generator(random_models, step_cache=True, step_cache_threshold=0.0)
    latents, trace = zero.denoise(request)
    assert torch.equal(latents, exact) and not any(trace.reused)
    assert zero.experts[0].model.step_cache.computed == 6

    # a threshold no change reaches: after the first step every step reuses the first's residual
    large = generator(random_models, step_cache=True, step_cache_threshold=1e9)
    latents, trace = large.denoise(request)
    cache = large.experts[0].model.step_cache
    assert trace.reused == [False] + [True] * 5 and (cache.computed, cache.reused) == (1, 5)
    # not exact, and not claimed to be: the error against what the sampler moved the noise by
    moved = (exact - large.noise(request)).norm()
    error = ((latents - exact).norm() / moved).item()
    print(f"threshold 1e9: 5 of 6 steps skipped, error {error:.2e} of the sampler's change")
    assert error > 1e-4  # float32 noise of the same computation would be ~1e-7; exact is 0
    # a new sample starts afresh: nothing of the last one is reused
    _, trace = large.denoise(request)
    assert trace.reused[0] is False and cache.computed == 2


def test_generated_record_says_not_exact(random_models):
    gen = generator(random_models, step_cache=True, step_cache_threshold=1e9)
    out = gen.generate(resolve_request(PROMPT, 17, None, seed=1))
    assert out.info["step_cache"] == {"threshold": 1e9, "reused_steps": 5, "exact": False}
    assert out.info["vae_tiling"] is False
    assert generator(random_models).generate(
        resolve_request(PROMPT, 17, None, seed=1)).info["step_cache"] is None


def test_separate_cfg_passes_keep_their_own_state(random_models):
    """``cfg_batch: false``: the conditional and unconditional calls of a step each compare with
    their own previous call; with threshold 0 still exactly the uncached sampler."""
    request = resolve_request(PROMPT, 17, None, seed=2)
    plain, _ = generator(random_models, cfg_batch=False).denoise(request)
    gen = generator(random_models, cfg_batch=False, step_cache=True, step_cache_threshold=0.0)
    cached, _ = gen.denoise(request)
    assert torch.equal(plain, cached) and len(gen.experts[0].model.step_cache.slots) == 2


def test_the_reused_call_is_the_first_block_plus_the_cached_residual():
    blocks = [torch.nn.Linear(4, 4) for _ in range(3)]
    torch.manual_seed(0)
    x = torch.randn(1, 5, 4)
    cache = FirstBlockCache(threshold=10.0)
    run = lambda tokens: cache.run(blocks, tokens, lambda b, t: b(t))  # noqa: E731
    with torch.no_grad():
        full = blocks[2](blocks[1](blocks[0](x)))
        cache.new_step()
        assert torch.equal(run(x), full)
        y = x + 0.01 * torch.randn_like(x)
        cache.new_step()
        reused = run(y)
    assert cache.step_reused and (cache.computed, cache.reused) == (1, 1)
    assert torch.allclose(reused, blocks[0](y) + (full - blocks[0](x)))
    with pytest.raises(ValueError, match=">= 0"):
        FirstBlockCache(-0.1)
    model = torch.nn.Module()
    assert apply_step_cache(model, 0.05) is model.step_cache


def test_the_world_benchmark_reproduces_the_exact_sampler_at_threshold_0(tmp_path):
    """benchmarks/learn_step_cache.py on one world prompt through the product's Generator and the
    committed learn checkpoint: threshold 0 gives the exact row's latents bit for bit and no
    change; a threshold no change reaches skips every call after the first (24 of 25), moves
    the latents and is compared against the exact row."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "step_cache.json"
    result = subprocess.run([sys.executable, str(repo / "benchmarks/learn_step_cache.py"),
                             "--prompts", "1", "--thresholds", "0", "1e9", "--out", str(out)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert list(rows) == ["exact", "cache 0", "cache 1e+09"] and report["steps"] == 25
    zero, skip = rows["cache 0"], rows["cache 1e+09"]
    assert zero["latents_bit_identical"] == 1 and zero["reused"] == 0.0
    assert zero["sca_verdict"] == zero["caption_following_verdict"] == "no change"
    assert skip["reused"] == 24 / 25 and skip["latents_bit_identical"] == 0
    assert skip["latent_rel_l2_mean"] > 0
    for k in ("sca", "caption_following"):
        assert skip[f"{k}_change"] == skip[k] - rows["exact"][k]
    assert "| cache 1e+09 | 0.960 |" in out.with_suffix(".md").read_text()
