"""Many videos' results → the overall means, a text table and the JSON report of ``multishot eval``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from multishot.evaluate.video import METRICS, POOLED

#: column headers of the table, in :data:`METRICS` order
HEADERS = ("SCA", "inter_viclip", "inter_dinov2", "subject", "background", "sem_global", "sem_shot", "aesthetic")


def overall(results: list[dict]) -> dict[str, dict]:
    """Per metric ``{"mean": float | None, "videos": n}`` over the videos that have it
    (``mean`` is None when no video has it: the metric was skipped everywhere), and beside SCA
    ``shot_count_error``: the mean of |detected − requested shots| over the videos with SCA
    (:attr:`evaluate.sca.SCAResult.shot_count_error`). The columns of
    :data:`POOLED` are VBench's frame-weighted ``Σ sim / Σ cnt`` over every shot of every video
    (``vbench/subject_consistency.py``); the others are means over videos."""
    out = {}
    for name in METRICS:
        values = [r["metrics"][name] for r in results if name in r["metrics"]]
        mean = float(np.mean(values)) if values else None
        if name in POOLED and values:
            sims, counts = zip(*(r["pooled"][name] for r in results if name in r["metrics"]))
            mean = float(sum(sims) / sum(counts))
        out[name] = {"mean": mean, "videos": len(values)}
    errors = [abs(r["sca"]["shot_count_error"]) for r in results if r.get("sca")]
    out["shot_count_error"] = {"mean": float(np.mean(errors)) if errors else None,
                               "videos": len(errors)}
    return out


#: where an evaluated video came from (:func:`origin`)
ORIGINS = ("generated", "real", "unknown")


def origin(sidecar: dict | None) -> str:
    """``generated`` when the JSON beside the mp4 is ``multishot generate``'s record (it names
    its ``checkpoints``), ``real`` when it is a pipeline sample record (``source`` and
    ``shots``), else ``unknown`` (no JSON, or another kind)."""
    if not isinstance(sidecar, dict):
        return "unknown"
    if "checkpoints" in sidecar:
        return "generated"
    if "source" in sidecar and "shots" in sidecar:
        return "real"
    return "unknown"


def overall_by_origin(results: list[dict]) -> dict[str, dict[str, dict]]:
    """:func:`overall` of each origin present (``result["origin"]``, :data:`ORIGINS`), so that
    generated videos are never averaged with the real ones they are compared against."""
    present = [o for o in ORIGINS if any(r.get("origin", "unknown") == o for r in results)]
    return {o: overall([r for r in results if r.get("origin", "unknown") == o]) for o in present}


def table(results: list[dict], summary: dict[str, dict]) -> str:
    """Fixed-width table: one row per video and an overall row (one per origin when the videos
    have several: generated and real are not averaged together); a skipped metric shows ``-``."""
    by_origin = overall_by_origin(results)
    totals = [("overall", summary)] if len(by_origin) < 2 else \
        [(f"overall {o} ({sum(r.get('origin', 'unknown') == o for r in results)})", s) for o, s in by_origin.items()]
    names = [Path(r["video"]).name for r in results] + [label for label, _ in totals]
    width = max(12, *(len(n) for n in names))
    rows = [f"{'video':<{width}}  {'cuts req/det':>12}  " + "  ".join(f"{h:>12}" for h in HEADERS)]
    for r in results:
        req = "-" if r["requested_cuts"] is None else str(len(r["requested_cuts"]))
        cells = [f"{r['metrics'][m]:12.4f}" if m in r["metrics"] else f"{'-':>12}" for m in METRICS]
        rows.append(f"{Path(r['video']).name:<{width}}  {req + '/' + str(len(r['detected_cuts'])):>12}  " + "  ".join(cells))
    for label, means in totals:
        cells = [f"{means[m]['mean']:12.4f}" if means[m]["mean"] is not None else f"{'-':>12}" for m in METRICS]
        rows.append(f"{label:<{width}}  {'':>12}  " + "  ".join(cells))
        if means.get("shot_count_error", {}).get("mean") is not None:
            rows.append(f"{label}: mean |detected - requested shots|: "
                        f"{means['shot_count_error']['mean']:.3f}")
    skipped = {m: reason for r in results for m, reason in r["skipped"].items()}
    rows += [f"skipped {m}: {reason}" for m, reason in skipped.items()]
    return "\n".join(rows)
