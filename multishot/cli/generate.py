"""``multishot generate`` (thin: parse, load the config, build the requests, hand over)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from multishot.cli.launch import add_config_args, merged, overrides

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``generate`` to the ``multishot`` command."""
    p = subparsers.add_parser(
        "generate", help="generate multi-shot videos from HoloCine prompts with a (fine-tuned) DiT",
        description="Sample multi-shot videos with flow matching and classifier-free guidance: "
        "one --prompt, HoloCine's structured input (--global-caption and one --shot-caption per "
        "shot: the prompt is written as HoloCine's inference writes it), a --prompts file (JSON "
        "lines or one JSON list; per item a prompt, or global_caption + shot_captions, and "
        "optional num_frames, cut_frames, seed, name), or the captioned samples of a shard set "
        "(--from-shards, their captions and cut frames). Frame counts and cuts that are not 4t+1 "
        "are rounded as HoloCine rounds them, with a warning naming the new values. Writes "
        "NAME.mp4 and NAME.json (settings, checkpoint hashes, seconds per step, peak memory).")
    add_config_args(p, "generate")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--prompt", help="'[global caption] … [per shot caption] … [shot cut] …'")
    source.add_argument("--prompts", help="JSON-lines file of prompts")
    source.add_argument("--from-shards", metavar="ROOT", help="shard-set root to re-create")
    source.add_argument("--schedule", metavar="FILE", help=(
        "--causal: a shot-prompt schedule (lines: {\"global_caption\": ...} first, then a shot "
        "caption or {\"caption\": ..., \"chunks\": N} per line); '-' reads shots from stdin "
        "line by line while the video streams"))
    p.add_argument("--causal", action="store_true", help=(
        "stream with the causal DiT (model.causal in the config) chunk by chunk with a KV "
        "cache, writing frames to the mp4 as they are decoded"))
    p.add_argument("--global-caption", help="the global caption of HoloCine's structured input "
                   "(with --shot-caption); --causal: the video's global caption (else the "
                   "schedule's first line)")
    p.add_argument("--shot-caption", action="append", help=(
        "one shot's caption, repeated once per shot, with --global-caption (HoloCine's structured "
        "input: \"This scene contains N shots.\" is appended to the global caption)"))
    p.add_argument("--fps", type=float, help="frame rate of the written mp4 (default: video.fps; "
                   "HoloCine writes 15)")
    p.add_argument("--chunks-per-shot", type=int, default=5, help=(
        "--causal: chunks of a shot given as a plain caption line (default 5; a chunk is "
        "model.causal.chunk_latent_frames latent frames, 12 video frames at 3)"))
    p.add_argument("--checkpoint", help=(
        "DiT weights replacing model.checkpoint (and model.random_weights); a distilled "
        "student's (multishot distill: student.json beside it) also sets its sampling steps, "
        "shift, no CFG and model.causal"))
    p.add_argument("--max-chunks", type=int, help="--causal: stop after this many chunks")
    p.add_argument("--num-frames", type=int, help="pixel frames, 4k+1, else rounded as HoloCine "
                   "does (default: video.num_frames; --from-shards: each sample's own length)")
    p.add_argument("--cut-frames", help="comma-separated pixel frames where shots 2… start (4t+1, "
                   "else rounded as HoloCine does); default: spread evenly (HoloCine)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    p.add_argument("--limit", type=int, help="--from-shards: at most this many samples")
    p.add_argument("--lora", help="LoRA file to merge into the DiT(s) (multishot export-lora, or a "
                   "ComfyUI / DiffSynth-Studio Wan LoRA)")
    p.add_argument("--lora-scale", type=float, default=1.0, help="LoRA strength (default 1)")
    p.add_argument("-o", "--output", "--out", required=True,
                   help="the .mp4 for --prompt / --shot-caption; a folder for --prompts / --from-shards")
    p.set_defaults(func=run)


def _cut_frames(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise ValueError(f"--cut-frames expects comma-separated integers, got {text!r}") from None


def _corrected(inputs) -> dict:
    """The JSON beside the mp4 records HoloCine-style roundings (``{}`` when none)."""
    return {"rounded": inputs.corrections} if inputs.corrections else {}


def requests(args: argparse.Namespace, num_frames: int) -> list:
    """The :class:`~generate.shots.Request` list the arguments ask for.

    Raises:
        ValueError: bad cuts or prompts (message says which), or no captioned sample found.
    """
    from multishot.generate.holocine import raw_inputs, structured_inputs
    from multishot.generate.shots import read_prompts_file, request_from_record, resolve_request

    structured = args.global_caption is not None or args.shot_caption is not None
    chosen = [name for name, given in (("--prompt", args.prompt is not None),
                                       ("--prompts", args.prompts is not None),
                                       ("--from-shards", args.from_shards is not None),
                                       ("--global-caption/--shot-caption", structured)) if given]
    if len(chosen) != 1:
        raise ValueError("give one of --prompt, --prompts, --from-shards or --global-caption with "
                         f"--shot-caption (got {', '.join(chosen) or 'none'})")
    if structured:
        if not (args.global_caption and args.shot_caption):
            raise ValueError("HoloCine's structured input needs --global-caption and one "
                             "--shot-caption per shot")
        inputs = structured_inputs(args.global_caption, args.shot_caption, args.num_frames or num_frames,
                                   _cut_frames(args.cut_frames))
        return [resolve_request(inputs.prompt, inputs.num_frames, inputs.cut_frames, args.seed,
                                Path(args.output).stem, _corrected(inputs))]
    if args.prompt is not None:
        inputs = raw_inputs(args.prompt, num_frames if args.num_frames is None else args.num_frames,
                            _cut_frames(args.cut_frames))
        return [resolve_request(inputs.prompt, inputs.num_frames, inputs.cut_frames, args.seed,
                                Path(args.output).stem, _corrected(inputs))]
    if args.cut_frames is not None:
        raise ValueError("--cut-frames goes with --prompt; a prompts file gives cut_frames per line")
    if args.prompts is not None:
        return read_prompts_file(args.prompts, num_frames if args.num_frames is None else args.num_frames,
                                 args.seed)
    from multishot.dataset.shardset import ShardSet

    found = []
    for _, record in ShardSet.open(args.from_shards, progress=False).records():
        if record.caption_status != "ok":
            continue
        found.append(request_from_record(record, args.seed, args.num_frames))
        if args.limit is not None and len(found) >= args.limit:
            break
    if not found:
        raise ValueError(f"{args.from_shards}: no captioned samples to re-create")
    return found


def run(args: argparse.Namespace) -> int:
    from multishot.config import load_config
    from multishot.generate.config import GenerateConfig
    from multishot.generate.generator import Generator, check_output, write_outputs

    from multishot.errors import UsageError

    student = None
    if args.checkpoint:  # a distilled student brings its steps and causal config (distill.student)
        from multishot.distill.student import generate_overrides

        try:
            student = generate_overrides(args.checkpoint)
        except ValueError as err:
            raise UsageError(str(err)) from err
    fps = None
    if args.fps is not None:
        if not args.fps > 0:
            raise UsageError(f"--fps must be > 0, got {args.fps}")
        fps = {"video": {"fps": args.fps}}
    config = load_config(args.config, GenerateConfig, merged(student, fps, overrides(args.set)))
    if args.causal or args.schedule is not None:
        return run_causal(args, config)
    try:
        # one video (-o is the mp4) or a folder of them, checked before any generation
        check_output(args.output, single=args.prompt is not None or args.shot_caption is not None)
        todo = requests(args, config.video.num_frames)
        generator = Generator(config, args.lora, args.lora_scale)
    except ValueError as err:  # a bad prompt, cut, checkpoint or LoRA file: the message says which
        raise UsageError(str(err)) from err
    out = Path(args.output)
    for request in todo:
        single = args.prompt is not None or args.shot_caption is not None  # one video: -o is the mp4
        mp4 = out if single else out / f"{request.name}.mp4"
        generated = generator.generate(request)
        if generator.cp_group is not None and generator.cp_group.rank() != 0:
            continue  # torchrun: every rank computed the sample, rank 0 writes it
        write_outputs(generated, mp4)
        log.info("%s: %d frames, cuts %s, %.2f s/step, %.1f s in all, peak %.2f GiB", mp4,
                 request.num_frames, request.cut_frames, generated.info["seconds_per_step"],
                 generated.info["total_s"], generated.info["peak_memory_gib"])
    if generator.cp_group is not None:
        import torch.distributed as dist

        dist.destroy_process_group()
    return 0


def run_causal(args: argparse.Namespace, config) -> int:
    """``generate --causal``: stream the schedule into ``--output`` chunk by chunk."""
    import json
    import sys

    from multishot.errors import UsageError
    from multishot.generate.schedule import PromptSchedule, feed_lines, read_schedule_file
    from multishot.generate.generator import check_output
    from multishot.generate.stream import StreamingGenerator
    from multishot.generate.video import Mp4Writer

    if not args.causal or args.schedule is None:
        raise UsageError("--schedule and --causal go together (streaming generation)")
    if args.chunks_per_shot < 1 or (args.max_chunks is not None and args.max_chunks < 1):
        raise UsageError("--chunks-per-shot and --max-chunks must be >= 1")
    try:
        check_output(args.output, single=True)  # before any generation
        if args.schedule == "-":
            if not args.global_caption:
                raise ValueError("--schedule - (stdin) needs --global-caption")
            schedule = PromptSchedule(args.global_caption, live=True)
        else:
            schedule = read_schedule_file(args.schedule, args.chunks_per_shot, args.global_caption)
        generator = StreamingGenerator(config, args.lora, args.lora_scale)
    except (ValueError, OSError) as err:  # a bad schedule line, config or checkpoint
        raise UsageError(str(err)) from err
    if args.schedule == "-":
        feed_lines(schedule, sys.stdin.buffer, args.chunks_per_shot,
                   on_error=lambda message: print(message, file=sys.stderr))
    out = Path(args.output)
    chunks = []
    with Mp4Writer(out, config.video.fps) as writer:
        for chunk in generator.stream(schedule, args.seed, args.max_chunks):
            writer.write(chunk.frames)  # on disk as soon as decoded
            chunks.append(chunk)
            log.info("chunk %d (shot %d): %d frames in %.2f s", chunk.index, chunk.shot,
                     len(chunk.frames), chunk.seconds["total_s"])
    if not chunks:
        raise UsageError("the schedule gave no shot to generate")
    info = generator.describe(schedule, chunks, args.seed)
    out.with_suffix(".json").write_text(json.dumps(info, indent=1, ensure_ascii=False))
    log.info("%s: %d frames in %d chunks, %.2f video frames/s, peak %.2f GiB", out,
             info["num_frames"], info["chunks"], info["video_frames_per_s"],
             info["peak_memory_gib"])
    return 0
