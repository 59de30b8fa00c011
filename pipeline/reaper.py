"""Ending a private local Ray's processes when the run that started them dies without
``ray.shutdown`` (SIGKILL, OOM kill): Ray's dashboard and runtime-env agents, started by the
raylet, outlive a killed driver (about 215 MB per kill).

:func:`watch` starts ``python -m multishot.pipeline.reaper PID TOKEN`` in its own session (so a
kill of the run's process group spares it). Once a second it records the processes descending
from PID (Linux ``/proc``), each as (pid, start time) so a reused pid is never mistaken for one
of them; when PID is gone, it sends SIGKILL to those still alive, and to every live process
whose environment carries ``MULTISHOT_RUN_TOKEN=TOKEN``, then exits. The token catches what the
polling cannot: a process started in the last second before the kill (a Ray actor's worker
placed once resources free up) is no descendant at any poll, and once PID is dead its orphans
are no one's descendants; but Ray starts its processes with the driver's environment, set by
:func:`watch` before ``ray.init``. After a normal ``ray.shutdown`` nothing is left for it to end.
Elsewhere than Linux it does nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

POLL_S = 1.0
#: environment variable marking the processes started by a watched run (:func:`watch`)
TOKEN_ENV = "MULTISHOT_RUN_TOKEN"


def start_time(pid: int) -> int | None:
    """Clock ticks since boot at which ``pid`` started (``/proc/PID/stat`` field 22), or None
    when it is gone or a zombie (dead, not yet reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return None if fields[0] == "Z" else int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def descendants(root: int) -> set[tuple[int, int]]:
    """(pid, start time) of every live process descending from ``root``."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = set(), [root]
    while frontier:
        pid = frontier.pop()
        for child, ppid in parent.items():
            if ppid == pid and (start := start_time(child)) is not None:
                found.add((child, start))
                frontier.append(child)
    return found


def marked(token: str) -> set[tuple[int, int]]:
    """(pid, start time) of every live process whose environment has ``TOKEN_ENV=token``
    (``/proc/PID/environ``; processes of other users are unreadable and skipped)."""
    entry = f"{TOKEN_ENV}={token}".encode()
    found = set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/environ", "rb") as f:
                    environ = f.read().split(b"\0")
            except OSError:
                continue
            if entry in environ and (start := start_time(int(name))) is not None:
                found.add((int(name), start))
    return found


def watch(pid: int | None = None, token: str | None = None) -> subprocess.Popen | None:
    """Start the watcher of ``pid`` (default: this process, whose environment then gets a new
    token in ``TOKEN_ENV``, inherited by every process it starts after this call: call it before
    ``ray.init``). For another ``pid``, ``token`` is the one its environment was given (None:
    descendants only). None where ``/proc`` is missing."""
    if not os.path.isdir("/proc"):
        return None
    if pid is None:
        pid, token = os.getpid(), uuid.uuid4().hex
        os.environ[TOKEN_ENV] = token
    return subprocess.Popen(
        [sys.executable, "-m", "multishot.pipeline.reaper", str(pid), token or ""],
        start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def _main(pid: int, token: str) -> None:
    started = start_time(pid)
    seen: set[tuple[int, int]] = set()
    me = os.getpid()
    while start_time(pid) == started and started is not None:
        seen |= descendants(pid)
        time.sleep(POLL_S)
    if token:
        seen |= marked(token)
    for child, start in seen:
        if child == me:
            continue
        if start_time(child) == start:
            try:
                os.kill(child, signal.SIGKILL)
            except OSError:
                pass


if __name__ == "__main__":
    _main(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "")
