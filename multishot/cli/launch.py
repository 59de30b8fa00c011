"""What ``train``, ``distill`` and ``generate`` share to run: ``--config FILE`` with ``--set
KEY=VALUE`` overrides, and torchrun's ranks.

``multishot train --config FILE`` (and ``distill``) runs torchrun in this process
(``torch.distributed.run``) with one rank per local GPU (one rank on a CPU-only machine); each
rank runs :func:`run_rank`, as ``torchrun -m multishot.cli.train`` does on a cluster.

A rank that fails on a bad input (a :class:`multishot.errors.UsageError`: a checkpoint that does
not fit, a missing encoder folder, ...) writes its one-line message to torchelastic's error file
(``TORCHELASTIC_ERROR_FILE``) and exits 2; the launcher reads it and ends the command with that
line and exit 2 instead of torchrun's child-failure report. Any other failure keeps its
traceback on the rank's stderr and ends the launcher with one summary line and exit 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import yaml

from multishot.cli import ArgumentParser, user_error_message
from multishot.config import load_config
from multishot.errors import USAGE_EXIT, UsageError, one_line

log = logging.getLogger(__name__)


def overrides(pairs: list[str]) -> dict:
    """``a.b=value`` pairs (value parsed as YAML) → nested dict."""
    out: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise UsageError(f"--set expects KEY=VALUE, got {pair!r}")
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return out


def merged(*nested: dict | None) -> dict:
    """Nested override dicts merged left to right (a later key wins, sub-dicts merge)."""
    out: dict = {}

    def put(into: dict, new: dict) -> None:
        for key, value in new.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                put(into[key], value)
            else:
                into[key] = value

    for item in nested:
        put(out, item or {})
    return out


def add_config_args(parser: argparse.ArgumentParser, folder: str = "train", required: bool = True) -> None:
    """``--config FILE`` (a YAML file of ``configs/FOLDER/``) and repeatable ``--set KEY=VALUE``;
    ``required=False``: without ``--config`` the config's defaults (``--set`` still applies)."""
    parser.add_argument("--config", required=required, metavar="YAML",
                        help=f"a YAML file of configs/{folder}/" + ("" if required else " (default: built-in defaults)"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set run.max_steps=100 (repeatable)")


def torchrun(argv: list[str], command: str = "train") -> int:
    """``torchrun --standalone ARGV`` in this process (``torch.distributed.run``) for
    ``multishot COMMAND``: returns 0, or 1 with one line naming the first failed rank and its
    error.

    Raises:
        UsageError: the first failed rank stopped on a bad input (exit 2, its message).
    """
    from torch.distributed import run as torch_run
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    log.debug("torchrun --standalone %s", " ".join(argv))
    # the agent's own log lines (rendezvous, worker group, "failed (exitcode: 2)") would bury
    # the ranks' output and the one-line summary below
    logging.getLogger("torch.distributed").setLevel(logging.CRITICAL)
    try:
        torch_run.run(torch_run.parse_args(["--standalone", *argv]))
    except ChildFailedError as err:
        # the earliest rank that said why (ranks the agent stopped after it have no record)
        reported = {r: f for r, f in err.failures.items() if _has_error_file(f)}
        rank, failure = min(reported.items(), key=lambda rf: rf[1].timestamp) if reported \
            else err.get_first_failure()
        message = failure.message if isinstance(failure.message, str) \
            else failure.message.get("message", "")  # torchelastic's own record format
        if failure.exitcode == USAGE_EXIT and _has_error_file(failure):
            raise UsageError(message) from None
        if not _has_error_file(failure) and failure.exitcode > 0:
            message = "see its output above"
        print(f"multishot {command}: rank {rank} failed (exit code {failure.exitcode}): "
              f"{one_line(message)}", file=sys.stderr)
        return 1
    return 0


def _has_error_file(failure) -> bool:
    return failure.error_file_data.get("message") not in (None, "<NONE>")


def run_rank(argv: list[str] | None, prog: str, description: str, config_type: type,
             run, command: str) -> int:
    """One torchrun rank of ``multishot COMMAND``: parse ``--config FILE [--set KEY=VALUE ...]``,
    load ``config_type``, call ``run(config)``; returns 0, or 2 after a bad input (handed to
    the launcher through torchelastic's error file); other errors propagate. The process
    group, if ``run`` made one, is ended before returning."""
    parser = ArgumentParser(prog=prog, description=description)
    add_config_args(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch.distributed as dist

    try:
        run(load_config(args.config, config_type, overrides(args.set)))
    except Exception as err:
        message = user_error_message(err)
        _report_rank_failure(message or f"{type(err).__name__}: {one_line(err)}",
                             print_it=message is not None, command=command)
        if message is None:
            raise
        return USAGE_EXIT
    finally:
        if dist.is_initialized():  # torchrun's ranks own their group: end it before exit
            dist.destroy_process_group()
    return 0


def _report_rank_failure(message: str, print_it: bool, command: str = "train") -> None:
    """Hand ``message`` to the launcher through torchelastic's error file (its ``{"message":
    str, "timestamp": int}`` record); without a launcher that reads it, print it (if
    ``print_it``) as ``multishot COMMAND: MESSAGE`` on stderr."""
    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if error_file:
        with open(error_file, "w") as out:
            json.dump({"message": message, "timestamp": int(time.time())}, out)
    elif print_it:
        print(f"multishot {command}: {message}", file=sys.stderr)
