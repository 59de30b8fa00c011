"""``multishot distill`` (thin: parse, load the config, hand over to torchrun's ranks).

``multishot distill --config FILE`` runs torchrun (in this process) with one rank per local GPU
(one on a CPU-only machine), each rank running :func:`main`, as ``torchrun -m multishot.cli.distill``
does on a cluster. Bad inputs end as in ``multishot train`` (:mod:`multishot.cli.launch`): one line on
stderr, exit code 2.
"""

from __future__ import annotations

import argparse
import sys

from multishot.config import load_config
from multishot.errors import UsageError
from multishot.cli.launch import add_config_args, overrides, run_rank, torchrun
from multishot.cli.preflight import check_paths


def _distill_config():
    from multishot.distill.config import DistillConfig

    return DistillConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``distill`` to the ``multishot`` command."""
    p = subparsers.add_parser(
        "distill", help="distil the causal DiT into a few-step student (ODE init + DMD)",
        description="CausalCine's last stage: regress the causal student onto its base's ODE "
        "trajectories on ground-truth history from the footage shards (objective.ode_steps), then distribution matching distillation against "
        "the frozen causal base as teacher (teacher forcing, CFG) with a critic initialised "
        "from it and co-trained, on the student's own "
        "chunk-by-chunk rollouts. FSDP2 over the local GPUs (one rank on CPU); resumes from "
        "the newest checkpoint in run.output_dir; writes student.safetensors and student.json "
        "for `multishot generate --causal --checkpoint`.")
    add_config_args(p, "distill")
    p.add_argument("--nproc", type=int, default=None,
                   help="processes on this machine (default: local GPUs, or 1 on CPU)")
    p.set_defaults(func=_launch)


def _launch(args: argparse.Namespace) -> int:
    check_paths(load_config(args.config, _distill_config(), overrides(args.set)))  # fail here, not in N ranks
    import torch

    nproc = args.nproc or max(1, torch.cuda.device_count())
    if nproc < 1:
        raise UsageError("--nproc must be >= 1")
    return torchrun([f"--nproc-per-node={nproc}", "-m", "multishot.cli.distill", "--config",
                     args.config, *[f"--set={s}" for s in args.set]], command="distill")


def main(argv: list[str] | None = None) -> int:
    """One rank: ``python -m multishot.cli.distill --config FILE [--set KEY=VALUE ...]``; returns 0,
    or 2 after a bad input (other errors propagate)."""
    def distill(config) -> None:
        from multishot.distill.trainer import Distiller

        Distiller(config).train()

    return run_rank(argv, "python -m multishot.cli.distill", __doc__, _distill_config(), distill, "distill")


if __name__ == "__main__":
    sys.exit(main())
