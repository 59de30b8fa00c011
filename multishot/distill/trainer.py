"""The distillation loop: ODE initialisation, then DMD (CausalCine §3.4; Self-Forcing).

``Distiller(config).train()`` is the whole run, shaped as :class:`trainer.trainer.Trainer`:
join the process group, build student, teacher and critic with
:func:`trainer.parallelize.build_model` (FSDP2 each; teacher and critic from the causal base,
scoring by teacher forcing, :mod:`distill.dmd`), resume from the newest checkpoint, then per step ``s``::

    prompt p = prompts[(s·ranks + rank) mod P]          no loader: resumes need only s
    s <  ode_steps:  ODE regression of the student on the base's trajectory of footage
                     sample rank + ranks·(s mod ⌈(S − rank)/ranks⌉), on its ground-truth
                     history                                                (distill.ode)
    s >= ode_steps:  critic_steps_per_generator_step × (student rollout of p, no grad
                                                       → critic flow-matching step
                                                       [+ GAN head: real = footage sample])
                     student rollout of p with gradient → DMD (+ GAN) → generator step
    checkpoint every run.checkpoint_every (student, teacher, critic, both optimisers)

The ground-truth footage (``footage``: the S samples ODE initialisation and the GAN's real
side use, :mod:`distill.footage`) is read once, before step 0, by rank 0 into
``output_dir/footage.safetensors``. Each rank makes the trajectories of its own footage samples
(``rank, rank + ranks, …``) once, before step 0, with the student's initial weights (the causal
base), and stores them in ``output_dir/trajectories-RANK-of-RANKS.safetensors``; a resumed run
reads both files (same rank count) and no shards. Every random draw comes from a
generator seeded by ``(run.seed, step, rank, purpose)``, so a resumed run repeats an
uninterrupted one bit for bit. At the end the student is exported as
``output_dir/student.safetensors`` with ``student.json`` (its timesteps, shift and causal
config) beside it, which ``multishot generate --causal --checkpoint`` reads.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.nn as nn
from tqdm import tqdm
from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict
from torch.distributed.checkpoint.stateful import Stateful
from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

from multishot.config import dump_yaml
from multishot.distill import dmd, ode
from multishot.distill.config import DistillConfig
from multishot.distill.footage import Footage, read_footage, read_shards, write_footage
from multishot.distill.prompts import DistillPrompt, PromptConditioning, encode_prompt, read_prompts
from multishot.distill.rollout import rollout, student_sigmas
from multishot.distill.student import write_student_info
from multishot.errors import UsageError
from multishot.model import dcp_reader
from multishot.model.config import get_config
from multishot.trainer import checkpoint as ckpt
from multishot.model.encoders import FrozenEncoders
from multishot.trainer.metrics import MetricsLogger
from multishot.trainer.parallelize import build_model
from multishot.trainer.trainer import init_distributed, lr_lambda

log = logging.getLogger(__name__)

class _Frozen(Stateful):
    """The teacher in a checkpoint: its weights only (frozen, no optimiser)."""

    def __init__(self, model: nn.Module):
        self.model = model

    def state_dict(self):
        return {"model": get_model_state_dict(self.model)}

    def load_state_dict(self, state):
        set_model_state_dict(self.model, state["model"])


class GeneratorEMA(Stateful):
    """The student's exponential moving average (Self-Forcing's ``generator_ema``): per
    parameter a tensor of its sharding, ``ema ← decay·ema + (1 − decay)·p`` after each student
    update once started (:meth:`update`); before that it follows the student exactly (the start
    is a copy). In checkpoints with its ``active`` flag, so a resume continues it bit for bit."""

    def __init__(self, model: nn.Module, decay: float, start_step: int):
        self.model, self.decay, self.start_step = model, decay, start_step
        self.weights = {name: p.detach().clone() for name, p in model.named_parameters()}
        self.active = torch.zeros((), dtype=torch.int64)

    @torch.no_grad()
    def update(self, step: int) -> None:
        """After the student's update of step ``step`` (0-based)."""
        if step < self.start_step:
            return
        params = dict(self.model.named_parameters())
        if not int(self.active):
            for name, ema in self.weights.items():
                ema.copy_(params[name].detach())
            self.active.fill_(1)
            return
        for name, ema in self.weights.items():
            ema.lerp_(params[name].detach(), 1 - self.decay)

    def state_dict(self):
        return {"weights": self.weights, "active": self.active}

    def load_state_dict(self, state):
        for name, ema in self.weights.items():
            if state["weights"][name] is not ema:
                ema.copy_(state["weights"][name])
        self.active.copy_(state["active"])

    def export(self, path: Path) -> Path | None:
        """Write the EMA weights like :func:`trainer.checkpoint.export_safetensors` (collective)."""
        from multishot.model.checkpoint import save_safetensors

        full = {name.replace("_checkpoint_wrapped_module.", ""):
                (t.full_tensor() if hasattr(t, "full_tensor") else t).cpu()
                for name, t in self.weights.items()}
        out = save_safetensors(full, path)[0] if dist.get_rank() == 0 else None
        dist.barrier()
        return out


class Distiller:
    """One distillation run of :class:`~distill.config.DistillConfig` on this process's rank.

    Raises (at construction):
        UsageError: a checkpoint to initialise from does not fit, an encoder folder or the
            prompt file is missing or bad.
    """

    def __init__(self, config: DistillConfig):
        self.config = config
        self.rank, self.world_size, self.device = init_distributed()
        run, obj = config.run, config.objective
        self.output_dir = Path(run.output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if self.rank == 0:
            (self.output_dir / "config.resolved.yaml").write_text(dump_yaml(config))
        self.model_config = get_config(config.student.name)
        self.causal = config.student.causal
        self.sigmas = student_sigmas(obj.student_timesteps, obj.shift)
        latest = ckpt.latest_checkpoint(self.output_dir) if run.resume else None
        mixed = self.device.type == "cuda" and run.mixed_precision == "bf16"

        def build(section):
            return build_model(self.model_config, section, self.device, seed=run.seed,
                               mixed_precision=mixed, load_init=latest is None)[0]

        self.student = build(config.student)
        for method in ("forward_chunk", "forward_teacher_forcing"):
            register_fsdp_forward_method(self.student, method)
        self.teacher = build(config.teacher)  # the causal base, scoring by teacher forcing
        self.teacher.requires_grad_(False)
        self.critic = build(config.teacher)  # the fake score starts as the real one
        for model in (self.teacher, self.critic):
            register_fsdp_forward_method(model, "forward_teacher_forcing")
        self.discriminator = None
        critic_modules = nn.ModuleDict({"score": self.critic})
        if obj.adversarial.enabled:
            torch.manual_seed(run.seed)
            layer = obj.adversarial.layer
            layer = self.model_config.num_layers // 2 if layer is None else layer
            self.discriminator = dmd.Discriminator(self.model_config.dim, layer).to(self.device)
            fully_shard(self.discriminator)  # its gradients reduce over the ranks like the critic's
            critic_modules["discriminator"] = self.discriminator
        self.generator_optim, self.generator_sched = self._optimizer(
            self.student, config.generator_optim, run.max_steps)
        # the critic's schedule counts its own updates
        self.critic_optim, self.critic_sched = self._optimizer(
            critic_modules, config.critic_optim,
            (run.max_steps - obj.ode_steps) * obj.critic_steps_per_generator_step)
        self.student_state = ckpt.TrainState(self.student, self.generator_optim,
                                             self.generator_sched, 0, {})
        self.critic_state = ckpt.TrainState(critic_modules, self.critic_optim,
                                            self.critic_sched, 0, {})
        self.teacher_state = _Frozen(self.teacher)
        self.ema = GeneratorEMA(self.student, obj.ema_decay, obj.ema_start_step) \
            if obj.ema_decay > 0 else None
        self.metrics = MetricsLogger(self.output_dir, run.tensorboard, enabled=self.rank == 0)
        if latest is not None:
            self.load(latest)
            log.info("resumed from %s (step %d)", latest, self.step)
        prompts = self._read_prompts()
        self.footage: list[Footage] = self._footage() \
            if obj.ode_steps or obj.adversarial.enabled else []
        encoded = self._encode_prompts(prompts + [f.prompt for f in self.footage])
        self.conditioning = encoded[:len(prompts)]
        self.footage_conditioning = encoded[len(prompts):]
        self.trajectories = self._trajectories() if obj.ode_steps else None

    # ---- construction ----------------------------------------------------------------------
    def _optimizer(self, module: nn.Module, optim, updates: int):
        """AdamW over ``module``'s trainable parameters and its schedule over ``updates``."""
        params = [p for p in module.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=optim.lr, betas=optim.betas, eps=optim.eps,
                                weight_decay=optim.weight_decay, fused=self.device.type == "cuda")
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(optim, updates))

    def _read_prompts(self) -> list[DistillPrompt]:
        try:
            return read_prompts(self.config.prompts)
        except (OSError, ValueError) as err:
            raise UsageError(f"prompts: {err}") from None

    def _encode_prompts(self, prompts: list[DistillPrompt]) -> list[PromptConditioning]:
        cfg = self.config
        enc = cfg.encoders
        for name in ("text_encoder", "tokenizer"):
            folder = getattr(enc, name)
            if folder and not Path(folder).is_dir():
                raise UsageError(f"encoders.{name}: no such folder {folder}")
        from multishot.torchvision_cpu import import_torchvision

        import_torchvision()  # transformers imports torchvision; the CPU wheel needs the shim
        encoders = FrozenEncoders.load(enc.model_copy(update={"vae": None}), self.device)
        _, ph, pw = self.model_config.patch_size
        _, _, _, h, w = self.latent_shape(None)
        hw = (h // ph) * (w // pw)
        with torch.no_grad():
            out = [encode_prompt(p, encoders, self.student, self.causal.chunk_latent_frames, hw,
                                 cfg.objective.negative_prompt, cfg.student.window_cross_attention,
                                 self.device) for p in prompts]
        del encoders
        return out

    def latent_shape(self, cond: PromptConditioning | None) -> tuple[int, ...]:
        """``[1, C, F_lat, H_lat, W_lat]`` of a prompt's video (VAE stride 4×8×8; 4×16×16 for
        the 48-channel Wan2.2 VAE of the 5B model); ``cond`` None: 0 frames."""
        stride = 16 if self.model_config.in_channels == 48 else 8
        v = self.config.video
        frames = 0 if cond is None else cond.chunks.num_latent_frames
        return (1, self.model_config.in_channels, frames, v.height // stride, v.width // stride)

    def _generator(self, step: int, purpose: int, per_rank: bool = True) -> torch.Generator:
        """The RNG of one draw of one step (module docstring)."""
        seed = ((self.config.run.seed * 1_000_003 + step) * 4099 +
                (self.rank if per_rank else 0)) * 101 + purpose
        return torch.Generator(self.device).manual_seed(seed)

    def _prompt(self, step: int) -> int:
        return (step * self.world_size + self.rank) % len(self.conditioning)

    def _footage(self) -> list[Footage]:
        """The ground-truth footage (CPU): read from ``footage.safetensors``, or first
        read from ``footage.shards`` by rank 0 and written there, its skips in
        ``footage_report.json`` (collective)."""
        path = self.output_dir / "footage.safetensors"
        if not path.exists():
            if self.step:
                raise UsageError(f"{path} is missing: a resumed run cannot reread its footage")
            error = [None]
            if self.rank == 0:
                try:
                    self._read_footage_shards(path)
                except (OSError, UsageError) as err:
                    error = [f"footage: {err}"]
            dist.broadcast_object_list(error, src=0)
            if error[0] is not None:
                raise UsageError(error[0])
        footage = read_footage(path)  # on the CPU: each step moves the one sample it uses
        if self.config.objective.ode_steps and len(footage) < self.world_size:
            raise UsageError(f"footage: {len(footage)} usable samples for {self.world_size} "
                             "ranks (each rank regresses on samples of its own)")
        return footage

    def _read_footage_shards(self, path: Path) -> None:
        """Rank 0: read ``footage.shards`` (the VAE encodes kind ``video``) into ``path``."""
        cfg = self.config
        encoders = None
        if cfg.footage.kind == "video":
            if not Path(cfg.encoders.vae).exists():
                raise UsageError(f"encoders.vae: no such file or folder {cfg.encoders.vae}")
            encoders = FrozenEncoders.load(cfg.encoders.model_copy(
                update={"text_encoder": None, "tokenizer": None}), self.device)
        _, c, _, h, w = self.latent_shape(None)
        footage, skips = read_shards(cfg.footage, cfg.video, self.causal.chunk_latent_frames,
                                     (c, h, w), encoders)
        del encoders
        (self.output_dir / "footage_report.json").write_text(json.dumps(
            {"samples": len(footage), "keys": [f.key for f in footage], "skipped": len(skips),
             "skips": skips}, indent=1))
        if not footage:
            raise UsageError(f"no usable sample in {cfg.footage.shards} ({len(skips)} skipped: "
                             f"{self.output_dir / 'footage_report.json'} lists why)")
        if len(footage) < cfg.footage.samples:
            log.warning("footage: %d usable samples of the %d asked for", len(footage),
                        cfg.footage.samples)
        write_footage(path, footage)

    def _footage_index(self, step: int) -> int:
        """The footage sample of this rank's ODE step ``step``: its own samples in turn."""
        mine = range(self.rank, len(self.footage), self.world_size)
        return mine[step % len(mine)]

    def _history(self, index: int) -> torch.Tensor:
        """Footage sample ``index``'s latents on the device, float32."""
        return self.footage[index].latents.to(self.device, torch.float32)

    def _trajectories(self) -> dict[int, torch.Tensor]:
        """The base's trajectories of this rank's footage samples (CPU): read from
        ``trajectories-RANK-of-RANKS.safetensors``, or made by the student's initial weights
        (before any update) on each sample's ground-truth history and written there."""
        path = self.output_dir / f"trajectories-{self.rank:05d}-of-{self.world_size:05d}.safetensors"
        if path.exists():
            return ode.read_trajectories(path, self.sigmas)
        if self.step:
            raise UsageError(f"{path} is missing: a resumed run cannot remake its trajectories "
                             "(resume with the rank count it started with)")
        obj = self.config.objective
        made = {}
        for i in range(self.rank, len(self.footage), self.world_size):
            cond = self.footage_conditioning[i]
            gen = torch.Generator(self.device).manual_seed(self.config.run.seed * 7919 + i)
            noise = torch.randn(self.latent_shape(cond), generator=gen, device=self.device)
            made[i] = ode.ode_trajectory(self.student, cond, self.causal, noise, self._history(i),
                                         self.sigmas, obj.teacher_steps, obj.shift,
                                         obj.trajectory_guidance_scale or obj.guidance_scale
                                         ).cpu()
        ode.write_trajectories(path, made, self.sigmas)
        return made

    # ---- steps -----------------------------------------------------------------------------
    @property
    def step(self) -> int:
        return self.student_state.step

    def ode_step(self) -> dict[str, torch.Tensor]:
        """One ODE-regression step of the student on a footage sample's trajectory."""
        i = self._footage_index(self.step)
        cond = self.footage_conditioning[i]
        levels = torch.randint(0, len(self.sigmas) - 1, (cond.chunks.num_chunks,),
                               generator=self._generator(self.step, 0), device=self.device)
        loss = ode.ode_regression_loss(self.student, self.trajectories[i].to(self.device),
                                       self._history(i), cond, self.causal, self.sigmas,
                                       levels.tolist())
        grad_norm = self._update(loss, self.student, self.generator_optim, self.generator_sched,
                                 self.config.generator_optim.grad_clip)
        return {"ode_loss": loss.detach(), "generator_grad_norm": grad_norm}

    def critic_step(self, index: int) -> dict[str, torch.Tensor]:
        """One critic update (the ``index``-th of this step) on a fresh student rollout."""
        obj = self.config.objective
        i = self._prompt(self.step)
        cond = self.conditioning[i]
        shape = self.latent_shape(cond)
        gen = self._generator(self.step, 10 + index)
        noise = torch.randn(shape, generator=gen, device=self.device)
        exit_step = int(torch.randint(0, len(self.sigmas) - 1, (1,), generator=self._generator(
            self.step, 10 + index, per_rank=False), device=self.device))
        with torch.no_grad():
            x0 = rollout(self.student, cond, self.causal, noise, self.sigmas, exit_step)
        sigma = dmd.sample_sigma(gen, obj.shift, obj.min_timestep, obj.max_timestep, self.device)
        eps = torch.randn(shape, generator=gen, device=self.device)
        loss = dmd.critic_loss(self.critic, x0, sigma, eps, cond, self.causal)
        out = {"critic_loss": loss.detach()}
        if self.discriminator is not None:
            real = self.real_sample(index)
            adv = obj.adversarial
            real_eps = torch.randn(real.latents.shape, generator=gen, device=self.device)
            r1_noise = adv.r1_sigma * torch.randn(real.latents.shape, generator=gen,
                                                  device=self.device) if adv.r1_weight else None
            d_loss, r1 = dmd.discriminator_loss(self.discriminator, self.critic, real.latents,
                                                real.cond, x0, cond, sigma, real_eps, eps,
                                                self.causal, adv.r1_weight, r1_noise)
            loss = loss + adv.critic_weight * d_loss
            out["discriminator_loss"] = d_loss.detach()
            out["r1_penalty"] = r1
        out["critic_grad_norm"] = self._update(loss, self.critic_state.model, self.critic_optim,
                                               self.critic_sched, self.config.critic_optim.grad_clip)
        return out

    def real_sample(self, index: int) -> dmd.RealSample:
        """The GAN's real video of this step's ``index``-th critic update: footage sample
        ``((step·K + index)·ranks + rank) mod S`` (``K`` critic updates a step)."""
        k = self.config.objective.critic_steps_per_generator_step
        i = ((self.step * k + index) * self.world_size + self.rank) % len(self.footage)
        return dmd.RealSample(self._history(i), self.footage_conditioning[i])

    def generator_step(self) -> dict[str, torch.Tensor]:
        """One DMD update of the student on its own rollout (gradient as
        ``objective.rollout_gradient``); teacher and critic are not changed."""
        obj = self.config.objective
        cond = self.conditioning[self._prompt(self.step)]
        shape = self.latent_shape(cond)
        gen = self._generator(self.step, 1)
        noise = torch.randn(shape, generator=gen, device=self.device)
        exit_step = int(torch.randint(0, len(self.sigmas) - 1, (1,), generator=self._generator(
            self.step, 1, per_rank=False), device=self.device))
        x0 = rollout(self.student, cond, self.causal, noise, self.sigmas, exit_step,
                     obj.rollout_gradient)
        sigma = dmd.sample_sigma(gen, obj.shift, obj.min_timestep, obj.max_timestep, self.device)
        eps = torch.randn(shape, generator=gen, device=self.device)
        terms = dmd.dmd_loss(x0, self.teacher, self.critic, cond, sigma, eps, obj.guidance_scale,
                             self.causal, self.discriminator, obj.adversarial.generator_weight)
        grad_norm = self._update(terms.loss, self.student, self.generator_optim,
                                 self.generator_sched, self.config.generator_optim.grad_clip)
        # the GAN term's backward also reached the critic: those gradients are not the critic's
        self.critic_optim.zero_grad(set_to_none=True)
        return {"dmd_loss": terms.dmd, "gan_loss": terms.gan, "dmd_grad": terms.grad_norm,
                "generator_grad_norm": grad_norm}

    def _update(self, loss, module, optimizer, scheduler, clip) -> torch.Tensor:
        torch._assert_async(torch.isfinite(loss), "non-finite loss")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for p in module.parameters() if p.requires_grad]
        norm = torch.nn.utils.clip_grad_norm_(params, clip or float("inf"))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm

    def train_step(self) -> dict[str, float]:
        """One step of the run (ODE regression or a DMD iteration); returns its metrics."""
        obj = self.config.objective
        if self.step < obj.ode_steps:
            out = self.ode_step()
        else:
            out = {}
            for k in range(obj.critic_steps_per_generator_step):
                out.update(self.critic_step(k))
            out.update(self.generator_step())
        if self.ema is not None:
            self.ema.update(self.step)
        self.student_state.step += 1
        self.critic_state.step = self.student_state.step
        return {k: float(v) for k, v in out.items()}

    # ---- the run ---------------------------------------------------------------------------
    def train(self, on_step: Callable[[int], None] | None = None) -> None:
        """Run until ``run.max_steps``, logging and checkpointing; then export the student.
        ``on_step(step)`` is called after every step (and its checkpoint) on every rank."""
        run = self.config.run
        # rank 0's bar on stderr: steps, ETA, the phase (ODE regression, then DMD) and last loss
        bar = tqdm(total=run.max_steps, initial=self.step, desc="distill", unit="step",
                   disable=self.rank != 0)
        while self.step < run.max_steps:
            metrics = self.train_step()
            step = self.step
            if step % run.log_every == 0 or step == run.max_steps:
                self.metrics.log(step, {**metrics, "lr": self.generator_sched.get_last_lr()[0]})
            bar.set_postfix(phase="ode" if step <= self.config.objective.ode_steps else "dmd",
                            **{k: f"{v:.4f}" for k, v in metrics.items() if "loss" in k})
            bar.update(1)
            if step % run.checkpoint_every == 0 or step == run.max_steps:
                self.save()
            if on_step is not None:
                on_step(step)
        bar.close()
        if run.export_safetensors:
            self.export()
        self.metrics.close()

    def save(self) -> Path:
        """Checkpoint student, teacher, critic and both optimisers now (collective)."""
        path = self.output_dir / "checkpoints" / ckpt.STEP_DIR.format(self.step)
        dcp.save(self._stateful(), checkpoint_id=str(path))
        if self.rank == 0:
            done = sorted(p for p in path.parent.glob("step-*") if (p / ".metadata").exists())
            for old in done[:-self.config.run.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        dist.barrier()
        return path

    def load(self, path: str | Path) -> None:
        """Restore every state in place from checkpoint ``path`` (collective)."""
        requested = {k: ckpt._Requested(v, v.state_dict()) for k, v in self._stateful().items()}
        dcp_reader.load(requested, path)

    def _stateful(self) -> dict[str, Stateful]:
        states = {"student": self.student_state, "critic": self.critic_state,
                  "teacher": self.teacher_state}
        if self.ema is not None:
            states["ema"] = self.ema
        return states

    def export(self) -> Path | None:
        """Write ``student.safetensors`` (Wan names; the EMA once it has started, as
        Self-Forcing streams its EMA generator) and ``student.json`` (collective)."""
        path = self.output_dir / "student.safetensors"
        if self.ema is not None and int(self.ema.active):
            out = self.ema.export(path)
        else:
            out = ckpt.export_safetensors(self.student, path)
        if self.rank == 0:
            obj = self.config.objective
            write_student_info(self.output_dir, self.config.student.name, obj.student_timesteps,
                               obj.shift, self.causal.model_dump())
        return out
