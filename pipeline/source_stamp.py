"""Trusting a result only for the bytes it read: a source's size and modification time
(its *stamp*) around each read.

A video's identity (``source_id``) is the sha256 of its bytes taken before the stages read it
(:func:`pipeline.task.fingerprint`); the stages then open it again (probe, scan segments,
render). If the file is deleted, truncated, grown or replaced in between, the result describes
other bytes than the ones its id names: a deleted file would be recorded as ``rejected`` for
good, a truncated one as ``partial`` with too few samples, a growing one twice under two ids.
So the stamp is taken before and after the fingerprint (a file changing then is not a task),
recorded in the task, and compared again when the write stage has the result
(:func:`change_problem`): a difference makes the video an ``error`` with no shards, no result
file and no segment resume points, so the next run redoes it from scratch (make and rsync's
size + mtime check; a change that keeps both, within one run, is not detected).
"""

from __future__ import annotations

import os
import stat

import pyarrow.fs as pafs

from multishot.pipeline.task import VideoTask, fingerprint


class SourceChanged(OSError):
    """The source changed while it was read (the message says how)."""


class NotRegularFile(ValueError):
    """The source is a FIFO, device or other non-regular file: never opened (a FIFO would block
    the run, ``/dev/zero`` never ends)."""


def stamp(fs: pafs.FileSystem, path: str) -> list[int]:
    """``[size in bytes, modification time in ns]`` of the regular file at ``path``.

    Raises:
        FileNotFoundError: it does not exist (any more).
        NotRegularFile: it is not a regular file (a FIFO would block the run, ``/dev/zero``
            never ends).
    """
    if isinstance(fs, pafs.LocalFileSystem):
        # pyarrow reports FIFOs and devices as files (FileType.File): ask the OS
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(f"not a regular file ({_kind(st.st_mode)}): never opened")
        return [int(st.st_size), int(st.st_mtime_ns)]
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{path}: no such file")
    if info.type != pafs.FileType.File:
        raise NotRegularFile(f"not a regular file ({info.type.name.lower()}): never opened")
    return [int(info.size), int(info.mtime_ns or 0)]


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "a special file"


def fingerprint_stamped(fs: pafs.FileSystem, path: str) -> tuple[str, list[int]]:
    """``(source_id, stamp)``: the fingerprint, and the stamp it is valid for.

    Raises:
        FileNotFoundError, NotRegularFile: as :func:`stamp` (checked before the file is opened).
        SourceChanged: the stamp changed while the fingerprint was taken.
    """
    before = stamp(fs, path)
    source_id = fingerprint(fs, path)
    after = stamp(fs, path)
    if after != before:
        raise SourceChanged(f"changed while its fingerprint was taken ({_how(before, after)})")
    return source_id, after


def change_problem(task: VideoTask) -> str | None:
    """Why ``task``'s result must not be trusted because its source is not the file it
    fingerprinted any more (vanished, other size or mtime), or None."""
    if task.source_stamp is None:
        return None
    from multishot.dataset.storage import resolve

    try:
        fs, path = resolve(task.source)
        now = stamp(fs, path)
    except (OSError, ValueError) as err:
        return f"source vanished while it was read ({type(err).__name__}); redone next run"
    if now != task.source_stamp:
        return f"source changed while it was read ({_how(task.source_stamp, now)}); redone next run"
    return None


def _how(before: list[int], after: list[int]) -> str:
    if before[0] != after[0]:
        return f"{before[0]} bytes, then {after[0]}"
    return "modification time changed"
