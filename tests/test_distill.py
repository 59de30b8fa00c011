"""Distillation (ODE init + DMD, CausalCine §3.4) on small random models on CPU.

The student (causal base) and the teacher (the causal base that scores by teacher forcing; a
different random model here, so that the DMD gradient is not zero) are tiny random DiTs saved as
safetensors and loaded by the real loading code (``model.init_from``: FSDP2 over one gloo
rank); prompts go through a tiny random UMT5; the ground-truth footage is a shard set cut from
the real footage (two good samples, two corrupt ones), encoded by a tiny random Wan VAE.
Checks: a generator step moves only the student (teacher and critic bit-identical, GAN head on,
its real videos the footage); the critic's flow-matching loss falls on fixed data; the ODE
trajectories and the regression are conditioned on the encoded ground truth; the ODE
regression fits a fixed trajectory set; the student's training rollout equals
``generate --causal``'s streamer chunk by chunk, and a prompt change reaches only the chunks
from its cut on.
"""

from __future__ import annotations

import socket

import pytest
import torch

from multishot.config import load_config
from multishot.distill import dmd
from multishot.distill.config import DistillConfig
from multishot.distill.rollout import rollout
from multishot.model.checkpoint import save_safetensors
from multishot.model.config import get_config
from multishot.model.dit import WanModel

REPO = __import__("pathlib").Path(__file__).parents[1]
# words the tiny random tokenizer knows (generate.random_models.VOCABULARY)
PROMPTS = [
    '{"global_caption": "a scene.", "shots": [{"caption": "a rabbit", "chunks": 2}, '
    '{"caption": "Trees", "chunks": 1}]}',
    '{"global_caption": "a video.", "shots": [{"caption": "sintel", "chunks": 1}, '
    '{"caption": "the rabbit hops", "chunks": 2}]}',
    # prompt 0 with another second shot: the same video until the cut (chunk 3)
    '{"global_caption": "a scene.", "shots": [{"caption": "a rabbit", "chunks": 2}, '
    '{"caption": "hops", "chunks": 1}]}',
]


def random_dit(path, seed: int) -> str:
    """A tiny DiT with Wan's initialisation but a random (non-zero) output head, saved."""
    torch.manual_seed(seed)
    model = WanModel(get_config("tiny"))
    model.init_weights()
    torch.nn.init.normal_(model.head.head.weight, std=0.05)
    save_safetensors(model.state_dict(), path)
    return str(path)


@pytest.fixture(scope="module")
def distill_inputs(tmp_path_factory, tiny_encoders, train_footage_shards):
    root = tmp_path_factory.mktemp("distill_inputs")
    (root / "prompts.jsonl").write_text("\n".join(PROMPTS) + "\n")
    return {"student": random_dit(root / "causal_base.safetensors", 1),
            "teacher": random_dit(root / "teacher.safetensors", 2),
            "prompts": str(root / "prompts.jsonl"), "text_encoder": tiny_encoders["text_encoder"],
            "vae": tiny_encoders["vae"],
            # clip00, broken (random bytes), clip02, truncated (an mp4 cut short)
            "footage": train_footage_shards["corrupt"]}


def overrides(inputs: dict, output_dir, extra: dict | None = None, **objective) -> dict:
    return {"student": {"init_from": inputs["student"]}, "teacher": {"init_from": inputs["teacher"]},
            "encoders": {"text_encoder": inputs["text_encoder"], "vae": inputs["vae"]},
            "prompts": inputs["prompts"], "footage": {"shards": [inputs["footage"]]},
            "objective": objective, "run": {"output_dir": str(output_dir)}, **(extra or {})}


def encoded_footage(inputs: dict) -> dict[str, torch.Tensor]:
    """The footage samples as the product reads them, by hand: the mp4 member's first 25 frames
    at 32×32 (the loader's decoding), through the tiny Wan VAE (FrozenEncoders)."""
    from multishot.dataset.loader import SkipSample, decode_clip, iter_tar, list_shards
    from multishot.model.encoders import FrozenEncoders
    from multishot.model.settings import EncodersConfig

    encoders = FrozenEncoders.load(EncodersConfig(vae=inputs["vae"], dtype="float32"), "cpu")
    out = {}
    for url in list_shards([inputs["footage"]]):
        for key, parts in iter_tar(url):
            try:
                out[key] = encoders.encode_video(decode_clip(parts["mp4"], 25, 32, 32)[None])
            except SkipSample:
                continue
    return out


def distiller(inputs: dict, output_dir, extra: dict | None = None, **objective):
    """A Distiller in this process (one gloo rank on a free loopback port)."""
    import os

    import torch.distributed as dist

    from multishot.distill.trainer import Distiller

    if not dist.is_initialized():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    config = load_config(REPO / "configs/distill/tiny_cpu.yaml", DistillConfig,
                         overrides(inputs, output_dir, extra, **objective))
    return Distiller(config)


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone()
            for k, v in module.state_dict().items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_generator_step_moves_only_the_student(distill_inputs, tmp_path):
    d = distiller(distill_inputs, tmp_path, ode_steps=0,
                  adversarial={"enabled": True, "generator_weight": 1.0})
    teacher, critic, disc, student = (snapshot(m) for m in (d.teacher, d.critic, d.discriminator,
                                                            d.student))
    out = d.generator_step()
    assert out["dmd_grad"] > 0 and out["gan_loss"] > 0
    assert same(snapshot(d.teacher), teacher), "the teacher changed"
    assert same(snapshot(d.critic), critic) and same(snapshot(d.discriminator), disc), \
        "the generator step changed the critic"
    assert not same(snapshot(d.student), student), "the student did not move"
    assert all(p.grad is None for p in d.critic.parameters())  # no stale GAN gradients

    student = snapshot(d.student)
    assert d.discriminator.layer == 1  # the tiny model's middle block (intermediate features)
    seen = []  # the clean history and prompt of every discriminator call
    logit = d.discriminator.logit
    d.discriminator.logit = lambda critic, clean, x_t, t, cond, causal: (
        seen.append((clean, cond)) or logit(critic, clean, x_t, t, cond, causal))
    critic_out = d.critic_step(0)
    assert critic_out["r1_penalty"] > 0 and critic_out["discriminator_loss"] > 0
    # real, fake, perturbed real: the real video is footage from the shards with its own prompt
    footage = encoded_footage(distill_inputs)
    assert [f.key for f in d.footage] == ["clip00", "clip02"]
    real, real_cond = seen[0]
    assert torch.equal(real, footage["clip00"]) and real_cond is d.footage_conditioning[0]
    assert torch.equal(seen[2][0], real) and seen[1][1] is d.conditioning[0]
    assert real.shape == seen[1][0].shape and not torch.equal(seen[1][0], real)
    assert same(snapshot(d.teacher), teacher) and same(snapshot(d.student), student)
    assert not same(snapshot(d.critic), critic) and not same(snapshot(d.discriminator), disc)


def test_critic_flow_matching_loss_falls_on_fixed_data(distill_inputs, tmp_path):
    d = distiller(distill_inputs, tmp_path, {"critic_optim": {"lr": 3e-3}}, ode_steps=0)
    cond = d.conditioning[0]
    shape = d.latent_shape(cond)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        x0 = rollout(d.student, cond, d.causal, torch.randn(shape, generator=gen), d.sigmas)
    draws = [(dmd.sample_sigma(gen, 5.0, 20, 980, torch.device("cpu")),
              torch.randn(shape, generator=gen)) for _ in range(2)]

    def loss() -> torch.Tensor:
        return sum(dmd.critic_loss(d.critic, x0, s, e, cond, d.causal)
                   for s, e in draws) / len(draws)

    with torch.no_grad():
        first = float(loss())
    for _ in range(12):
        d._update(loss(), d.critic, d.critic_optim, d.critic_sched, None)
    with torch.no_grad():
        last = float(loss())
    assert last < 0.6 * first, (first, last)


def test_ode_data_is_conditioned_on_the_ground_truth(distill_inputs, tmp_path):
    """The footage is the shards' samples encoded by the product's VAE, corrupt ones recorded as
    skipped; the base's trajectories and the student's regression both condition on it: every
    K/V written into a cache is a ground-truth chunk, and chunk j's trajectory changes with the
    history before it, not with its own ground truth."""
    import json

    from multishot.distill import ode

    d = distiller(distill_inputs, tmp_path, ode_steps=2, teacher_steps=8)
    report = json.loads((tmp_path / "footage_report.json").read_text())
    assert report["keys"] == ["clip00", "clip02"] and report["samples"] == 2
    assert [s.split(":")[0] for s in report["skips"]] == ["broken", "truncated"]
    footage = encoded_footage(distill_inputs)
    assert all(torch.equal(f.latents, footage[f.key]) for f in d.footage)
    # clip00: 17 + 16 frames, the cut (latent frame 5) on a chunk boundary: shots of 2 + 1
    # chunks; clip02: 9 + 24, the cut at latent frame 3: 1 + 2 chunks
    assert [f.prompt.shots for f in d.footage] == [(("sintel", 2), ("bbb", 1)),
                                                   (("tos", 1), ("sintel", 2))]

    written = []  # what enters a KV cache: the clean passes' inputs
    forward_chunk = d.student.forward_chunk

    def spy(x, t, context, cache, index, causal, mask=None, write_cache=False):
        if write_cache:
            written.append(x.detach().clone())
        return forward_chunk(x, t, context, cache, index, causal, mask, write_cache=write_cache)

    d.student.forward_chunk = spy
    gt, cond = d.footage[0].latents, d.footage_conditioning[0]
    noise = torch.randn(gt.shape, generator=torch.Generator().manual_seed(5))
    states = ode.ode_trajectory(d.student, cond, d.causal, noise, gt, d.sigmas, 8, 5.0, 4.0)
    chunks = list(zip(cond.chunks.starts, cond.chunks.ends))
    # two caches (CFG), each fed chunk j of the ground truth after chunk j's trajectory
    assert len(written) == 2 * len(chunks)
    assert torch.equal(torch.cat(written[0::2], dim=2), gt)
    assert torch.equal(torch.cat(written[1::2], dim=2), gt)
    written.clear()
    ode.ode_regression_loss(d.student, states, gt, cond, d.causal, d.sigmas, [0, 1, 2, 3])
    assert torch.equal(torch.cat(written, dim=2), gt)  # the student's history: the ground truth

    # another history from chunk 2 on: chunks 0–2 keep their trajectories, chunk 3 changes
    other = gt.clone()
    other[:, :, chunks[2][0]:] = torch.randn(other[:, :, chunks[2][0]:].shape)
    moved = ode.ode_trajectory(d.student, cond, d.causal, noise, other, d.sigmas, 8, 5.0, 4.0)
    assert torch.equal(moved[:, :, :chunks[3][0]], states[:, :, :chunks[3][0]])
    assert not torch.allclose(moved[:, :, chunks[3][0]:], states[:, :, chunks[3][0]:])
    # the sample is the base's, not the ground truth
    assert not torch.allclose(states[-1:], gt, atol=1e-2)
    # the run's own trajectory of footage sample 0 is this one (seeded noise aside: made the
    # same way), stored for the rank
    stored = ode.read_trajectories(tmp_path / "trajectories-00000-of-00001.safetensors", d.sigmas)
    assert sorted(stored) == [0, 1] and stored[0].shape == (5, 16, 7, 4, 4)


def test_ode_regression_fits_a_fixed_trajectory_set(distill_inputs, tmp_path):
    from multishot.distill import ode

    d = distiller(distill_inputs, tmp_path, {"generator_optim": {"lr": 3e-3}}, ode_steps=2,
                  teacher_steps=8)
    states = ode.read_trajectories(tmp_path / "trajectories-00000-of-00001.safetensors", d.sigmas)
    assert all(torch.equal(states[i], d.trajectories[i]) for i in (0, 1))
    # the base's own trajectory: x̂0 of its last step is the sample, the levels differ
    assert not torch.equal(states[0][0], states[0][-1])

    def error() -> float:  # every level of every chunk of footage sample 0
        with torch.no_grad():
            return sum(float(ode.ode_regression_loss(
                d.student, d.trajectories[0], d.footage[0].latents, d.footage_conditioning[0],
                d.causal, d.sigmas, [k] * 4)) for k in range(4)) / 4

    first = error()
    for _ in range(20):
        d.student_state.step = 0  # footage sample 0, fresh levels each step from the run's RNG
        d.ode_step()
    last = error()
    # the student starts as the base itself, so the error starts small: the gap between the
    # base's 8-step trajectory and its one-step x̂0 at each of the student's 4 levels
    assert last < 0.3 * first, (first, last)
    assert last < 0.01 * float(d.trajectories[0][-1].var()), last


def test_student_rollout_equals_the_stream_and_a_prompt_change_starts_at_its_cut(
        distill_inputs, tmp_path):
    """Training equals inference: the DMD rollout (4 steps, KV cache, CAMR) makes, chunk by
    chunk, what ``multishot generate --causal``'s streamer (Euler, 4 steps, no CFG) makes from
    the same noise and shot text; a new caption for shot 1 changes only chunks from its cut."""
    from multishot.model.sampling import SamplingConfig
    from multishot.generate.stream import ChunkStreamer, ShotText
    from multishot.model.causal import KVCache

    d = distiller(distill_inputs, tmp_path, ode_steps=0)
    cond = d.conditioning[0]
    shape = d.latent_shape(cond)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = rollout(d.student, cond, d.causal, noise, d.sigmas)
    trained = rollout(d.student, cond, d.causal, noise, d.sigmas, exit_step=3,
                      gradient="exit_step")
    assert trained.requires_grad and torch.equal(trained.detach(), ours)

    streamer = ChunkStreamer(d.student, d.causal, SamplingConfig(sampler="euler", steps=4,
                                                                 shift=5.0, cfg_scale=1.0),
                             None, None, shape[1:2] + shape[3:], torch.device("cpu"),
                             torch.float32)
    cache = KVCache.empty(d.model_config.num_layers)
    for i, (start, end) in enumerate(zip(cond.chunks.starts, cond.chunks.ends)):
        shot = cond.chunk_shot[i]
        text = ShotText(shot, cond.chunk_context(i), cond.shot_spans[shot])
        streamed = streamer.denoise_chunk(noise[:, :, start:end], text, cache, i)
        err = (streamed - ours[:, :, start:end]).norm() / ours[:, :, start:end].norm()
        assert err < 1e-5, (i, float(err))

    changed = d.conditioning[2]
    assert changed.chunk_shot == cond.chunk_shot == [0, 0, 0, 1]
    with torch.no_grad():
        other = rollout(d.student, changed, d.causal, noise, d.sigmas)
    cut = cond.chunks.starts[3]
    assert torch.equal(other[:, :, :cut], ours[:, :, :cut])
    assert not torch.allclose(other[:, :, cut:], ours[:, :, cut:])


def _distill_config(inputs: dict, tmp_path, name: str):
    """tiny_cpu.yaml shortened (1 ODE step, 3 DMD steps with 1 critic update each)."""
    import yaml

    cfg = yaml.safe_load((REPO / "configs/distill/tiny_cpu.yaml").read_text())
    for section, values in overrides(inputs, tmp_path / name).items():
        cfg[section] = {**cfg[section], **values} if isinstance(values, dict) else values
    cfg["objective"].update(ode_steps=1, teacher_steps=4, critic_steps_per_generator_step=1)
    cfg["run"].update(max_steps=4, checkpoint_every=2, keep_checkpoints=3)
    cfg["objective"].update(ema_start_step=1)  # the EMA starts before the kill and resumes
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _run(*argv):
    import os
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    env = {**os.environ, "MASTER_PORT": port, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *argv], env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def straight_run(distill_inputs, tmp_path_factory):
    """``multishot distill`` (torchrun, one gloo rank) run straight through 4 steps."""
    root = tmp_path_factory.mktemp("distill_straight")
    done = _run("-m", "multishot", "distill", "--config",
                str(_distill_config(distill_inputs, root, "straight")))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "distill: 100%" in done.stderr and "4/4" in done.stderr  # rank 0's progress bar
    return root / "straight"


def test_killed_distillation_resumes_bit_identically(distill_inputs, straight_run, tmp_path):
    """A run killed (SIGKILL) after step 3 with its newest checkpoint at step 2, resumed by
    the CLI, ends bit-identical to the straight run: the final checkpoints (student, teacher,
    critic, both AdamW states) and the exported students."""
    import textwrap

    from safetensors.torch import load_file
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    killed_cfg = _distill_config(distill_inputs, tmp_path, "killed")
    driver = tmp_path / "driver.py"
    driver.write_text(textwrap.dedent(f"""
        import os, signal
        from multishot.config import load_config
        from multishot.distill.config import DistillConfig
        from multishot.distill.trainer import Distiller

        def kill(step):
            if step == 3:
                os.kill(os.getpid(), signal.SIGKILL)  # a preemption: no clean-up at all

        Distiller(load_config({str(killed_cfg)!r}, DistillConfig)).train(on_step=kill)
    """))
    killed = _run(str(driver))
    assert killed.returncode != 0
    out = tmp_path / "killed"
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == ["step-00000002"]
    resumed = _run("-m", "multishot", "distill", "--config", str(killed_cfg))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr

    def final(run_dir):
        dcp_to_torch_save(str(run_dir / "checkpoints/step-00000004"), str(tmp_path / "final.pt"))
        return torch.load(tmp_path / "final.pt", weights_only=False)

    def flat(tree, prefix=""):
        if isinstance(tree, dict):
            for k, v in tree.items():
                yield from flat(v, f"{prefix}{k}.")
        elif isinstance(tree, torch.Tensor):
            yield prefix, tree

    a, b = dict(flat(final(straight_run))), dict(flat(final(out)))
    assert a.keys() == b.keys() and any(k.startswith("critic.optim") for k in a)
    assert any(k.startswith("ema.weights") for k in a) and int(a["ema.active."]) == 1
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    sa, sb = (load_file(str(p / "student.safetensors")) for p in (straight_run, out))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_generate_streams_the_student_with_its_four_steps(straight_run, tiny_encoders, tmp_path):
    """``multishot generate --causal --checkpoint student.safetensors`` takes the student's
    steps, shift, no CFG and causal config from student.json: 4 + 1 model calls a chunk."""
    import json

    import yaml

    cfg = yaml.safe_load((REPO / "configs/generate/tiny_cpu_causal.yaml").read_text())
    cfg["model"].update(random_weights=None, causal=None)  # both come from the student
    cfg["encoders"].update(vae=tiny_encoders["vae"], text_encoder=tiny_encoders["text_encoder"])
    cfg["sampling"].update(steps=50, cfg_scale=5.0)
    cfg["video"].update(height=32, width=32)
    (tmp_path / "gen.yaml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "schedule.txt").write_text(
        '{"global_caption": "a scene."}\na rabbit\n{"caption": "Trees", "chunks": 1}\n')
    done = _run("-m", "multishot", "generate", "--causal", "--config", str(tmp_path / "gen.yaml"),
                "--checkpoint", str(straight_run / "student.safetensors"), "--schedule",
                str(tmp_path / "schedule.txt"), "--chunks-per-shot", "1", "-o",
                str(tmp_path / "stream.mp4"))
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads((tmp_path / "stream.json").read_text())
    student = json.loads((straight_run / "student.json").read_text())
    assert (info["steps"], info["cfg_scale"], info["shift"]) == (4, 1.0, 5.0)
    assert info["causal"] == student["causal"] and info["chunks"] == 3
    assert info["model_calls"] == 3 * (4 + 1)


def test_distill_cli_bad_config_is_one_line_and_exit_2(tmp_path):
    import subprocess
    import sys

    bad = subprocess.run([sys.executable, "-m", "multishot", "distill", "--config",
                          str(REPO / "configs/distill/tiny_cpu.yaml"), "--set",
                          "prompts=p.jsonl", "--set", "objective.student_timesteps=[1000,600]"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and "objective.student_timesteps" in lines[0], bad.stderr
    assert lines[0].startswith("multishot distill:")


def test_generator_ema_follows_the_student_then_averages(distill_inputs, tmp_path):
    """Before ema_start_step the EMA is the student; the start step's update copies it; each
    later update is ema ← 0.99·ema + 0.01·student (Self-Forcing's generator EMA)."""
    d = distiller(distill_inputs, tmp_path, ode_steps=0, critic_steps_per_generator_step=1,
                  ema_start_step=1)

    def ema():
        return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).clone()
                for k, v in d.ema.weights.items()}

    assert d.ema is not None and d.ema.decay == 0.99
    d.train_step()                                   # step 0: before the start
    assert int(d.ema.active) == 0
    d.train_step()                                   # step 1: the start, a copy
    student = snapshot(d.student)
    assert int(d.ema.active) == 1
    assert all(torch.equal(w, student[k]) for k, w in ema().items())
    before = ema()
    d.train_step()
    student = snapshot(d.student)
    for k, w in ema().items():
        assert torch.allclose(w, 0.99 * before[k] + 0.01 * student[k], atol=1e-7), k
    assert not all(torch.equal(w, student[k]) for k, w in ema().items())


def test_footage_is_checked_on_load(distill_inputs, tmp_path):
    """ODE initialisation and the GAN need footage; its clips must cut into whole chunks and,
    as mp4, need the VAE: each a load error that names the key."""
    from multishot.config import ConfigError

    def load(extra: dict, **objective):
        base = overrides(distill_inputs, tmp_path, **objective)
        for key, value in extra.items():
            base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
        return load_config(REPO / "configs/distill/tiny_cpu.yaml", DistillConfig, base)

    assert load({}).footage.samples == 3
    assert load({"footage": None}, ode_steps=0).footage is None  # DMD alone needs prompts only
    with pytest.raises(ConfigError, match="footage is required"):
        load({"footage": None}, ode_steps=1)
    with pytest.raises(ConfigError, match="footage is required"):
        load({"footage": None}, ode_steps=0, adversarial={"enabled": True})
    with pytest.raises(ConfigError, match=r"footage.num_frames 29 is not 1 \+ 4·2·m"):
        load({"footage": {"num_frames": 29}})
    with pytest.raises(ConfigError, match="footage.kind 'video' needs encoders.vae"):
        load({"encoders": {"vae": None}})
    assert load({"encoders": {"vae": None}, "footage": {"kind": "latents"}}).footage.kind == "latents"


def test_footage_cuts_move_to_chunk_boundaries():
    """A footage clip's shots own whole chunks: each cut moves to the nearest boundary (ties:
    the later), a shot left without a chunk is dropped with its caption and the global
    caption's shot count follows."""
    from multishot.dataset.record import build_prompt
    from multishot.distill.footage import chunked_prompt

    two = build_prompt("a kitchen. This scene contains 2 shots.", ["a cook", "a pan"])
    # 25 frames = 7 latent frames, boundaries 1, 3, 5 (chunks of 2); the cut at frame 12 is
    # latent frame 4, halfway between 3 and 5: the later
    assert chunked_prompt(two, [12], 25, 2).shots == (("a cook", 2), ("a pan", 1))
    assert chunked_prompt(two, [8], 25, 2).shots == (("a cook", 1), ("a pan", 2))  # frame 3
    three = build_prompt("a kitchen. This scene contains 3 shots.", ["a", "b", "c"])
    short = chunked_prompt(three, [3, 12], 25, 2)  # shot 1 starts in latent frame 1: no chunk
    assert short.shots == (("b", 2), ("c", 1))
    assert short.global_caption == "a kitchen. This scene contains 2 shots."
    assert short.num_latent_frames(2) == 7
    with pytest.raises(ValueError, match="not 1 \\+ 2·m"):
        chunked_prompt(two, [12], 29, 2)
