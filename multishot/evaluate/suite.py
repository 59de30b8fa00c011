"""``multishot eval --suite``: the benchmark prompts (``benchmarks/prompts/``) generated or read
from a folder, scored with every column, reported per prompt and as the mean (JSON + markdown).

A suite is a prompts file in HoloCine's protocol as ``multishot generate --prompts`` reads it
(:func:`multishot.generate.shots.read_prompts_file`: per item a ``name``, a ``global_caption`` and
``shot_captions`` with ``[characterK]`` names, ``num_frames`` and the target ``cut_frames``). The
video of item ``NAME`` is ``VIDEOS/NAME.mp4``; with a generate config, missing videos are
generated first (existing ones are kept, so a killed run resumes where it stopped).
"""

from __future__ import annotations

import logging
from pathlib import Path

from multishot.evaluate.report import HEADERS
from multishot.evaluate.video import METRICS, Evaluator

log = logging.getLogger(__name__)

#: the papers' names of the columns, in :data:`METRICS` order (HoloCine Table 1; CausalCine)
TITLES = ("Transition control (SCA)", "Inter-shot (ViCLIP)", "Inter-shot (DINOv2)", "Intra-shot subject",
          "Intra-shot background", "Semantic global", "Semantic shot", "Aesthetic")


def load_suite(path: str | Path, limit: int | None = None) -> list:
    """The suite's :class:`~multishot.generate.shots.Request` list (first ``limit`` items).

    Raises:
        ValueError: an item is malformed (the message names its line).
        FileNotFoundError: no such file.
    """
    from multishot.generate.shots import read_prompts_file

    requests = read_prompts_file(path, num_frames=241, seed=0)
    names = [r.name for r in requests]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: item names repeat; each names its video NAME.mp4")
    return requests[:limit] if limit is not None else requests


def generate_missing(requests: list, videos: Path, generate_config: str | Path) -> list[str]:
    """Generate ``VIDEOS/NAME.mp4`` (+ ``NAME.json``) for each request whose mp4 is absent;
    returns the names generated.

    Raises:
        multishot.config.ConfigError: the generate config does not validate.
    """
    from multishot.config import load_config
    from multishot.generate.config import GenerateConfig
    from multishot.generate.generator import Generator, write_outputs

    todo = [r for r in requests if not (videos / f"{r.name}.mp4").is_file()]
    if not todo:
        return []
    generator = Generator(load_config(generate_config, GenerateConfig))
    for request in todo:
        # written under a temporary name first: a killed run leaves no truncated NAME.mp4 behind
        partial = videos / f"{request.name}.partial.mp4"
        write_outputs(generator.generate(request), partial)
        partial.with_suffix(".json").replace(videos / f"{request.name}.json")
        partial.replace(videos / f"{request.name}.mp4")
        log.info("generated %s", videos / f"{request.name}.mp4")
    return [r.name for r in todo]


def evaluate_suite(requests: list, videos: Path, evaluator: Evaluator) -> list[dict]:
    """Every request's video scored with its prompt and target cuts; each result gains ``name``.

    Raises:
        FileNotFoundError: videos are missing (the message lists them).
    """
    missing = [r.name for r in requests if not (videos / f"{r.name}.mp4").is_file()]
    if missing:
        raise FileNotFoundError(f"{videos}: no video for {len(missing)} suite prompts "
                                f"({', '.join(missing[:5])}{', …' if len(missing) > 5 else ''}); "
                                "give --generate CONFIG to make them")
    results = []
    for r in requests:
        result = evaluator.evaluate(videos / f"{r.name}.mp4", r.cut_frames, r.prompt)
        results.append({"name": r.name, **result})
    return results


def markdown(results: list[dict], summary: dict[str, dict]) -> str:
    """The papers' table: one row per prompt and the mean row; a skipped column shows ``–`` and
    the reasons follow the table."""
    head = "| prompt | shots | " + " | ".join(TITLES) + " |"
    rows = [head, "|" + "---|" * (len(TITLES) + 2)]
    for r in results:
        cells = [f"{r['metrics'][m]:.4f}" if m in r["metrics"] else "–" for m in METRICS]
        shots = "-" if r["requested_cuts"] is None else str(len(r["requested_cuts"]) + 1)
        rows.append(f"| {r['name']} | {shots} | " + " | ".join(cells) + " |")
    cells = [f"**{summary[m]['mean']:.4f}**" if summary[m]["mean"] is not None else "–" for m in METRICS]
    rows.append(f"| **mean** ({len(results)} prompts) | | " + " | ".join(cells) + " |")
    skipped = {m: reason for r in results for m, reason in r["skipped"].items()}
    if skipped:
        rows += ["", *[f"- {TITLES[METRICS.index(m)]} skipped: {reason}" for m, reason in skipped.items()]]
    rows += ["", "Intra-shot columns pool frames VBench's way (Σ sim / Σ (frames − 1)); the others are "
             "means over prompts. Column keys: " + ", ".join(f"{h} = {m}" for h, m in zip(HEADERS, METRICS)) + "."]
    return "\n".join(rows) + "\n"

