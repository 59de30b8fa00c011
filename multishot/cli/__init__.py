"""The ``multishot`` command: one sub-command per leg of a sample's journey.

One module per command in this package (``multishot/cli/<command>.py``, each with
``register(subparsers)``), plus :mod:`multishot.cli.launch` for what ``train``, ``distill`` and
``generate`` share (``--config`` / ``--set``, torchrun's ranks). The command line is the top
floor: it imports the libraries (``pipeline``, ``annotate``, ``dataset``, ``model``,
``trainer``) and the applications (``generate``, ``evaluate``, ``distill``); nothing below
imports it. Each command imports heavy libraries only when it runs.

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

from multishot import __version__
from multishot.errors import USAGE_EXIT, RedactingFilter, UsageError, one_line

log = logging.getLogger(__name__)

#: module providing ``register(subparsers)`` for each top-level command
COMMANDS = {
    "pipeline": "multishot.cli.pipeline",
    "shards": "multishot.cli.shards",
    "annotate": "multishot.cli.annotate",
    "precompute": "multishot.cli.precompute",
    "train": "multishot.cli.train",
    "generate": "multishot.cli.generate",
    "eval": "multishot.cli.eval",
    "export-lora": "multishot.cli.export_lora",
    "distill": "multishot.cli.distill",
}

#: exit status after the reader of stdout went away (128 + SIGPIPE, as a shell tool killed by it)
BROKEN_PIPE_EXIT = 141


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line usage error (``PROG: error: PROBLEM (see PROG --help)``, exit 2)
    instead of the usage block followed by the error. Sub-parsers inherit the class."""

    def parse_known_args(self, args=None, namespace=None):
        self._given = list(sys.argv[1:] if args is None else args)  # for error(): which flags were typed
        return super().parse_known_args(args, namespace)

    def error(self, message: str):
        # argparse checks required options before it reports unknown ones, so `--conifg x`
        # would read "required: --config": name the unknown flag instead
        unknown = self.unknown_options(getattr(self, "_given", []))
        if unknown and "required" in message:  # "the following arguments are required", "one of … is required"
            message = "; ".join(self._unrecognized(u) for u in unknown)
        elif message.startswith("unrecognized arguments: "):
            extra = message.split(": ", 1)[1].split()
            message = "; ".join(self._unrecognized(u) for u in [e for e in extra if e.startswith("-")] or extra)
        self.exit(USAGE_EXIT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def unknown_options(self, given: list[str]) -> list[str]:
        """The flags of ``given`` (before a ``--``) this parser does not know, abbreviations of
        known long options and negative numbers aside."""
        known = list(self._option_string_actions)
        unknown = []
        for arg in given:
            if arg == "--":
                break
            if not arg.startswith("-") or arg == "-" or self._negative_number_matcher.match(arg):
                continue
            name = arg.split("=", 1)[0]
            if name in known or (not name.startswith("--") and name[:2] in known):  # -o/path, -vq
                continue
            if self.allow_abbrev and name.startswith("--") and any(k.startswith(name) for k in known):
                continue
            unknown.append(name)
        return unknown

    def _long_options(self) -> list[str]:
        """This parser's long options and those of the sub-commands named in what was typed
        (argparse reports a sub-command's unknown flag from the top-level parser)."""
        options = [k for k in self._option_string_actions if k.startswith("--")]
        parser: argparse.ArgumentParser = self
        for word in getattr(self, "_given", []):
            subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
            if not subparsers or word not in subparsers[0].choices:
                continue
            parser = subparsers[0].choices[word]
            options += [k for k in parser._option_string_actions if k.startswith("--")]
        return options

    def _unrecognized(self, flag: str) -> str:
        import difflib

        close = difflib.get_close_matches(flag, self._long_options(), n=1)
        return f"unrecognized argument {flag}" + (f" (did you mean {close[0]}?)" if close else "")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="multishot",
        description="Turn video archives into multi-shot training shards and fine-tune "
        "HoloCine-style multi-shot video DiTs on them.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (and Ray's own log lines)")
    parser.add_argument("--version", action="version", version=f"multishot {__version__}")
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


