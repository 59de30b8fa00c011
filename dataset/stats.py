"""``multishot shards stats``: totals, distributions and rejection reasons of a shard set.

Sample-level numbers come from the listing rows (index, or the shards' JSON without one);
per-shot filter scores and rejected shots from ``index/shots.parquet`` (every detected shot
with ``kept`` and ``reason``, several reasons comma-separated), falling back to the samples'
own (kept) shots; rejected input videos from ``index/rejects.parquet``, counted by ``stage``
and the reason's text before its first colon (the rest holds per-file details).
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass, field

from multishot.dataset.shardset import ShardSet

#: Per-shot filter scores (``Shot`` fields and ``shots.parquet`` columns) and their units.
SCORES = {
    "brightness": "mean BT.709 luma, 0-255",
    "ocr_text_ratio": "text area fraction",
    "aesthetic": "LAION score, 1-10",
}
#: Histogram range of each score (its scale's bounds).
SCORE_RANGES = {"brightness": (0.0, 255.0), "ocr_text_ratio": (0.0, 1.0), "aesthetic": (1.0, 10.0)}
#: Rejection reasons shown before the rest are summed as "other".
TOP_REASONS = 12


@dataclass
class ShardSetStats:
    """Raw values behind the summary: seconds, counts and per-shot scores (kept / rejected)."""

    durations_s: list[float] = field(default_factory=list)
    shots_per_sample: list[int] = field(default_factory=list)
    buckets: Counter = field(default_factory=Counter)
    caption_status: Counter = field(default_factory=Counter)
    kept_scores: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in SCORES})
    rejected_scores: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in SCORES})
    shot_rejections: Counter = field(default_factory=Counter)
    video_rejections: Counter = field(default_factory=Counter)

    def summary(self) -> dict:
        """JSON-ready totals: samples, hours, shots, distributions (min/median/max), reasons."""
        return {
            "samples": len(self.durations_s),
            "hours": sum(self.durations_s) / 3600,
            "shots": sum(self.shots_per_sample),
            "buckets": dict(sorted(self.buckets.items())),
            "caption_status": dict(sorted(self.caption_status.items())),
            "duration_s": _spread(self.durations_s),
            "shots_per_sample": {str(k): v for k, v in sorted(Counter(self.shots_per_sample).items())},
            "scores": {
                k: {"kept": _spread(self.kept_scores[k]), "rejected": _spread(self.rejected_scores[k])} for k in SCORES
            },
            "shot_rejections": _top(self.shot_rejections),
            "video_rejections": _top(self.video_rejections),
        }


def _finite(values) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def _spread(values: list[float]) -> dict | None:
    if not values:
        return None
    return {"n": len(values), "min": min(values), "median": statistics.median(values), "max": max(values)}


def _top(counts: Counter) -> dict[str, int]:
    top = dict(counts.most_common(TOP_REASONS))
    rest = sum(counts.values()) - sum(top.values())
    return top | ({"other": rest} if rest else {})


def compute_stats(shard_set: ShardSet) -> ShardSetStats:
    """Gather :class:`ShardSetStats` of ``shard_set`` (reads the index, or streams the JSONs)."""
    stats = ShardSetStats()
    for row in shard_set.rows():
        stats.durations_s.append(row["duration_s"])
        stats.shots_per_sample.append(row["num_shots"])
        stats.buckets[row["bucket"]] += 1
        stats.caption_status[row["caption_status"]] += 1
    shots = shard_set.table(shard_set.layout.shots_table)
    if shots is not None and "kept" in shots.column_names:
        columns = shots.to_pydict()
        kept = columns["kept"]
        for score in SCORES:
            values = columns.get(score, [None] * len(kept))
            stats.kept_scores[score] = _finite(v for v, k in zip(values, kept) if k)
            stats.rejected_scores[score] = _finite(v for v, k in zip(values, kept) if not k)
        reasons = columns.get("reason", [""] * len(kept))
        for reason, k in zip(reasons, kept):
            if not k:  # a shot failing several tests lists every reason, comma-separated
                stats.shot_rejections.update((reason or "(no reason recorded)").split(","))
    else:
        for _, record in shard_set.records():
            for score in SCORES:
                stats.kept_scores[score] += _finite(getattr(s, score) for s in record.shots)
    rejects = shard_set.table(shard_set.layout.rejects_table)
    if rejects is not None and "reason" in rejects.column_names:
        # Reasons carry details after a colon (decoder messages, paths): count by stage and head.
        reasons = rejects.column("reason").to_pylist()
        stages = rejects.column("stage").to_pylist() if "stage" in rejects.column_names else [None] * len(reasons)
        stats.video_rejections.update(
            f"{stage}: " * bool(stage) + (reason or "(no reason recorded)").split(":")[0]
            for stage, reason in zip(stages, reasons)
        )
    return stats


def format_stats(summary: dict) -> str:
    """The human-readable text of :meth:`ShardSetStats.summary`."""

    def spread(s: dict | None, fmt: str = ".2f") -> str:
        if s is None:
            return "none"
        return f"n {s['n']}  min {s['min']:{fmt}}  median {s['median']:{fmt}}  max {s['max']:{fmt}}"

    def counts(c: dict) -> str:
        return ", ".join(f"{k}: {v}" for k, v in c.items()) or "none"

    per_sample = summary["shots"] / summary["samples"] if summary["samples"] else 0.0
    lines = [
        f"samples          {summary['samples']}",
        f"hours            {summary['hours']:.3f} ({summary['hours'] * 3600:.1f} s)",
        f"shots            {summary['shots']} ({per_sample:.2f} per sample)",
        f"buckets          {counts(summary['buckets'])}",
        f"caption status   {counts(summary['caption_status'])}",
        f"duration s       {spread(summary['duration_s'])}",
        f"shots per sample {counts(summary['shots_per_sample'])}",
        "shot scores",
    ]
    for score, unit in SCORES.items():
        s = summary["scores"][score]
        lines.append(f"  {score} ({unit})")
        lines.append(f"    kept      {spread(s['kept'])}")
        lines.append(f"    rejected  {spread(s['rejected'])}")
    lines.append(f"rejected shots   {counts(summary['shot_rejections'])}")
    lines.append(f"rejected videos  {counts(summary['video_rejections'])}")
    return "\n".join(lines)


def _hours(hours: float) -> str:
    return f"{hours:.2f} h" if hours >= 0.1 else f"{hours * 60:.1f} min"


def plot_stats(stats: ShardSetStats, path: str) -> None:
    """Write a PNG (matplotlib, Agg) of the distributions and rejection reasons to local ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = stats.summary()
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5), layout="constrained")
    fig.suptitle(
        f"{summary['samples']} samples, {_hours(summary['hours'])}, {summary['shots']} shots "
        f"— captions: {', '.join(f'{k} {v}' for k, v in summary['caption_status'].items()) or 'none'}",
        fontsize=13,
    )
    ax = axes[0, 0]
    ax.hist(stats.durations_s, bins=20, color="tab:blue")
    ax.set(title="sample duration", xlabel="seconds", ylabel="samples")
    ax = axes[0, 1]
    per = Counter(stats.shots_per_sample)
    ax.bar(list(per), list(per.values()), color="tab:blue")
    ax.set(title="shots per sample", xlabel="shots", ylabel="samples")
    ax.xaxis.get_major_locator().set_params(integer=True)
    for ax, score in zip([axes[0, 2], axes[1, 0], axes[1, 1]], SCORES):
        kept, rejected = stats.kept_scores[score], stats.rejected_scores[score]
        if kept or rejected:
            ax.hist(
                [kept, rejected],
                bins=25,
                range=SCORE_RANGES[score],
                stacked=True,
                color=["tab:green", "tab:red"],
                label=["kept", "rejected"],
            )
            ax.legend()
        else:
            ax.text(0.5, 0.5, "no scores recorded", ha="center", va="center", transform=ax.transAxes)
        ax.set(title=f"shot {score}", xlabel=SCORES[score], ylabel="shots")
    ax = axes[1, 2]
    reasons = [(f"shot: {k}", v) for k, v in summary["shot_rejections"].items()]
    reasons += [(f"video: {k}", v) for k, v in summary["video_rejections"].items()]
    if reasons:
        labels = [k if len(k) <= 40 else k[:39] + "…" for k, _ in reasons]
        ax.barh(labels[::-1], [v for _, v in reasons][::-1], color="tab:red")
        ax.set(xlabel="count")
    else:
        ax.text(0.5, 0.5, "nothing rejected", ha="center", va="center", transform=ax.transAxes)
    ax.set(title="rejection reasons")
    for ax in axes.flat[:5]:  # counts on the y axes; the reasons panel counts along x
        ax.yaxis.get_major_locator().set_params(integer=True)
    axes[1, 2].xaxis.get_major_locator().set_params(integer=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
