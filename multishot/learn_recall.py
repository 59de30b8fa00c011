"""Recall in the world of issue 30 (issue 32 [L]): does CausalCine's memory bring a character back?

A causal DiT tuned by teacher forcing on A-B-A films of :mod:`dataset.synthetic_world` streams
held-out A-B-A prompts chunk by chunk (:class:`generate.stream.ChunkStreamer`, the loop of
``multishot generate --causal``) twice: **camr** (Content-Aware Memory Routing on: routed frames
can reach shot A's frames after B) and **local_window** (the same model and config with
``routed_frames: 0``: the last ``horizon_frames − n`` frames only). The world's classifier reads
the decoded frames.

**The films** (:func:`recall_film`): 49 frames of 64×64 at 16 fps = 13 latent frames of 8×8
(16 tokens a frame after the 2×2 patch); three shots of 5, 4 and 4 latent frames — A = latent
frames 0–4 (pixel frames 0–16), B = 5–8 (17–32), A again = 9–12 (33–48), cuts at pixel frames
17 and 33. The character is ``anonymous`` (**no caption names it**) and is **away in shot B**
(B shows its scene alone, :func:`dataset.synthetic_world.sample_film`'s ``character_away``): in
the third shot only memory of shot A can bring it back; the local window then holds B alone.
The prompt, e.g.::

    [global caption] A character. This scene contains 3 shots. [per shot caption] snow.
    [shot cut] city. [shot cut] snow.

so the **third shot's caption is scene A's name and a full stop ("snow.")** and every frame of
it attends only the global caption ("A character. This scene contains 3 shots.") and that
caption (window cross-attention). Nothing names the character's shape, colour or texture.

**The causal config** (:data:`CAMR`, one for training and both streams): chunks of 2 latent
frames (chunk 0 = latent frame 0 alone, then 6 chunks: frames 1–2, 3–4 | 5–6, 7–8 | 9–10,
11–12; shot A = chunks 0–2, B = 3–4, the return = 5–6), local window 1 chunk, 2 routed frames,
horizon 6 latent frames (every pass attends at most 4 history frames and its own 2), memory
pool 8 frames (the stream's 13 frames all stay cached: nothing is evicted). During the return
shot the ``local_window`` row attends frames 5–8 (chunk 5) and 7–10 (chunk 6): never shot A; the
``camr`` row attends its local window (7–8, then 9–10) and the 2 frames of ``[0, window)`` whose
unrotated key descriptor scores highest against the chunk's query descriptor (candidates: A's
5 frames and B's first 2, then 4). Training runs the same config (the noisy chunks route, the
clean copies attend their last 4 frames: ``route_clean: false``).

**Metrics**, defined here before any run (issue 32: "with CAMR the character of A comes back
after B, with the local window alone it does not"), per row, over held-out films:

* ``aba_recall`` (**the primary figure**) — issue 30's A-B-A recall as
  :func:`multishot.learn.score` computes it: the fraction of films whose third shot (its
  requested frames) reads scene A by majority and whose majority character equals the one read
  in the first shot (a character must be seen);
* ``character_recall`` — the character half alone (the memory's part; the scene is captioned).
  Only meaningful where the frames look like the world (``b_empty``, ``scene_recall`` high): a
  model that draws no world at all can read as "the same character" in both shots (an
  untrained one did in the smoke run: noise blobs of one colour);
* ``scene_recall`` — the scene half alone;
* ``first_character_seen`` — films with a character read in shot A (recall needs one);
* ``b_empty`` — films with no character read in shot B (the world's truth for B);
* ``sca``, ``caption_following`` — :func:`multishot.learn.score`'s, for context.

The ceiling of every figure: the same metrics on the held-out films' ground truth encoded and
decoded by the world VAE (``vae_ceiling``; issue 30's VAE reads back about half the characters
of its reconstructions, ``benchmarks/results/learn/learn.md``).

Chance for ``character_recall`` is about 1/24 (4 colours × 3 shapes × 2 textures), if the
model draws a character at random in the third shot. Also reported, from the streamed KV cache
(:func:`attended_frames`): per row, the share of the return shot's passes (chunks × blocks)
that attended any frame of shot A, and for ``camr`` the share of routed frames that lie in A.

Results: ``benchmarks/aba_recall.py`` (``benchmarks/results/causal/aba_recall_*.{json,md}``).
Sources: CausalCine §3.3 (CAMR, Block-Relative RoPE; :mod:`model.causal`); issue 30's world
and classifier (:mod:`dataset.synthetic_world`, :mod:`multishot.learn`).
"""

from __future__ import annotations

import time

import numpy as np

#: the films' length (pixel frames) and their shots' lengths in latent frames (module docstring)
NUM_FRAMES = 49
SHOT_LATENT_FRAMES = (5, 4, 4)
#: the causal config of training and of the ``camr`` row; ``local_window`` is it with
#: ``routed_frames: 0`` (:func:`row_configs`)
CAMR = dict(chunk_latent_frames=2, local_window_chunks=1, routed_frames=2, horizon_frames=6,
            memory_frames=8)
#: the DiT of the experiment: issue 30's ``learn`` text encoder shapes (UMT5 width 64, 64
#: tokens); width and depth set per run (:func:`dit_config`)
TEXT_DIM, TEXT_LEN = 64, 64
#: seed ranges of the training and held-out films
TRAIN_SEED, EVAL_SEED = 3_000_000, 96_000_000


def recall_film(seed: int, name: str | None = None):
    """One A-B-A film of the experiment (module docstring): 3 shots of 5/4/4 latent frames,
    scene A again in the third, anonymous caption, the character away in shot B."""
    from multishot.dataset.synthetic_world import sample_film

    return sample_film(seed, num_frames=NUM_FRAMES, shot_latent_frames=SHOT_LATENT_FRAMES,
                       character_away=(1,), caption_mode="anonymous", aba_probability=1.0,
                       name=name)


def row_configs() -> dict:
    """``{"camr": CausalConfig, "local_window": CausalConfig}`` (module docstring)."""
    from multishot.model.causal import CausalConfig

    return {"camr": CausalConfig(**CAMR), "local_window": CausalConfig(**{**CAMR, "routed_frames": 0})}


def dit_config(dim: int, layers: int, heads: int):
    """A :class:`model.config.WanConfig` of ``dim`` / ``layers`` / ``heads`` on the world's
    16-channel VAE latents and its UMT5 (width 64, 64 tokens)."""
    from multishot.model.config import WanConfig

    return WanConfig(dim=dim, ffn_dim=4 * dim, num_heads=heads, num_layers=layers,
                     text_dim=TEXT_DIM, text_len=TEXT_LEN, freq_dim=min(256, dim))


def shot_ranges() -> list[tuple[int, int]]:
    """Latent frame ranges ``[start, end)`` of the three shots."""
    edges = np.cumsum([0, *SHOT_LATENT_FRAMES]).tolist()
    return list(zip(edges, edges[1:]))


def attended_frames(cache, config, index: int, start: int, size: int,
                    chunk_starts: list[int]) -> list[list[int]]:
    """The history frames chunk ``index`` (latent frames ``[start, start + size)``) attended in
    each block during its denoising passes, read after the chunk from the streamed
    :class:`model.causal.KVCache` (row 0): the history range of
    :func:`model.causal.history_frames` (what :class:`model.causal.ChunkPlan` gathers) and the
    frames CAMR routed (their use stamp is the chunk's number and they lie before it). One
    sorted list per block."""
    from multishot.model.causal import history_frames

    window = chunk_starts[max(0, index - config.local_window_chunks)]
    always, _ = history_frames(start, window, size, config, config.routing)
    base = set(range(*always)) if always else set()
    out = []
    for layer in cache.layers:
        frames, used = layer.frame_storage[0], layer.used_storage[0]
        routed = frames[(used == index) & (frames >= 0) & (frames < start)].tolist()
        out.append(sorted(base | set(routed)))
    return out


def encode_text(encoders, films) -> tuple[list, list]:
    """UMT5 states (padded to :data:`TEXT_LEN`, ``[TEXT_LEN, TEXT_DIM]``) and window spans of
    each film's prompt."""
    import torch

    prompts = [f.prompt for f in films]
    contexts = [torch.nn.functional.pad(s.cpu(), (0, 0, 0, TEXT_LEN - s.shape[0]))
                for s in encoders.encode_prompts(prompts, TEXT_LEN)]
    spans = []
    for (sp, why), f in zip(encoders.text_spans(prompts, [3] * len(films), TEXT_LEN), films):
        if why is not None:
            raise ValueError(f"{f.name}: {why}")
        spans.append(sp)
    return contexts, spans


def stream_film(model, config, vae, context, spans, film, device, steps: int, seed: int):
    """Stream ``film``'s prompt chunk by chunk with ``config`` (:class:`generate.stream.ChunkStreamer`,
    Euler, ``steps`` steps a chunk, no CFG). Returns the decoded frames ``[F, H, W, 3]`` uint8 and
    :func:`attended_frames` of the return shot's chunks ``{chunk: [[frame, ...] per block]}``.

    The text of shot ``s``: the film's whole prompt (the schedule is given up front) through
    UMT5, every frame attending the global caption and shot ``s``'s caption, as in training."""
    import torch

    from multishot.dataset.record import split_prompt
    from multishot.generate.schedule import PromptSchedule, Shot
    from multishot.generate.stream import ChunkStreamer, ShotText
    from multishot.model.causal import ChunkLayout
    from multishot.model.prompt_spans import TextSpans
    from multishot.model.sampling import SamplingConfig

    def text(schedule, shot: int) -> ShotText:
        return ShotText(shot, context[None].to(device),
                        TextSpans(spans.global_span, (spans.shot_spans[shot],)))

    c = config.chunk_latent_frames
    chunks = [n // c for n in SHOT_LATENT_FRAMES]
    chunks[0] = (SHOT_LATENT_FRAMES[0] - 1) // c             # chunk 0 (one frame) opens shot A
    global_caption, captions = split_prompt(film.prompt)
    schedule = PromptSchedule(global_caption, [Shot(cap, n) for cap, n in zip(captions, chunks)])
    streamer = ChunkStreamer(model, config, SamplingConfig(steps=steps, cfg_scale=1.0,
                                                           negative_prompt=""),
                             vae, text, (model.config.in_channels, 8, 8), device, torch.float32)
    layout = ChunkLayout.build(sum(SHOT_LATENT_FRAMES), c)
    back = shot_ranges()[2][0]
    frames, seen = [], {}
    for chunk in streamer.stream(schedule, seed=seed):
        frames.append(chunk.frames)
        start = layout.starts[chunk.index]
        if start >= back:
            seen[chunk.index] = attended_frames(streamer.cache, config, chunk.index, start,
                                                layout.ends[chunk.index] - start,
                                                list(layout.starts))
    return np.concatenate(frames), seen


def recall_scores(films, videos: np.ndarray) -> dict:
    """The module docstring's metrics of decoded ``videos`` ``[N, F, H, W, 3]`` uint8."""
    from multishot.dataset.synthetic_world import characters_in, classify_video
    from multishot.learn import score

    base = score(films, videos)
    char_ok = scene_ok = first_seen = b_empty = 0
    for film, video in zip(films, videos):
        reading = classify_video(video)
        ranges = [(s.start_frame, s.end_frame) for s in film.shots]
        chars = characters_in(video, ranges, reading.scenes)
        a, b = ranges[2]
        scene_ok += max(set(reading.scenes[a:b]), key=reading.scenes[a:b].count) == film.shots[0].scene
        char_ok += chars[0] is not None and chars[2] == chars[0]
        first_seen += chars[0] is not None
        b_empty += chars[1] is None
    n = len(films)
    return {"aba_recall": base["aba_recall"], "character_recall": char_ok / n,
            "scene_recall": scene_ok / n, "first_character_seen": first_seen / n,
            "b_empty": b_empty / n, "sca": base["sca"],
            "caption_following": base["caption_following"], "films": n,
            "per_film": base["per_film"]}


def run(device, *, train_films: int, eval_films: int, steps: int, batch: int, lr: float,
        sample_steps: int, dim: int, layers: int, heads: int, seeds: list[int],
        stream_seeds: list[int], encoders_dir: str = "checkpoints/learn",
        max_seconds: float = float("inf"), log=print) -> dict:
    """The experiment (module docstring): per training seed, tune the causal DiT
    (:func:`multishot.learn.train_variant` with :data:`CAMR`) on ``train_films`` A-B-A films
    (rendered, encoded by the committed world VAE ``encoders_dir/vae``; captions by its UMT5
    ``encoders_dir/text_encoder``), then stream ``eval_films`` held-out prompts per stream seed
    with each row of :func:`row_configs` and score the decoded frames (:func:`recall_scores`).

    Returns ``{"rows": {row: {"per_seed": [...], mean metrics}}, "training": [...], ...}``."""
    import torch

    from multishot.learn import decode, render_many, to_video_tensor, train_variant
    from multishot.model.encoders import FrozenEncoders
    from multishot.model.layout import latent_shot_starts
    from multishot.model.settings import EncodersConfig

    device = torch.device(device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    t0 = time.perf_counter()
    train = [recall_film(TRAIN_SEED + i, f"recall_train{i:05d}") for i in range(train_films)]
    held = [recall_film(EVAL_SEED + i, f"recall_eval{i:04d}") for i in range(eval_films)]
    # rendered (in worker processes for many films) before CUDA is initialised
    frames = render_many(train, workers=min(16, torch.get_num_threads()))
    encoders = FrozenEncoders.load(EncodersConfig(vae=f"{encoders_dir}/vae",
                                                  text_encoder=f"{encoders_dir}/text_encoder",
                                                  dtype="float32"), device)
    latents = torch.cat([encoders.encode_video(to_video_tensor(frames[i:i + 32])).cpu()
                         for i in range(0, len(train), 32)])
    contexts, spans = encode_text(encoders, train)
    data = {"latents": latents, "context": torch.stack(contexts), "spans": spans,
            "shot_starts": [latent_shot_starts(f.num_frames, f.cut_frames) for f in train]}
    eval_contexts, eval_spans = encode_text(encoders, held)
    truth = render_many(held)
    ceiling = recall_scores(held, np.concatenate([
        decode(encoders.vae, encoders.encode_video(to_video_tensor(truth[i:i + 8])), device)
        for i in range(0, len(held), 8)]))
    log("VAE ceiling: " + ", ".join(f"{k} {ceiling[k]}" for k in (
        "aba_recall", "character_recall", "scene_recall", "b_empty")))
    prepare_s = time.perf_counter() - t0
    log(f"prepared {len(train)} training films ({tuple(latents.shape)}) in {prepare_s:.1f} s")
    configs = row_configs()
    rows: dict = {name: {"per_seed": []} for name in configs}
    training = []
    for seed in seeds:
        model, losses, seconds = train_variant(
            "full", data, steps, batch, lr, device, seed, log, max_seconds,
            config=dit_config(dim, layers, heads), causal=configs["camr"])
        training.append({"seed": seed, "steps": len(losses), "train_s": seconds,
                         "first_loss": float(np.mean(losses[:20])),
                         "final_loss": float(np.mean(losses[-50:]))})
        log(f"seed {seed}: {training[-1]}")
        for name, config in configs.items():
            for stream_seed in stream_seeds:
                t1 = time.perf_counter()
                videos, attended = [], []
                with torch.no_grad():
                    for i, film in enumerate(held):
                        video, seen = stream_film(model, config, encoders.vae, eval_contexts[i],
                                                  eval_spans[i], film, device, sample_steps,
                                                  stream_seed * 100_003 + i)
                        videos.append(video)
                        attended.append(seen)
                result = recall_scores(held, np.stack(videos))
                a_end = shot_ranges()[0][1]
                passes = [fr for seen in attended for per_block in seen.values() for fr in per_block]
                result.update(
                    train_seed=seed, stream_seed=stream_seed, stream_s=time.perf_counter() - t1,
                    return_passes_attending_a=float(np.mean([any(f < a_end for f in fr)
                                                             for fr in passes])),
                    attended_return=[{str(k): v for k, v in seen.items()} for seen in attended])
                # CAMR's routed frames: those before the local window (without routing the
                # history range reaches further back than the window and nothing is routed)
                routed_a = [f < a_end for seen in attended for k, per_block in seen.items()
                            for fr in per_block for f in fr
                            if f < layout_window_start(config, k)] if config.routing else []
                result["routed_in_a"] = float(np.mean(routed_a)) if routed_a else None
                rows[name]["per_seed"].append(result)
                log(f"{name} train seed {seed} stream seed {stream_seed}: " + ", ".join(
                    f"{k} {result[k]}" for k in ("aba_recall", "character_recall", "scene_recall",
                                                 "first_character_seen", "b_empty",
                                                 "return_passes_attending_a", "routed_in_a")))
    for name, row in rows.items():
        for key in ("aba_recall", "character_recall", "scene_recall", "first_character_seen",
                    "b_empty", "sca", "caption_following", "return_passes_attending_a"):
            row[key] = float(np.mean([r[key] for r in row["per_seed"]]))
    return {"rows": rows, "vae_ceiling": ceiling, "training": training, "prepare_s": prepare_s,
            "configs": {k: v.model_dump() for k, v in configs.items()},
            "train_films": train_films, "eval_films": eval_films, "steps": steps, "batch": batch,
            "lr": lr, "sample_steps": sample_steps, "dit": {"dim": dim, "layers": layers,
                                                             "heads": heads},
            "seeds": seeds, "stream_seeds": stream_seeds, "example_prompt": held[0].prompt}


def layout_window_start(config, index: int) -> int:
    """First frame of chunk ``index``'s local window in the experiment's chunk layout: history
    frames before it were routed (CAMR), not part of the window."""
    from multishot.model.causal import ChunkLayout

    layout = ChunkLayout.build(sum(SHOT_LATENT_FRAMES), config.chunk_latent_frames)
    return layout.starts[max(0, index - config.local_window_chunks)]
