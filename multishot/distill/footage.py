"""Ground-truth footage of a distillation run: the real videos ODE initialisation conditions
on and the adversarial head's real samples (CausalCine §3.4: the ODE pairs are generated "on
ground-truth history"; APT's discriminator sees real videos).

**Source** (``footage`` of the config, :class:`distill.config.FootageConfig`): shards read by
the training loader's own decoding (:class:`dataset.loader.ShardStream`: the first
``num_frames`` frames of a sample, resized and centre-cropped to ``video.height × width``, the
prompt of the shots kept), in shard order (sorted URLs, tar order), the first ``samples``
usable ones. Kind ``video``: mp4 shards from the pipeline, encoded once by the product's VAE
(:meth:`model.encoders.FrozenEncoders.encode_video`); kind ``latents``: a latent set of
``multishot precompute`` (the same VAE, run earlier). A sample that cannot be used (undecodable,
uncaptioned under ``uncaptioned: skip``, latents of another size) is skipped, logged and listed
with its reason in ``output_dir/footage_report.json``; the run goes on.

**Shots on chunks.** The student streams one shot's prompt per chunk
(:class:`distill.prompts.PromptConditioning`), so a footage sample becomes a
:class:`distill.prompts.DistillPrompt` whose shots own whole chunks: each cut's latent frame
``f`` (:func:`model.layout.latent_shot_starts`' mapping) moves to the nearest chunk boundary
``1 + c·j`` (ties: the later one), and a shot left with no chunk is dropped with its caption
(the global caption's "This scene contains N shots." follows). The latents are unchanged; the
chunks at a moved cut see the neighbouring shot's caption for at most ``c/2`` latent frames.

**File** (this module owns it): ``output_dir/footage.safetensors``, tensor ``"{i}"`` the latents
of sample ``i`` ``[1, C, F_lat, H_lat, W_lat]`` (float32 from the VAE, a latent set's own dtype:
bf16 halves a 5B run's host memory), written atomically, metadata ``{"format":
"multishot-distill-footage", "version": "1", "keys": JSON list, "prompts": JSON list of
{"global_caption", "shots": [{"caption", "chunks"}]}}``, so a resumed run needs no shards.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from multishot.dataset.loader import DataConfig, ShardStream, SkipSample, iter_tar
from multishot.dataset.record import (SHOT_COUNT_SENTENCE, latent_cut_frame, num_latent_frames,
                                      split_prompt, with_shot_count)
from multishot.distill.prompts import DistillPrompt
from multishot.model.layout import enforce_4t_plus_1

log = logging.getLogger(__name__)

FORMAT = "multishot-distill-footage"
VERSION = "1"


@dataclass
class Footage:
    """One ground-truth sample: its shard ``key``, ``prompt`` (shots on chunks, module
    docstring) and ``latents`` ``[1, C, F_lat, H_lat, W_lat]`` on the CPU (module docstring's
    dtype)."""

    key: str
    prompt: DistillPrompt
    latents: torch.Tensor


def chunked_prompt(prompt: str, cuts: list[int], num_frames: int,
                   chunk_latent_frames: int) -> DistillPrompt:
    """The :class:`DistillPrompt` of a clip of ``num_frames`` pixel frames with shot cuts at
    pixel frames ``cuts`` (shots 2…) and HoloCine prompt ``prompt`` (module docstring: cuts
    moved to chunk boundaries, shots without a chunk dropped).

    E.g. 25 frames (7 latent frames, chunks of 2: boundaries 1, 3, 5), one cut at frame 12
    (latent frame 4 → boundary 5, ties to the later): shots of 2 and 1 chunks.

    Raises:
        ValueError: ``num_frames`` is not ``1 + 4·c·m`` (chunk 0 the lone first latent frame),
            or the prompt's shot captions are fewer than its shots.
    """
    c = chunk_latent_frames
    f_lat = num_latent_frames(num_frames)
    if (f_lat - 1) % c:
        raise ValueError(f"{num_frames} frames are {f_lat} latent frames, not 1 + {c}·m")
    chunks = (f_lat - 1) // c
    global_caption, captions = split_prompt(prompt)
    if len(captions) < len(cuts) + 1:
        raise ValueError(f"{len(cuts) + 1} shots but {len(captions)} shot captions")
    bounds = [0]
    for cut in cuts:
        frame = latent_cut_frame(enforce_4t_plus_1(cut))
        bounds.append(min(max((frame - 1 + c // 2) // c, bounds[-1]), chunks))
    bounds.append(chunks)
    shots = tuple((captions[s], bounds[s + 1] - bounds[s]) for s in range(len(cuts) + 1)
                  if bounds[s + 1] > bounds[s])
    if len(shots) != len(cuts) + 1 and SHOT_COUNT_SENTENCE.search(global_caption):
        global_caption = with_shot_count(global_caption, len(shots))
    return DistillPrompt(global_caption, shots)


def read_shards(config, video, chunk_latent_frames: int, latent_shape: tuple[int, ...],
                encoders) -> tuple[list[Footage], list[str]]:
    """The first ``config.samples`` usable samples of ``config.shards`` (module docstring).

    Args:
        config: :class:`distill.config.FootageConfig`; video: the run's ``video`` section.
        latent_shape: ``(C, H_lat, W_lat)`` the student's latents have at ``video``'s size.
        encoders: :class:`model.encoders.FrozenEncoders` with a VAE (kind ``video``), or None.
    Returns:
        ``(footage, skips)``, ``skips`` as ``"key: reason"``.
    Raises:
        FileNotFoundError: a shard URL does not exist or holds no tar.
        multishot.errors.UsageError: a shard set's manifest holds another kind.
    """
    stream = ShardStream(DataConfig(shards=config.shards, kind=config.kind,
                                    num_frames=config.num_frames, height=video.height,
                                    width=video.width, uncaptioned=config.uncaptioned,
                                    shuffle_buffer=1, num_workers=0))
    footage, skips = [], []
    for url in stream.urls:
        for key, parts in iter_tar(url):
            try:
                sample = stream.decode(key, parts)
                if config.kind == "video":
                    latents = encoders.encode_video(sample["video"][None]).cpu()
                else:
                    latents = sample["latents"][None]
                if (latents.shape[1],) + tuple(latents.shape[3:]) != tuple(latent_shape):
                    raise SkipSample(f"latents {list(latents.shape[1:])} do not fit the video "
                                     f"{video.height}x{video.width} (channels, height, width "
                                     f"{list(latent_shape)})")
                prompt = chunked_prompt(sample["prompt"], sample["cuts"], sample["num_frames"],
                                        chunk_latent_frames)
            except (SkipSample, ValueError) as err:
                skips.append(f"{key}: {err}")
                log.warning("footage: skipping sample %s: %s", key, err)
                continue
            footage.append(Footage(key, prompt, latents))
            if len(footage) == config.samples:
                return footage, skips
    return footage, skips


def write_footage(path: str | Path, footage: list[Footage]) -> Path:
    """Write ``footage`` as one file (module docstring), atomically; returns its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    prompts = [{"global_caption": f.prompt.global_caption,
                "shots": [{"caption": c, "chunks": n} for c, n in f.prompt.shots]}
               for f in footage]
    save_file({str(i): f.latents.detach().cpu().contiguous()
               for i, f in enumerate(footage)}, str(tmp),
              metadata={"format": FORMAT, "version": VERSION,
                        "keys": json.dumps([f.key for f in footage]),
                        "prompts": json.dumps(prompts)})
    tmp.replace(path)  # a run killed while writing leaves no half file to resume from
    return path


def read_footage(path: str | Path) -> list[Footage]:
    """Read a footage file (latents on the CPU).

    Raises:
        ValueError: not such a file.
    """
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ValueError(f"{path}: not a {FORMAT} v{VERSION} file")
    tensors = load_file(str(path))
    prompts = [DistillPrompt(p["global_caption"], tuple((s["caption"], s["chunks"])
                                                        for s in p["shots"]))
               for p in json.loads(meta["prompts"])]
    return [Footage(key, prompt, tensors[str(i)])
            for i, (key, prompt) in enumerate(zip(json.loads(meta["keys"]), prompts))]
