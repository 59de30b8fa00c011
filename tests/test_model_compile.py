"""Regional compilation of the DiT blocks (``model.compile.apply_compile``) inside
per-block activation checkpointing: same loss and gradients as eager, one set of graphs for
all blocks, and no recompile when the shot layout changes (the attention is an eager island).

The ``aot_eager`` backend traces exactly what inductor would (dynamo graphs, AOTAutograd
forward / backward, the checkpoint recompute) without generating kernels, to keep CPU time low.
"""

from __future__ import annotations

import torch
from torch._dynamo.utils import counters

from multishot.model.config import WanConfig
from multishot.model.dit import WanModel
from multishot.model.layout import ShotLayout
from multishot.model.compile import apply_compile
from multishot.trainer.parallelize import apply_activation_checkpointing

CONFIG = WanConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=3, text_dim=16, text_len=8, freq_dim=16)
LAYOUTS = ([5], [9], [5, 13])  # cut frames of a 17-frame clip: 2, 2 and 3 shots


def run(compile_: bool) -> list[tuple[torch.Tensor, list[torch.Tensor], int]]:
    """Loss, gradients and dynamo's count of compiled graphs so far, per layout, of a freshly
    initialised model."""
    torch.manual_seed(0)
    model = WanModel(CONFIG, "sdpa")
    torch.nn.init.normal_(model.head.head.weight, std=0.02)  # Wan zero-inits it: no gradient
    if compile_:
        apply_compile(model, backend="aot_eager")
    apply_activation_checkpointing(model, skip_last=1)
    results = []
    for cuts in LAYOUTS:
        generator = torch.Generator().manual_seed(1)
        x = torch.randn(1, 16, 5, 8, 8, generator=generator)
        context = torch.randn(1, 8, 16, generator=generator)
        layout = ShotLayout.from_cut_frames(17, cuts, 16, torch.device("cpu"))
        loss = model(x, torch.tensor([500.0]), context, layout).square().mean()
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()],
                        counters["stats"]["unique_graphs"]))
        model.zero_grad(set_to_none=True)
    return results


def test_compiled_blocks_match_eager_without_recompiles():
    torch._dynamo.reset()
    counters.clear()
    eager, compiled = run(False), run(True)
    for (loss_e, grads_e, _), (loss_c, grads_c, _) in zip(eager, compiled):
        torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-7)
        for g_c, g_e in zip(grads_c, grads_e):
            torch.testing.assert_close(g_c, g_e, rtol=1e-4, atol=1e-6)
    # the graphs around the attention island are compiled on the first layout, for all three
    # blocks; new shot layouts (other shot counts and lengths) compile nothing more
    graphs = [n for _, _, n in compiled]
    assert 0 < graphs[0] == graphs[-1], graphs
    assert counters["graph_break"], "the attention kernel should run outside the graphs"
