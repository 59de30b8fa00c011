"""``multishot annotate``: caption an existing shard set (Gemini, or an OpenAI-compatible VLM endpoint) into a new shard set."""

from __future__ import annotations

import argparse
import logging
import sys

from multishot.cli.launch import add_config_args, merged, overrides

CREDENTIALS = (
    "set GEMINI_API_KEY (Gemini Developer API), or GOOGLE_GENAI_USE_VERTEXAI=true "
    "with GOOGLE_CLOUD_PROJECT and GOOGLE_CLOUD_LOCATION (Vertex AI, application default credentials); "
    "GOOGLE_GEMINI_BASE_URL points the client at another compatible endpoint; with backend openai "
    "(an OpenAI-compatible endpoint such as vLLM serving Qwen2.5-VL: base_url, model), the variable "
    "api_key_env names"
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``annotate`` to the ``multishot`` command."""
    p = subparsers.add_parser(
        "annotate",
        help="caption a shard set with Gemini or a VLM endpoint (global + per-shot captions)",
        description="Caption every sample of shard set IN with Gemini, or with a vision-language model "
        "behind an OpenAI-compatible endpoint (backend: openai) (HoloCine-style global caption "
        "with [characterN] tags plus one caption per shot, the known cut times in the prompt) and "
        "write a new shard set OUT: same shard names, captions in each {key}.json, caption_status "
        "ok / failed (reason in caption_error; failed samples are kept), index/samples.parquet with "
        "the caption columns, the other index tables copied, manifest.json with checksums. "
        "Rerunning resumes: shards already in OUT are skipped, and replies are cached by "
        "(video content, model, prompt version), so nothing is paid for twice. "
        "Credentials come from the environment only: " + CREDENTIALS + ".",
    )
    p.add_argument("--shards", required=True, metavar="IN", help="input shard set root (path or URI)")
    p.add_argument("-o", "--output", "--out", required=True, metavar="OUT", help="output shard set root (path or URI)")
    add_config_args(p, "annotate", required=False)
    p.add_argument(
        "--cache-dir", metavar="DIR",
        help="response cache (overrides the config's cache_dir; default OUT/_work/captions)",
    )
    p.add_argument("--retry-failed", action="store_true", help="redo OUT shards that hold failed samples")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from multishot.annotate.captioner import Captioner
    from multishot.annotate.config import AnnotateConfig
    from multishot.annotate.shardset import all_failed, annotate_shard_set
    from multishot.dataset.shards import ShardSetLayout
    from multishot.config import load_config
    from multishot.errors import UsageError
    from tqdm.contrib.logging import logging_redirect_tqdm

    from multishot.dataset.shardset import ShardSet

    ShardSet.open(args.shards)  # not a shard set: FileNotFoundError naming it, before any work
    settings = merged(overrides(args.set), {"cache_dir": args.cache_dir} if args.cache_dir else {})
    config = (
        load_config(args.config, AnnotateConfig, settings) if args.config
        else AnnotateConfig.model_validate(settings)
    )
    captioner = Captioner.from_env(config, cache_dir=f"{ShardSetLayout(args.output).work_dir}/captions")
    if captioner is None and config.backend == "openai":
        raise UsageError(f"no API key: the environment variable {config.api_key_env} (api_key_env) is not set")
    if captioner is None:
        raise UsageError(f"no Gemini credentials: {CREDENTIALS}")
    if not args.verbose:  # one INFO line per HTTP request would bury the progress bar
        for name in ("httpx", "httpx2"):
            logging.getLogger(name).setLevel(logging.WARNING)
    with logging_redirect_tqdm():  # retry warnings print above the bar, not through it
        summary = annotate_shard_set(captioner, args.shards, args.output, retry_failed=args.retry_failed)
    print(
        f"{summary['samples']} samples: {summary['ok']} captioned, {summary['failed']} failed "
        f"({summary['shards_written']} shards written, {summary['shards_resumed']} resumed, "
        f"{len(summary['unreadable_shards'])} unreadable) -> {args.output}"
    )
    if problem := all_failed(summary):  # nothing captioned: not a success (rerun resumes)
        print(f"multishot annotate: {problem}", file=sys.stderr)
        return 1
    return 0
