"""CUDA graphs of the denoising passes, replayed without launching their kernels one by one
from Python: the causal DiT's chunk forward of a stream (:class:`GraphedChunkForward`, below),
and the bidirectional sampler's CFG step (:class:`GraphedDenoiser`, at the end).

A 4-step student streams a chunk in five DiT calls (four denoising steps and the clean pass),
each a few thousand small kernels: at the 5B shape on one H100 a call took about as long to
launch from Python as to run (``benchmarks/results/distill/distill_h100.md``). Once the stream is in its
steady state every denoising call of every chunk has the same shapes: the chunk's latents, the
local window's frames, CAMR's routed frames, the Block-Relative RoPE tables (fixed per
shape), the cache's storage (:class:`model.causal.LayerKV` grows only until its ring wraps,
then keeps its size and address for the rest of the stream). What changes between them is
data: the latents, the timestep, the text, which ring slots are the window, the routing's
frame bound and clock (:class:`model.causal.ChunkPlan`). So one graph per plan shape is captured
(``torch.cuda.graph``) and replayed after copying the call's inputs and plan into the graph's
own tensors:

    call (x, t, text, cache, chunk)  →  plan = model.chunk_plan(...)      (eager, small)
      key = shapes of x, t, text, mask, plan; the cache storage's address
      seen once before → capture (one warm-up call on a side stream, then the capture)
      captured         → copy x, t, text, mask, plan into the graph's tensors; replay
      otherwise        → the eager call

A key is captured the second time it is seen, so chunk shapes that occur once (the first
chunks, before the local window is full) run eagerly. Only read-only passes are captured; the
clean pass, which appends to the cache (moving a frame from the ring into the pool), stays
eager. Graphs tie to the cache and the addresses of its storage (all
layers'): a new stream, or storage that grew, captures again; the cache is held meanwhile, so
a later cache cannot be given the freed addresses of its storage and pass for it (a graph
replayed over freed storage reads whatever took its place).

Replays run the captured kernels on the captured tensors, so their outputs equal the eager
call's (checked on GPU by ``benchmarks/distill.py --check-graphs``). CUDA only: on CPU every
call is the eager one.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import torch

from multishot.model.causal import CausalConfig, ChunkPlan, KVCache
from multishot.model.dit import BlockInputs

log = logging.getLogger(__name__)


@dataclass
class _Graph:
    """One captured call: its graph and the tensors it reads and writes."""

    graph: torch.cuda.CUDAGraph
    x: torch.Tensor
    timestep: torch.Tensor
    context: torch.Tensor
    text_mask: torch.Tensor | None
    plan: ChunkPlan
    out: torch.Tensor


class GraphedChunkForward:
    """``model.forward_chunk`` for the read-only (denoising) passes of a stream, through CUDA
    graphs where the shapes repeat (module docstring).

    Args:
        model: the causal :class:`model.dit.WanModel` (eval, on a CUDA device for graphs).
        causal: its causal config.
        enabled: False = always the eager call (as on CPU).

    ``captures`` and ``replays`` count what it did (the benchmark reports them).
    """

    def __init__(self, model: torch.nn.Module, causal: CausalConfig, enabled: bool = True):
        self.model, self.causal = model, causal
        self.enabled = enabled and next(model.parameters()).is_cuda
        self.graphs: dict[tuple, _Graph] = {}
        self.seen: set[tuple] = set()
        self.pool = None
        self.storage: tuple | None = None
        self.cache: KVCache | None = None
        self.captures = self.replays = 0

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                 cache: KVCache, chunk_index: int, text_mask: torch.Tensor | None) -> torch.Tensor:
        """``model.forward_chunk(x, timestep, context, cache, chunk_index, causal, text_mask)``
        (``write_cache=False``): velocity ``[B, C_out, F_chunk, H_lat, W_lat]``, a new tensor.

        Raises:
            ValueError: what ``forward_chunk`` raises (checked by the eager calls and the
                capture: a replay skips the checks, its shapes are those of a checked call).
        """
        def eager() -> torch.Tensor:
            return self.model.forward_chunk(x, timestep, context, cache, chunk_index,
                                            self.causal, text_mask)

        if not self.enabled or cache.layers[0].key_storage is None:
            return eager()
        plan = self.model.chunk_plan(x, cache, self.causal, False)
        storage = cache.addresses()
        if storage != self.storage:  # a new stream, or its cache grew: new addresses
            self.graphs.clear()
            self.seen.clear()
            # the cache is held while its graphs live: the storage they read stays allocated,
            # so no later cache can take its addresses and pass for it
            self.storage, self.cache = storage, cache
            # the old graphs' memory pool is freed with them: a new one for the new graphs
            self.pool = torch.cuda.graph_pool_handle()
        key = (tuple(x.shape), tuple(timestep.shape), tuple(context.shape),
               None if text_mask is None else tuple(text_mask.shape), plan.key)
        entry = self.graphs.get(key)
        if entry is None:
            if key not in self.seen:
                self.seen.add(key)
                return eager()
            entry = self.graphs[key] = self._capture(x, timestep, context, cache, chunk_index,
                                                     text_mask, plan)
        else:
            for mine, given in ((entry.x, x), (entry.timestep, timestep),
                                (entry.context, context), (entry.text_mask, text_mask)):
                if mine is not None:
                    mine.copy_(given)
            entry.plan.copy_(plan)
        entry.graph.replay()
        self.replays += 1
        return entry.out.clone()

    def _capture(self, x, timestep, context, cache, chunk_index, text_mask, plan) -> _Graph:
        """Capture ``forward_chunk`` on copies of the inputs (which later calls refill)."""
        inputs = [t.clone() if t is not None else None for t in (x, timestep, context, text_mask)]

        def call() -> torch.Tensor:
            return self.model.forward_chunk(*inputs[:3], cache, chunk_index, self.causal,
                                            inputs[3], plan=plan)

        side = torch.cuda.Stream(x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):  # lazy initialisation (cuBLAS, cuDNN plans) off the graph
            call()
        torch.cuda.current_stream(x.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: another thread's CUDA calls are not this capture's (overlap_decode
        # decodes inline while captures are due, ChunkStreamer.stream; a safeguard)
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
            out = call()
        self.captures += 1
        log.debug("captured a CUDA graph of the chunk forward for %s", plan.key)
        return _Graph(graph, *inputs[:3], inputs[3], plan, out)


@dataclass
class _StepGraph:
    """One captured call of the bidirectional blocks + head: its graph, inputs and output."""

    graph: torch.cuda.CUDAGraph
    inputs: BlockInputs
    out: torch.Tensor


class GraphedDenoiser(torch.nn.Module):
    """A bidirectional :class:`model.dit.WanModel` whose blocks and head are replayed from a
    CUDA graph once a call's shapes repeat: the sampler's CFG steps (``runtime.step_graphs``).

    Each call runs :meth:`~model.dit.WanModel.block_inputs` eagerly (embeddings, RoPE tables,
    the window mask: small, and the mask is built on the host), then the blocks and head
    (:meth:`~model.dit.WanModel.blocks_and_head`: thousands of kernels, the attention's eager
    island included) as a graph: the first call of a key runs eagerly, the second captures
    (after a warm-up call on a side stream, as :class:`GraphedChunkForward`), later ones copy
    their inputs into the graph's tensors and replay. The key is the inputs' shapes, the shot
    layout object (its index tensors are read by the graph, so it is held while its graphs
    live; a new layout, i.e. a new sample, drops the old graphs) and the parameters' address
    (an offloaded model moved back gets new graphs). With a step cache (its decision reads a
    value on the host), context parallelism, or on the CPU, every call is the eager one.

    Replays run the captured kernels on the captured tensors, so their outputs equal the eager
    compiled call's; ``benchmarks/generate.py --parts exact`` checks it on the GPU. A capture
    that fails (an operation that cannot be captured) is logged and the wrapper stays eager.

    ``captures`` / ``replays`` count what it did.
    """

    def __init__(self, model: torch.nn.Module, enabled: bool = True):
        super().__init__()
        self.model = model
        self.enabled = enabled
        self.graphs: dict[tuple, _StepGraph] = {}
        self.seen: set[tuple] = set()
        self.layout = None
        self.pool = None
        self.captures = self.replays = 0

    @property
    def step_cache(self):
        """The wrapped model's step cache (the sampler resets and steps it)."""
        return self.model.step_cache

    @torch.no_grad()
    def forward(self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                shot_layout=None, text_spans=None) -> torch.Tensor:
        """``model(x, timestep, context, shot_layout, text_spans)`` (:meth:`model.dit.WanModel.
        forward`): velocity ``[B, C_out, F_lat, H_lat, W_lat]``, a new tensor."""
        m = self.model
        if not (self.enabled and x.is_cuda) or m.step_cache is not None \
                or m.context_parallel is not None:
            return m(x, timestep, context, shot_layout, text_spans)
        inputs = m.block_inputs(x, timestep, context, shot_layout, text_spans)
        if inputs.layout is not self.layout:  # a new sample: its own graphs
            self.graphs.clear()
            self.seen.clear()
            self.layout = inputs.layout
            self.pool = torch.cuda.graph_pool_handle()
        key = (tuple(None if getattr(inputs, n) is None else tuple(getattr(inputs, n).shape)
                     for n in BlockInputs.TENSORS),
               inputs.grid, next(m.parameters()).data_ptr())
        entry = self.graphs.get(key)
        if entry is None:
            if key not in self.seen:
                self.seen.add(key)
                return m.blocks_and_head(inputs)
            try:
                entry, out = self._capture(inputs)
                self.graphs[key] = entry
                return out
            except RuntimeError as err:  # e.g. an operation not permitted while capturing
                log.warning("CUDA graph capture of the denoising step failed (%s); running "
                            "eagerly", err)
                self.enabled = False
                self.graphs.clear()
                torch.cuda.synchronize(x.device)
                return m.blocks_and_head(inputs)
        else:
            for name in BlockInputs.TENSORS:
                mine = getattr(entry.inputs, name)
                if mine is not None:
                    mine.copy_(getattr(inputs, name))
        entry.graph.replay()
        self.replays += 1
        return entry.out.clone()

    def _capture(self, inputs: BlockInputs) -> tuple[_StepGraph, torch.Tensor]:
        """Capture ``blocks_and_head`` on copies of ``inputs``' tensors (refilled later); also
        returns the warm-up call's output, this call's velocity."""
        mine = dataclasses.replace(inputs, **{
            n: getattr(inputs, n).clone() for n in BlockInputs.TENSORS
            if getattr(inputs, n) is not None})
        device = inputs.tokens.device
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # lazy initialisation (cuBLAS, cuDNN plans) off the graph
            velocity = self.model.blocks_and_head(mine)
        torch.cuda.current_stream(device).wait_stream(side)
        velocity.record_stream(torch.cuda.current_stream(device))
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
            out = self.model.blocks_and_head(mine)
        self.captures += 1
        log.debug("captured a CUDA graph of the denoising step for %s", mine.grid)
        return _StepGraph(graph, mine, out), velocity
