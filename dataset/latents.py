"""Precomputed shards: the VAE latents and UMT5 embeddings of a sample, stored once.

``multishot precompute`` turns a video shard set into a latent shard set with the same layout
(``shards/*.tar`` + ``manifest.json``); each tar holds per sample::

    {key}.json          the SampleRecord, unchanged (cuts, shots, captions)
    {key}.safetensors   "latents" [C, F_lat, H_lat, W_lat] and "context" [L_real, D] tensors,
                        metadata: num_frames / height / width the video was cut to, and the prompt

so training reads tensors and never runs the frozen encoders (DiffSynth-Studio's two-stage
"data_process" training does the same). ``context`` holds the prompt's real tokens only; Wan
zero-pads it to the text length at use.
"""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

import pyarrow.fs as pafs
import torch
import webdataset as wds
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from dataset.record import SampleRecord
from dataset.shards import TMP_SUFFIX, ShardInfo


@dataclass
class LatentSample:
    """One precomputed sample.

    ``latents``: [C, F_lat, H_lat, W_lat] (VAE-normalised); ``context``: [L_real, D] text
    embedding of ``prompt``; ``num_frames``/``height``/``width``: the pixel clip that was encoded
    (the first ``num_frames`` frames of the record, resized/cropped to ``height`` × ``width``).
    """

    record: SampleRecord
    latents: torch.Tensor
    context: torch.Tensor
    prompt: str
    num_frames: int
    height: int
    width: int

    def to_bytes(self) -> bytes:
        """The ``{key}.safetensors`` member (tensors stored contiguous, dtype kept)."""
        meta = {"prompt": self.prompt, "num_frames": str(self.num_frames),
                "height": str(self.height), "width": str(self.width)}
        tensors = {"latents": self.latents.contiguous(), "context": self.context.contiguous()}
        return save_tensors(tensors, metadata=meta)

    @classmethod
    def from_members(cls, record_json: bytes, tensors: bytes) -> LatentSample:
        """Parse the two members of a latent shard sample.

        Raises:
            pydantic.ValidationError: bad record JSON.
            safetensors.SafetensorError / KeyError: bad or incomplete tensor member.
        """
        record = SampleRecord.from_json(record_json)
        data = load_tensors(tensors)
        # safetensors format: 8-byte little-endian header length, then the JSON header
        header_len = int.from_bytes(tensors[:8], "little")
        meta = json.loads(tensors[8 : 8 + header_len])["__metadata__"]
        return cls(record, data["latents"], data["context"], meta["prompt"],
                   int(meta["num_frames"]), int(meta["height"]), int(meta["width"]))


def write_latent_shard(fs: pafs.FileSystem, path: str, samples: Iterable[LatentSample]) -> ShardInfo:
    """Write precomputed samples as one WebDataset tar at ``path``, atomically (temp name, move).

    Raises:
        ValueError: a key repeats within the shard.
    """
    buf = io.BytesIO()
    keys: list[str] = []
    with wds.TarWriter(buf, mtime=0.0) as sink:
        for sample in samples:
            if sample.record.key in keys:
                raise ValueError(f"duplicate key {sample.record.key} in shard {path}")
            keys.append(sample.record.key)
            sink.write({"__key__": sample.record.key, "json": sample.record.to_json(),
                        "safetensors": sample.to_bytes()})
    data = buf.getvalue()
    tmp = f"{path}.{uuid.uuid4().hex}{TMP_SUFFIX}"
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(tmp) as out:
        out.write(data)
    fs.move(tmp, path)
    return ShardInfo(path.rsplit("/", 1)[-1], hashlib.sha256(data).hexdigest(), len(data), len(keys), keys)
