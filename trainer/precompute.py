"""``multishot precompute``: encode a video shard set once into a latent shard set.

For every input shard, in order, one output shard of the same name under ``OUT/shards/``:

    {key}.json + {key}.mp4                        a pipeline sample
      → clip: first data.num_frames frames, resized/cropped to data.height × width
        (the training loader's own decoding: same cuts, same prompt)
      → VAE latents [C, F_lat, H_lat, W_lat], UMT5 states [L_real, D] (encoder dtype)
      → {key}.json + {key}.safetensors            (dataset.latents.LatentSample)

Undecodable samples are skipped and listed with their reason in ``OUT/precompute_report.json``;
``OUT/manifest.json`` (:class:`dataset.shards.Manifest`, kind ``latents``) lists the written
shards and the samples_hash their records share.
"""

from __future__ import annotations

import logging

import torch
from tqdm import tqdm

from multishot.dataset.latents import LatentSample, write_latent_shard
from multishot.dataset.loader import ShardStream, SkipSample, iter_tar
from multishot.dataset.shards import Manifest, ShardSetLayout, write_manifest
from multishot.dataset.storage import resolve, write_json
from multishot.model.config import get_config
from multishot.trainer.config import TrainConfig
from multishot.model.encoders import FrozenEncoders

log = logging.getLogger(__name__)


def _overlaps(a: str, b: str) -> bool:
    """Whether two shard-set locations are the same, or one lies inside the other."""
    (fs_a, path_a), (fs_b, path_b) = resolve(a), resolve(b)
    if type(fs_a) is not type(fs_b):
        return False
    path_a, path_b = path_a.rstrip("/") + "/", path_b.rstrip("/") + "/"
    return path_a.startswith(path_b) or path_b.startswith(path_a)


def precompute(config: TrainConfig, out: str) -> dict:
    """Encode ``config.data.shards`` with ``config.encoders`` into a latent shard set at ``out``.

    Returns:
        the report: ``{"samples", "shards", "skipped", "skips": ["key: reason", ...]}``.
    Raises:
        RuntimeError: ``encoders.vae`` or ``encoders.text_encoder`` is not set.
        multishot.errors.UsageError: ``out`` is, holds or lies in one of ``data.shards`` (it
            would read its own output).
    """
    for shards in config.data.shards:
        if _overlaps(shards, out):
            from multishot.errors import UsageError

            raise UsageError(f"the output {out} overlaps data.shards entry {shards}: precompute reads the video "
                             "shard sets of data.shards and writes latents elsewhere (e.g. --set "
                             "'data.shards=[out/demo]' --output out/latents)")
    data = config.data.model_copy(update={"kind": "video", "num_workers": 0, "shuffle_buffer": 1})
    stream = ShardStream(data)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    encoders = FrozenEncoders.load(config.encoders, device)
    if encoders.vae is None or encoders.text_encoder is None:
        raise RuntimeError("precompute needs encoders.vae and encoders.text_encoder")
    text_len = get_config(config.model.name).text_len
    fs, root = resolve(out)
    layout = ShardSetLayout(root)
    infos, hashes, skips, count = [], set(), [], 0
    for url in tqdm(stream.urls, desc="precompute", unit="shard"):
        samples = []
        for key, parts in iter_tar(url):
            try:
                sample = stream.decode(key, parts)
            except SkipSample as err:
                skips.append(f"{key}: {err}")
                log.warning("skipping sample %s: %s", key, err)
                continue
            video = sample["video"]
            latents = encoders.encode_video(video[None])[0].to(encoders.dtype).cpu()
            context = encoders.encode_prompts([sample["prompt"]], text_len)[0].to(encoders.dtype).cpu()
            samples.append(LatentSample(sample["record"], latents, context, sample["prompt"],
                                        sample["num_frames"], video.shape[2], video.shape[3]))
        name = url.rsplit("/", 1)[-1]
        infos.append(write_latent_shard(fs, layout.shard(name), samples))
        hashes.update(s.record.samples_hash for s in samples)
        count += len(samples)
    write_manifest(fs, layout, Manifest(kind="latents", samples_hash=hashes.pop() if len(hashes) == 1 else None,
                                        shards=infos))
    report = {"samples": count, "shards": len(infos), "skipped": len(skips), "skips": skips}
    write_json(fs, f"{root}/precompute_report.json", report)
    return report
