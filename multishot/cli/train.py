"""``multishot train``: parse, load the config, hand the run to torchrun's ranks or Ray Train.

Each rank runs :func:`main` (``torchrun -m multishot.cli.train --config FILE`` on a cluster):
a :class:`trainer.trainer.Trainer` given the validation hook of :mod:`evaluate.validation`.
Bad inputs end as :mod:`multishot.cli.launch` says: one line on stderr, exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys

from multishot.cli.launch import add_config_args, overrides, run_rank, torchrun
from multishot.cli.preflight import check_paths
from multishot.config import load_config
from multishot.errors import UsageError


def train_config():
    """The config type of ``configs/train/``: the trainer's, with its ``validation:`` section."""
    from multishot.evaluate.validation import ValidatedTrainConfig

    return ValidatedTrainConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train`` to the ``multishot`` command."""
    train = subparsers.add_parser(
        "train", help="fine-tune the multi-shot DiT on shards (FSDP2 over the local GPUs)",
        description="Fine-tune a Wan DiT with HoloCine's sparse inter-shot attention on shards "
        "with rectified flow matching; resumes from the newest checkpoint in run.output_dir. "
        "Two launchers run the same ranks, config, checkpoints and metrics: "
        "'torchrun' (default) starts one process per local GPU (one on CPU) on this machine "
        "(on a cluster run `torchrun --nnodes N --nproc-per-node 8 -m multishot.cli.train --config FILE` "
        "instead); 'ray' runs --num-workers Ray Train workers (TorchTrainer, one GPU each "
        "with NCCL, or CPU with gloo) on the Ray cluster at --ray-address, or on a local Ray, "
        "and reports the metrics to Ray Train. Paths in the config must be reachable from "
        "every worker (a shared run.output_dir on several nodes).")
    add_config_args(train)
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


def _launch(args: argparse.Namespace) -> int:
    if args.launcher == "ray":  # first: before anything imports ray (a loopback address stays loopback)
        from multishot.ray_connect import check_reachable

        check_reachable(args.ray_address)
    config = load_config(args.config, train_config(), overrides(args.set))  # fail here, not in N ranks
    address = args.ray_address or os.environ.get("RAY_ADDRESS") or ""
    if args.launcher != "ray" or not address.startswith("ray://"):  # a Ray Client's paths are the cluster's
        check_paths(config)
    if args.launcher == "ray":
        from multishot.evaluate.validation import make_validator
        from multishot.trainer.ray_launch import launch

        launch(config, args.num_workers, use_gpu=args.use_gpu, address=args.ray_address,
               max_failures=args.max_failures, validation=make_validator)
        print(f"done: checkpoints and metrics in {config.run.output_dir}")
        return 0
    import torch

    nproc = args.nproc or max(1, torch.cuda.device_count())
    if nproc % config.parallel.context:
        raise UsageError(f"parallel.context {config.parallel.context} must divide the {nproc} "
                         f"processes (--nproc)")
    return torchrun([f"--nproc-per-node={nproc}", "-m", "multishot.cli.train", "--config",
                     args.config, *[f"--set={s}" for s in args.set]])


def main(argv: list[str] | None = None) -> int:
    """One rank: ``python -m multishot.cli.train --config FILE [--set KEY=VALUE ...]``.

    Returns 0 when the run finished, 2 after a bad input (reported as
    :mod:`multishot.cli.launch` says); other errors propagate.
    """
    def train(config) -> None:
        from multishot.evaluate.validation import make_validator
        from multishot.trainer.trainer import Trainer

        Trainer(config, validation=make_validator).train()

    return run_rank(argv, "python -m multishot.cli.train", __doc__, train_config(), train, "train")


if __name__ == "__main__":
    sys.exit(main())
