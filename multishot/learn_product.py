"""Issue 30's ablation through the real product: world → ``multishot pipeline run`` → shards →
``multishot train`` → ``multishot generate`` → ``multishot eval`` + the world's classifier →
table.

``python -m multishot.learn_product STAGE --out DIR`` (``make learn-product`` runs them all):

1. ``world``: films of :mod:`dataset.synthetic_world` (seeded; :data:`multishot.learn.HELD_OUT_CHARACTERS`
   never among them) written as real mp4s (:func:`~dataset.synthetic_world.write_film`, PyAV)
   into ``DIR/world/films/``; their captions as a **caption source**
   (:mod:`annotate.caption_source`: per-shot captions keyed by the mp4's file name and the shot's
   time span in seconds, and each film's global caption) in ``DIR/world/captions.jsonl``; and the
   evaluation prompts (:func:`multishot.learn.eval_films`: other seeds, new scene sequences, cut
   positions, shot counts and the held-out characters) as a ``multishot generate --prompts`` file,
   ``DIR/world/eval_prompts.jsonl``, with their ground truth beside it.
2. ``pipeline``: ``multishot pipeline run --config configs/pipeline/learn.yaml --input
   DIR/world/films --output DIR/shards --caption-source DIR/world/captions.jsonl`` (detection,
   filters, packing, render, captions joined by video and time span, shards). Needs Ray and PyAV.
3. ``train``: ``multishot train --config configs/train/learn_<variant>.yaml`` per variant, on
   ``DIR/shards`` into ``DIR/train/<variant>/`` (the committed small VAE and UMT5 of
   ``checkpoints/learn/``, the ``learn`` DiT).
4. ``generate``: ``multishot generate --config configs/generate/learn_<variant>.yaml --prompts
   DIR/world/eval_prompts.jsonl`` with the variant's ``model.safetensors`` into
   ``DIR/generate/<variant>/`` (an mp4 and its JSON per prompt).
5. ``eval``: ``multishot eval --config configs/eval/learn.yaml`` of those videos (SCA from its
   own shot detection, ``DIR/eval/<variant>.json``) and the world's classifier on the decoded pixels
   (:func:`multishot.learn.score_files`: SCA against the read scene changes, caption following,
   named / held-out character, character consistency, A-B-A recall; ``DIR/eval/<variant>_world.json``).
6. ``table``: ``DIR/learn_product.md`` (and ``.json``): one row per variant, with the device,
   steps and wall time of each stage.

``all`` runs 1-6; ``world`` + ``pipeline`` need Ray and PyAV (the CPU machine), ``train`` +
``generate`` + ``eval`` + ``table`` do not import Ray (a GPU machine given ``DIR/world`` and
``DIR/shards``). Every stage runs the product's CLI as a subprocess (``python -m multishot``),
exactly as a user types it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from multishot.learn import HELD_OUT_CHARACTERS, VARIANTS

#: the repository root (configs/ and checkpoints/ are found from here)
ROOT = Path(__file__).resolve().parent.parent
STAGES = ("world", "pipeline", "train", "generate", "eval", "table")


def world(out: Path, train_films: int, eval_films: int, seed: int = 0) -> dict:
    """Stage 1 (see the module docstring); returns ``{"films", "eval_prompts", "seconds"}``.

    Films are named ``train<seed>`` by their seed (``1_000_000 + i``, skipping held-out
    characters), so a larger world extends a smaller one; a film already written is kept.
    """
    from multishot.dataset.synthetic_world import caption_source_entries, sample_film, write_film
    from multishot.learn import eval_films as make_eval_films

    start = time.perf_counter()
    films_dir = out / "world" / "films"
    films_dir.mkdir(parents=True, exist_ok=True)
    entries, count, i = [], 0, 0
    while count < train_films:
        film = sample_film(1_000_000 + seed * 100_000_000 + i, name=f"train{i:06d}")
        i += 1
        if (film.character.shape, film.character.colour) in HELD_OUT_CHARACTERS:
            continue
        count += 1
        if not (films_dir / f"{film.name}.mp4").exists():
            write_film(film, films_dir)
        entries += caption_source_entries(film, f"{film.name}.mp4")
    _write_lines(out / "world" / "captions.jsonl", entries)
    films = make_eval_films(eval_films)
    _write_lines(out / "world" / "eval_prompts.jsonl",
                 [{"name": f.name, "prompt": f.prompt, "num_frames": f.num_frames,
                   "cut_frames": f.cut_frames, "seed": k} for k, f in enumerate(films)])
    _write_lines(out / "world" / "eval_truth.jsonl", [f.to_dict() for f in films])
    return {"films": count, "eval_prompts": len(films), "seconds": time.perf_counter() - start}


def _write_lines(path: Path, items: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(x) + "\n" for x in items))
    tmp.replace(path)


def multishot(*args: str, log=print) -> float:
    """Run ``python -m multishot ARGS`` (the product's CLI), echoing the command; returns its
    wall time in seconds.

    Raises:
        RuntimeError: the command exited with a non-zero status (named in the message).
    """
    cmd = [sys.executable, "-m", "multishot", *args]
    log("$ multishot " + " ".join(args))
    start = time.perf_counter()
    code = subprocess.call(cmd, cwd=ROOT)
    if code:
        raise RuntimeError(f"`multishot {' '.join(args)}` exited with status {code}")
    return time.perf_counter() - start


def pipeline(out: Path, sets: list[str], log=print) -> dict:
    """Stage 2: the world's films through ``multishot pipeline run`` into ``DIR/shards``;
    returns ``{"seconds", "samples", "captioned"}`` (counted from the shard set's records)."""
    from multishot.dataset.shardset import ShardSet

    seconds = multishot("pipeline", "run", "--config", str(ROOT / "configs/pipeline/learn.yaml"),
                        "--input", str(out / "world" / "films"), "--output", str(out / "shards"),
                        "--caption-source", str(out / "world" / "captions.jsonl"), "--no-progress",
                        *_sets(sets), log=log)
    records = [r for _, r in ShardSet.open(str(out / "shards"), progress=False).records()]
    return {"seconds": seconds, "samples": len(records),
            "captioned": sum(r.caption_status == "ok" for r in records)}


def _sets(sets: list[str]) -> list[str]:
    return [f"--set={s}" for s in sets]


def train_config(variant: str) -> Path:
    return ROOT / "configs" / "train" / f"learn_{variant}.yaml"


def train(out: Path, variant: str, sets: list[str], log=print) -> dict:
    """Stage 3 for one variant: ``multishot train`` on ``DIR/shards`` into
    ``DIR/train/<variant>``; returns ``{"seconds", "steps", "first_loss", "final_loss"}``
    (mean loss of the first and last tenth of the logged steps, ``metrics.jsonl``)."""
    run_dir = out / "train" / variant
    seconds = multishot("train", "--config", str(train_config(variant)),
                        f"--set=data.shards=[{out / 'shards'}]", f"--set=run.output_dir={run_dir}",
                        *_sets(sets), log=log)
    losses = [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
              if line.strip() and "loss" in json.loads(line)]
    tenth = max(1, len(losses) // 10)
    return {"seconds": seconds, "logged_steps": len(losses),
            "first_loss": sum(losses[:tenth]) / tenth, "final_loss": sum(losses[-tenth:]) / tenth}


def switches(variant: str) -> dict[str, bool]:
    """The model switches of ``configs/train/learn_<variant>.yaml`` (generation uses the
    trained ones)."""
    from multishot.cli.train import train_config as config_type
    from multishot.config import load_config

    model = load_config(str(train_config(variant)), config_type()).model
    return {k: getattr(model, k) for k in ("sparse_self_attention", "global_bank", "window_cross_attention")}


def generate(out: Path, variant: str, sets: list[str], log=print) -> dict:
    """Stage 4 for one variant: ``multishot generate`` of ``DIR/world/eval_prompts.jsonl`` with
    the variant's ``model.safetensors`` (the generate config ``configs/generate/learn_full.yaml``
    with the variant's switches) into ``DIR/generate/<variant>/``."""
    model = {"checkpoint": str(out / "train" / variant / "model.safetensors"), **switches(variant)}
    seconds = multishot("generate", "--config", str(ROOT / "configs/generate/learn_full.yaml"),
                        "--prompts", str(out / "world" / "eval_prompts.jsonl"),
                        "-o", str(out / "generate" / variant),
                        *[f"--set=model.{k}={json.dumps(v)}" for k, v in model.items()],
                        *_sets(sets), log=log)
    return {"seconds": seconds}


def evaluate(out: Path, variant: str, sets: list[str], log=print) -> dict:
    """Stage 5 for one variant: ``multishot eval`` (``DIR/eval/<variant>.json``) and the world's
    classifier (:func:`multishot.learn.score_files`, ``DIR/eval/<variant>_world.json``) on the
    generated videos; returns the classifier's scores and ``multishot eval``'s overall SCA."""
    from multishot.learn import score_files

    videos = sorted(str(p) for p in (out / "generate" / variant).glob("*.mp4"))
    report = out / "eval" / f"{variant}.json"
    seconds = multishot("eval", *videos, "--config", str(ROOT / "configs/eval/learn.yaml"), "-o", str(report),
                        *_sets(sets), log=log)
    product = json.loads(report.read_text())["overall"]["sca"]  # {"mean", "videos"}
    world_scores = score_files(videos)
    (out / "eval" / f"{variant}_world.json").write_text(json.dumps(world_scores, indent=1))
    return {"seconds": seconds, "eval_sca": product,
            **{k: v for k, v in world_scores.items() if k != "per_film"}}


def device_name() -> str:
    """This machine's accelerator (or CPU), named as :func:`multishot.learn.device_name` does."""
    import torch

    from multishot.learn import device_name as name

    return name(torch.device("cuda" if torch.cuda.is_available() else "cpu"))


#: the table's columns: the world's classifier (multishot/learn.py's metrics) and the run
COLUMNS = ("sca", "shot_count_error", "caption_following", "named_character", "held_out_character",
           "character_consistency", "aba_recall", "product_sca", "first_loss", "final_loss",
           "train_s", "generate_s")


def table(out: Path) -> str:
    """``DIR/learn_product.md`` from the stages' JSON (``DIR/stages.json``)."""
    stages = json.loads((out / "stages.json").read_text())
    fmt = lambda v: "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    rows = ["| variant | " + " | ".join(COLUMNS) + " |", "|" + "---|" * (len(COLUMNS) + 1)]
    for variant in VARIANTS:
        t, g, e = (stages.get(s, {}).get(variant, {}) for s in ("train", "generate", "eval"))
        if not e:
            continue
        row = {**e, **t, "train_s": t.get("seconds"), "generate_s": g.get("seconds"),
               "product_sca": (e.get("eval_sca") or {}).get("mean")}
        rows.append(f"| {variant} | " + " | ".join(fmt(row.get(c)) for c in COLUMNS) + " |")
    w, p = stages.get("world", {}), stages.get("pipeline", {})
    head = (f"World: {w.get('films')} training films, {w.get('eval_prompts')} evaluation prompts "
            f"(other seeds, held-out characters). Pipeline ({p.get('device', '-')}): "
            f"{p.get('samples')} samples, {p.get('captioned')} captioned from the caption source, "
            f"{fmt(p.get('seconds'))} s. Train / generate / eval device: "
            f"{stages.get('device', {}).get('train', '-')}; steps and sizes: configs/train/learn_*.yaml "
            f"with {stages.get('train_sets') or 'no overrides'}.\n\n"
            "Columns: the world's classifier on the decoded pixels (multishot/learn.py's "
            "definitions; `sca` against the read scene changes); `product_sca`: `multishot eval`'s "
            "SCA (its own shot detection); losses: mean of the first / last tenth of the logged "
            "steps; seconds are each command's wall time, imports included.")
    return head + "\n\n" + "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m multishot.learn_product",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("stage", choices=("all", *STAGES))
    parser.add_argument("--out", required=True, help="the run's folder")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--train-films", type=int, default=6000)
    parser.add_argument("--eval-films", type=int, default=64)
    parser.add_argument("--concurrent", type=int, default=1,
                        help="train / generate: variants run at once (default 1)")
    parser.add_argument("--set-pipeline", action="append", default=[], metavar="KEY=VALUE",
                        help="passed to multishot pipeline run as --set (repeatable)")
    parser.add_argument("--set-train", action="append", default=[], metavar="KEY=VALUE",
                        help="passed to multishot train as --set (repeatable)")
    parser.add_argument("--set-generate", action="append", default=[], metavar="KEY=VALUE",
                        help="passed to multishot generate as --set (repeatable)")
    args = parser.parse_args(argv)
    variants = args.variants.split(",")
    bad = [v for v in variants if v not in VARIANTS]
    if args.concurrent < 1:
        print("multishot.learn_product: --concurrent must be >= 1", file=sys.stderr)
        return 2
    if bad:
        print(f"multishot.learn_product: unknown variants {bad} (known: {list(VARIANTS)})", file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "stages.json"
    stages = json.loads(path.read_text()) if path.exists() else {}
    todo = STAGES if args.stage == "all" else (args.stage,)
    log = lambda m: print(f"[learn_product {time.strftime('%H:%M:%S')}] {m}", flush=True)  # noqa: E731

    def save():
        path.write_text(json.dumps(stages, indent=1))

    try:
        if "world" in todo:
            stages["world"] = world(out, args.train_films, args.eval_films)
            save()
        if "pipeline" in todo:
            stages["pipeline"] = {**pipeline(out, args.set_pipeline, log), "device": device_name()}
            save()
        for stage, run in (("train", train), ("generate", generate), ("eval", evaluate)):
            if stage not in todo:
                continue
            stages.setdefault("device", {})["train" if stage == "train" else stage] = device_name()
            if stage == "train":
                stages["train_sets"] = args.set_train
            sets = {"train": args.set_train, "generate": args.set_generate, "eval": []}[stage]
            # train and generate: up to --concurrent variants at once (each its own process;
            # a small model leaves most of a GPU idle)
            with ThreadPoolExecutor(args.concurrent if stage != "eval" else 1) as pool:
                futures = {v: pool.submit(run, out, v, sets, log) for v in variants}
                for variant, future in futures.items():
                    stages.setdefault(stage, {})[variant] = future.result()
                    save()
        if "table" in todo:
            (out / "learn_product.md").write_text(table(out))
            print((out / "learn_product.md").read_text())
    except (RuntimeError, FileNotFoundError, ValueError) as err:
        print(f"multishot.learn_product {args.stage}: {err}", file=sys.stderr)
        return 1 if isinstance(err, RuntimeError) else 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
