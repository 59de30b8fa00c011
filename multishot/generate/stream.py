"""Streaming multi-shot generation with the causal DiT (CausalCine §3.3): chunk after chunk,
a KV cache of the finished chunks, new shot prompts taken while it runs.

Chunks follow :class:`model.causal.ChunkLayout` of a video of ``1 + c·n`` latent frames
(``c = model.causal.chunk_latent_frames``): chunk 0 is the lone first latent frame (Wan's VAE
encodes the first video frame alone; 1 video frame), every later chunk ``c`` latent frames
(``4c`` video frames). The 241-frame samples the causal model is tuned on (61 latent frames,
``c = 3``) have exactly this layout, so a stream of 20 chunks after chunk 0 is such a sample.
Chunk 0 belongs to the first shot; the schedule (:mod:`generate.schedule`) gives every shot a
number of ``c``-frame chunks, so each cut falls on a chunk boundary.

Per chunk ``k`` of shot ``s`` (:meth:`StreamingGenerator.stream`)::

    shot s starts → UMT5 of build_prompt(global caption, captions of shots 0…s)   once a shot
                    (the shots known so far: the future is not known while streaming), and
                    the window of shot s in it (global caption + shot s's caption)
    ε_k ~ N(0, I) [1, C, f_k, H_lat, W_lat]           one CPU generator, chunk after chunk
    for t in the sampler's timesteps:                  the sampler / CFG of generate.sampler
        v = CFG of forward_chunk(x, t, cache)          cond + uncond rows, cache read only
        x = scheduler.step(v, t, x)
    forward_chunk(x, t = 0, cache, write_cache=True)   the clean pass: the chunk's K/V cached
    StreamingDecoder.decode(x) → video frames          the VAE's causal cache kept too
    yield StreamChunk                                  (send(shot) appends a shot)

The unconditional (negative-prompt) pass keeps its own cache rows: the cache holds a batch of
two, conditional first, as the CFG batch does. Earlier chunks are never recomputed: every model
call takes only the current chunk's latents (:attr:`StreamingGenerator.model_calls` counts them).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Generator as PyGenerator
from dataclasses import dataclass, field

import numpy as np
import torch

from multishot.dataset.record import build_prompt
from multishot.generate.generator import Generator, peak_memory_gib
from multishot.generate.sampler import make_scheduler
from multishot.generate.schedule import PromptSchedule, Shot
from multishot.generate.vae_stream import StreamingDecoder
from multishot.model.causal import KVCache
from multishot.model.layout import ShotLayout
from multishot.model.prompt_spans import TextSpans

log = logging.getLogger(__name__)


@dataclass
class StreamChunk:
    """One finished chunk of a stream.

    ``index``: chunk number (0 = the lone first latent frame); ``shot``: its shot's index in
    the schedule; ``frames``: its video frames ``[F, H, W, 3]`` uint8 (1 for chunk 0, ``4c``
    after); ``latents``: ``[1, C, f, H_lat, W_lat]`` float32 (CPU); ``seconds``: denoising,
    clean pass and decode of this chunk.
    """

    index: int
    shot: int
    frames: np.ndarray
    latents: torch.Tensor
    seconds: dict = field(default_factory=dict)


@dataclass
class _ShotConditioning:
    """Text of the shot being generated: UMT5 states ``[2, L, D]`` (conditional, negative),
    the chunk-frame window spans of the conditional row (None = unmasked)."""

    shot: int
    context: torch.Tensor
    spans: TextSpans | None


class StreamingGenerator(Generator):
    """A causal DiT (``model.causal`` in the generate config), its encoders and the streaming
    loop (module docstring). Loads as :class:`generate.generator.Generator` does.

    Raises (at construction):
        ValueError: no ``model.causal`` section; two experts (A14B: the stream keeps one KV
            cache, so one DiT); anything :class:`Generator` raises.
    """

    def __init__(self, config, lora: str | None = None, lora_scale: float = 1.0):
        if config.model.causal is None:
            raise ValueError("--causal needs a model.causal section in the generate config")
        if config.model.low_noise_checkpoint is not None:
            raise ValueError("streaming generation runs one DiT; drop model.low_noise_checkpoint")
        super().__init__(config, lora, lora_scale)
        if self.cp_group is not None:
            raise ValueError("streaming generation runs on one device (no torchrun)")
        self.causal = config.model.causal
        self.model = self.experts[0].model
        #: DiT forward calls so far (each on one chunk's latents only)
        self.model_calls = 0
        if self.offload:  # the stream decodes every chunk: the VAE stays on the GPU
            self.encoders.vae.to(self.device)

    # ---- geometry ----------------------------------------------------------------------------
    def chunk_frames(self, index: int) -> int:
        """Latent frames of chunk ``index``: 1 for chunk 0, ``chunk_latent_frames`` after."""
        return 1 if index == 0 else self.causal.chunk_latent_frames

    def video_frames(self, chunks: int) -> int:
        """Video frames of a stream of ``chunks`` chunks (chunk 0 included): ``1 + 4c(n − 1)``."""
        return 1 + 4 * self.causal.chunk_latent_frames * (chunks - 1)

    # ---- text --------------------------------------------------------------------------------
    def shot_conditioning(self, schedule: PromptSchedule, shot: int) -> _ShotConditioning:
        """UMT5 states and window of shot ``shot``: the prompt of the global caption and the
        shots ``0 … shot`` (:func:`dataset.record.build_prompt`), the window admitting the
        global caption and shot ``shot``'s caption (module docstring)."""
        prompt = build_prompt(schedule.global_caption, [s.caption for s in schedule.shots[:shot + 1]])
        context, negative = self.encode(prompt)
        n = max(context.shape[0], negative.shape[0])
        both = torch.stack([torch.nn.functional.pad(c, (0, 0, 0, n - c.shape[0]))
                            for c in (context, negative)])
        spans = None
        if self.config.model.window_cross_attention:
            full, why = self.encoders.text_spans([prompt], [shot + 1], self.model_config.text_len)[0]
            if why is not None:
                log.warning("shot %d: unmasked cross-attention: %s", shot, why)
            spans = full if full.global_span is None else \
                TextSpans(full.global_span, (full.shot_spans[shot],))
        return _ShotConditioning(shot, both, spans)

    # ---- one chunk ---------------------------------------------------------------------------
    def _forward(self, x: torch.Tensor, timestep: torch.Tensor, text: _ShotConditioning,
                 cache: KVCache, index: int, write: bool) -> torch.Tensor:
        """``forward_chunk`` of chunk ``index``'s ``x`` ``[rows, C, f, H, W]`` (rows 1:
        conditional only; 2: with the negative prompt), every frame of the chunk in one shot."""
        rows = x.shape[0]
        _, _, f, h, w = x.shape
        _, ph, pw = self.model_config.patch_size
        layout = ShotLayout.from_shot_starts([[0]] * rows, f, (h // ph) * (w // pw), x.device)
        text_mask = None if text.spans is None else \
            self.model.frame_text_mask(layout, [text.spans, None][:rows])  # uncond: unmasked
        self.model_calls += 1
        return self.model.forward_chunk(x.to(self.dtype), timestep.expand(rows),
                                        text.context[:rows], cache, index,
                                        self.causal, text_mask, write_cache=write).float()

    @torch.no_grad()
    def denoise_chunk(self, noise: torch.Tensor, text: _ShotConditioning, cache: KVCache,
                      index: int) -> torch.Tensor:
        """Clean latents of chunk ``index`` from ``noise`` ``[1, C, f, H, W]`` float32: the sampler's
        steps with CFG against the cache, then the clean pass at t = 0 that writes the
        chunk's K/V into ``cache``. The cache holds 2 rows (conditional, negative) when
        ``sampling.cfg_scale != 1``, else 1."""
        s = self.config.sampling
        rows = 1 if s.cfg_scale == 1.0 else 2
        scheduler = make_scheduler(s, noise.device)
        x = noise.float()
        for t in scheduler.timesteps:
            timestep = t.reshape(1).to(x.device, torch.float32)
            v = self._forward(x.expand(rows, *x.shape[1:]), timestep, text, cache, index, False)
            if rows == 2:
                v = v[1:] + s.cfg_scale * (v[:1] - v[1:])
            x = scheduler.step(v, t, x, return_dict=False)[0].float()
        zero = torch.zeros(1, device=x.device)
        self._forward(x.expand(rows, *x.shape[1:]), zero, text, cache, index, True)
        return x

    # ---- the stream --------------------------------------------------------------------------
    def stream(self, schedule: PromptSchedule, seed: int = 0,
               max_chunks: int | None = None) -> PyGenerator[StreamChunk, Shot | str | None, None]:
        """Generate chunk after chunk while ``schedule`` has shots for them (waiting for
        appended shots until it is closed), yielding each :class:`StreamChunk` as soon as it is
        decoded. ``gen.send(shot)`` (a :class:`Shot` or a caption of one chunk) appends a shot
        to ``schedule`` and returns the next chunk.

        Args:
            schedule: the video's global caption and shots.
            seed: noise seed (ε of every chunk from one CPU generator).
            max_chunks: stop after this many chunks (chunk 0 included); None = the schedule's.
        """
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        generator = torch.Generator("cpu").manual_seed(seed)
        _, c, _, h, w = self.latent_shape(1)
        cache = KVCache.empty(self.model_config.num_layers)
        decoder = StreamingDecoder(self.encoders.vae, self.device, self.encoders.dtype)
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        text: _ShotConditioning | None = None
        index = 0
        while max_chunks is None or index < max_chunks:
            # chunk 0 (the first latent frame) opens shot 0; chunk k >= 1 is schedule chunk k − 1
            shot = schedule.shot_of_chunk(max(0, index - 1))
            if shot is None:
                return
            start = time.perf_counter()
            if text is None or text.shot != shot:
                text = self.shot_conditioning(schedule, shot)
            noise = torch.randn((1, c, self.chunk_frames(index), h, w), generator=generator)
            latents = self.denoise_chunk(noise.to(self.device), text, cache, index)
            sync()
            denoised = time.perf_counter()
            frames = decoder.decode(latents)
            decoded = time.perf_counter()
            received = yield StreamChunk(index, shot, frames, latents.cpu(), {
                "denoise_s": denoised - start, "decode_s": decoded - denoised,
                "total_s": decoded - start})
            if received is not None:
                schedule.append(received)
            index += 1

    def describe(self, schedule: PromptSchedule, chunks: list[StreamChunk], seed: int) -> dict:
        """The JSON record written beside a streamed mp4."""
        s, v = self.config.sampling, self.config.video
        frames = [len(ch.frames) for ch in chunks]
        starts = np.cumsum([0] + frames)[:-1].tolist()
        cuts = [starts[i] for i in range(1, len(chunks)) if chunks[i].shot != chunks[i - 1].shot]
        total = sum(ch.seconds["total_s"] for ch in chunks)
        return {
            "global_caption": schedule.global_caption,
            "shots": [{"caption": sh.caption, "chunks": sh.chunks} for sh in schedule.shots],
            "num_frames": sum(frames), "cut_frames": cuts, "chunks": len(chunks),
            "chunk_shots": [ch.shot for ch in chunks], "chunk_frames": frames,
            "causal": self.causal.model_dump(), "seed": seed, "height": v.height,
            "width": v.width, "fps": v.fps, "sampler": s.sampler, "steps": s.steps,
            "shift": s.shift, "cfg_scale": s.cfg_scale, "negative_prompt": s.negative_prompt,
            "model": self.config.model.name, "checkpoints": self.checkpoints,
            "random_weights": self.random_weights, "lora": self.lora,
            "device": str(self.device), "dtype": str(self.dtype).removeprefix("torch."),
            "model_calls": self.model_calls,
            "chunk_seconds": [ch.seconds for ch in chunks], "total_s": total,
            "video_frames_per_s": sum(frames) / total if total else None,
            "peak_memory_gib": peak_memory_gib(self.device),
        }
