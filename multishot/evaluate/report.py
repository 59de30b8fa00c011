"""Many videos' results → the overall means, a text table and the JSON report of ``multishot eval``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from multishot.evaluate.video import METRICS

#: column headers of the table, in :data:`METRICS` order
HEADERS = ("SCA", "inter", "inter_char", "intra_clip", "intra_dino", "text_glob", "text_shot")


def overall(results: list[dict]) -> dict[str, dict]:
    """Per metric ``{"mean": float | None, "videos": n}`` over the videos that have it
    (``mean`` is None when no video has it: the metric was skipped everywhere), and beside SCA
    ``shot_count_error``: the mean of |detected − requested shots| over the videos with SCA
    (:attr:`evaluate.sca.SCAResult.shot_count_error`)."""
    out = {}
    for name in METRICS:
        values = [r["metrics"][name] for r in results if name in r["metrics"]]
        out[name] = {"mean": float(np.mean(values)) if values else None, "videos": len(values)}
    errors = [abs(r["sca"]["shot_count_error"]) for r in results if r.get("sca")]
    out["shot_count_error"] = {"mean": float(np.mean(errors)) if errors else None,
                               "videos": len(errors)}
    return out


def table(results: list[dict], summary: dict[str, dict]) -> str:
    """Fixed-width table: one row per video and an overall row; a skipped metric shows ``-``."""
    names = [Path(r["video"]).name for r in results] + ["overall"]
    width = max(12, *(len(n) for n in names))
    rows = [f"{'video':<{width}}  {'cuts req/det':>12}  " + "  ".join(f"{h:>10}" for h in HEADERS)]
    for r in results:
        req = "-" if r["requested_cuts"] is None else str(len(r["requested_cuts"]))
        cells = [f"{r['metrics'][m]:10.4f}" if m in r["metrics"] else f"{'-':>10}" for m in METRICS]
        rows.append(f"{Path(r['video']).name:<{width}}  {req + '/' + str(len(r['detected_cuts'])):>12}  " + "  ".join(cells))
    cells = [f"{summary[m]['mean']:10.4f}" if summary[m]["mean"] is not None else f"{'-':>10}" for m in METRICS]
    rows.append(f"{'overall':<{width}}  {'':>12}  " + "  ".join(cells))
    if summary.get("shot_count_error", {}).get("mean") is not None:
        rows.append(f"mean |detected - requested shots|: {summary['shot_count_error']['mean']:.3f}")
    skipped = {m: reason for r in results for m, reason in r["skipped"].items()}
    rows += [f"skipped {m}: {reason}" for m, reason in skipped.items()]
    return "\n".join(rows)
