"""The bidirectional step's CUDA graphs (generate.graphs.GraphedDenoiser, runtime.step_graphs):
on the CPU every call is the eager one (replays are checked on the GPU by
``benchmarks/generate.py --parts exact``); the forward split it relies on
(``block_inputs`` + ``blocks_and_head``) is the forward."""

from __future__ import annotations

import torch

from multishot.generate.graphs import GraphedDenoiser
from multishot.model.config import get_config
from multishot.model.dit import WanModel
from multishot.model.layout import ShotLayout
from multishot.model.prompt_spans import TextSpans
from multishot.model.step_cache import apply_step_cache


def inputs():
    torch.manual_seed(0)
    model = WanModel(get_config("tiny"), "sdpa").eval()
    torch.nn.init.normal_(model.head.head.weight, std=0.02)
    x = torch.randn(2, 16, 3, 4, 4)
    layout = ShotLayout.from_cut_frames(9, [5], 4, torch.device("cpu"))
    layout = ShotLayout.stack([layout, layout])
    spans = [TextSpans((0, 3), ((3, 8), (8, 14))), None]
    return model, (x, torch.tensor([500.0, 500.0]), torch.randn(2, 16, 32), layout, spans)


def test_forward_is_block_inputs_then_blocks_and_head():
    model, args = inputs()
    with torch.no_grad():
        assert torch.equal(model(*args), model.blocks_and_head(model.block_inputs(*args)))


def test_on_cpu_the_graphed_denoiser_is_the_eager_call():
    model, args = inputs()
    graphed = GraphedDenoiser(model)
    with torch.no_grad():
        expected = model(*args)
        for _ in range(3):  # a repeated key would be captured on a GPU
            assert torch.equal(graphed(*args), expected)
    assert (graphed.captures, graphed.replays) == (0, 0) and not graphed.graphs
    assert graphed.step_cache is None
    apply_step_cache(model, 0.0)
    assert graphed.step_cache is model.step_cache  # the sampler finds the model's cache
