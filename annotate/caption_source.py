"""Captions an archive already has, joined to the pipeline's samples (issue 30).

Some archives come with captions or scripts: per-shot descriptions keyed by video and time. A
**caption source** is a JSON-lines file of such entries, one object a line:

* ``{"source": S, "start_s": a, "end_s": b, "caption": "..."}``: the shot caption of the span
  ``[a, b)`` seconds of source video ``S``;
* ``{"source": S, "global_caption": "..."}``: the global caption of video ``S`` (optional).

``S`` names a source video as the sample record does: its path or URI (``SampleRecord.source``),
its file name, or its content fingerprint (``SampleRecord.source_id``); an entry keyed by a path
also matches a sample whose source has the same file name (when only one video has it). :func:`join_captions`
fills a packed sample's captions from it: each shot takes the entry of its source video that
overlaps the shot's source span (``Shot.source_start_s`` … ``source_end_s``) the most, if that
overlap covers at least ``min_overlap`` of the shot; the global caption is the video's (or the
sample's shot captions joined when the video has none), its "This scene contains N shots."
sentence set to the sample's shot count (:func:`dataset.record.with_shot_count`). A sample with
a shot no entry covers keeps ``caption_status`` and gets the reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from multishot.dataset.record import SampleRecord, with_shot_count

#: the share of a shot's source span its caption entry must cover (``join_captions``'s and the
#: pipeline's ``caption.min_overlap`` default)
MIN_OVERLAP = 0.5


@dataclass
class CaptionSource:
    """Entries of a caption source, indexed by every name of their video.

    ``shots[name]``: ``(start_s, end_s, caption)`` sorted by start; ``globals[name]``: caption.
    """

    shots: dict[str, list[tuple[float, float, str]]] = field(default_factory=dict)
    globals: dict[str, str] = field(default_factory=dict)
    name: str = "caption_source"

    @classmethod
    def read(cls, path: str | Path) -> CaptionSource:
        """Parse a JSON-lines caption source.

        Raises:
            ValueError: a line that is not an object of one of the two forms (the message
                names the file and line).
        """
        out = cls(name=f"caption_source:{Path(path).name}")
        for number, line in enumerate(Path(path).read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                source = str(entry["source"])
                if "global_caption" in entry:
                    out.globals[source] = str(entry["global_caption"]).strip()
                else:
                    start, end = float(entry["start_s"]), float(entry["end_s"])
                    if not end > start >= 0:
                        raise ValueError(f"span [{start}, {end}) is empty or negative")
                    out.shots.setdefault(source, []).append((start, end, str(entry["caption"]).strip()))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
                raise ValueError(f"{path}:{number}: not a caption-source entry ({err})") from None
        for spans in out.shots.values():
            spans.sort()
        # a path also answers to its file name (unless two videos share that name)
        for table in (out.shots, out.globals):
            names: dict[str, list[str]] = {}
            for key in table:
                names.setdefault(PurePosixPath(key).name, []).append(key)
            for name, keys in names.items():
                if name not in table and len(keys) == 1:
                    table[name] = table[keys[0]]
        return out

    def _names(self, record: SampleRecord) -> list[str]:
        return [record.source, PurePosixPath(record.source).name, record.source_id]

    def shot_spans(self, record: SampleRecord) -> list[tuple[float, float, str]]:
        for name in self._names(record):
            if name in self.shots:
                return self.shots[name]
        return []

    def global_caption(self, record: SampleRecord) -> str | None:
        return next((self.globals[n] for n in self._names(record) if n in self.globals), None)


def join_captions(record: SampleRecord, source: CaptionSource,
                  min_overlap: float = MIN_OVERLAP) -> tuple[SampleRecord, str | None]:
    """``record`` with its captions from ``source`` (``caption_status`` ``"ok"``,
    ``caption_model`` the source's name), and None; or ``record`` unchanged and the reason when
    a shot has no entry covering ``min_overlap`` of its source span."""
    spans = source.shot_spans(record)
    captions = []
    for shot in record.shots:
        length = shot.source_end_s - shot.source_start_s
        best, best_overlap = None, 0.0
        for start, end, caption in spans:
            overlap = min(end, shot.source_end_s) - max(start, shot.source_start_s)
            if overlap > best_overlap:
                best, best_overlap = caption, overlap
        if best is None or best_overlap < min_overlap * length:
            return record, (f"shot {shot.index} ({shot.source_start_s:.2f}-{shot.source_end_s:.2f} s "
                            f"of {record.source}) has no caption covering {min_overlap:.0%} of it")
        captions.append(best)
    global_caption = source.global_caption(record) or " ".join(captions)
    shots = [s.model_copy(update={"caption": c}) for s, c in zip(record.shots, captions)]
    joined = record.model_copy(update={
        "shots": shots, "global_caption": with_shot_count(global_caption, len(shots)),
        "caption_status": "ok", "caption_error": None, "caption_model": source.name})
    return SampleRecord.model_validate(joined.model_dump()), None
