"""The ``multishot`` command: one sub-command per leg of a sample's journey.

Each part registers its own sub-commands (``register(subparsers)`` in ``<part>/cli.py``), so the
entry point stays thin and imports heavy libraries only for the command that runs.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

#: module providing ``register(subparsers)`` for each top-level command
COMMANDS = {
    "pipeline": "multishot.pipeline.cli",
    "shards": "multishot.dataset.cli",
    "annotate": "multishot.annotate.cli",
    "precompute": "multishot.trainer.cli",
    "train": "multishot.trainer.cli",
    "generate": "multishot.generate.cli",
    "eval": "multishot.evaluate.cli",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="multishot",
        description="Turn video archives into multi-shot training shards and fine-tune "
        "HoloCine-style multi-shot video DiTs on them.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in dict.fromkeys(COMMANDS.values()):
        importlib.import_module(module_name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
