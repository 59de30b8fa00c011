"""Streaming multi-shot generation with the causal DiT (CausalCine §3.3): chunk after chunk,
a KV cache of the finished chunks, new shot prompts taken while it runs.

Chunks follow :class:`model.causal.ChunkLayout` of a video of ``1 + c·n`` latent frames
(``c = model.causal.chunk_latent_frames``): chunk 0 is the lone first latent frame (Wan's VAE
encodes the first video frame alone; 1 video frame), every later chunk ``c`` latent frames
(``4c`` video frames). The 241-frame samples the causal model is tuned on (61 latent frames,
``c = 3``) have exactly this layout, so a stream of 20 chunks after chunk 0 is such a sample.
Chunk 0 belongs to the first shot; the schedule (:mod:`generate.schedule`) gives every shot a
number of ``c``-frame chunks, so each cut falls on a chunk boundary.

Per chunk ``k`` of shot ``s`` (:meth:`ChunkStreamer.stream`)::

    shot s starts → UMT5 of build_prompt(global caption, captions of shots 0…s)   once a shot
                    (the shots known so far: the future is not known while streaming), and
                    the window of shot s in it (global caption + shot s's caption)
    ε_k ~ N(0, I) [1, C, f_k, H_lat, W_lat]           one CPU generator, chunk after chunk
    for t in the sampler's timesteps:                  the sampler / CFG of model.sampling
        v = CFG of forward_chunk(x, t, cache)          cond + uncond rows, cache read only
        x = scheduler.step(v, t, x)
    forward_chunk(x, t = 0, cache, write_cache=True)   the clean pass: the chunk's K/V cached
    StreamingDecoder.decode(x) → video frames          the VAE's causal cache kept too; with
                                                       overlap_decode in a worker thread (own
                                                       CUDA stream) while chunk k + 1 is
                                                       denoised (once settled, if compiling)
    yield StreamChunk                                  (send(shot) appends a shot)

The unconditional (negative-prompt) pass keeps its own cache rows: the cache holds a batch of
two, conditional first, as the CFG batch does. Earlier chunks are never recomputed: every model
call takes only the current chunk's latents (:attr:`StreamingGenerator.model_calls` counts them).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from collections.abc import Generator as PyGenerator
from dataclasses import dataclass, field

import numpy as np
import torch

from multishot.dataset.record import build_prompt
from multishot.generate.generator import Generator, peak_memory_gib
from multishot.generate.graphs import GraphedChunkForward
from multishot.model.sampling import SamplingConfig, make_scheduler
from multishot.generate.schedule import PromptSchedule, Shot
from multishot.generate.vae_stream import StreamingDecoder
from multishot.model.causal import CausalConfig, KVCache
from multishot.model.compile import is_compiled
from multishot.model.layout import ShotLayout
from multishot.model.prompt_spans import TextSpans

log = logging.getLogger(__name__)


@dataclass
class StreamChunk:
    """One finished chunk of a stream.

    ``index``: chunk number (0 = the lone first latent frame); ``shot``: its shot's index in
    the schedule; ``frames``: its video frames ``[F, H, W, 3]`` uint8 (1 for chunk 0, ``4c``
    after); ``latents``: ``[1, C, f, H_lat, W_lat]`` float32 (CPU); ``seconds``: denoising
    with the clean pass, decode, their sum and the wall time since the previous chunk
    (:meth:`ChunkStreamer.stream`).
    """

    index: int
    shot: int
    frames: np.ndarray
    latents: torch.Tensor
    seconds: dict = field(default_factory=dict)


@dataclass
class ShotText:
    """Text of the shot being generated: ``context`` UMT5 states ``[2, L, D]`` (conditional,
    negative prompt), ``spans`` the conditional row's window for the chunk's frames (the global
    caption and this shot's caption; None = unmasked)."""

    shot: int
    context: torch.Tensor
    spans: TextSpans | None


#: the text of shot ``shot`` of a schedule (:meth:`StreamingGenerator.shot_text`)
TextFn = Callable[[PromptSchedule, int], ShotText]


class ChunkStreamer:
    """The streaming loop (module docstring) over given parts: a causal DiT, a Wan VAE and a
    text function. :class:`StreamingGenerator` loads the parts from a config; the benchmark
    builds random ones at the real shapes.

    Args:
        model: a :class:`model.dit.WanModel` (eval, on ``device``).
        causal: the chunk size and CAMR settings it was trained with.
        sampling: sampler, steps, shift and CFG scale, used per chunk.
        vae: diffusers ``AutoencoderKLWan`` on ``device`` in ``vae_dtype``.
        text: the :class:`ShotText` of a shot of a schedule.
        latent_chw: latent channels, height and width of a frame.
        overlap_decode: decode chunk ``k`` while chunk ``k + 1`` is denoised (:meth:`stream`);
            False (the default) decodes inline, one chunk after the other. Off by default
            because on one H100 (5B, 4 steps) it gained little: with CUDA graphs and
            compiled blocks 0.421 against 0.424–0.453 s a chunk in two runs, both sides being
            bound by the GPU (eager, launch-bound under one GIL, it was slower: 0.85 against
            0.78 s; ``benchmarks/results/distill/distill_h100.md``). When the stream
            :attr:`compiles` (a compiled decoder or DiT, CUDA graphs) a chunk overlaps only
            once nothing can compile or capture any more (the rule: :meth:`stream`).
        cuda_graphs: replay the denoising passes from CUDA graphs where their shapes repeat
            (:class:`generate.graphs.GraphedChunkForward`; CUDA only, same outputs).
        compile_decoder: decode with ``torch.compile(vae.decoder)``.
    """

    def __init__(self, model: torch.nn.Module, causal: CausalConfig, sampling: SamplingConfig,
                 vae: torch.nn.Module, text: TextFn, latent_chw: tuple[int, int, int],
                 device: torch.device, vae_dtype: torch.dtype, overlap_decode: bool = False,
                 cuda_graphs: bool = False, compile_decoder: bool = False):
        self.model, self.causal, self.sampling, self.vae = model, causal, sampling, vae
        self.text, self.latent_chw, self.device, self.vae_dtype = text, latent_chw, device, vae_dtype
        self.overlap_decode = overlap_decode
        self.graphed = GraphedChunkForward(model, causal, cuda_graphs)
        self.vae_decoder = None  # None: vae.decoder itself (not compiled)
        if compile_decoder:
            # dynamo compiles every causal conv and residual block of the decoder on its own,
            # and all instances of a class count towards one recompile limit (8 by default,
            # hit at the Wan2.2 decoder's ~30 shapes: the rest then ran eagerly)
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
            self.vae_decoder = torch.compile(vae.decoder)
        #: DiT forward calls so far (each on one chunk's latents only)
        self.model_calls = 0
        #: the KV cache of the stream running last (for inspection: its size stays bounded)
        self.cache: KVCache | None = None

    @property
    def compiles(self) -> bool:
        """Whether a stream may compile or capture: a compiled decoder (``compile_decoder``),
        compiled DiT modules (:func:`model.compile.is_compiled`, e.g. ``apply_compile``'s
        blocks) or CUDA graphs. Such a stream overlaps decodes only once settled
        (:meth:`stream`)."""
        return self.vae_decoder is not None or self.graphed.enabled or is_compiled(self.model)

    def chunk_frames(self, index: int) -> int:
        """Latent frames of chunk ``index``: 1 for chunk 0, ``chunk_latent_frames`` after."""
        return 1 if index == 0 else self.causal.chunk_latent_frames

    def chunk_text_mask(self, text: ShotText, rows: int, frames: int) -> torch.Tensor | None:
        """Window cross-attention of a chunk of ``frames`` latent frames, all in ``text``'s shot:
        ``[rows, frames, text_len]`` bool (row 0 the shot's window, row 1 the negative prompt's,
        unmasked as in :mod:`model.sampling`); None when the shot's text is unmasked."""
        if text.spans is None:
            return None
        layout = ShotLayout.from_shot_starts([[0]] * rows, frames, 1, self.device)
        return self.model.frame_text_mask(layout, [text.spans, None][:rows])

    @torch.no_grad()
    def denoise_chunk(self, noise: torch.Tensor, text: ShotText, cache: KVCache,
                      index: int) -> torch.Tensor:
        """Clean latents of chunk ``index`` from ``noise`` ``[1, C, f, H, W]`` float32: the
        sampler's steps with CFG against the cache (:func:`model.sampling.make_scheduler`),
        then the clean pass at t = 0 that writes the chunk's K/V into ``cache``. The cache
        holds 2 rows (conditional, negative) when ``sampling.cfg_scale != 1``, else 1."""
        s = self.sampling
        rows = 1 if s.cfg_scale == 1.0 else 2
        text_mask = self.chunk_text_mask(text, rows, noise.shape[2])
        context = text.context[:rows]

        def forward(x: torch.Tensor, timestep: torch.Tensor, write: bool) -> torch.Tensor:
            self.model_calls += 1
            x, timestep = x.expand(rows, *x.shape[1:]), timestep.expand(rows)
            if write:
                return self.model.forward_chunk(x, timestep, context, cache, index, self.causal,
                                                text_mask, write_cache=True)
            return self.graphed(x, timestep, context, cache, index, text_mask).float()

        scheduler = make_scheduler(s, noise.device)
        x = noise.float()
        for t in scheduler.timesteps:
            v = forward(x, t.reshape(1).to(x.device, torch.float32), False)
            if rows == 2:
                v = v[1:] + s.cfg_scale * (v[:1] - v[1:])
            x = scheduler.step(v, t, x, return_dict=False)[0].float()
        forward(x, torch.zeros(1, device=x.device), True)  # the clean pass writes the cache
        return x

    def denoise_key(self, noise: torch.Tensor, text: ShotText, cache: KVCache) -> tuple:
        """What the compiled code and the CUDA graphs of the next chunk's passes depend on
        (:meth:`stream`'s settling rule): the shapes of its latents ``noise``, text and text
        mask, the plan of its denoising passes (:attr:`model.causal.ChunkPlan.key`), the cache
        and the addresses of its storage (:meth:`model.causal.KVCache.addresses`), and whether
        that storage has its final size (:attr:`model.causal.LayerKV.final`: else the clean
        pass may move it). The clean pass's plan is left out: that pass is never captured,
        and what differs between clean passes of equal keys (the history's length, its RoPE
        tables) is read only inside the eager attention island
        (:func:`model.dit.causal_attention_kernel`), outside compiled code."""
        plan = self.model.chunk_plan(noise.to(self.device), cache, self.causal, False)
        return (tuple(noise.shape), tuple(text.context.shape), text.spans is None, plan.key,
                cache.addresses(), all(kv.final for kv in cache.layers))

    def stream(self, schedule: PromptSchedule, seed: int = 0, max_chunks: int | None = None,
               ) -> PyGenerator[StreamChunk, Shot | str | None, None]:
        """Generate chunk after chunk while ``schedule`` has shots for them (waiting for
        appended shots until it is closed), yielding each :class:`StreamChunk` as soon as it is
        decoded. ``gen.send(shot)`` (a :class:`Shot`, or a caption of one chunk) appends a shot
        to ``schedule`` and returns the next chunk.

        With ``overlap_decode`` the VAE decode of chunk ``k`` runs in a worker
        thread (on CUDA on its own stream) while chunk ``k + 1`` is denoised: the decode needs
        only chunk ``k``'s latents, the denoising only the KV cache, so a chunk costs about
        max(denoise, decode) instead of their sum. Chunk ``k + 1`` is started before chunk
        ``k`` is yielded only when its shot is already in the schedule (a shot appended on
        receiving chunk ``k`` comes after it, so the look-ahead changes nothing); chunk 0 is
        yielded before chunk 1 starts (the first-frame latency). Frames, latents and the
        order of the noise draws are those of the sequential path.

        Overlap needs that neither thread compiles nor captures while the other runs modules:
        AOTAutograd's tracing (``make_fx``) patches ``torch.nn.Module.__call__`` for the whole
        process, so a decoder compiled in the worker for a new shape intercepted the compiled
        DiT blocks of the main thread (``RuntimeError: Detected that you are using FX to
        symbolically trace a dynamo-optimized function``, one H100, ``benchmarks/causal.py
        --part long --overlap``), and a CUDA graph capture or a recompile in the main thread
        would catch the worker's calls the same way. So when the streamer :attr:`compiles`,
        chunk ``k`` is decoded in the worker only when the stream is settled, i.e. both hold:

        - decoder: a chunk of the same latent frames was already decoded inline from the same
          decoder state (the first-chunk flag and the shapes of its causal feature cache), so
          every decoder call of chunk ``k`` has shapes the compiled decoder has seen;
        - DiT: chunk ``k + 1``'s :meth:`denoise_key` equals chunks ``k − 1``'s and ``k``'s,
          its cache storage at its final size: its passes have run twice with these shapes,
          plans and storage, so they are compiled and their graphs captured
          (:mod:`generate.graphs`: eager the first time a key is seen, captured the second,
          replayed from the third), and its clean pass cannot move the storage.

        Otherwise chunk ``k`` is decoded inline in this thread (once the text and noise of
        chunk ``k + 1`` are ready: its key needs them) and yielded before chunk ``k + 1`` is
        denoised; the last chunk is decoded inline. A stream settles once its local window and
        CAMR's routed frames are full and the cache has its final storage (reserved at once
        for a stream of known length): at the 5B defaults (3-frame chunks, a window of 2
        chunks, 6 routed frames) chunk 6 is the first decoded in the worker. A streamer that
        compiles nothing and captures nothing overlaps from chunk 1, its decode started as
        soon as a chunk is denoised.

        Args:
            schedule: the video's global caption and shots.
            seed: noise seed (ε of every chunk from one CPU generator).
            max_chunks: stop after this many chunks (chunk 0 included); None = the schedule's.

        ``StreamChunk.seconds``: ``denoise_s`` (steps and clean pass, up to the latents on the
        host), ``decode_s`` (the VAE's own time), ``total_s`` their sum (the sequential cost)
        and ``wall_s`` the time since the previous chunk was yielded (the stream's start for
        chunk 0): what a viewer waits per chunk, the overlap included.
        """
        generator = torch.Generator("cpu").manual_seed(seed)
        c, h, w = self.latent_chw
        # storage for the chunks known now (more grow it, up to the cache budget of
        # model.causal.LayerKV): graphs are captured once per size
        known = schedule.total_chunks() if max_chunks is None else max_chunks - 1
        cache = KVCache.empty(len(self.model.blocks),
                              reserve_frames=1 + self.causal.chunk_latent_frames * max(known, 0))
        self.cache = cache
        decodes = _Decodes(StreamingDecoder(self.vae, self.device, self.vae_dtype,
                                            self.vae_decoder), self.device, self.overlap_decode)
        # settling (docstring): the denoise keys of the chunks so far
        guarded = self.overlap_decode and self.compiles
        keys: list[tuple] = []
        text: ShotText | None = None
        pending: _Pending | None = None
        index = 0
        last = time.perf_counter()
        try:
            while True:
                more = max_chunks is None or index < max_chunks
                # chunk 0 (the first latent frame) opens shot 0; chunk k >= 1 is schedule
                # chunk k − 1. Without waiting while a chunk is still to be yielded: its
                # receiver may be the one to append the next shot.
                shot = schedule.shot_of_chunk(max(0, index - 1), wait=pending is None) \
                    if more else None
                if shot is None:
                    if pending is None:
                        return
                    received = yield pending.chunk(last, decodes)
                    last, pending = time.perf_counter(), None
                    if received is not None:
                        schedule.append(received)
                    continue
                start = time.perf_counter()
                if text is None or text.shot != shot:
                    text = self.text(schedule, shot)
                noise = torch.randn((1, c, self.chunk_frames(index), h, w), generator=generator)
                if guarded:
                    key = self.denoise_key(noise, text, cache)
                    if pending is not None:  # its decode not started: decide now
                        # chunks k − 1, k and k + 1 alike, the storage final (key[-1])
                        settled = keys[-2:] == [key, key] and key[-1] \
                            and decodes.seen(pending.latents)
                        if settled:
                            pending.future = decodes.submit(pending.latents)
                        else:  # decode and yield chunk k now, before chunk k + 1 starts
                            prepared = time.perf_counter() - start
                            received = yield pending.chunk(last, decodes)
                            last, pending = time.perf_counter(), None
                            if received is not None:
                                schedule.append(received)
                            start = time.perf_counter() - prepared
                    keys.append(key)
                # .cpu() waits for this thread's stream only (the decode of the previous chunk
                # goes on); the decoder takes the host copy, so no device memory is shared
                latents = self.denoise_chunk(noise.to(self.device), text, cache, index).cpu()
                job = _Pending(index, shot, latents, time.perf_counter() - start,
                               None if guarded else decodes.submit(latents))
                if pending is not None:
                    received = yield pending.chunk(last, decodes)
                    last = time.perf_counter()
                    if received is not None:
                        schedule.append(received)
                pending, index = job, index + 1
                # chunk 0 at once (the first frame's latency is the stream's), and every chunk
                # when decoding inline (no look-ahead to overlap with)
                if index == 1 or not self.overlap_decode:
                    received = yield pending.chunk(last, decodes)
                    last, pending = time.perf_counter(), None
                    if received is not None:
                        schedule.append(received)
        finally:
            decodes.close()


@dataclass
class _Pending:
    """A denoised chunk whose decode (``future``: frames and decode seconds) may still run;
    None: not started (a settling stream decides when chunk ``k + 1`` is ready)."""

    index: int
    shot: int
    latents: torch.Tensor
    denoise_s: float
    future: Future | None

    def chunk(self, last: float, decodes: _Decodes) -> StreamChunk:
        """The finished chunk (decoded inline now if its decode was not started)."""
        if self.future is None:
            self.future = decodes.inline(self.latents)
        frames, decode_s = self.future.result()
        return StreamChunk(self.index, self.shot, frames, self.latents, {
            "denoise_s": self.denoise_s, "decode_s": decode_s,
            "total_s": self.denoise_s + decode_s, "wall_s": time.perf_counter() - last})


class _Decodes:
    """The VAE decodes of one stream, in chunk order: in one worker thread when ``overlap``
    (on CUDA on a stream of its own, so its kernels run beside the DiT's), else inline (the
    sequential fallback). One worker keeps the decoder's causal feature cache in order; an
    inline decode (:meth:`inline`) runs on the same CUDA stream, after the worker's.

    ``states``: the decoder states (:meth:`state`) of the chunks decoded inline so far."""

    def __init__(self, decoder: StreamingDecoder, device: torch.device, overlap: bool):
        self.decoder = decoder
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="vae-decode") if overlap else None
        # every decode on the same stream: the feature cache it allocates stays on that stream
        self.stream = torch.cuda.Stream(device) if overlap and device.type == "cuda" else None
        self.last: Future | None = None
        self.states: set[tuple] = set()

    def state(self, latents: torch.Tensor) -> tuple:
        """What the decoder's calls for ``latents`` ``[1, C, f, H, W]`` depend on beyond
        their values: ``f``, the first-chunk flag, the causal feature cache's entries (shapes
        and dtypes of tensors, or markers). Equal states give calls of equal shapes."""
        d = self.decoder

        def entry(x):
            return (tuple(x.shape), x.dtype) if isinstance(x, torch.Tensor) else x

        return (tuple(latents.shape), d.latent_frames == 0, tuple(map(entry, d.feat_cache)))

    def seen(self, latents: torch.Tensor) -> bool:
        """Whether a chunk was decoded inline from the state of ``latents``' decode (the
        previous decodes done)."""
        return self.state(latents) in self.states

    def _decode(self, latents: torch.Tensor) -> tuple[np.ndarray, float]:
        start = time.perf_counter()
        if self.stream is None:
            frames = self.decoder.decode(latents)
        else:
            # the current stream is per thread: set it here; the decode ends in a
            # device→host copy that waits for this stream only
            with torch.cuda.stream(self.stream):
                frames = self.decoder.decode(latents)
        return frames, time.perf_counter() - start

    def submit(self, latents: torch.Tensor) -> Future:
        """Decode host latents ``[1, C, f, H, W]`` → a future of (``[F, H, W, 3]`` uint8 frames,
        seconds): in the worker when overlapping, else :meth:`inline`."""
        if self.pool is None:
            return self.inline(latents)
        self.last = self.pool.submit(self._decode, latents)
        return self.last

    def inline(self, latents: torch.Tensor) -> Future:
        """Decode in this thread (after the worker's decodes), recording the decoder's state."""
        if self.last is not None:
            wait([self.last])
        self.states.add(self.state(latents))
        done: Future = Future()
        done.set_result(self._decode(latents))
        return done

    def close(self) -> None:
        """Wait for a running decode (a stream closed early) and stop the worker."""
        if self.pool is not None:
            self.pool.shutdown(wait=True)


class StreamingGenerator(Generator):
    """A causal DiT (``model.causal`` in the generate config), its encoders and the streaming
    loop (:class:`ChunkStreamer`). Loads as :class:`generate.generator.Generator` does.

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
        if self.offload:
            # the stream decodes every chunk and may change shot any time: the VAE and the
            # text encoder stay on the GPU (a shot change must not wait for an 11 GB copy)
            self.encoders.vae.to(self.device)
            self.encoders.text_encoder.to(self.device)
            self.encoders.device = self.device
            self.offload = False
        _, c, _, h, w = self.latent_shape(1)
        self.streamer = ChunkStreamer(self.model, self.causal, config.sampling, self.encoders.vae,
                                      self.shot_text, (c, h, w), self.device, self.encoders.dtype,
                                      cuda_graphs=config.runtime.cuda_graphs,
                                      compile_decoder=config.model.compile)

    def shot_text(self, schedule: PromptSchedule, shot: int) -> ShotText:
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
        return ShotText(shot, both, spans)

    def stream(self, schedule: PromptSchedule, seed: int = 0, max_chunks: int | None = None,
               ) -> PyGenerator[StreamChunk, Shot | str | None, None]:
        """:meth:`ChunkStreamer.stream` (peak memory counted from here)."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        return self.streamer.stream(schedule, seed, max_chunks)

    @property
    def model_calls(self) -> int:
        """DiT forward calls so far (:attr:`ChunkStreamer.model_calls`)."""
        return self.streamer.model_calls

    def describe(self, schedule: PromptSchedule, chunks: list[StreamChunk], seed: int) -> dict:
        """The JSON record written beside a streamed mp4."""
        s, v = self.config.sampling, self.config.video
        frames = [len(ch.frames) for ch in chunks]
        starts = np.cumsum([0] + frames)[:-1].tolist()
        cuts = [starts[i] for i in range(1, len(chunks)) if chunks[i].shot != chunks[i - 1].shot]
        total = sum(ch.seconds["wall_s"] for ch in chunks)
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
