"""The distilled student's record beside its weights, and what generation takes from it.

A distillation run exports ``student.safetensors`` (Wan key names) and ``student.json``
(this module owns it): ``{"format": "multishot-student", "version": 1, "model": name,
"student_timesteps": [...], "shift": float, "causal": {model.causal}}``.
``multishot generate --causal --checkpoint DIR/student.safetensors`` reads it through
:func:`generate_overrides`: the student streams with the Euler sampler at its N steps and
shift (the grid it was trained on, :mod:`distill.rollout`), without CFG (the teacher's
guidance is distilled into it), and with the causal config it was trained with.
"""

from __future__ import annotations

import json
from pathlib import Path

FORMAT = "multishot-student"
VERSION = 1
INFO = "student.json"


def write_student_info(folder: str | Path, model: str, timesteps: list[float], shift: float,
                       causal: dict) -> Path:
    """Write ``folder/student.json``; returns its path."""
    path = Path(folder) / INFO
    path.write_text(json.dumps({"format": FORMAT, "version": VERSION, "model": model,
                                "student_timesteps": timesteps, "shift": shift,
                                "causal": causal}, indent=1))
    return path


def generate_overrides(checkpoint: str | Path) -> dict:
    """Generate-config overrides for the DiT checkpoint ``checkpoint``: ``model.checkpoint``
    (and no random weights); with a ``student.json`` beside it, also the student's
    ``model.causal`` and ``sampling`` (Euler, N steps, its shift, ``cfg_scale`` 1).

    Raises:
        ValueError: ``student.json`` is there but not this format.
    """
    checkpoint = Path(checkpoint)
    out: dict = {"model": {"checkpoint": str(checkpoint), "random_weights": None, "holocine_dir": None}}
    info_path = checkpoint.parent / INFO
    if not info_path.exists():
        return out
    try:
        info = json.loads(info_path.read_text())
        if info.get("format") != FORMAT or info.get("version") != VERSION:
            raise ValueError("unknown format")
        out["model"]["causal"] = info["causal"]
        out["sampling"] = {"sampler": "euler", "steps": len(info["student_timesteps"]),
                           "shift": float(info["shift"]), "cfg_scale": 1.0}
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{info_path}: not a {FORMAT} v{VERSION} record ({err})") from None
    return out
