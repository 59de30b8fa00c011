"""Precomputed shards: the VAE latents and UMT5 embeddings of a sample, stored once.

``multishot precompute`` turns a video shard set into a shard set of kind ``latents``
(:mod:`dataset.shards`: ``shards/*.tar`` + ``manifest.json``, no index); each tar holds per sample::

    {key}.json          the SampleRecord, unchanged (cuts, shots, captions)
    {key}.safetensors   "latents" [C, F_lat, H_lat, W_lat] and "context" [L_real, D] tensors,
                        metadata: num_frames / height / width the video was cut to, and the prompt

so training reads tensors and never runs the frozen encoders (DiffSynth-Studio's two-stage
"data_process" training does the same). ``context`` holds the prompt's real tokens only; Wan
zero-pads it to the text length at use.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

import pyarrow.fs as pafs
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from multishot.dataset.record import SampleRecord
from multishot.dataset.shards import ShardInfo, write_tar


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
    """Write precomputed samples (``{key}.json`` + ``{key}.safetensors``) as one WebDataset tar at
    ``path``, atomically (:func:`dataset.shards.write_tar`).

    Raises:
        ValueError: a key repeats within the shard.
    """
    return write_tar(fs, path, (
        {"__key__": s.record.key, "json": s.record.to_json(), "safetensors": s.to_bytes()} for s in samples
    ), "latents")
