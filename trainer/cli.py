"""``multishot train`` and ``multishot precompute`` (thin: parse, load the config, hand over).

``multishot train --config FILE`` starts ``torchrun`` with one process per local GPU (one
process on a CPU-only machine); each process runs :func:`main`, as ``torchrun -m trainer``
does on a cluster.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys

import yaml

from multishot.config import load_config

log = logging.getLogger(__name__)


def _overrides(pairs: list[str]) -> dict:
    """``a.b=value`` pairs (value parsed as YAML) → nested dict."""
    out: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set expects KEY=VALUE, got {pair!r}")
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return out


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="a YAML file of configs/train/")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set run.max_steps=100 (repeatable)")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train`` and ``precompute`` to the ``multishot`` command."""
    train = subparsers.add_parser(
        "train", help="fine-tune the multi-shot DiT on shards (FSDP2 over the local GPUs)",
        description="Fine-tune a Wan DiT with HoloCine's sparse inter-shot attention on shards "
        "with rectified flow matching. Starts torchrun with one process per local GPU (one on "
        "CPU); resumes from the newest checkpoint in run.output_dir. On a cluster run "
        "`torchrun --nnodes N --nproc-per-node 8 -m trainer --config FILE` instead.")
    _add_config_args(train)
    train.add_argument("--nproc", type=int, default=None,
                       help="processes on this machine (default: local GPUs, or 1 on CPU)")
    train.set_defaults(func=_launch)
    pre = subparsers.add_parser(
        "precompute", help="encode video shards once into latent + text-embedding shards",
        description="Run the frozen Wan VAE and UMT5 encoder (encoders.* of the config) over "
        "data.shards, cutting clips to data.num_frames / height / width, and write a latent "
        "shard set (one tar per input shard) that data.kind 'latents' trains on. Undecodable "
        "samples are skipped and counted in OUT/precompute_report.json.")
    _add_config_args(pre)
    pre.add_argument("--out", required=True, help="output shard-set root (local path or URI)")
    pre.set_defaults(func=_precompute)


def _launch(args: argparse.Namespace) -> int:
    import torch

    load_config(args.config, _train_config(), _overrides(args.set))  # fail here, not in N ranks
    nproc = args.nproc or max(1, torch.cuda.device_count())
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={nproc}", "-m", "trainer", "--config", args.config,
           *[f"--set={s}" for s in args.set]]
    log.info("launching: %s", " ".join(cmd))
    return subprocess.call(cmd, env=os.environ.copy())


def _train_config():
    from trainer.config import TrainConfig

    return TrainConfig


def _precompute(args: argparse.Namespace) -> int:
    from trainer.precompute import precompute

    config = load_config(args.config, _train_config(), _overrides(args.set))
    report = precompute(config, args.out)
    print(f"precomputed {report['samples']} samples into {report['shards']} shards, "
          f"skipped {report['skipped']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """One rank: ``python -m trainer --config FILE [--set KEY=VALUE ...]``."""
    parser = argparse.ArgumentParser(prog="python -m trainer", description=__doc__)
    _add_config_args(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from trainer.trainer import Trainer

    Trainer(load_config(args.config, _train_config(), _overrides(args.set))).train()
    return 0
