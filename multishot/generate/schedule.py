"""Shot-prompt schedules of streaming generation: which shot caption each chunk is made with.

A streamed video has one global caption and a growing list of shots; a shot is a caption and a
length in chunks (``model.causal.chunk_latent_frames`` latent frames each), so every cut falls
on a chunk boundary and each chunk belongs to exactly one shot (CausalCine conditions a chunk
on its own shot's prompt). Shots come from a file up front, from stdin line by line, or from
Python (:meth:`PromptSchedule.append`) while the stream runs.

Schedule lines (a file, or stdin): blank lines and lines starting with ``#`` are skipped;
a JSON object ``{"global_caption": "..."}`` (first only) sets the global caption; a JSON object
``{"caption": "...", "chunks": 2}`` is a shot of that many chunks; any other line is a shot
caption of the default length.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO


@dataclass(frozen=True)
class Shot:
    """One shot of a streamed video: its ``caption`` and its length in ``chunks`` (>= 1)."""

    caption: str
    chunks: int = 1

    def __post_init__(self):
        if not self.caption.strip():
            raise ValueError("a shot needs a non-empty caption")
        if self.chunks < 1:
            raise ValueError(f"a shot lasts at least one chunk, got {self.chunks}")


class PromptSchedule:
    """The shots of one stream, appended to while it runs (thread-safe).

    ``global_caption``: the video's global caption; ``shots``: the shots known so far. The
    stream asks :meth:`shot_of_chunk` for each chunk in turn; when the known shots are used up
    it ends, or with ``live=True`` waits for :meth:`append` until :meth:`close`.

    Raises:
        ValueError: an empty global caption.
    """

    def __init__(self, global_caption: str, shots: Iterable[Shot] = (), *, live: bool = False):
        if not global_caption.strip():
            raise ValueError("a stream needs a non-empty global caption")
        self.global_caption = global_caption.strip()
        self.shots: list[Shot] = list(shots)
        self._closed = not live
        self._changed = threading.Condition()

    def append(self, shot: Shot | str, chunks: int = 1) -> None:
        """Add a shot after the known ones (a caption string becomes ``Shot(caption, chunks)``).

        Raises:
            ValueError: the schedule is closed, or the shot is invalid.
        """
        shot = shot if isinstance(shot, Shot) else Shot(shot, chunks)
        with self._changed:
            if self._closed:
                raise ValueError("the schedule is closed; no shot can be appended")
            self.shots.append(shot)
            self._changed.notify_all()

    def close(self) -> None:
        """No more shots: the stream ends after the known ones."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def total_chunks(self) -> int:
        """Chunks of the shots known now."""
        return sum(s.chunks for s in self.shots)

    def shot_of_chunk(self, chunk: int, wait: bool = True) -> int | None:
        """Index of the shot chunk ``chunk`` (0-based) belongs to; None when the schedule ends
        before it (closed, or ``wait=False`` and not known yet)."""
        with self._changed:
            while True:
                end = 0
                for i, shot in enumerate(self.shots):
                    end += shot.chunks
                    if chunk < end:
                        return i
                if self._closed or not wait:
                    return None
                self._changed.wait()


def parse_line(line: str, default_chunks: int) -> tuple[str, object] | None:
    """One schedule line (module docstring) → ``("global", caption)``, ``("shot", Shot)`` or
    None for a blank / comment line.

    Raises:
        ValueError: a JSON object without a ``caption`` / ``global_caption`` string, or with a
            bad ``chunks``.
    """
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    if text.startswith("{"):
        try:
            item = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"not a JSON object: {err}") from None
        if isinstance(item.get("global_caption"), str) and len(item) == 1:
            return "global", item["global_caption"]
        if not isinstance(item.get("caption"), str) or set(item) - {"caption", "chunks"}:
            raise ValueError("expected {\"caption\": str, \"chunks\": int} or "
                             "{\"global_caption\": str}")
        chunks = item.get("chunks", default_chunks)
        if not isinstance(chunks, int) or isinstance(chunks, bool):
            raise ValueError(f"chunks must be an integer, got {chunks!r}")
        return "shot", Shot(item["caption"], chunks)
    return "shot", Shot(text, default_chunks)


def read_schedule(lines: Iterable[str], default_chunks: int, global_caption: str | None = None,
                  source: str = "schedule") -> PromptSchedule:
    """A closed :class:`PromptSchedule` of schedule ``lines`` (module docstring); the global
    caption from the lines or ``global_caption``.

    Raises:
        ValueError: a bad line (the message names ``source`` and the line number), a global
            caption after a shot or given twice, none at all, or no shot.
    """
    shots: list[Shot] = []
    for number, line in enumerate(lines, 1):
        try:
            parsed = parse_line(line, default_chunks)
            if parsed is None:
                continue
            kind, value = parsed
            if kind == "global":
                if shots or global_caption is not None:
                    raise ValueError("the global caption comes once, before the shots")
                global_caption = value
            else:
                shots.append(value)
        except ValueError as err:
            raise ValueError(f"{source}:{number}: {err}") from None
    if not global_caption:
        raise ValueError(f"{source}: no global caption (a {{\"global_caption\": ...}} line or "
                         f"--global-caption)")
    if not shots:
        raise ValueError(f"{source}: no shots")
    return PromptSchedule(global_caption, shots)


def read_schedule_file(path: str | Path, default_chunks: int,
                       global_caption: str | None = None) -> PromptSchedule:
    """:func:`read_schedule` of a file."""
    path = Path(path)
    return read_schedule(path.read_text().splitlines(), default_chunks, global_caption, str(path))


def feed_lines(schedule: PromptSchedule, stream: IO[str] | IO[bytes], default_chunks: int,
               on_error=None) -> threading.Thread:
    """Append the shots of ``stream``'s lines (stdin) to ``schedule`` from a daemon thread as
    they arrive, and close the schedule at end of input. A bad line (a binary ``stream``'s
    lines are decoded as UTF-8 one by one: a line that is not is bad, as in a schedule file)
    is passed to ``on_error`` (message) and skipped, so a typo does not end a running stream.

    Returns the started thread.
    """
    def run() -> None:
        try:
            for number, line in enumerate(stream, 1):
                try:
                    if isinstance(line, bytes):  # stdin's bytes: each line decoded on its own
                        try:
                            line = line.decode("utf-8")
                        except UnicodeDecodeError as err:
                            raise ValueError(f"not UTF-8 text (byte {err.start})") from None
                    parsed = parse_line(line, default_chunks)
                    if parsed is None:
                        continue
                    if parsed[0] == "global":
                        raise ValueError("the global caption is fixed once the stream runs")
                    schedule.append(parsed[1])
                except ValueError as err:
                    if on_error is not None:
                        on_error(f"stdin:{number}: {err}")
        finally:
            schedule.close()

    thread = threading.Thread(target=run, name="shot-prompts", daemon=True)
    thread.start()
    return thread
