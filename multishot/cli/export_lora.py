"""``multishot export-lora``: a LoRA run's adapter (or base + adapter merged) as safetensors."""

from __future__ import annotations

import argparse
import sys

from multishot.cli.train import train_config
from multishot.config import load_config


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``export-lora`` to the ``multishot`` command."""
    export = subparsers.add_parser(
        "export-lora", help="write a LoRA run's adapter (or base + adapter merged) as safetensors",
        description="Read the adapter of a LoRA run (model.lora) from its newest DCP checkpoint "
        "(or --checkpoint) and write it as one safetensors file in the Wan LoRA layout that "
        "ComfyUI, DiffSynth-Studio and diffusers' WanPipeline.load_lora_weights load "
        "(diffusion_model.blocks.N.self_attn.q.lora_A.weight ...). With --merge, write the full "
        "weights instead, in official Wan names: base + (alpha/rank)·B·A, the base being "
        "--base or the run's model.init_from.")
    export.add_argument("run_dir", help="the run's output_dir (holds config.resolved.yaml)")
    export.add_argument("-o", "--output", "--out", dest="out", metavar="OUT", required=True, help="the safetensors file to write")
    export.add_argument("--checkpoint", default=None,
                        help="a checkpoint folder (default: the newest complete one of run_dir)")
    export.add_argument("--merge", action="store_true",
                        help="merge into the base and write full Wan weights")
    export.add_argument("--base", default=None,
                        help="--merge: base weights (default: the run's model.init_from; a run "
                        "without one merges into its seeded random initialisation, built on CPU)")
    export.set_defaults(func=_export_lora)




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
        config = load_config(run_dir / "config.resolved.yaml", train_config())
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
    from multishot.model.lora import (adapter_modules, merge_adapter, read_checkpoint_adapter,
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
