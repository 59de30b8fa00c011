"""A sample described for a person: its metadata, shots, cut frames and HoloCine prompt.

Used by ``multishot shards show`` (the text) and ``sheet`` (the per-shot line). The prompt is
:meth:`dataset.record.SampleRecord.prompt` (``[global caption] … [per shot caption] … [shot
cut] …``); a sample whose captions are not ``ok`` says so instead of printing a prompt.
"""

from __future__ import annotations

from multishot.dataset.record import SampleRecord, Shot


def shot_summary(record: SampleRecord, shot: Shot) -> str:
    """One line: the shot's frames (inclusive), sample and source time range (s), and scores."""
    aesthetic = f"{shot.aesthetic:.2f}" if shot.aesthetic is not None else "—"
    return (
        f"shot {shot.index}  frames {shot.start_frame}–{shot.end_frame - 1}  "
        f"{shot.start_frame / record.fps:.2f}–{shot.end_frame / record.fps:.2f} s  "
        f"(source {shot.source_start_s:.2f}–{shot.source_end_s:.2f} s)  "
        f"brightness {shot.brightness:.0f}  OCR {shot.ocr_text_ratio:.2f}  aesthetic {aesthetic}"
    )


def caption_state(record: SampleRecord) -> str:
    """``ok (model)``, ``PENDING: …`` or ``FAILED: error``: whether the sample has a prompt yet."""
    if record.caption_status == "ok":
        return f"ok ({record.caption_model or 'model unknown'})"
    if record.caption_status == "failed":
        return f"FAILED: {record.caption_error or 'no error recorded'} (no prompt)"
    return "PENDING: not captioned yet, run `multishot annotate` (no prompt)"


def describe_sample(record: SampleRecord, shard: str | None = None) -> str:
    """Multi-line text of ``record``: metadata, one line per shot, cut frames, then the prompt."""
    lines = [
        f"key               {record.key}" + (f"  (shard {shard})" if shard else ""),
        f"source            {record.source}  (source_id {record.source_id})",
        f"bucket            {record.bucket} (target {record.target_duration_s:g} s)",
        f"video             {record.num_frames} frames @ {record.fps:g} fps = {record.duration_s:.2f} s, "
        f"{record.width}x{record.height}, {record.num_latent_frames} latent frames",
        f"shots             {record.num_shots}",
        *(f"  {shot_summary(record, s)}" for s in record.shots),
        f"shot_cut_frames   {record.cut_frames}",
        f"latent cut frames {record.latent_cut_frames}",
        f"aesthetic         {record.aesthetic_status}",
        f"samples_hash      {record.samples_hash}",
        f"captions          {caption_state(record)}",
    ]
    if record.caption_status == "ok":
        lines += ["prompt:", record.prompt()]
    return "\n".join(lines)
