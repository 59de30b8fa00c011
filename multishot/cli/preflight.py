"""Checks ``train`` and ``distill`` run before launching anything (torchrun, Ray): the local
paths their config names exist, so that a missing checkpoint is one line in a second or two
instead of a rank's failure a minute later (after process start, model build and data setup).

Checked (when set and local, i.e. without ``://``): every ``init_from`` of ``model`` /
``student`` / ``teacher`` (loadable as :func:`model.checkpoint.checkpoint_files` finds it: a
``.safetensors`` file, an index, or a folder holding them), ``encoders.vae``,
``encoders.text_encoder``, ``encoders.tokenizer`` (folders), ``prompts`` (distill) and
``data.shards`` (train) / ``footage.shards`` (distill) roots without glob characters.
"""

from __future__ import annotations

from pathlib import Path

from multishot.errors import UsageError


def _local(path: str | None) -> bool:
    return bool(path) and "://" not in path


def missing_paths(config) -> list[str]:
    """``key: problem`` for each path of ``config`` (a train or distill config) that is not there."""
    from multishot.model.checkpoint import checkpoint_files

    problems = []
    for section in ("model", "student", "teacher"):
        init_from = getattr(getattr(config, section, None), "init_from", None)
        if _local(init_from):
            try:
                checkpoint_files(init_from)
            except FileNotFoundError as err:
                problems.append(f"{section}.init_from: {err}")
    encoders = getattr(config, "encoders", None)
    for key in ("vae", "text_encoder", "tokenizer"):
        folder = getattr(encoders, key, None)
        if _local(folder) and not Path(folder).exists():
            problems.append(f"encoders.{key}: no such folder {folder}")
    prompts = getattr(config, "prompts", None)
    if isinstance(prompts, str) and _local(prompts) and not Path(prompts).is_file():
        problems.append(f"prompts: no such file {prompts}")
    for section in ("data", "footage"):
        for root in getattr(getattr(config, section, None), "shards", None) or []:
            if _local(root) and not any(c in root for c in "*?[{") and not Path(root).exists():
                problems.append(f"{section}.shards: no such shard set or file {root}")
    return problems


def check_paths(config) -> None:
    """Raise one :class:`~multishot.errors.UsageError` listing every missing path of ``config``."""
    problems = missing_paths(config)
    if problems:
        raise UsageError("; ".join(problems))
