"""The training loader: WebDataset shards → batches of clips (or precomputed latents).

The stream of one loader *slot* (one DataLoader worker of one rank) reads, per epoch::

    shard URLs (sorted)                         local paths or pyarrow.fs URIs
      → shuffled by Random(seed, epoch)         every rank sees the same shard order
      → split over slots = world × workers      by shard, or by sample when shards are few
      → tar members grouped by key              {key: {ext: bytes}}: raw samples
      → shuffle buffer, Random(seed, epoch, slot)
      → decode (json → SampleRecord, mp4 → [3, F, H, W] in [-1, 1], or safetensors → latents)
        undecodable samples are skipped, counted and logged with their reason
      → buckets by shape (frame count, height, width): the pipeline's duration buckets of
        4k+1 frames, or one bucket when data.num_frames / height / width fix the shape
      → a batch of ``batch_size`` as soon as one bucket holds that many, each sample with its
        own cuts and prompt

and starts the next epoch when its part is used up, so a slot's stream is endless and fully
determined by (seed, rank, world size, slot). Its position is the number of raw samples it
has taken from the shuffle buffer, plus the raw indices of the samples still waiting in
unfilled buckets: resuming replays the tars up to that point without decoding (cheap; only
the waiting samples are decoded again) and continues bit-identically. DataLoader workers hand batches out round-robin, so the
loader also remembers how many batches it gave out and rotates the worker ↔ slot mapping on
resume to keep the global batch order.
"""

from __future__ import annotations

import io
import tarfile
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pyarrow.fs as pafs
import torch
from pydantic import Field, field_validator
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from multishot.config import Section
from multishot.dataset.latents import LatentSample
from multishot.dataset.record import SHOT_COUNT_SENTENCE, SampleRecord, build_prompt, num_latent_frames, with_shot_count
from multishot.dataset.shards import ShardSetLayout, read_samples
from multishot.dataset.storage import TMP_SUFFIX, resolve

log = logging.getLogger(__name__)


class DataConfig(Section):
    """Where the training samples come from and how they are cut into batches."""

    shards: list[str] = Field(min_length=1, description=(
        "shard URLs: .tar files, folders of tars, or shard-set roots (their shards/ is used); "
        "local paths or pyarrow.fs URIs (s3://, gs://, ...)"))
    kind: Literal["video", "latents"] = Field("video", description=(
        "'video': mp4 shards from the pipeline (frozen encoders run each step); "
        "'latents': shards written by `multishot precompute`"))
    num_frames: int | None = Field(None, description=(
        "pixel frames per clip (4k+1): the first num_frames of each sample; samples shorter are "
        "skipped; None keeps each sample's length (batches then group samples of equal length)"))
    height: int | None = Field(None, gt=0, description="resize (cover) + centre-crop height, pixels")
    width: int | None = Field(None, gt=0, description="resize (cover) + centre-crop width, pixels")
    batch_size: int = Field(1, ge=1, description=(
        "samples per batch per rank, all of one shape (frame count, height, width): short "
        "samples fill a GPU better in batches"))
    shuffle_buffer: int = Field(16, ge=1, description="samples held for shuffling (1 = no shuffle)")
    seed: int = Field(0, description="with the epoch, fixes shard order and shuffling")
    num_workers: int = Field(2, ge=0, description="DataLoader worker processes per rank")
    uncaptioned: Literal["skip", "placeholder"] = Field("skip", description=(
        "samples whose caption_status is not 'ok': 'skip' them (counted), or give them the "
        "placeholder prompt build_prompt('a multi-shot video', ['shot 1', 'shot 2', ...]) "
        "(smoke runs on uncaptioned shards; every shot keeps caption tokens for the windows)"))

    @field_validator("num_frames")
    @classmethod
    def _four_k_plus_one(cls, value: int | None) -> int | None:
        if value is not None:
            num_latent_frames(value)  # raises ValueError naming the rule
        return value


#: global caption of the ``uncaptioned: placeholder`` prompt
PLACEHOLDER_CAPTION = "a multi-shot video"


class SkipSample(Exception):
    """A sample cannot be used; the message is the reason that gets counted and logged."""


@dataclass
class Batch:
    """One batch of one rank.

    Attributes:
        keys: sample keys, length B.
        cut_frames: per sample, the pixel frames where shots 2.. start (within ``num_frames``).
        num_frames: pixel frames of every clip in the batch (4k+1).
        prompts: per sample, the HoloCine hierarchical prompt of the kept shots.
        video: [B, 3, F, H, W] float32 in [-1, 1] (kind 'video'), else None.
        latents: [B, C, F_lat, H_lat, W_lat] (kind 'latents'), else None.
        context: [B, L, D] text embeddings zero-padded to the longest in the batch (kind
            'latents'), else None.
        slot, position, skipped, held: where the producing slot stands after this batch
            (loader bookkeeping, see :class:`TrainLoader`; ``held``: raw indices of the samples
            waiting in unfilled buckets); ``skip_reasons`` lists ``key: reason`` for samples
            skipped since that slot's previous batch.
    """

    keys: list[str]
    cut_frames: list[list[int]]
    num_frames: int
    prompts: list[str]
    video: torch.Tensor | None = None
    latents: torch.Tensor | None = None
    context: torch.Tensor | None = None
    slot: int = 0
    position: int = 0
    skipped: int = 0
    held: list[int] = field(default_factory=list)
    skip_reasons: list[str] = field(default_factory=list)


def check_set_kinds(urls: list[str], kind: str) -> None:
    """Refuse a shard-set root whose ``manifest.json`` says it holds another kind than
    ``data.kind`` (``video``: samples or captioned sets; ``latents``: latent sets): every
    sample would otherwise be skipped, or worse, read as something it is not.

    Raises:
        UsageError: the manifest's kind and ``data.kind`` disagree (the message names both).
    """
    from multishot.dataset.shards import ManifestError, read_manifest
    from multishot.errors import UsageError

    wanted = {"video": ("samples", "captioned"), "latents": ("latents",)}[kind]
    for url in urls:
        fs, path = resolve(url)
        if fs.get_file_info(path).type != pafs.FileType.Directory:
            continue  # a single tar: no manifest to honour
        try:
            manifest = read_manifest(fs, ShardSetLayout(path))
        except ManifestError:
            continue  # verify reports it; the tars are still read
        if manifest is not None and manifest.kind not in wanted:
            fix = "latents" if manifest.kind == "latents" else "video"
            raise UsageError(f"data.shards {url} is a {manifest.kind} set (its manifest.json says so) but "
                             f"data.kind is {kind!r}: set data.kind: {fix}")


def list_shards(urls: list[str]) -> list[str]:
    """Expand shard URLs into a sorted list of ``.tar`` URLs (see :attr:`DataConfig.shards`).

    Raises:
        FileNotFoundError: a URL does not exist or a folder holds no tars.
    """
    found: list[str] = []
    for url in urls:
        fs, path = resolve(url)
        prefix = url[: len(url) - len(url.split("://", 1)[-1])] if "://" in url else ""
        query = url.partition("?")[2] if prefix else ""  # the endpoint and options go with every tar
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.File:
            found.append(url)
            continue
        if info.type != pafs.FileType.Directory:
            raise FileNotFoundError(f"shard URL {url} does not exist")
        shards_dir = ShardSetLayout(path).shards_dir
        if fs.get_file_info(shards_dir).type == pafs.FileType.Directory:
            path = shards_dir
        tars = [f.path for f in fs.get_file_info(pafs.FileSelector(path))
                if f.path.endswith(".tar") and not f.path.endswith(TMP_SUFFIX)]
        if not tars:
            raise FileNotFoundError(f"no .tar shards under {url}")
        found.extend((prefix + t if prefix else t) + (f"?{query}" if query else "") for t in tars)
    return sorted(found)


#: the raw item a damaged tar ends with (a tar key never starts with "__": webdataset's rule)
DAMAGED_KEY, DAMAGED_MEMBER = "__damaged_shard__", "damaged"


def iter_tar(url: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield ``(key, {ext: bytes})`` per sample of a WebDataset tar, in tar order
    (:func:`dataset.shards.read_samples`: consecutive members with one key form a sample).

    A refused member (unsafe name, link, oversized) or a repeated one is logged and dropped,
    so its sample comes out incomplete and :meth:`ShardStream.decode` counts it as a skip; a
    truncated or corrupt tar is logged and ends there, and yields one ``DAMAGED_KEY`` item
    that :meth:`ShardStream.decode` counts as a skip (its samples are lost: the run says so).

    Raises:
        OSError: the tar cannot be opened.
    """
    fs, path = resolve(url)
    damage: list[str] = []

    def log_and_continue(exn: Exception) -> bool:
        log.warning("shard %s: %s", url, exn)
        if isinstance(exn, tarfile.ReadError):  # the tar itself (not one member) is damaged
            damage.append(str(exn))
        return True

    for sample in read_samples(fs, path, handler=log_and_continue):
        key = sample.pop("__key__")
        yield key, {ext: data for ext, data in sample.items() if not ext.startswith("__")}
    for problem in damage:  # counted as a skip by ShardStream.decode, so it shows in skipped_samples
        yield DAMAGED_KEY, {DAMAGED_MEMBER: f"shard {url.rsplit('/', 1)[-1]} damaged: {problem}".encode()}


def decode_clip(mp4: bytes, num_frames: int, height: int | None, width: int | None) -> torch.Tensor:
    """Decode the first ``num_frames`` frames of an mp4 into [3, F, H, W] float32 in [-1, 1].

    Frames are scaled to cover ``height`` × ``width`` (aspect kept, bilinear via swscale) and
    centre-cropped; with no size given they keep the video's size.

    Raises:
        SkipSample: the mp4 cannot be opened or decoded, or has fewer than ``num_frames`` frames.
    """
    import av  # here, not at module level: latent-only training needs no video decoder

    frames: list[np.ndarray] = []
    try:
        with av.open(io.BytesIO(mp4), mode="r") as container:
            stream = container.streams.video[0]
            src_w, src_h = stream.codec_context.width, stream.codec_context.height
            out_h, out_w = height or src_h, width or src_w
            scale = max(out_h / src_h, out_w / src_w)
            scaled_w, scaled_h = max(out_w, round(src_w * scale)), max(out_h, round(src_h * scale))
            top, left = (scaled_h - out_h) // 2, (scaled_w - out_w) // 2
            for frame in container.decode(stream):
                rgb = frame.to_ndarray(format="rgb24", width=scaled_w, height=scaled_h)
                frames.append(rgb[top : top + out_h, left : left + out_w])
                if len(frames) == num_frames:
                    break
    except (av.FFmpegError, IndexError, ValueError, OSError) as err:
        raise SkipSample(f"undecodable mp4 ({type(err).__name__}: {err})") from err
    if len(frames) < num_frames:
        raise SkipSample(f"decoded {len(frames)} of {num_frames} frames")
    clip = torch.from_numpy(np.stack(frames)).permute(3, 0, 1, 2)  # [3, F, H, W] uint8
    return clip.float().div_(127.5).sub_(1.0)


def clip_shots(record: SampleRecord, num_frames: int, uncaptioned: str) -> tuple[list[int], str]:
    """The cuts and prompt of a sample cut to its first ``num_frames`` frames.

    Shots that start at or after ``num_frames`` are dropped, with their captions, and the global
    caption's "This scene contains N shots." is rewritten to the shots kept.

    Raises:
        SkipSample: the sample is uncaptioned and ``uncaptioned == 'skip'``.
    """
    cuts = [c for c in record.cut_frames if c < num_frames]
    shots = record.shots[: len(cuts) + 1]
    if record.caption_status == "ok":
        global_caption = record.global_caption
        if SHOT_COUNT_SENTENCE.search(global_caption):
            global_caption = with_shot_count(global_caption, len(shots))
        return cuts, build_prompt(global_caption, [s.caption for s in shots])
    if uncaptioned == "skip":
        raise SkipSample(f"caption_status {record.caption_status!r}")
    return cuts, build_prompt(PLACEHOLDER_CAPTION, [f"shot {i + 1}" for i in range(len(shots))])


class ShardStream(IterableDataset):
    """The endless, deterministic stream of batches of one rank (see the module docstring).

    ``positions[slot]``/``skipped[slot]``: raw samples taken and samples skipped so far by each
    slot; ``held[slot]``: raw indices (1-based) of its samples waiting in unfilled buckets;
    ``rotation``: how many batches the rank took before (worker ``w`` plays slot
    ``(w + rotation) % workers``). Set them before iterating to resume.

    Raises (while iterating):
        RuntimeError: a slot's part of an epoch holds no usable sample (it would spin forever).
    """

    def __init__(self, config: DataConfig, rank: int = 0, world_size: int = 1,
                 exclude_keys: frozenset[str] = frozenset()):
        self.config = config
        self.rank, self.world_size = rank, world_size
        self.exclude_keys = exclude_keys
        check_set_kinds(config.shards, config.kind)
        self.urls = list_shards(config.shards)
        self.num_slots = max(1, config.num_workers)
        self.positions = [0] * self.num_slots
        self.skipped = [0] * self.num_slots
        self.held: list[list[int]] = [[] for _ in range(self.num_slots)]
        self.rotation = 0

    def _raw(self, slot: int) -> Iterator[tuple[str, dict[str, bytes]]]:
        """Raw samples of ``slot`` over endless epochs, after the shuffle buffer."""
        cfg = self.config
        slots = self.world_size * self.num_slots
        global_slot = self.rank * self.num_slots + slot
        epoch = 0
        while True:
            order = list(self.urls)
            random.Random(f"{cfg.seed}-{epoch}").shuffle(order)
            by_shard = len(order) >= slots
            mine = order[global_slot::slots] if by_shard else order
            rng = random.Random(f"{cfg.seed}-{epoch}-{global_slot}")
            buffer: list[tuple[str, dict[str, bytes]]] = []
            index = 0
            for url in mine:
                try:
                    for sample in iter_tar(url):
                        if sample[0] in self.exclude_keys:  # held out (validation): never seen
                            continue
                        index += 1
                        if not by_shard and (index - 1) % slots != global_slot:
                            continue
                        buffer.append(sample)
                        if len(buffer) >= cfg.shuffle_buffer:
                            yield buffer.pop(rng.randrange(len(buffer)))
                except OSError as err:  # damage inside a tar is handled (logged) by iter_tar
                    log.warning("shard %s unreadable from sample %d on: %s", url, index, err)
                    if by_shard or global_slot == 0:  # counted once, as a skip (decode)
                        buffer.append((DAMAGED_KEY, {DAMAGED_MEMBER: f"shard {url} unreadable: {err}".encode()}))
            while buffer:
                yield buffer.pop(rng.randrange(len(buffer)))
            epoch += 1

    def decode(self, key: str, parts: dict[str, bytes]) -> dict:
        """One raw sample → ``{key, record, cuts, prompt, num_frames}`` plus ``video``
        [3, F, H, W] (kind 'video') or ``latents`` / ``context`` (kind 'latents').

        Raises:
            SkipSample: the sample cannot be used (the reason is the message).
        """
        cfg = self.config
        if DAMAGED_MEMBER in parts and key == DAMAGED_KEY:
            raise SkipSample(parts[DAMAGED_MEMBER].decode(errors="replace"))
        try:
            record = SampleRecord.from_json(parts["json"])
        except KeyError:
            raise SkipSample("no .json member") from None
        except ValueError as err:  # pydantic.ValidationError is a ValueError
            raise SkipSample(f"bad record: {str(err).splitlines()[0]}") from err
        if cfg.kind == "latents":
            try:
                sample = LatentSample.from_members(parts["json"], parts["safetensors"])
            except Exception as err:  # noqa: BLE001 - any parse failure of one member is a skip
                raise SkipSample(f"bad latents member ({type(err).__name__}: {err})") from err
            if cfg.num_frames is not None and sample.num_frames != cfg.num_frames:
                raise SkipSample(f"precomputed {sample.num_frames} frames, config wants {cfg.num_frames}")
            cuts, _ = clip_shots(record, sample.num_frames, "placeholder")
            return {"key": key, "record": record, "cuts": cuts, "prompt": sample.prompt,
                    "num_frames": sample.num_frames,
                    "latents": sample.latents, "context": sample.context}
        if "mp4" not in parts:
            raise SkipSample("no .mp4 member")
        frames = cfg.num_frames or record.num_frames
        if record.num_frames < frames:
            raise SkipSample(f"{record.num_frames} frames < {frames}")
        cuts, prompt = clip_shots(record, frames, cfg.uncaptioned)
        video = decode_clip(parts["mp4"], frames, cfg.height, cfg.width)
        return {"key": key, "record": record, "cuts": cuts, "prompt": prompt, "num_frames": frames,
                "video": video}

    def batches(self, slot: int) -> Iterator[Batch]:
        """Endless batches of ``slot``, starting at ``positions[slot]``."""
        position, skipped = self.positions[slot], self.skipped[slot]
        raw = self._raw(slot)
        held = set(self.held[slot])
        # shape → [(raw index, decoded sample)] waiting for batch_size samples of that shape
        buckets: dict[tuple[int, ...], list[tuple[int, dict]]] = {}
        for index in range(1, position + 1):  # resume: replay, decoding only the held samples
            key, parts = next(raw)
            if index in held:
                sample = self.decode(key, parts)
                buckets.setdefault(sample_shape(sample), []).append((index, sample))
        reasons: list[str] = []
        since_usable = 0
        for key, parts in raw:
            position += 1
            try:
                sample = self.decode(key, parts)
                since_usable = 0
            except SkipSample as err:
                skipped += 1
                since_usable += 1
                reasons.append(f"{key}: {err}")
                log.warning("skipping sample %s: %s", key, err)
                if since_usable > 10_000:
                    raise RuntimeError(f"slot {slot} of rank {self.rank}: 10000 samples in a row "
                                       f"unusable, last: {reasons[-1]}") from None
                continue
            bucket = buckets.setdefault(sample_shape(sample), [])
            bucket.append((position, sample))
            if len(bucket) == self.config.batch_size:
                batch = collate([s for _, s in buckets.pop(sample_shape(sample))])
                batch.slot, batch.position, batch.skipped, batch.skip_reasons = slot, position, skipped, reasons
                batch.held = sorted(i for waiting in buckets.values() for i, _ in waiting)
                yield batch
                reasons = []

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        if workers != self.num_slots:
            raise RuntimeError(f"{workers} workers iterate a stream built for {self.num_slots}")
        return self.batches((worker + self.rotation) % workers)


def sample_shape(sample: dict) -> tuple[int, ...]:
    """The batching bucket of a decoded sample: ``(frames, height, width)`` of its clip, or of
    its latents (``(frames, H_lat, W_lat)``), plus the latent channels."""
    tensor = sample["video"] if "video" in sample else sample["latents"]
    return (sample["num_frames"], *tensor.shape[-2:], tensor.shape[0])


def collate(samples: list[dict]) -> Batch:
    """Stack decoded samples into a :class:`Batch` (contexts zero-padded to the longest).

    Raises:
        ValueError: samples differ in frame count or tensor shape.
    """
    num_frames = {s["num_frames"] for s in samples}
    if len(num_frames) != 1:
        raise ValueError(f"a batch mixes frame counts {sorted(num_frames)}: set data.num_frames")
    batch = Batch([s["key"] for s in samples], [s["cuts"] for s in samples], num_frames.pop(),
                  [s["prompt"] for s in samples])
    if "video" in samples[0]:
        batch.video = torch.stack([s["video"] for s in samples])
    else:
        batch.latents = torch.stack([s["latents"] for s in samples])
        length = max(s["context"].shape[0] for s in samples)
        batch.context = torch.stack([
            torch.nn.functional.pad(s["context"], (0, 0, 0, length - s["context"].shape[0]))
            for s in samples])
    return batch


class TrainLoader:
    """Batches for one rank, with a resumable position (``state_dict`` / ``load_state_dict``).

    Iterating yields :class:`Batch` objects; ``skipped`` counts samples skipped so far by this
    rank (restored on resume) and ``taken`` the batches given out. Samples whose key is in
    ``exclude_keys`` (held out for validation) are left out of the stream, uncounted.
    """

    def __init__(self, config: DataConfig, rank: int = 0, world_size: int = 1,
                 exclude_keys: frozenset[str] = frozenset()):
        self.stream = ShardStream(config, rank, world_size, frozenset(exclude_keys))
        self.config = config
        self.taken = 0
        self._iter: Iterator[Batch] | None = None

    @property
    def skipped(self) -> int:
        return sum(self.stream.skipped)

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        if self._iter is None:
            self.stream.rotation = self.taken % self.stream.num_slots
            # its own generator: a DataLoader iterator otherwise draws its base seed from the
            # global RNG, and a resumed run (which makes one after restoring that RNG) would
            # shift every later random draw of the step (LoRA dropout) against an uninterrupted run
            loader = DataLoader(self.stream, batch_size=None, num_workers=self.config.num_workers,
                                persistent_workers=False, generator=torch.Generator(),
                                multiprocessing_context="spawn" if self.config.num_workers else None)
            self._iter = iter(loader)
        batch = next(self._iter)
        self.stream.positions[batch.slot] = batch.position
        self.stream.skipped[batch.slot] = batch.skipped
        self.stream.held[batch.slot] = batch.held
        self.taken += 1
        return batch

    def close(self) -> None:
        """Stop reading now: shut down the DataLoader workers and close the shard and video
        streams held by suspended generators, instead of leaving them to interpreter exit
        (where their native threads can abort the process). Iterating again starts anew
        from the current position."""
        self._iter = None  # drops the DataLoader iterator: workers shut down, generators close

    def state_dict(self) -> dict:
        """Position of every slot, its held samples, skip counts and batches taken (plain ints:
        DCP-friendly)."""
        return {"positions": list(self.stream.positions), "skipped": list(self.stream.skipped),
                "held": [list(h) for h in self.stream.held], "taken": self.taken}

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state``; the next batch is the one an uninterrupted run gets next.

        Raises:
            ValueError: the state was saved with another number of workers.
        """
        if len(state["positions"]) != self.stream.num_slots:
            raise ValueError(f"loader state has {len(state['positions'])} slots, config has "
                             f"{self.stream.num_slots} (data.num_workers must match to resume)")
        self.stream.positions = [int(p) for p in state["positions"]]
        self.stream.skipped = [int(s) for s in state["skipped"]]
        self.stream.held = [[int(i) for i in h] for h in state["held"]]
        self.taken = int(state["taken"])
        self._iter = None
