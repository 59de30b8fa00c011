"""Why the ``full`` DiT of issue 30 does not draw the named character: measured on the committed
checkpoints (``checkpoints/learn``), ``benchmarks/results/learn/character_diagnosis_<device>.{json,md}``.

Each check is defined here before it is run, cheapest first:

1. **Text.** (a) The committed UMT5's states of named training captions against the same caption
   with one word changed (:func:`multishot.learn.recaption`: colour, shape, texture, or the first
   shot's scene, a word the DiT is known to follow): cosine of the whole caption's states, and
   of the changed token's state (an encoder that collapses the character words gives ~1 there).
   (b) The same changed token after the trained DiT's ``text_embedding`` (did training learn to
   map the character words together?). (c) ``<unk>`` tokens and the longest caption in tokens
   against ``text_len`` (truncation), and whether every character word of the named evaluation
   prompts lies inside the global caption's window span (what window cross-attention admits for
   every shot).
2. **Data.** The share of named films among the training films; how many latent positions (8×8
   of each latent frame) the character covers (:func:`multishot.learn.character_cover`); and
   whether the VAE latents carry the character at all: a linear probe (multinomial logistic
   regression, L2 1e-2, LBFGS) on the 16 × 4 × 4 latent window around the character in the
   middle latent frame of shot 1, trained on 2/3 of the films, scored on the rest, against the
   majority-class rate. And how much of the training target each word decides: the mean
   squared difference of the normalised VAE latents (what the DiT regresses) between a film and
   the same film with one attribute changed (as :func:`multishot.learn.recaption` changes it;
   ``scene``: the first shot's scene), over all latent positions (the most a model gains on the
   loss by reading the word perfectly, up to the noise's weighting); and the same difference of
   the latents **averaged over 16 random character positions** (one still shot per film: what a
   word can tell a model that does not yet know where the character is, as at high σ, where x_t
   does not fix the position).
3. **Model.** :func:`multishot.learn.caption_sensitivity` of the committed ``full`` DiT and of the
   same architecture at its initialisation (seed 0, as training starts; true caption only: Wan's
   zero-initialised head predicts 0 there): error on character vs background latent positions
   with the true caption and with each changed one.
   And the committed DiT's cross-attention on video tokens that hold the character (a 2×2
   token patch with a character position): the attention mass per block, averaged over heads
   and those tokens, on the character words, the other global-caption tokens, the shot
   captions (and ``</s>``) and the zero-padded positions the window mask admits.
4. **Generation.** For named evaluation prompts (:func:`multishot.learn.eval_films`), the
   prompt asked with each colour (then each shape, each texture) of the world, from the same
   noise (:func:`multishot.learn.generate_all`, 20 Euler steps as the H100 evaluation; ``--shift``: the sampler's shift), decoded
   and read (:func:`dataset.synthetic_world.characters_in`): per attribute, the fraction of
   shots whose read value is the one asked (``follows``; chance 1/values) and the fraction of
   shots whose read value differs between at least two of the asks (``moves``: 0 = the word
   does not change the drawn character at all), and the distribution of read values.

    python benchmarks/learn_character.py            # the committed checkpoints; CPU, ~5 min on one core
    python benchmarks/learn_character.py --dit RUN/full/dit.safetensors --encoders RUN --out X.json
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

import harness

CKPT = "checkpoints/learn"


def text_checks(encoders, model, films, eval_films, text_len: int) -> dict:
    """Check 1 (module docstring)."""
    import torch

    from multishot import learn
    from multishot.model.prompt_spans import clean_prompt

    cos = lambda a, b: float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))  # noqa: E731
    out = {}
    for change in ("colour", "shape", "texture", "scene"):
        whole, token, embedded = [], [], []
        for f in films:
            a, b = encoders.encode_prompts([f.prompt, learn.recaption(f, change)], text_len)
            k = int((a - b).norm(dim=1).argmax())
            whole.append(cos(a, b))
            token.append(cos(a[k], b[k]))
            with torch.no_grad():
                ea, eb = model.text_embedding(a[k:k + 1]), model.text_embedding(b[k:k + 1])
            embedded.append(cos(ea, eb))
        out[change] = {"whole_caption_cosine": float(np.mean(whole)),
                       "changed_token_cosine": float(np.mean(token)),
                       "changed_token_cosine_after_dit_text_embedding": float(np.mean(embedded))}
    tok = encoders.tokenizer
    prompts = [f.prompt for f in films] + [f.prompt for f in eval_films]
    ids = tok([clean_prompt(p) for p in prompts], truncation=False)["input_ids"]
    unk = tok.convert_tokens_to_ids("<unk>")
    inside = named = 0
    for f in eval_films:
        if f.caption_mode != "named":
            continue
        (spans, why), = encoders.text_spans([f.prompt], [len(f.shots)], text_len)
        words = tok.convert_ids_to_tokens(tok(clean_prompt(f.prompt), truncation=True,
                                              max_length=text_len)["input_ids"])
        pos = [words.index(w) for w in f.character.words().split()]
        named += 1
        inside += why is None and all(spans.global_span[0] <= p < spans.global_span[1] for p in pos)
    out.update(unk_tokens=int(sum(i.count(unk) for i in ids)), longest_caption_tokens=max(map(len, ids)),
               text_len=text_len, captions=len(prompts),
               named_eval_prompts_with_character_words_in_global_span=inside,
               named_eval_prompts=named)
    return out


def latent_probe(encoders, films) -> dict:
    """Check 2's linear probe (module docstring)."""
    import torch

    from multishot import learn

    feats, labels = [], {a: [] for a in ("colour", "shape", "texture")}
    for i in range(0, len(films), 32):
        batch = films[i:i + 32]
        with torch.no_grad():
            z = encoders.encode_video(learn.to_video_tensor(learn.render_many(batch)))
        for f, zz in zip(batch, z):
            s = f.shots[0]
            lt = ((s.start_frame + s.end_frame) // 2 + 3) // 4
            u = (4 * lt - s.start_frame) / max(1, s.end_frame - s.start_frame - 1)
            cx = s.x0 + (s.x1 - s.x0) * min(max(u, 0.0), 1.0)
            gx, gy = (int(np.clip(round(v / 8) - 2, 0, zz.shape[-1] - 4)) for v in (cx, s.y))
            feats.append(zz[:, lt, gy:gy + 4, gx:gx + 4].flatten())
            for a in labels:
                labels[a].append(getattr(f.character, a))
    x = torch.stack(feats).float()
    n = len(x) * 2 // 3
    x = (x - x[:n].mean(0)) / x[:n].std(0).clamp_min(1e-6)
    out = {"train_films": n, "test_films": len(x) - n, "features": int(x.shape[1])}
    for a, y in labels.items():
        classes = sorted(set(y))
        t = torch.tensor([classes.index(v) for v in y])
        torch.manual_seed(0)
        lin = torch.nn.Linear(x.shape[1], len(classes))
        opt = torch.optim.LBFGS(lin.parameters(), max_iter=500)

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(lin(x[:n]), t[:n]) + 1e-2 * lin.weight.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            acc = float((lin(x[n:]).argmax(1) == t[n:]).float().mean())
        out[a] = {"test_accuracy": acc, "majority_rate": float(np.bincount(t[n:]).max() / (len(x) - n))}
    return out


def attention_mass(model, encoders, films, sigmas=(0.8, 0.5), seed: int = 0) -> dict:
    """Check 3's cross-attention mass (module docstring), per σ and block."""
    import torch

    from multishot import learn
    from multishot.model.layout import ShotLayout, latent_shot_starts
    from multishot.model.prompt_spans import clean_prompt
    from multishot.trainer.flow_matching import FlowMatchConfig, FlowMatching

    text_len = model.config.text_len
    prompts = [f.prompt for f in films]
    x0 = encoders.encode_video(learn.to_video_tensor(learn.render_many(films)))
    context = torch.stack([torch.nn.functional.pad(s, (0, 0, 0, text_len - len(s)))
                           for s in encoders.encode_prompts(prompts, text_len)])
    spans = [sp for sp, _ in encoders.text_spans(prompts, [len(f.shots) for f in films], text_len)]
    layout = ShotLayout.from_shot_starts([latent_shot_starts(f.num_frames, f.cut_frames) for f in films],
                                         x0.shape[2], (x0.shape[3] // 2) * (x0.shape[4] // 2), x0.device)
    kinds = ("padding", "character_words", "other_global", "shot_captions")
    kind = torch.zeros(len(films), text_len, dtype=torch.long)
    for b, f in enumerate(films):
        words = encoders.tokenizer.convert_ids_to_tokens(encoders.tokenizer(clean_prompt(f.prompt))["input_ids"])
        g0, g1 = spans[b].global_span
        kind[b, :len(words)] = torch.tensor([2 if g0 <= p < g1 else 3 for p in range(len(words))])
        for w in f.character.words().split():
            kind[b, words.index(w)] = 1
    cover = torch.from_numpy(np.stack([learn.character_cover(f) for f in films])).float()
    holds = (torch.nn.functional.max_pool2d(cover, 2) >= 0.5).flatten(1)        # [B, tokens]
    maps = []

    def hook(mod, args):
        x, ctx, mask = args
        b, seq, _ = x.shape
        q = mod.norm_q(mod.q(x)).view(b, seq, mod.num_heads, -1).transpose(1, 2)
        k = mod.norm_k(mod.k(ctx)).view(b, ctx.shape[1], mod.num_heads, -1).transpose(1, 2)
        a = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
        maps.append(a.masked_fill(~mask[:, None], float("-inf")).softmax(-1).mean(1))  # [B, L, T]

    handles = [blk.cross_attn.register_forward_pre_hook(hook) for blk in model.blocks]
    flow = FlowMatching(FlowMatchConfig())
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    out = {"films": len(films), "tokens": {k: float((kind == i).sum(1).float().mean()) for i, k in enumerate(kinds)}}
    try:
        for sigma in sigmas:
            i = int((flow.sigmas - sigma).abs().argmin())
            s = float(flow.sigmas[i])
            maps.clear()
            with torch.no_grad():
                model((1 - s) * x0 + s * eps, flow.timesteps[i].repeat(len(films)), context, layout, spans)
            out[f"sigma_{s:.3f}"] = [{k: float(torch.stack([(a[b][holds[b]] * (kind[b] == j)).sum(-1).mean()
                                                            for b in range(len(films))]).mean())
                                      for j, k in enumerate(kinds)} for a in maps]
    finally:
        for h in handles:
            h.remove()
    return out


def generation_check(model, encoders, films, steps: int = 20, shift: float | None = None) -> dict:
    """Check 4 (module docstring)."""
    from collections import Counter
    from dataclasses import replace

    from multishot import learn
    from multishot.dataset.synthetic_world import (COLOURS, SHAPES, TEXTURES, caption, characters_in,
                                                   classify_video)

    out = {"films": len(films), "sample_steps": steps, "shift": shift}
    for attr, values in (("colour", list(COLOURS)), ("shape", list(SHAPES)), ("texture", list(TEXTURES))):
        asks = [[replace(f, prompt=caption(replace(f.character, **{attr: v}), f.scenes, "named"))
                 for f in films] for v in values]
        reads = []
        for v, batch in zip(values, asks):
            latents = learn.generate_all(model, encoders, batch, model.blocks[0].cross_attn.q.weight.device,
                                         steps, window=True, shift=shift)
            videos = learn.decode(encoders.vae, latents, latents.device)
            per = []
            for f, video in zip(batch, videos):
                chars = characters_in(video, [(s.start_frame, s.end_frame) for s in f.shots],
                                      classify_video(video).scenes)
                per.append([None if c is None else getattr(c, attr) for c in chars])
            reads.append(per)
        shots = [(i, k) for i, f in enumerate(films) for k in range(len(f.shots))]
        follows = np.mean([reads[j][i][k] == v for j, v in enumerate(values) for i, k in shots])
        moves = np.mean([len({reads[j][i][k] for j in range(len(values))}) > 1 for i, k in shots])
        out[attr] = {"follows": float(follows), "chance": 1 / len(values), "moves": float(moves),
                     "read": dict(Counter(str(reads[j][i][k]) for j in range(len(values)) for i, k in shots)),
                     "asked_to_read": {v: dict(Counter(str(reads[j][i][k]) for i, k in shots))
                                       for j, v in enumerate(values)}}
    return out


def word_signal(encoders, films, positions: int = 16, positions_films: int = 8) -> dict:
    """Check 2's latent difference per changed word (module docstring)."""
    from dataclasses import replace

    import torch

    from multishot import learn
    from multishot.dataset.synthetic_world import COLOURS, SCENES, SHAPES, TEXTURES

    def nxt(values, v):
        values = list(values)
        return values[(values.index(v) + 1) % len(values)]

    def changed(f, attr):
        if attr == "scene":
            taken = {f.scenes[1]} if len(f.shots) > 1 else set()
            first = nxt([s for s in SCENES if s not in taken or s == f.scenes[0]], f.scenes[0])
            return replace(f, shots=(replace(f.shots[0], scene=first),) + f.shots[1:])
        values = {"colour": COLOURS, "shape": SHAPES, "texture": TEXTURES}[attr]
        return replace(f, character=replace(f.character, **{attr: nxt(values, getattr(f.character, attr))}))

    def encode(fs):
        return torch.cat([encoders.encode_video(learn.to_video_tensor(learn.render_many(fs[i:i + 32])))
                          for i in range(0, len(fs), 32)])

    rng = np.random.default_rng(0)
    still = []                                            # [film][position]: one still shot
    for f in films[:positions_films]:
        margin = 4 + 10 + 2
        still.append([replace(f, shots=(replace(f.shots[0], start_frame=0, end_frame=f.num_frames, x0=x,
                                                x1=x, y=y),))
                      for x, y in rng.uniform(margin, f.width - margin, (positions, 2))])
    with torch.no_grad():
        base = encode(films)
        base_avg = encode([g for fs in still for g in fs]).view(len(still), positions, *base.shape[1:]).mean(1)
        out, avg = {}, {}
        for attr in ("colour", "shape", "texture", "scene"):
            z = encode([changed(f, attr) for f in films])
            out[attr] = float(((z - base) ** 2).mean())
            za = encode([changed(g, attr) for fs in still for g in fs]).view(
                len(still), positions, *base.shape[1:]).mean(1)
            avg[attr] = float(((za - base_avg) ** 2).mean())
    return {"films": len(films), "mean_squared_latent_difference": out,
            "position_averaged": {"films": len(still), "positions": positions,
                                  "mean_squared_latent_difference": avg}}


def markdown(r: dict) -> str:
    t, d, p = r["text"], r["data"], r["data"]["latent_probe"]
    lines = [
        "# Why the `full` DiT does not draw the named character (issue 30)", "",
        f"Device: {r['device']} (one thread; shared box). DiT `{r['dit_checkpoint']}`, VAE and text encoder of "
        f"`{r['encoders']}`. Definitions: `benchmarks/learn_character.py` (fixed before "
        "measuring).", "",
        "## 1. Text: the encoder and the spans are not the cause", "",
        "| caption change | whole-caption cosine | changed-token cosine | changed token after the DiT's text_embedding |",
        "|---|---|---|---|"]
    for c in ("colour", "shape", "texture", "scene"):
        lines.append(f"| {c} | {t[c]['whole_caption_cosine']:.3f} | {t[c]['changed_token_cosine']:.3f} | "
                     f"{t[c]['changed_token_cosine_after_dit_text_embedding']:.3f} |")
    lines += ["", f"`<unk>` tokens in {t['captions']} captions: {t['unk_tokens']}; longest caption "
              f"{t['longest_caption_tokens']} tokens of text_len {t['text_len']} (no truncation); named "
              f"evaluation prompts whose character words all lie in the global window span: "
              f"{t['named_eval_prompts_with_character_words_in_global_span']}/{t['named_eval_prompts']}.", "",
              "## 2. Data", "",
              f"Named films: {d['named_fraction']:.3f} of {d['training_films']} training films. The "
              f"character covers {d['positions_ge_half']:.2f} latent positions (≥ half of their pixels) and "
              f"touches {d['positions_touched']:.2f} of the 64 of a latent frame ({d['pixel_fraction']:.3f} "
              "of the pixels).", "",
              f"Linear probe of the VAE latents around the character ({p['train_films']} train / "
              f"{p['test_films']} test films, {p['features']} features):", "",
              "| attribute | probe accuracy | majority rate |", "|---|---|---|"]
    for a in ("colour", "shape", "texture"):
        lines.append(f"| {a} | {p[a]['test_accuracy']:.3f} | {p[a]['majority_rate']:.3f} |")
    w = d["word_signal"]
    lines += ["", f"What each word decides in the training target (mean squared difference of the normalised "
              f"latents, all positions, {w['films']} films, one word changed): " + ", ".join(
                  f"{k} {v:.4f}" for k, v in w["mean_squared_latent_difference"].items()) + "; with the "
              f"latents averaged over {w['position_averaged']['positions']} character positions "
              f"({w['position_averaged']['films']} films, one still shot): " + ", ".join(
                  f"{k} {v:.5f}" for k, v in w["position_averaged"]["mean_squared_latent_difference"].items())
              + "."]
    lines += ["", "## 3. The DiT: error on character / background latent positions", "",
              "MSE of the prediction against the flow target; `Δ` = mean squared change of the prediction "
              "from the true caption's (character positions / background positions).", ""]
    for which in ("full_checkpoint", "initialisation"):
        s = r["dit"][which]
        lines += [f"### {which} ({s['films']} named training films, "
                  f"{s['character_positions_per_frame']:.2f} character positions per latent frame)", "",
                  f"Character positions are {s['character_position_share']:.3f} of all latent positions.", "",
                  "| σ | caption | MSE character | MSE background | character share of the error | Δ character | Δ background |",
                  "|---|---|---|---|---|---|---|"]
        for key, row in s.items():
            if not key.startswith("sigma_"):
                continue
            for cap, v in row.items():
                lines.append(f"| {key[6:]} | {cap} | {v['mse_character']:.4f} | {v['mse_background']:.4f} | "
                             f"{v['error_share_character']:.3f} | "
                             f"{v['change_character']:.5f} | {v['change_background']:.5f} |")
        lines.append("")
    a = r["dit"]["cross_attention_mass"]
    lines += [f"### Cross-attention of the `full` DiT's character tokens ({a['films']} named films; mean tokens: "
              + ", ".join(f"{k} {v:.1f}" for k, v in a["tokens"].items()) + ")", "",
              "| σ | block | padding | character words | other global | shot captions |", "|---|---|---|---|---|---|"]
    for key, blocks in a.items():
        if key.startswith("sigma_"):
            for i, m in enumerate(blocks):
                lines.append(f"| {key[6:]} | {i} | {m['padding']:.3f} | {m['character_words']:.3f} | "
                             f"{m['other_global']:.3f} | {m['shot_captions']:.3f} |")
    lines.append("")
    g = r["generation"]
    lines += [f"## 4. Generation: does the drawn character follow the word? ({g['films']} named evaluation "
              f"prompts, each asked with every value, same noise, {g['sample_steps']} Euler steps)", "",
              "| attribute | follows | chance | moves | read values (all asks) |", "|---|---|---|---|---|"]
    for a in ("colour", "shape", "texture"):
        lines.append(f"| {a} | {g[a]['follows']:.3f} | {g[a]['chance']:.3f} | {g[a]['moves']:.3f} | "
                     + ", ".join(f"{k}: {v}" for k, v in sorted(g[a]["read"].items())) + " |")
    lines += ["", "Colour asked → read: " + "; ".join(
        f"{v} → " + ", ".join(f"{k} {n}" for k, n in sorted(c.items()))
        for v, c in g["colour"]["asked_to_read"].items()) + ".", "", "## Reading", "", r["reading"], ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--films", type=int, default=16, help="named films for caption_sensitivity")
    parser.add_argument("--probe-films", type=int, default=480)
    parser.add_argument("--gen-films", type=int, default=12, help="named prompts for check 4")
    parser.add_argument("--reading", default="", help="the measured reading, written into the markdown")
    parser.add_argument("--dit", default=f"{CKPT}/full/dit.safetensors", help="the full DiT to diagnose")
    parser.add_argument("--encoders", default=CKPT, help="folder with its vae/ and text_encoder/")
    parser.add_argument("--shift", type=float, default=None,
                        help="check 4's sampler shift (the one the DiT was trained with; default Wan's 5)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--rewrite", action="store_true",
                        help="only rewrite --out's markdown from its JSON with --reading")
    args = parser.parse_args(argv)
    out = args.out or "benchmarks/results/learn/character_diagnosis_cpu.json"
    if args.rewrite:
        import json
        from pathlib import Path

        report = {**json.loads(Path(out).read_text()), "reading": args.reading}
        harness.write_report(out, report, markdown)
        return 0
    import torch

    torch.set_num_threads(1)
    from multishot.torchvision_cpu import import_torchvision

    import_torchvision()  # transformers imports torchvision; the CPU wheel needs the shim
    from multishot import learn
    from multishot.model.checkpoint import load_dit
    from multishot.model.config import get_config
    from multishot.model.dit import WanModel
    from multishot.model.encoders import FrozenEncoders
    from multishot.model.settings import EncodersConfig

    device = torch.device("cpu")
    encoders = FrozenEncoders.load(EncodersConfig(vae=f"{args.encoders}/vae",
                                                  text_encoder=f"{args.encoders}/text_encoder",
                                                  dtype="float32"), device)
    config = get_config(learn.MODEL)
    full = load_dit(learn.MODEL, args.dit, device, torch.float32,
                    attention_backend=learn.ATTENTION_BACKEND)
    train = learn.training_films(6000)
    named = [f for f in train if f.caption_mode == "named"]
    report = {"device": learn.device_name(device), "dit_checkpoint": args.dit, "encoders": args.encoders,
              "text": text_checks(encoders, full, named[:24], learn.eval_films(64), config.text_len)}
    covers = [learn.character_cover(f) for f in train[:64]]
    report["data"] = {
        "training_films": len(train), "named_fraction": len(named) / len(train),
        "positions_ge_half": float(np.mean([(c >= 0.5).sum((1, 2)).mean() for c in covers])),
        "positions_touched": float(np.mean([(c > 0).sum((1, 2)).mean() for c in covers])),
        "pixel_fraction": float(np.mean([c.mean() for c in covers])),
        "latent_probe": latent_probe(encoders, train[:args.probe_films]),
        "word_signal": word_signal(encoders, train[:32])}
    torch.manual_seed(0)  # as learn.train_variant starts
    init = WanModel(config, learn.ATTENTION_BACKEND).eval()
    report["dit"] = {"full_checkpoint": learn.caption_sensitivity(full, encoders, named[:args.films]),
                     "initialisation": learn.caption_sensitivity(init, encoders, named[:args.films],
                                                                 changes=())}
    report["dit"]["cross_attention_mass"] = attention_mass(full, encoders, named[:8])
    report["generation"] = generation_check(
        full, encoders, [f for f in learn.eval_films(4 * args.gen_films) if f.caption_mode == "named"][:args.gen_films],
        shift=args.shift)
    report["reading"] = args.reading
    harness.write_report(out, report, markdown)
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
