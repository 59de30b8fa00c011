"""``multishot train`` and ``multishot precompute`` (thin: parse, load the config, hand over).

``multishot train --config FILE`` starts ``torchrun`` with one process per local GPU (one
process on a CPU-only machine); each process runs :func:`main`, as ``torchrun -m multishot.trainer``
does on a cluster. ``--launcher ray`` runs the same ranks as Ray Train workers instead
(:mod:`trainer.ray_launch`).
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
        "with rectified flow matching; resumes from the newest checkpoint in run.output_dir. "
        "Two launchers run the same ranks, config, checkpoints and metrics: "
        "'torchrun' (default) starts one process per local GPU (one on CPU) on this machine "
        "(on a cluster run `torchrun --nnodes N --nproc-per-node 8 -m multishot.trainer --config FILE` "
        "instead); 'ray' runs --num-workers Ray Train workers (TorchTrainer, one GPU each "
        "with NCCL, or CPU with gloo) on the Ray cluster at --ray-address, or on a local Ray, "
        "and reports the metrics to Ray Train. Paths in the config must be reachable from "
        "every worker (a shared run.output_dir on several nodes).")
    _add_config_args(train)
    train.add_argument("--launcher", choices=("torchrun", "ray"), default="torchrun",
                       help="torchrun on this machine (default) or Ray Train on a Ray cluster")
    train.add_argument("--nproc", type=int, default=None,
                       help="torchrun: processes on this machine (default: local GPUs, or 1 on CPU)")
    train.add_argument("--num-workers", type=int, default=None,
                       help="ray: workers, one rank each (default: GPUs of the Ray cluster, or 1)")
    train.add_argument("--use-gpu", action=argparse.BooleanOptionalAction, default=None,
                       help="ray: one GPU per worker, or CPU workers (default: whether the "
                       "cluster has GPUs)")
    train.add_argument("--ray-address", default=None,
                       help="ray: cluster to join, e.g. 'auto' or 'ray://head:10001' "
                       "(default: $RAY_ADDRESS, else start a local Ray)")
    train.add_argument("--max-failures", type=int, default=0,
                       help="ray: restarts after a worker dies, each resuming from the newest "
                       "checkpoint (default: 0)")
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
    config = load_config(args.config, _train_config(), _overrides(args.set))  # fail here, not in N ranks
    if args.launcher == "ray":
        from multishot.trainer.ray_launch import launch

        launch(config, args.num_workers, use_gpu=args.use_gpu, address=args.ray_address,
               max_failures=args.max_failures)
        print(f"done: checkpoints and metrics in {config.run.output_dir}")
        return 0
    import torch

    nproc = args.nproc or max(1, torch.cuda.device_count())
    if nproc % config.parallel.context:
        raise ValueError(f"parallel.context {config.parallel.context} must divide the {nproc} "
                         f"processes (--nproc)")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={nproc}", "-m", "multishot.trainer", "--config", args.config,
           *[f"--set={s}" for s in args.set]]
    log.info("launching: %s", " ".join(cmd))
    return subprocess.call(cmd, env=os.environ.copy())


def _train_config():
    from multishot.trainer.config import TrainConfig

    return TrainConfig


def _precompute(args: argparse.Namespace) -> int:
    from multishot.trainer.precompute import precompute

    config = load_config(args.config, _train_config(), _overrides(args.set))
    report = precompute(config, args.out)
    print(f"precomputed {report['samples']} samples into {report['shards']} shards, "
          f"skipped {report['skipped']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """One rank: ``python -m multishot.trainer --config FILE [--set KEY=VALUE ...]``."""
    parser = argparse.ArgumentParser(prog="python -m multishot.trainer", description=__doc__)
    _add_config_args(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from multishot.trainer.trainer import Trainer

    import torch.distributed as dist

    try:
        Trainer(load_config(args.config, _train_config(), _overrides(args.set))).train()
    finally:
        if dist.is_initialized():  # torchrun's ranks own their group: end it before exit
            dist.destroy_process_group()
    return 0
