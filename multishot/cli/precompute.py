"""``multishot precompute``: encode video shards once into latent + text-embedding shards
(:func:`trainer.precompute.precompute`)."""

from __future__ import annotations

import argparse

from multishot.cli.launch import add_config_args, overrides
from multishot.cli.train import train_config
from multishot.config import load_config


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``precompute`` to the ``multishot`` command."""
    pre = subparsers.add_parser(
        "precompute", help="encode video shards once into latent + text-embedding shards",
        description="Run the frozen Wan VAE and UMT5 encoder (encoders.* of the config) over "
        "data.shards, cutting clips to data.num_frames / height / width, and write a latent "
        "shard set (one tar per input shard) that data.kind 'latents' trains on. Undecodable "
        "samples are skipped and counted in OUT/precompute_report.json.")
    add_config_args(pre)
    pre.add_argument("-o", "--output", "--out", dest="out", metavar="OUT", required=True, help="output shard-set root (local path or URI)")
    pre.set_defaults(func=_precompute)


def _precompute(args: argparse.Namespace) -> int:
    from multishot.trainer.precompute import precompute

    config = load_config(args.config, train_config(), overrides(args.set))
    report = precompute(config, args.out)
    print(f"precomputed {report['samples']} samples into {report['shards']} shards, "
          f"skipped {report['skipped']}")
    return 0
