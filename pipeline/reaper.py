"""Ending a private local Ray's processes when the run that started them dies without
``ray.shutdown`` (SIGKILL, OOM kill): Ray's dashboard and runtime-env agents, started by the
raylet, outlive a killed driver (about 215 MB per kill).

:func:`watch` starts ``python -m multishot.pipeline.reaper PID`` in its own session (so a kill
of the run's process group spares it). Once a second it records the processes descending from
PID (Linux ``/proc``), each as (pid, start time) so a reused pid is never mistaken for one of
them; when PID is gone, it sends SIGKILL to those still alive, then exits. After a normal
``ray.shutdown`` nothing is left for it to end. Elsewhere than Linux it does nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

POLL_S = 1.0


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


def watch(pid: int | None = None) -> subprocess.Popen | None:
    """Start the watcher of ``pid`` (default: this process); None where ``/proc`` is missing."""
    if not os.path.isdir("/proc"):
        return None
    return subprocess.Popen(
        [sys.executable, "-m", "multishot.pipeline.reaper", str(pid or os.getpid())],
        start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def _main(pid: int) -> None:
    started = start_time(pid)
    seen: set[tuple[int, int]] = set()
    me = os.getpid()
    while start_time(pid) == started and started is not None:
        seen |= {(child, start) for child, start in descendants(pid) if child != me}
        time.sleep(POLL_S)
    for child, start in seen:
        if start_time(child) == start:
            try:
                os.kill(child, signal.SIGKILL)
            except OSError:
                pass


if __name__ == "__main__":
    _main(int(sys.argv[1]))
