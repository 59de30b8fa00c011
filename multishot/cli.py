"""The ``multishot`` command: one sub-command per leg of a sample's journey.

Each part registers its own sub-commands (``register(subparsers)`` in ``<part>/cli.py``), so the
entry point stays thin and imports heavy libraries only for the command that runs.

Every command reports a bad input the same way, here and nowhere else: one line
``multishot COMMAND: PROBLEM`` on stderr and exit code 2, no traceback (``-v`` logs it). A bad
input is a :class:`multishot.errors.UsageError` raised by the part (config errors included),
a pydantic ``ValidationError``, a ``FileNotFoundError``, or an argparse usage error. Output piped
into a reader that stops early (``multishot shards ls PATH | head``) ends quietly.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from multishot.errors import USAGE_EXIT, RedactingFilter, UsageError, one_line

log = logging.getLogger(__name__)

#: module providing ``register(subparsers)`` for each top-level command
COMMANDS = {
    "pipeline": "multishot.pipeline.cli",
    "shards": "multishot.dataset.cli",
    "annotate": "multishot.annotate.cli",
    "precompute": "multishot.trainer.cli",
    "train": "multishot.trainer.cli",
    "generate": "multishot.generate.cli",
    "eval": "multishot.evaluate.cli",
    "export-lora": "multishot.trainer.cli",
    "distill": "multishot.distill.cli",
}

#: exit status after the reader of stdout went away (128 + SIGPIPE, as a shell tool killed by it)
BROKEN_PIPE_EXIT = 141


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line usage error (``PROG: error: PROBLEM (see PROG --help)``, exit 2)
    instead of the usage block followed by the error. Sub-parsers inherit the class."""

    def error(self, message: str):
        self.exit(USAGE_EXIT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="multishot",
        description="Turn video archives into multi-shot training shards and fine-tune "
        "HoloCine-style multi-shot video DiTs on them.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in dict.fromkeys(COMMANDS.values()):
        importlib.import_module(module_name).register(sub)
    return parser


def user_error_message(err: BaseException) -> str | None:
    """The one-line report of ``err`` when it is a user's mistake, else None (a bug)."""
    from pydantic import ValidationError

    if isinstance(err, UsageError):
        return one_line(err)
    if isinstance(err, ValidationError):
        return one_line("; ".join(f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}"
                                  for e in err.errors()))
    if isinstance(err, FileNotFoundError):
        return one_line(f"no such file or directory: {err.filename}" if err.filename else err)
    return None


def main(argv: list[str] | None = None) -> int:
    """Run one ``multishot`` command; returns its exit status (2 for a bad input)."""
    try:
        try:
            return _run(argv)
        finally:
            # a closed pipe shows here, inside the handler below, not as an "Exception ignored"
            # when the interpreter flushes stdout at exit
            sys.stdout.flush()
    except BrokenPipeError:
        # the reader stopped early (`| head`): point stdout at /dev/null so the interpreter's
        # own flush at exit does not fail again (Python's documented recipe, signal docs)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return BROKEN_PIPE_EXIT


def _run(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for handler in logging.getLogger().handlers:  # no credential of a URI reaches a log line
        handler.addFilter(RedactingFilter())
    try:
        return int(args.func(args) or 0)
    except Exception as err:
        message = user_error_message(err)
        if message is None:  # a bug (or a broken pipe, handled in main): keep the traceback
            raise
        log.debug("bad input", exc_info=True)  # the traceback, for -v
        # the sub-command too where the part has them (`multishot shards ls: ...`)
        action = getattr(args, f"{args.command}_command", None)
        print(f"multishot {args.command}{f' {action}' if action else ''}: {message}", file=sys.stderr)
        return USAGE_EXIT


if __name__ == "__main__":
    sys.exit(main())
