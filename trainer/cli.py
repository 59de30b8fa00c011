"""``multishot train`` and ``multishot precompute`` (thin: parse, load the config, hand over).

``multishot train --config FILE`` runs torchrun (in this process, ``torch.distributed.run``)
with one rank per local GPU (one rank on a CPU-only machine); each rank runs :func:`main`, as
``torchrun -m multishot.trainer`` does on a cluster. ``--launcher ray`` runs the same ranks as
Ray Train workers instead (:mod:`trainer.ray_launch`).

A rank that fails on a bad input (a :class:`multishot.errors.UsageError`: a checkpoint that does
not fit, a missing encoder folder, ...) writes its one-line message to torchelastic's error file
(``TORCHELASTIC_ERROR_FILE``) and exits 2; the launcher reads it and ends ``multishot train``
with that line and exit 2 instead of torchrun's child-failure report. Any other failure keeps its
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

from multishot.config import load_config
from multishot.errors import USAGE_EXIT, UsageError, one_line

log = logging.getLogger(__name__)


def _overrides(pairs: list[str]) -> dict:
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
    export = subparsers.add_parser(
        "export-lora", help="write a LoRA run's adapter (or base + adapter merged) as safetensors",
        description="Read the adapter of a LoRA run (model.lora) from its newest DCP checkpoint "
        "(or --checkpoint) and write it as one safetensors file in the Wan LoRA layout that "
        "ComfyUI, DiffSynth-Studio and diffusers' WanPipeline.load_lora_weights load "
        "(diffusion_model.blocks.N.self_attn.q.lora_A.weight ...). With --merge, write the full "
        "weights instead, in official Wan names: base + (alpha/rank)·B·A, the base being "
        "--base or the run's model.init_from.")
    export.add_argument("run_dir", help="the run's output_dir (holds config.resolved.yaml)")
    export.add_argument("--out", required=True, help="the safetensors file to write")
    export.add_argument("--checkpoint", default=None,
                        help="a checkpoint folder (default: the newest complete one of run_dir)")
    export.add_argument("--merge", action="store_true",
                        help="merge into the base and write full Wan weights")
    export.add_argument("--base", default=None,
                        help="--merge: base weights (default: the run's model.init_from; a run "
                        "without one merges into its seeded random initialisation, built on CPU)")
    export.set_defaults(func=_export_lora)


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
        raise UsageError(f"parallel.context {config.parallel.context} must divide the {nproc} "
                         f"processes (--nproc)")
    return torchrun([f"--nproc-per-node={nproc}", "-m", "multishot.trainer", "--config",
                     args.config, *[f"--set={s}" for s in args.set]])


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


def _export_lora(args: argparse.Namespace) -> int:
    """``multishot export-lora``: user errors are one line on stderr and exit code 2."""
    from pathlib import Path

    from multishot.config import ConfigError
    from multishot.trainer.checkpoint import latest_checkpoint

    def fail(message: str) -> int:
        print(f"multishot export-lora: {message}", file=sys.stderr)
        return 2

    run_dir = Path(args.run_dir)
    try:
        config = load_config(run_dir / "config.resolved.yaml", _train_config())
    except ConfigError as err:
        return fail(str(err))
    if config.model.lora is None:
        return fail(f"{run_dir} is a full fine-tune (model.lora is not set): its weights are "
                    "in model.safetensors")
    checkpoint = Path(args.checkpoint) if args.checkpoint else latest_checkpoint(run_dir)
    if checkpoint is None:
        return fail(f"no complete checkpoint under {run_dir / 'checkpoints'}")
    import torch

    from multishot.model.checkpoint import load_state_dict_file, save_safetensors
    from multishot.trainer.lora import (adapter_modules, merge_adapter, read_checkpoint_adapter,
                                        save_adapter)

    try:
        adapter = read_checkpoint_adapter(checkpoint, config.model.lora)
        if not args.merge:
            save_adapter(adapter, args.out, config.model.lora)
            print(f"wrote {args.out}: {len(adapter) // 2} LoRA modules from {checkpoint}")
            return 0
        base_path = args.base or config.model.init_from
        if base_path:
            base = load_state_dict_file(base_path)
        else:
            from multishot.model.config import get_config
            from multishot.model.dit import WanModel

            torch.manual_seed(config.run.seed)  # as Trainer._build_model does
            base = WanModel(get_config(config.model.name)).state_dict()
        merged = merge_adapter(base, adapter_modules(adapter, str(checkpoint)))
    except (FileNotFoundError, ValueError) as err:
        return fail(str(err))
    save_safetensors(merged, args.out)
    print(f"wrote {args.out}: {len(merged)} tensors, {len(adapter) // 2} LoRA modules merged")
    return 0


def main(argv: list[str] | None = None) -> int:
    """One rank: ``python -m multishot.trainer --config FILE [--set KEY=VALUE ...]``.

    Returns 0 when the run finished, 2 after a bad input (reported as the module docstring
    says); other errors propagate.
    """
    def train(config) -> None:
        from multishot.trainer.trainer import Trainer

        Trainer(config).train()

    return run_rank(argv, "python -m multishot.trainer", __doc__, _train_config(), train, "train")


def run_rank(argv: list[str] | None, prog: str, description: str, config_type: type,
             run, command: str) -> int:
    """One torchrun rank of ``multishot COMMAND``: parse ``--config FILE [--set KEY=VALUE ...]``,
    load ``config_type``, call ``run(config)``; returns 0, or 2 after a bad input (handed to
    the launcher through torchelastic's error file); other errors propagate. The process
    group, if ``run`` made one, is ended before returning."""
    from multishot.cli import ArgumentParser, user_error_message

    parser = ArgumentParser(prog=prog, description=description)
    _add_config_args(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch.distributed as dist

    try:
        run(load_config(args.config, config_type, _overrides(args.set)))
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
