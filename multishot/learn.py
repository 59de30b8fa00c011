"""Does it learn? HoloCine's Table 2 ablation in the synthetic world (issue 30).

``python -m multishot.learn run --out DIR`` (``make learn``) does, on one GPU (or, with
``--smoke``, a few steps on the CPU):

1. **Encoders.** The text encoder the product loads (transformers ``UMT5EncoderModel``, small,
   *fixed random weights*, committed with the checkpoint; a word-level tokenizer of the world's
   vocabulary): the world's captions differ in their token ids, which a random encoder keeps
   apart, so training it would add nothing the DiT's text embedding cannot learn. The Wan VAE
   the product loads (diffusers ``AutoencoderKLWan``, small) **trained** here on the world's
   whole 33-frame films (L1 + MSE, KL weight 1e-6; :func:`train_vae`), its per-channel latent
   mean / std measured after; its PSNR on held-out films is reported, and the world's
   classifier is run on its reconstructions of the evaluation prompts' ground truth
   (:func:`vae_ceiling`: the ceiling of every score measured on decoded pixels, and where in
   the film the character is lost). ``python -m multishot.learn vae`` does this step alone.
2. **Data.** Films of :mod:`dataset.synthetic_world` (seeded), rendered, VAE-encoded
   (:meth:`model.encoders.FrozenEncoders.encode_video`), captions through UMT5
   (:meth:`~model.encoders.FrozenEncoders.encode_prompts`) and their caption windows
   (:meth:`~model.encoders.FrozenEncoders.text_spans`). Two character combinations
   (:data:`HELD_OUT_CHARACTERS`) never appear in training.
3. **Training**, one process per ablation variant (they share the GPU): the project's
   :class:`model.dit.WanModel` (``learn``: dim 256, 6 blocks, 4 heads), its flow-matching
   objective (:class:`trainer.flow_matching.FlowMatching`), AdamW with the trainer's schedule
   (:func:`trainer.trainer.lr_lambda`), the shot layout of each batch
   (:class:`model.layout.ShotLayout`), float32 with TF32 matmuls on CUDA. Variants (HoloCine Table 2):
   ``full`` (window cross-attention + sparse self-attention with the global bank),
   ``no_window``, ``full_self_attention``, ``no_global`` (sparse w/o global).
4. **Generation and evaluation** of fresh prompts (another seed: new scene sequences, cut
   positions, shot counts and the held-out characters) with the project's sampler
   (:func:`model.sampling.sample`, Euler, no CFG), VAE decode as ``multishot generate``
   does, and the world's classifier on the decoded pixels
   (:func:`dataset.synthetic_world.classify_video`). Metrics, per variant:

   * ``sca``: :func:`evaluate.sca.shot_cut_accuracy` of the frames where the read scene
     changes against the requested cuts; ``shot_count_error``: mean |detected − requested shots|;
   * ``caption_following``: fraction of frames whose read scene is their shot's caption scene;
     ``named_character``: fraction of shots of ``named`` films whose read character is the
     one the global caption names (``held_out_character``: the same on the held-out ones);
     ``named_colour`` / ``named_shape`` / ``named_texture``: the same for one attribute (a
     shot with no character read counts wrong; chance 1/4, 1/3, 1/2);
   * ``character_consistency``: on ``anonymous`` films (no caption names the character), the
     fraction of later shots whose read character equals shot 1's;
     ``consistency_colour`` / ``consistency_shape`` / ``consistency_texture``: the same for one
     attribute, and ``consistency_<attribute>_chance`` (``_character_chance`` for the whole
     character): its value if shot 1 were another film's (:func:`attribute_consistency`: the
     chance level under the generator's own distribution of reads, e.g. of a collapsed shape);
   * ``aba_recall``: on A-B-A films, the fraction whose third shot shows scene A and shot 1's
     character.

   Shots are the *requested* frame ranges for the per-shot scores.

This is the learning path through the project's model, objective, layout, encoders, sampler
and metric code, with the data entering as tensors (fast enough for the four-variant ablation in
minutes on one GPU; ``benchmarks/results/learn/``). The same world through the product
(``multishot pipeline run`` with a caption source → shards → ``multishot train`` →
``multishot generate`` → ``multishot eval``) is :mod:`multishot.learn_product`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


VARIANTS = {
    "full": dict(window_cross_attention=True, sparse_self_attention=True, global_bank=True),
    "no_window": dict(window_cross_attention=False, sparse_self_attention=True, global_bank=True),
    "full_self_attention": dict(window_cross_attention=True, sparse_self_attention=False,
                                global_bank=True),
    "no_global": dict(window_cross_attention=True, sparse_self_attention=True, global_bank=False),
}
#: (shape, colour) pairs never in training (eval prompts name them: new combinations)
HELD_OUT_CHARACTERS = {("triangle", "cyan"), ("square", "yellow")}
MODEL = "learn"
#: The attention backend of every variant here. All backends compute one function (tests of
#: model.attention); at the world's size (144 tokens a sample) the dense masked definition is one
#: kernel per layer, where the per-shot ``sdpa`` backend makes ~80 calls per layer at batch 32 and
#: ran the sparse variants 3× slower than the others in the first GPU run.
ATTENTION_BACKEND = "reference"


# ---- encoders --------------------------------------------------------------------------------

def make_text_encoder(folder: str | Path, text_dim: int = 64, seed: int = 0) -> str:
    """A small UMT5 encoder with fixed random weights and a word-level tokenizer of the world's
    words (HoloCine's tags single tokens) in ``save_pretrained`` layout; returns the folder."""
    from multishot.torchvision_cpu import import_torchvision

    import_torchvision()  # transformers imports torchvision; the CPU wheel needs the shim
    import torch
    from transformers import UMT5Config, UMT5EncoderModel

    from multishot.dataset.synthetic_world import vocabulary_words
    from multishot.generate.random_models import word_level_tokenizer

    folder = Path(folder)
    fast = word_level_tokenizer(["<pad>", "</s>", "<unk>"] + vocabulary_words())
    fast.save_pretrained(folder)
    torch.manual_seed(seed)
    umt5 = UMT5EncoderModel(UMT5Config(vocab_size=len(fast), d_model=text_dim, d_kv=16,
                                       d_ff=128, num_layers=1, num_heads=4))
    umt5.save_pretrained(folder)
    return str(folder)


def new_vae(z_dim: int = 16, base_dim: int = 16):
    """The world's Wan VAE (diffusers ``AutoencoderKLWan``, stride 4×8×8, base width 16)."""
    from multishot.torchvision_cpu import import_torchvision

    import_torchvision()
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(base_dim=base_dim, z_dim=z_dim, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                            latents_mean=[0.0] * z_dim, latents_std=[1.0] * z_dim)


def to_video_tensor(frames: np.ndarray):
    """``[B, F, H, W, 3]`` uint8 → ``[B, 3, F, H, W]`` float in [-1, 1]."""
    import torch

    return torch.from_numpy(frames).permute(0, 4, 1, 2, 3).float() / 127.5 - 1


def render_many(films, workers: int = 1) -> np.ndarray:
    """``[N, F, H, W, 3]`` uint8 frames of ``films`` (a process pool when ``workers > 1``)."""
    from multishot.dataset.synthetic_world import render_film

    if workers > 1 and len(films) > 64:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as pool:
            return np.stack(list(pool.map(render_film, films, chunksize=64)))
    return np.stack([render_film(f) for f in films])


def train_vae(folder: str | Path, frames: np.ndarray, steps: int, device, batch: int = 8,
              clip: int | None = None, lr: float = 1e-3, seed: int = 0, log=print,
              init: str | None = None, max_seconds: float = float("inf"),
              base_dim: int = 16) -> dict:
    """Train :func:`new_vae` (or continue ``init``, a saved one) on random ``clip``-frame
    windows (starting at ``4t``; default the whole films: the VAE encodes 33-frame films causally,
    and a VAE trained on shorter clips drifts in the latent frames it never saw) of ``frames``
    ``[N, F, H, W, 3]`` for ``steps`` steps or ``max_seconds``, whichever ends first; set its
    latent mean / std from the encoded training films and save it to ``folder``.

    Loss: L1 + MSE of the pixels in [-1, 1] + 1e-6 KL (plain reconstruction, every pixel
    weighted alike). AdamW at ``lr``, 50 warm-up steps, cosine to 0.1 ``lr`` over the run's
    progress: the larger of ``step / steps`` and ``elapsed / max_seconds`` (a run stopped by its
    time budget still ends at the low learning rate). Returns ``{"steps", "seconds",
    "final_loss", "init", "batch", "clip_frames", "lr", "base_dim"}``."""
    import torch

    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = True  # one clip shape all run: the fastest conv3d kernels
    rng = np.random.default_rng(seed)
    clip = clip or frames.shape[1]
    if init:
        from multishot.torchvision_cpu import import_torchvision

        import_torchvision()
        from diffusers import AutoencoderKLWan

        vae = AutoencoderKLWan.from_pretrained(init).to(device).train()
    else:
        vae = new_vae(base_dim=base_dim).to(device).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    start, losses = time.perf_counter(), []
    n, f = frames.shape[:2]
    for step in range(steps):
        elapsed = time.perf_counter() - start
        if elapsed > max_seconds:
            log(f"vae: time budget reached at step {step}")
            break
        progress = min(1.0, max(step / max(steps, 1), elapsed / max_seconds))
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 50) * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))
        idx = rng.integers(0, n, batch)
        t0 = rng.integers(0, (f - clip) // 4 + 1, batch) * 4
        x = to_video_tensor(np.stack([frames[i, s:s + clip] for i, s in zip(idx, t0)])).to(device)
        with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
            posterior = vae.encode(x).latent_dist
            rec = vae.decode(posterior.sample()).sample
        rec = rec.float()
        loss = (rec - x).abs().mean() + ((rec - x) ** 2).mean() + 1e-6 * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if step % 200 == 0 or step == steps - 1:
            log(f"vae step {step} loss {loss.item():.4f}")
    vae.eval()
    with torch.no_grad():
        zs = []
        for i in range(0, min(n, 256), 32):
            zs.append(vae.encode(to_video_tensor(frames[i:i + 32]).to(device)).latent_dist.mode().float())
        z = torch.cat(zs)
        mean = z.mean(dim=(0, 2, 3, 4)).tolist()
        std = z.std(dim=(0, 2, 3, 4)).clamp_min(1e-3).tolist()
    vae.register_to_config(latents_mean=mean, latents_std=std)
    vae.save_pretrained(folder)
    return {"steps": len(losses), "seconds": time.perf_counter() - start,
            "final_loss": float(np.mean(losses[-50:])) if losses else None, "init": init, "batch": batch,
            "clip_frames": clip, "lr": lr, "base_dim": vae.config.base_dim}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR (dB) of two uint8 arrays."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / max(mse, 1e-12)))


def decode(vae, latents, device) -> np.ndarray:
    """Normalised latents ``[B, C, F_lat, H_lat, W_lat]`` → ``[B, F, H, W, 3]`` uint8, as
    :func:`generate.generator.decode_latents` (``latents · std + mean`` → VAE decode)."""
    import torch

    mean = torch.tensor(vae.config.latents_mean, device=device).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std, device=device).view(1, -1, 1, 1, 1)
    with torch.no_grad():
        video = vae.decode((latents.to(device).float() * std + mean).to(vae.dtype)).sample
    video = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return video.permute(0, 2, 3, 4, 1).cpu().numpy()


def reconstruct(encoders, frames: np.ndarray, device, batch: int = 16) -> np.ndarray:
    """``frames`` ``[N, F, H, W, 3]`` uint8 through the VAE and back, as the product does
    (:meth:`model.encoders.FrozenEncoders.encode_video`, the posterior's mode, normalised, then
    :func:`decode`) → ``[N, F, H, W, 3]`` uint8."""
    import torch

    with torch.no_grad():
        return np.concatenate([decode(encoders.vae, encoders.encode_video(
            to_video_tensor(frames[i:i + batch])), device) for i in range(0, len(frames), batch)])


def vae_ceiling(films, frames: np.ndarray, rec: np.ndarray) -> dict:
    """What the VAE leaves of each score, on ground-truth films ``frames`` and their
    reconstructions ``rec`` (:func:`reconstruct`), both ``[N, F, H, W, 3]`` uint8.

    Defined before measured (issue 30's decoded-pixel columns, :func:`score`):

    * ``ground_truth``: :func:`score` of the renders themselves: 1.0 in every column, or the
      metric (classifier, score) is wrong;
    * ``reconstruction``: :func:`score` of the reconstructions: the value each column would
      take if the DiT produced exactly the encoder's latents of the true film (the VAE's
      ceiling on that column; a DiT cannot be credited with more by the decoded-pixel scores
      unless its latents decode better than the encoder's own). ``character_consistency`` asks
      only that later shots read as shot 1 does, right or wrong, so a decoder that draws one
      wrong character everywhere scores 1.0 there: read it beside ``named_character``;
    * ``where``: where the character is lost: per latent frame index ``t`` (pixel frames
      ``4t - 3 .. 4t``; frame 0 is latent frame 0) the fraction of pixel frames whose read
      character (:func:`dataset.synthetic_world.classify_character`) is the true one, the
      fraction whose shape / colour / texture is wrong or with no character seen, and the PSNR
      (dB); per shot index, the fraction of shots whose majority read character is the true one.
    """
    from multishot.dataset.synthetic_world import characters_in, classify_character, classify_scene

    lat = [(i + 3) // 4 for i in range(frames.shape[1])]
    n_lat = max(lat) + 1
    ok, seen_none, total = np.zeros(n_lat), np.zeros(n_lat), np.zeros(n_lat)
    wrong = {a: np.zeros(n_lat) for a in ("shape", "colour", "texture")}
    sq_err = np.zeros(n_lat)
    most = max(len(f.shots) for f in films)
    shot_ok, shot_n = np.zeros(most), np.zeros(most)
    for film, r, g in zip(films, rec, frames):
        scenes = [classify_scene(f) for f in r]
        for i, t in enumerate(lat):
            c = classify_character(r[i], scenes[i])
            total[t] += 1
            sq_err[t] += np.mean((r[i].astype(np.float64) - g[i]) ** 2)
            if c is None:
                seen_none[t] += 1
                continue
            ok[t] += c == film.character
            for a in wrong:
                wrong[a][t] += getattr(c, a) != getattr(film.character, a)
        chars = characters_in(r, [(s.start_frame, s.end_frame) for s in film.shots], scenes)
        for k, c in enumerate(chars):
            shot_ok[k] += c == film.character
            shot_n[k] += 1
    per = lambda v: [round(float(x), 4) for x in v / np.maximum(total, 1)]  # noqa: E731
    strip = lambda d: {k: v for k, v in d.items() if k != "per_film"}  # noqa: E731
    return {
        "films": len(films), "psnr_db": psnr(rec, frames),
        "ground_truth": strip(score(films, frames)), "reconstruction": strip(score(films, rec)),
        "where": {
            "latent_frame_character_read": per(ok), "latent_frame_shape_wrong": per(wrong["shape"]),
            "latent_frame_colour_wrong": per(wrong["colour"]),
            "latent_frame_texture_wrong": per(wrong["texture"]), "latent_frame_no_character": per(seen_none),
            "latent_frame_psnr_db": [round(float(10 * np.log10(255.0 ** 2 / max(e / max(n, 1), 1e-12))), 2)
                                     for e, n in zip(sq_err, total)],
            "shot_index_character_read": [round(float(o / max(n, 1)), 4) for o, n in zip(shot_ok, shot_n)],
            "shot_index_shots": [int(n) for n in shot_n]}}


def second_half(encoders, films, frames: np.ndarray, rec: np.ndarray, device) -> dict:
    """Frames 17-32 of ``films`` (``frames`` ``[N, 33, H, W, 3]`` uint8) decoded from the whole
    film (``rec``, :func:`reconstruct` of ``frames``) against the same frames encoded as a
    17-frame clip of their own (frames 16-32): the fraction of those pixel frames whose read
    character is the true one, and their PSNR (dB), in both. A gap means the causal VAE drifts
    in latent frames past the length it was trained on (17-frame clips before this change)."""
    from multishot.dataset.synthetic_world import classify_character, classify_scene

    alone = reconstruct(encoders, np.ascontiguousarray(frames[:, 16:]), device)[:, 1:]
    whole = rec[:, 17:]

    def read(videos):
        return float(np.mean([classify_character(f, classify_scene(f)) == film.character
                              for film, video in zip(films, videos) for f in video]))

    return {"in_whole_film": {"character_read": read(whole), "psnr_db": psnr(whole, frames[:, 17:])},
            "as_own_clip": {"character_read": read(alone), "psnr_db": psnr(alone, frames[:, 17:])}}


def measure_vae(encoders, probe_films: int, eval_count: int, device) -> dict:
    """The VAE's faithfulness: PSNR (dB) and the classifier's scene / character read-back on the
    reconstructions of ``probe_films`` held-out films (seeds ``7_000_000 + i``); on the ground
    truth of the first ``eval_count`` evaluation prompts (:func:`eval_films`: the films the
    ablation's scores ask for), :func:`vae_ceiling` and :func:`second_half`."""
    from multishot.dataset.synthetic_world import (characters_in, classify_video, frame_accuracy,
                                                   sample_film)

    probe = [sample_film(7_000_000 + i, name=f"probe{i}") for i in range(probe_films)]
    pframes = render_many(probe)
    rec = reconstruct(encoders, pframes, device)
    scene_acc, char_acc, shots = [], 0, 0
    for film, r in zip(probe, rec):
        reading = classify_video(r)
        scene_acc.append(frame_accuracy(reading, film))
        chars = characters_in(r, [(s.start_frame, s.end_frame) for s in film.shots], reading.scenes)
        char_acc += sum(c == film.character for c in chars)
        shots += len(film.shots)
    films = eval_films(eval_count)
    frames = render_many(films)
    erec = reconstruct(encoders, frames, device)
    return {"psnr_db": psnr(rec, pframes), "probe_films": len(probe),
            "reconstruction_scene_accuracy": float(np.mean(scene_acc)),
            "reconstruction_character_accuracy": char_acc / shots,
            "ceiling": {**vae_ceiling(films, frames, erec),
                        "second_half": second_half(encoders, films, frames, erec, device)}}


# ---- data ------------------------------------------------------------------------------------

def encode_films(encoders, films, frames: np.ndarray, text_len: int, batch: int = 64) -> dict:
    """Latents, padded UMT5 states, caption windows and shot starts of ``films``."""
    import torch

    from multishot.model.layout import latent_shot_starts

    latents, contexts, spans = [], [], []
    for i in range(0, len(films), batch):
        latents.append(encoders.encode_video(to_video_tensor(frames[i:i + batch])).cpu())
        prompts = [f.prompt for f in films[i:i + batch]]
        for s in encoders.encode_prompts(prompts, text_len):
            contexts.append(torch.nn.functional.pad(s.cpu(), (0, 0, 0, text_len - s.shape[0])))
        for (sp, why), f in zip(encoders.text_spans(prompts, [len(f.shots) for f in films[i:i + batch]],
                                                    text_len), films[i:i + batch]):
            if why is not None:
                raise ValueError(f"{f.name}: {why}")
            spans.append(sp)
    return {"latents": torch.cat(latents), "context": torch.stack(contexts), "spans": spans,
            "shot_starts": [latent_shot_starts(f.num_frames, f.cut_frames) for f in films]}


def training_films(count: int):
    """The training films: seeds ``1_000_000 + i`` (named ``train<i>``), skipping
    :data:`HELD_OUT_CHARACTERS`."""
    from multishot.dataset.synthetic_world import sample_film

    films, seed = [], 0
    while len(films) < count:
        f = sample_film(1_000_000 + seed, name=f"train{seed:06d}")
        seed += 1
        if (f.character.shape, f.character.colour) not in HELD_OUT_CHARACTERS:
            films.append(f)
    return films


def make_vae(out: Path, args, frames: np.ndarray, device, log=print) -> dict:
    """Train the world's VAE on ``frames`` (:func:`train_vae` with ``args.vae_*``) into
    ``out/vae`` and measure it (:func:`measure_vae`); writes and returns ``out/vae.json``
    (``python -m multishot.learn vae`` alone, or step 1 of ``prepare``)."""
    from multishot.model.settings import EncodersConfig
    from multishot.model.encoders import FrozenEncoders

    info = train_vae(out / "vae", frames, args.vae_steps, device, batch=args.vae_batch,
                     clip=args.vae_clip, lr=args.vae_lr, log=log, init=args.vae_init,
                     max_seconds=args.vae_seconds, base_dim=args.vae_base_dim)
    encoders = FrozenEncoders.load(EncodersConfig(vae=str(out / "vae"), dtype="float32"), device)
    info.update(measure_vae(encoders, args.probe_films, args.eval_films, device),
                device=device_name(device), train_films=len(frames))
    (out / "vae.json").write_text(json.dumps(info, indent=1))
    log("VAE: " + json.dumps({k: v for k, v in info.items() if k != "ceiling"}))
    return info


def prepare(out: Path, args, device, log=print) -> dict:
    """Encoders, VAE training and the encoded training set into ``out`` (step 1-2)."""
    import torch

    from multishot.model.config import get_config
    from multishot.model.settings import EncodersConfig
    from multishot.model.encoders import FrozenEncoders

    info: dict = {}
    t0 = time.perf_counter()
    text_dir = make_text_encoder(out / "text_encoder", get_config(MODEL).text_dim)
    films = training_films(args.train_films)
    frames = render_many(films, workers=args.workers)
    info["render_s"] = time.perf_counter() - t0
    log(f"rendered {len(films)} training films in {info['render_s']:.1f} s")
    info["vae"] = make_vae(out, args, frames, device, log)
    encoders = FrozenEncoders.load(EncodersConfig(vae=str(out / "vae"), text_encoder=text_dir,
                                                  dtype="float32"), device)
    t1 = time.perf_counter()
    data = encode_films(encoders, films, frames, get_config(MODEL).text_len)
    data["prompts"] = [f.prompt for f in films]
    info["encode_s"] = time.perf_counter() - t1
    torch.save(data, out / "train_data.pt")
    (out / "prepare.json").write_text(json.dumps(info, indent=1))
    return info


# ---- one variant -----------------------------------------------------------------------------

def train_variant(variant: str, data: dict, steps: int, batch: int, lr: float, device,
                  seed: int = 0, log=print, max_seconds: float = float("inf"), config=None,
                  causal=None, shift: float | None = None):
    """Train a fresh ``learn`` WanModel of ``variant`` on the encoded data for ``steps`` steps
    (or until ``max_seconds``, a safety stop: the steps done are the losses' count); returns
    ``(model, losses, seconds)``. ``config``: a :class:`model.config.WanConfig` (default the
    ``learn`` architecture). ``causal``: a :class:`model.causal.CausalConfig` tunes the causal
    mode by parallel teacher forcing instead (:meth:`model.dit.WanModel.forward_teacher_forcing`
    with every latent frame's window of its shot, as :meth:`trainer.trainer.Trainer.step` does;
    :mod:`multishot.learn_recall`). ``shift``: the flow-matching timestep shift
    (:class:`trainer.flow_matching.FlowMatchConfig`; None: its default, Wan's 5)."""
    import torch

    from multishot.model.config import get_config
    from multishot.model.dit import WanModel
    from multishot.model.layout import ShotLayout
    from multishot.trainer.config import OptimConfig
    from multishot.trainer.flow_matching import FlowMatchConfig, FlowMatching
    from multishot.trainer.trainer import lr_lambda

    switches = VARIANTS[variant]
    config = config or get_config(MODEL)
    torch.manual_seed(seed)
    model = WanModel(config, ATTENTION_BACKEND, sparse_self_attention=switches["sparse_self_attention"],
                     global_bank=switches["global_bank"]).to(device).train()
    optim = OptimConfig(lr=lr, warmup_steps=min(100, steps // 10), schedule="cosine",
                        min_lr_ratio=0.1, weight_decay=0.01, grad_clip=1.0)
    opt = torch.optim.AdamW(model.parameters(), lr=optim.lr, betas=optim.betas,
                            weight_decay=optim.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(optim, steps))
    flow = FlowMatching(FlowMatchConfig() if shift is None else FlowMatchConfig(shift=shift), device)
    latents, context = data["latents"].to(device), data["context"].to(device)
    n = latents.shape[0]
    tokens_per_frame = (latents.shape[3] // 2) * (latents.shape[4] // 2)
    rng = np.random.default_rng(seed)
    gen = torch.Generator(device).manual_seed(seed)
    losses, start = [], time.perf_counter()
    for step in range(steps):
        if time.perf_counter() - start > max_seconds:
            log(f"time budget reached at step {step}")
            break
        idx = rng.choice(n, batch, replace=False)
        layout = ShotLayout.from_shot_starts([data["shot_starts"][i] for i in idx],
                                             latents.shape[2], tokens_per_frame, device)
        spans = [data["spans"][i] for i in idx] if switches["window_cross_attention"] else None
        ix = torch.as_tensor(idx, device=device)
        noised = flow.noise(latents[ix], gen)
        # float32 parameters and compute (TF32 matmuls on CUDA): the model keeps its time
        # embedding float32 and asserts it, which autocast would break
        if causal is None:
            pred = model(noised.x_t, noised.timestep, context[ix], layout, spans)
        else:
            text_mask = None if spans is None else model.frame_text_mask(layout, spans)
            pred = model.forward_teacher_forcing(latents[ix], noised.x_t, noised.timestep,
                                                 context[ix], causal, text_mask)
        loss = flow.loss(pred, noised)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), optim.grad_clip)
        opt.step()
        sched.step()
        losses.append(loss.detach())
        if step % 250 == 0 or step == steps - 1:
            log(f"{variant} step {step} loss {loss.item():.4f}")
    losses = [float(x) for x in torch.stack(losses).cpu()]
    return model.eval(), losses, time.perf_counter() - start


def fixed_loss(model, data: dict, variant: str, device, count: int = 8, seed: int = 1234) -> float:
    """The flow-matching loss of ``model`` on the first ``count`` encoded films with noise and
    timesteps fixed by ``seed`` (the same draws before and after training)."""
    import torch

    from multishot.model.layout import ShotLayout
    from multishot.trainer.flow_matching import FlowMatchConfig, FlowMatching

    latents = data["latents"][:count].to(device)
    layout = ShotLayout.from_shot_starts(data["shot_starts"][:count], latents.shape[2],
                                         (latents.shape[3] // 2) * (latents.shape[4] // 2), device)
    spans = data["spans"][:count] if VARIANTS[variant]["window_cross_attention"] else None
    noised = FlowMatching(FlowMatchConfig(weighting="uniform"), device).noise(
        latents, torch.Generator(device).manual_seed(seed))
    with torch.no_grad():
        pred = model(noised.x_t, noised.timestep, data["context"][:count].to(device), layout, spans)
    return float(FlowMatching.loss(pred, noised))


#: what :func:`recaption` can change in a named caption
CAPTION_CHANGES = ("colour", "shape", "texture", "anonymous", "scene")


def recaption(film, change: str) -> str:
    """``film``'s prompt with one thing changed (``film`` named; :data:`CAPTION_CHANGES`): the
    character's ``colour`` / ``shape`` / ``texture`` word replaced by the next one of the world's
    vocabulary, the character not named (``anonymous``), or the first shot's ``scene`` replaced
    (the control: a word the model is known to follow). Raises ``ValueError`` for another
    ``change``."""
    from dataclasses import replace

    from multishot.dataset.synthetic_world import COLOURS, SCENES, SHAPES, TEXTURES, caption

    def nxt(values, v):
        values = list(values)
        return values[(values.index(v) + 1) % len(values)]

    c, scenes = film.character, film.scenes
    if change in ("colour", "shape", "texture"):
        c = replace(c, **{change: nxt({"colour": COLOURS, "shape": SHAPES, "texture": TEXTURES}[change],
                                      getattr(c, change))})
    elif change == "scene":
        taken = set(scenes[1:2])
        scenes = [nxt([s for s in SCENES if s not in taken or s == scenes[0]], scenes[0])] + scenes[1:]
    elif change != "anonymous":
        raise ValueError(f"caption change {change!r} is not one of {CAPTION_CHANGES}")
    return caption(c, scenes, "anonymous" if change == "anonymous" else "named")


def character_cover(film, stride: int = 8) -> np.ndarray:
    """``[F_lat, H / stride, W / stride]`` float: the fraction of each latent position's pixels
    (``stride``: the VAE's spatial stride) that the character covers, over the pixel frames of
    each latent frame (latent frame ``t`` holds pixel frames ``4t - 3 .. 4t``; frame 0 alone).
    The character's pixels are those that differ from the same film rendered with the character
    away."""
    from dataclasses import replace

    from multishot.dataset.synthetic_world import render_film

    away = replace(film, shots=tuple(replace(s, character_visible=False) for s in film.shots))
    mask = (render_film(away) != render_film(film)).any(-1).astype(np.float64)   # [F, H, W]
    f, h, w = mask.shape
    lat = np.array([(i + 3) // 4 for i in range(f)])
    blocks = mask.reshape(f, h // stride, stride, w // stride, stride).mean((2, 4))
    return np.stack([blocks[lat == t].mean(0) for t in range(lat.max() + 1)])


def caption_sensitivity(model, encoders, films, sigmas=(0.95, 0.8, 0.5, 0.2),
                        changes=CAPTION_CHANGES, window: bool = True, seed: int = 0) -> dict:
    """Does ``model`` (a ``learn`` :class:`model.dit.WanModel`) use the caption's character words?

    For the named ``films``: their VAE latents ``x0`` (``encoders``), one noise draw
    (``seed``), and at each flow-matching ``σ`` in ``sigmas`` (the nearest entry of the training
    table, :class:`trainer.flow_matching.FlowMatching`) the model's prediction with the true
    prompt and with each :func:`recaption` of it. Per σ and caption: the MSE of the prediction
    against the flow target ``ε − x0`` on **character** latent positions (:func:`character_cover`
    ≥ 0.5) and on **background** positions (no character pixel in the position or its 8
    neighbours), and the mean squared change of the prediction from the true caption's on each.
    A model that uses a word predicts worse (higher character MSE) when the word is wrong; one
    that ignores it changes its prediction no more on character positions than on background
    ones; ``error_share_character``: the character positions' share of the whole squared error
    (against ``character_position_share``, their share of the positions). ``window``: window
    cross-attention (the prompt's spans) or unmasked.

    Returns ``{"films", "character_positions_per_frame", "character_position_share",
    "sigma_<σ>": {caption: {"mse_character", "error_share_character", "mse_background",
    "change_character", "change_background"}}}`` (σ with three decimals)."""
    import torch

    from multishot.model.layout import ShotLayout, latent_shot_starts
    from multishot.trainer.flow_matching import FlowMatchConfig, FlowMatching

    if any(f.caption_mode != "named" for f in films):
        raise ValueError("caption_sensitivity needs named films")
    device = next(model.parameters()).device
    text_len = model.config.text_len
    frames = render_many(films)
    with torch.no_grad():
        x0 = encoders.encode_video(to_video_tensor(frames).to(device)).float()
    cover = torch.from_numpy(np.stack([character_cover(f, frames.shape[2] // x0.shape[3])
                                       for f in films])).float().to(device)[:, None]
    on_char = (cover >= 0.5).expand_as(x0)
    on_bg = (torch.nn.functional.max_pool3d(cover, (1, 3, 3), 1, (0, 1, 1)) == 0).expand_as(x0)
    layout = ShotLayout.from_shot_starts([latent_shot_starts(f.num_frames, f.cut_frames) for f in films],
                                         x0.shape[2], (x0.shape[3] // 2) * (x0.shape[4] // 2), device)
    conditions = {}
    for name, prompts in {"true": [f.prompt for f in films],
                          **{c: [recaption(f, c) for f in films] for c in changes}}.items():
        states = encoders.encode_prompts(prompts, text_len)
        context = torch.stack([torch.nn.functional.pad(s, (0, 0, 0, text_len - len(s))) for s in states])
        spans = [sp for sp, _ in encoders.text_spans(prompts, [len(f.shots) for f in films], text_len)]
        conditions[name] = (context.to(device), spans if window else None)
    flow = FlowMatching(FlowMatchConfig(), device)
    eps = torch.randn(x0.shape, generator=torch.Generator(device).manual_seed(seed), device=device)
    out = {"films": len(films), "character_positions_per_frame": float((cover >= 0.5).sum() / (
        len(films) * x0.shape[2])), "character_position_share": float(on_char.float().mean())}
    for sigma in sigmas:
        i = int((flow.sigmas - sigma).abs().argmin())
        s = float(flow.sigmas[i])
        x_t, target = (1 - s) * x0 + s * eps, eps - x0
        with torch.no_grad():
            pred = {k: model(x_t, flow.timesteps[i].repeat(len(films)), c, layout, sp).float()
                    for k, (c, sp) in conditions.items()}
        out[f"sigma_{s:.3f}"] = {k: {
            "mse_character": float(((p - target) ** 2)[on_char].mean()),
            "error_share_character": float(((p - target) ** 2)[on_char].sum() / ((p - target) ** 2).sum()),
            "mse_background": float(((p - target) ** 2)[on_bg].mean()),
            "change_character": float(((p - pred["true"]) ** 2)[on_char].mean()),
            "change_background": float(((p - pred["true"]) ** 2)[on_bg].mean())} for k, p in pred.items()}
    return out


def eval_films(count: int, seed: int = 99):
    """Fresh evaluation prompts: 2-4 shots, half named, A-B-A likely, held-out characters
    included (another seed range than training)."""
    from multishot.dataset.synthetic_world import sample_film

    return [sample_film(90_000_000 + seed * 10_000 + i, num_shots=2 + i % 3,
                        caption_mode=("named", "anonymous")[i % 2], aba_probability=0.6,
                        name=f"eval{i:04d}") for i in range(count)]


#: the attributes of a character (:class:`dataset.synthetic_world.Character`)
CHARACTER_ATTRIBUTES = ("colour", "shape", "texture")


def attribute_consistency(shot_characters) -> dict:
    """Inter-shot consistency of each character attribute, and its chance level, on films of
    which only the per-shot read characters are given.

    ``shot_characters``: one list per film (``anonymous`` films in :func:`score`) of its shots'
    read characters (:func:`dataset.synthetic_world.characters_in`: the majority character of
    each shot, None where no character was seen); films of one shot add nothing.

    Defined before measured (issue 30's ``character_consistency`` split by attribute):

    * ``consistency[a]``, for ``a`` in ``colour`` / ``shape`` / ``texture`` and ``character``
      (all three: the existing ``character_consistency``): over every later shot ``k >= 2`` of
      every film, the fraction whose read ``a`` equals shot 1's read ``a``. A later shot with no
      character read, or a film whose shot 1 has none, is a miss, as the full metric counts it.
      The attribute is the one of the shot's majority character (not a per-attribute vote), so
      ``consistency["character"]`` is at most each attribute's.
    * ``chance[a]``: the same fraction with each film's shot 1 replaced by *another* film's
      shot 1 (every other film equally likely): the metric's expectation if shot 1 were drawn
      independently of the later shots from the generator's own distribution of shot-1 reads
      (read-nothing included, it never matches). It equals ``Σ_v p1(v) · pL(v)`` (``p1``: the
      leave-one-out distribution of shot 1's read ``a``; ``pL``: that of later shots), so it
      accounts for mode collapse: a generator that draws only circles scores shape consistency
      1.0 at chance 1.0. Uniform draws would give 1/4, 1/3, 1/2 and 1/24.

    Returns:
        ``{"consistency": {a: float | None}, "chance": {a: float | None}, "later_shots": int,
        "films": int}``; None where there is no later shot (or, for ``chance``, fewer than two
        films with one).
    """
    films = [list(chars) for chars in shot_characters if len(chars) > 1]
    later = sum(len(chars) - 1 for chars in films)
    keys = (*CHARACTER_ATTRIBUTES, "character")

    def value(c, a):
        return None if c is None else c if a == "character" else getattr(c, a)

    def agree(x, y):
        return x is not None and x == y

    consistency, chance = {}, {}
    for a in keys:
        firsts = [value(chars[0], a) for chars in films]
        hits = sum(agree(value(c, a), first) for chars, first in zip(films, firsts) for c in chars[1:])
        consistency[a] = None if later == 0 else hits / later
        if len(films) < 2:
            chance[a] = None
            continue
        # each later shot against every other film's shot 1, averaged
        expected = sum(sum(agree(value(c, a), f) for j, f in enumerate(firsts) if j != i) / (len(films) - 1)
                       for i, chars in enumerate(films) for c in chars[1:])
        chance[a] = expected / later
    return {"consistency": consistency, "chance": chance, "later_shots": later, "films": len(films)}


def score(films, videos: np.ndarray) -> dict:
    """The module docstring's metrics of decoded ``videos`` ``[N, F, H, W, 3]`` of ``films``."""
    from multishot.dataset.synthetic_world import characters_in, classify_video
    from multishot.evaluate.sca import shot_cut_accuracy

    sca, count_err, frames_ok, frames = [], [], 0, 0
    named, named_ok, held, held_ok, later, later_ok, aba, aba_ok = (0,) * 8
    attr_ok = {"colour": 0, "shape": 0, "texture": 0}
    per_film, anonymous = [], []
    for film, video in zip(films, videos):
        reading = classify_video(video)
        r = shot_cut_accuracy(reading.cut_frames, film.cut_frames, film.num_frames)
        sca.append(r.sca)
        count_err.append(abs(r.shot_count_error))
        truth = [s.scene for s in film.shots for _ in range(s.start_frame, s.end_frame)]
        frames_ok += sum(a == b for a, b in zip(reading.scenes, truth))
        frames += len(truth)
        ranges = [(s.start_frame, s.end_frame) for s in film.shots]
        chars = characters_in(video, ranges, reading.scenes)
        shot_scenes = [max(set(reading.scenes[a:b]), key=reading.scenes[a:b].count) for a, b in ranges]
        if film.caption_mode == "named":
            ok = sum(c == film.character for c in chars)
            named, named_ok = named + len(chars), named_ok + ok
            for a in attr_ok:
                attr_ok[a] += sum(c is not None and getattr(c, a) == getattr(film.character, a)
                                  for c in chars)
            if (film.character.shape, film.character.colour) in HELD_OUT_CHARACTERS:
                held, held_ok = held + len(chars), held_ok + ok
        else:
            later += len(chars) - 1
            later_ok += sum(c is not None and c == chars[0] for c in chars[1:])
            anonymous.append(chars)
        if film.aba:
            aba += 1
            aba_ok += shot_scenes[2] == film.shots[0].scene and chars[2] is not None \
                and chars[2] == chars[0]
        per_film.append({"name": film.name, "prompt": film.prompt, "cuts": film.cut_frames,
                         "detected_cuts": reading.cut_frames, "sca": r.sca,
                         "characters": [None if c is None else c.words() for c in chars]})
    ratio = lambda a, b: None if b == 0 else a / b  # noqa: E731
    kept = attribute_consistency(anonymous)
    return {"sca": float(np.mean(sca)), "shot_count_error": float(np.mean(count_err)),
            "caption_following": frames_ok / frames, "named_character": ratio(named_ok, named),
            **{f"named_{a}": ratio(k, named) for a, k in attr_ok.items()}, "named_shots": named,
            "held_out_character": ratio(held_ok, held),
            "character_consistency": ratio(later_ok, later), "aba_recall": ratio(aba_ok, aba),
            **{f"consistency_{a}": kept["consistency"][a] for a in CHARACTER_ATTRIBUTES},
            **{f"consistency_{a}_chance": kept["chance"][a] for a in (*CHARACTER_ATTRIBUTES, "character")},
            "films": len(films), "aba_films": aba, "held_out_shots": held, "per_film": per_film}


def film_of_request(prompt: str, cut_frames: list[int], num_frames: int, height: int,
                    width: int, name: str = "video"):
    """The ground truth a world prompt asks for (a :class:`dataset.synthetic_world.Film`):
    scenes from the shot captions, the character from a named global caption (else an unknown
    one and caption mode ``anonymous``), shots from ``cut_frames``.

    Raises:
        ValueError: the prompt is not a world prompt (a shot caption names no scene).
    """
    from multishot.dataset.record import split_prompt
    from multishot.dataset.synthetic_world import (COLOURS, FPS, SCENES, SHAPES, TEXTURES,
                                                   Character, Film, ShotTruth)

    global_caption, shots = split_prompt(prompt)
    scenes = [s.rstrip(". ").strip() for s in shots]
    bad = [s for s in scenes if s not in SCENES]
    if bad:
        raise ValueError(f"shot captions {bad} name no scene of the world ({sorted(SCENES)})")
    if len(scenes) != len(cut_frames) + 1:
        raise ValueError(f"{len(scenes)} shot captions for {len(cut_frames)} cuts")
    words = global_caption.replace(".", " ").split()
    pick = lambda options: next((w for w in words if w in options), None)  # noqa: E731
    shape, colour, texture = pick(SHAPES), pick(COLOURS), pick(TEXTURES)
    named = None not in (shape, colour, texture)
    character = Character(shape, colour, texture) if named else Character("?", "?", "?")
    edges = [0, *cut_frames, num_frames]
    truths = tuple(ShotTruth(a, b, s, 0.0, 0.0, 0.0) for (a, b), s in zip(zip(edges, edges[1:]), scenes))
    return Film(name, 0, num_frames, height, width, FPS, character, truths,
                "named" if named else "anonymous",
                len(scenes) >= 3 and scenes[2] == scenes[0], prompt)


def score_files(paths: list[str]) -> dict:
    """``python -m multishot.learn score``: the world's scores of ``multishot generate`` mp4s
    (prompt and cuts read from the JSON beside each), over all of them and per video."""
    from multishot.dataset.synthetic_world import read_video

    films, videos = [], []
    for path in paths:
        meta = json.loads(Path(path).with_suffix(".json").read_text())
        video = read_video(path)
        films.append(film_of_request(meta["prompt"], meta["cut_frames"], len(video),
                                     video.shape[1], video.shape[2], Path(path).stem))
        videos.append(video)
    return score(films, np.stack(videos))


def generate_all(model, encoders, films, device, steps: int, window: bool, seed: int = 0,
                 latent_hw: tuple[int, int] = (8, 8), shift: float | None = None):
    """Sample every film's prompt with the project's sampler (Euler, no CFG) → latents
    ``[N, C, F_lat, H_lat, W_lat]`` (``latent_hw``: the VAE's latent size of the world's
    frames; ``shift``: the sampler's timestep shift, None: :class:`model.sampling.SamplingConfig`'s
    default). Without autograd, as ``multishot generate`` samples (with it, each film's sampling
    graph stayed alive through the returned latents: ~0.25 GiB a film on the CPU)."""
    import torch

    from multishot.model.layout import ShotLayout
    from multishot.model.sampling import Conditioning, Expert, SamplingConfig, sample

    config = model.config
    sampling = SamplingConfig(steps=steps, cfg_scale=1.0, negative_prompt="",
                              **({} if shift is None else {"shift": shift}))
    expert = Expert(model, 1.0)
    contexts = encoders.encode_prompts([f.prompt for f in films], config.text_len)
    spans = encoders.text_spans([f.prompt for f in films], [len(f.shots) for f in films],
                                config.text_len)
    out = []
    for i, (film, context, (sp, _)) in enumerate(zip(films, contexts, spans)):
        h, w = latent_hw
        layout = ShotLayout.from_cut_frames(film.num_frames, film.cut_frames,
                                            (h // 2) * (w // 2), device)
        g = torch.Generator("cpu").manual_seed(seed + i)
        noise = torch.randn((1, config.in_channels, layout.num_latent_frames, h, w),
                            generator=g).to(device)
        cond = Conditioning(context.to(device), context[:1].to(device), layout,
                            sp if window else None)
        with torch.no_grad():
            latents, _ = sample([expert], noise, cond, sampling)
        out.append(latents.float())
    return torch.cat(out)


def run_variant(out: Path, variant: str, args) -> dict:
    """Train, save, generate and score one variant into ``out/<variant>.json``."""
    import torch

    from multishot.model.checkpoint import save_safetensors
    from multishot.model.settings import EncodersConfig
    from multishot.model.encoders import FrozenEncoders

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    log = lambda m: print(f"[{variant} {time.strftime('%H:%M:%S')}] {m}", flush=True)  # noqa: E731
    data = torch.load(out / "train_data.pt", weights_only=False)
    model, losses, seconds = train_variant(variant, data, args.steps, args.batch, args.lr,
                                           device, args.seed, log, args.train_seconds,
                                           shift=args.shift)
    state = {k: v.detach().to(torch.bfloat16 if v.is_floating_point() else v.dtype).cpu()
             for k, v in model.state_dict().items()}
    save_safetensors(state, out / variant / "dit.safetensors")
    # the variants share one GPU: hand training's cached blocks back before sampling (four
    # processes each holding ~18 GiB of cache ran an 80 GB H100 out of memory)
    del data
    if device.type == "cuda":
        torch.cuda.empty_cache()
    encoders = FrozenEncoders.load(EncodersConfig(vae=str(out / "vae"),
                                                  text_encoder=str(out / "text_encoder"),
                                                  dtype="float32"), device)
    films = eval_films(args.eval_films)
    t0 = time.perf_counter()
    latents = generate_all(model, encoders, films, device, args.sample_steps,
                           VARIANTS[variant]["window_cross_attention"], shift=args.shift)
    videos = np.concatenate([decode(encoders.vae, latents[i:i + 32], device)
                             for i in range(0, len(latents), 32)])
    gen_s = time.perf_counter() - t0
    result = {"variant": variant, **VARIANTS[variant], **score(films, videos),
              "final_loss": float(np.mean(losses[-100:])), "first_loss": float(np.mean(losses[:20])),
              "loss_curve": [float(np.mean(losses[i:i + 50])) for i in range(0, len(losses), 50)],
              "train_s": seconds, "generate_s": gen_s, "steps": len(losses), "batch": args.batch,
              "lr": args.lr, "sample_steps": args.sample_steps, "shift": args.shift,
              "device": device_name(device),
              "concurrent_variants": args.concurrent}
    (out / f"{variant}.json").write_text(json.dumps(result, indent=1))
    log("done: " + json.dumps({k: v for k, v in result.items() if k not in ("per_film", "loss_curve")}))
    return result


def evaluate_checkpoint(out: Path, variant: str, checkpoint: str, args) -> dict:
    """Generate and score the eval prompts with a saved DiT of ``variant`` (loaded by
    :func:`generate.generator.load_dit`, as ``multishot generate`` loads it) and the encoders in
    ``out``; writes ``out/<variant>_eval.json``."""
    import torch

    from multishot.model.checkpoint import load_dit
    from multishot.model.settings import EncodersConfig
    from multishot.model.encoders import FrozenEncoders

    device = torch.device(args.device)
    switches = VARIANTS[variant]
    model = load_dit(MODEL, checkpoint, device, torch.float32, attention_backend=ATTENTION_BACKEND,
                     sparse_self_attention=switches["sparse_self_attention"],
                     global_bank=switches["global_bank"])
    encoders = FrozenEncoders.load(EncodersConfig(vae=str(out / "vae"),
                                                  text_encoder=str(out / "text_encoder"),
                                                  dtype="float32"), device)
    films = eval_films(args.eval_films)
    t0 = time.perf_counter()
    latents = generate_all(model, encoders, films, device, args.sample_steps,
                           switches["window_cross_attention"], shift=args.shift)
    videos = np.concatenate([decode(encoders.vae, latents[i:i + 8], device)
                             for i in range(0, len(latents), 8)])
    result = {"variant": variant, **switches, **score(films, videos), "checkpoint": checkpoint,
              "generate_s": time.perf_counter() - t0, "sample_steps": args.sample_steps,
              "shift": args.shift,
              "eval_device": device_name(device)}
    (out / f"{variant}_eval.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "per_film"}, indent=1))
    return result


def device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


# ---- the table -------------------------------------------------------------------------------

#: HoloCine's expected direction of each ablation (Table 2), as issue 30 states it
DIRECTION = {
    "no_window": ("sca", "lower SCA than full"),
    "no_global": ("character_consistency", "lower character consistency than full"),
    "full_self_attention": (None, "about the same as full"),
}


def table(results: dict[str, dict], prep: dict) -> str:
    cols = ["sca", "shot_count_error", "caption_following", "named_character",
            "held_out_character", "character_consistency", "aba_recall", "final_loss",
            "steps", "train_s"]
    fmt = lambda v: "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    rows = ["| variant | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
    for name, r in results.items():
        rows.append(f"| {name} | " + " | ".join(fmt(r.get(c)) for c in cols) + " |")
    full = results.get("full")
    lines = []
    if full:
        for name, (metric, expected) in DIRECTION.items():
            r = results.get(name)
            if r is None:
                continue
            if metric is None:
                diffs = {m: r[m] - full[m] for m in ("sca", "caption_following", "character_consistency")
                         if r.get(m) is not None and full.get(m) is not None}
                agrees = all(abs(d) <= 0.05 for d in diffs.values())
                lines.append(f"- **{name}**: HoloCine: {expected}. Here: " + ", ".join(
                    f"{m} {d:+.3f}" for m, d in diffs.items()) +
                    f" vs full → {'agrees' if agrees else 'does not agree'} (within ±0.05).")
            else:
                d = r[metric] - full[metric] if r.get(metric) is not None else None
                agrees = d is not None and d < -0.02
                lines.append(f"- **{name}**: HoloCine: {expected}. Here {metric} "
                             f"{fmt(r.get(metric))} vs {fmt(full.get(metric))} "
                             f"→ {'agrees' if agrees else 'does not agree'}.")
    any_r = next(iter(results.values()))
    head = (f"Device: {any_r['device']} ({any_r['concurrent_variants']} variants trained at once "
            f"on it); {any_r['steps']} steps, batch {any_r['batch']}, lr {any_r['lr']}, "
            f"{any_r['films']} eval prompts, {any_r['sample_steps']} Euler steps, no CFG. "
            f"VAE PSNR {prep['vae']['psnr_db']:.2f} dB on {prep['vae']['probe_films']} held-out "
            f"films (classifier on its reconstructions: scene "
            f"{prep['vae']['reconstruction_scene_accuracy']:.3f}, character "
            f"{prep['vae']['reconstruction_character_accuracy']:.3f}).")
    ceiling = prep["vae"].get("ceiling")
    if ceiling:
        rec = ceiling["reconstruction"]
        head += (f" The VAE's ceiling on these columns (the {ceiling['films']} prompts' ground truth "
                 "through encode → decode, `multishot.learn.vae_ceiling`): " + ", ".join(
                     f"{k} {fmt(rec.get(k))}" for k in ("sca", "caption_following", "named_character",
                                                        "character_consistency", "aba_recall")) + ".")
    return head + "\n\n" + "\n".join(rows) + "\n\n" + consistency_table(results, ceiling) + "\n" + \
        "\n".join(lines) + "\n"


def consistency_table(results: dict[str, dict], ceiling: dict | None) -> str:
    """Markdown: each variant's inter-shot consistency per attribute beside its chance level
    (:func:`attribute_consistency`; ``value / chance``), and the VAE's ceiling row where known."""
    keys = (*CHARACTER_ATTRIBUTES, "character")

    def cell(r: dict, a: str) -> str:
        value = r.get("character_consistency" if a == "character" else f"consistency_{a}")
        chance = r.get(f"consistency_{a}_chance")
        return " / ".join("-" if v is None else f"{v:.3f}" for v in (value, chance))

    rows = ["Inter-shot consistency per attribute on anonymous films (value / chance: shot 1 taken "
            "from another film):", "", "| | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 1)]
    rows += [f"| {name} | " + " | ".join(cell(r, a) for a in keys) + " |" for name, r in results.items()]
    if ceiling:
        rows.append("| VAE ceiling | " + " | ".join(cell(ceiling["reconstruction"], a) for a in keys) + " |")
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m multishot.learn", description=__doc__.split("\n")[0])
    parser.add_argument("stage", choices=["run", "prepare", "vae", "variant", "table", "score",
                                          "evaluate"])
    parser.add_argument("--checkpoint", help="evaluate: the variant's saved DiT")
    parser.add_argument("videos", nargs="*", help="score: mp4s written by multishot generate")
    parser.add_argument("--out", help="run / prepare / variant / table: the run's folder")
    parser.add_argument("--variant", choices=list(VARIANTS))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--train-films", type=int, default=8000)
    parser.add_argument("--eval-films", type=int, default=128)
    parser.add_argument("--probe-films", type=int, default=64)
    parser.add_argument("--vae-steps", type=int, default=1500)
    parser.add_argument("--vae-batch", type=int, default=16)
    parser.add_argument("--vae-clip", type=int, default=None,
                        help="frames per VAE training clip, 4k+1 (default: the whole films)")
    parser.add_argument("--vae-base-dim", type=int, default=16, help="a new VAE's base width")
    parser.add_argument("--vae-lr", type=float, default=1e-3)
    parser.add_argument("--vae-init", default=None, help="continue training this saved VAE")
    parser.add_argument("--vae-seconds", type=float, default=float("inf"))
    parser.add_argument("--train-seconds", type=float, default=float("inf"),
                        help="safety stop of each variant's training")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--sample-steps", type=int, default=30)
    parser.add_argument("--shift", type=float, default=None,
                        help="flow-matching timestep shift of training and sampling (default: the "
                             "trainer's and sampler's, Wan's 5; benchmarks/learn_character.py)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    parser.add_argument("--concurrent", type=int, default=4, help="variants trained at once")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes for a CPU check")
    args = parser.parse_args(argv)
    if args.stage == "score":
        if not args.videos:
            print("multishot.learn score: no video given", file=sys.stderr)
            return 2
        try:
            result = score_files(args.videos)
        except (OSError, ValueError, KeyError) as err:
            print(f"multishot.learn score: {err}", file=sys.stderr)
            return 2
        print(json.dumps(result, indent=1))
        return 0
    if not args.out:
        print(f"multishot.learn {args.stage}: --out is required", file=sys.stderr)
        return 2
    if args.smoke:
        args.device, args.train_films, args.eval_films, args.probe_films = "cpu", 24, 3, 2
        args.vae_steps, args.vae_batch, args.steps, args.batch = 3, 2, 25, 4
        args.sample_steps, args.workers, args.concurrent, args.lr = 3, 1, 1, 1e-3
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import torch

    if args.stage in ("run", "prepare"):
        prepare(out, args, torch.device(args.device))
    if args.stage == "vae":
        make_vae(out, args, render_many(training_films(args.train_films), workers=args.workers),
                 torch.device(args.device))
    if args.stage == "variant":
        run_variant(out, args.variant, args)
    if args.stage == "evaluate":
        evaluate_checkpoint(out, args.variant, args.checkpoint, args)
    if args.stage == "run":
        names = args.variants.split(",")
        base = [sys.executable, "-m", "multishot.learn", "variant", "--out", str(out)] + [
            a for a in (argv if argv is not None else sys.argv[1:])
            if a not in ("run",)]
        for i in range(0, len(names), args.concurrent):
            procs = [subprocess.Popen(base + ["--variant", n]) for n in names[i:i + args.concurrent]]
            if any(p.wait() for p in procs):
                print("learn: a variant failed", file=sys.stderr)
                return 1
    if args.stage in ("run", "table"):
        results = {n: json.loads((out / f"{n}.json").read_text()) for n in VARIANTS
                   if (out / f"{n}.json").exists()}
        prep = json.loads((out / "prepare.json").read_text())
        (out / "learn.md").write_text(table(results, prep))
        print((out / "learn.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
