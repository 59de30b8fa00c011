"""Batches of several samples, and selective activation checkpointing, on the `tiny` DiT (CPU,
float32): a batch of 3 samples with different cuts and prompts gives each sample the loss it
gets alone, and the selective policy gives the gradients of no checkpointing."""

from __future__ import annotations

import pytest
import torch

from multishot.model.config import get_config
from multishot.model.dit import WanModel
from multishot.model.layout import ShotLayout
from multishot.model.prompt_spans import TextSpans
from multishot.trainer.flow_matching import FlowMatchConfig, FlowMatching
from multishot.model.lora import LoraConfig, apply_lora
from multishot.model.compile import apply_compile
from multishot.trainer.parallelize import apply_activation_checkpointing

TINY = get_config("tiny")
FRAMES = 17  # 5 latent frames
CUTS = ([], [9], [5, 13])  # 1, 2 and 3 shots
SPANS = (TextSpans((0, 3), ((3, 5),)), TextSpans((0, 2), ((2, 6), (6, 8))),
         TextSpans((0, 2), ((2, 4), (4, 6), (6, 9))))


def tiny_model(backend: str = "sdpa") -> WanModel:
    torch.manual_seed(0)
    model = WanModel(TINY, backend)
    torch.nn.init.normal_(model.head.head.weight, std=0.1)  # Wan zero-inits the head
    return model


def samples():
    """Clean latents [3, C, 5, 4, 4], contexts of different lengths, layouts, fixed noise and
    timestep indices."""
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(3, TINY.in_channels, 5, 4, 4, generator=g)
    contexts = [torch.randn(n, TINY.text_dim, generator=g) for n in (5, 8, 9)]
    eps = torch.randn(x0.shape, generator=g)
    index = torch.tensor([100, 500, 900])
    return x0, contexts, eps, index


@pytest.mark.parametrize("backend", ["sdpa", "reference"])
def test_a_batch_of_three_gives_each_sample_its_own_loss(backend):
    model = tiny_model(backend)
    flow = FlowMatching(FlowMatchConfig(weighting="diffsynth"))
    x0, contexts, eps, index = samples()

    def per_sample_loss(rows: list[int]) -> torch.Tensor:
        # the trainer's prepare: contexts zero-padded to the longest in the batch (the model
        # pads to text_len anyway), layouts stacked, one timestep per sample
        length = max(contexts[r].shape[0] for r in rows)
        context = torch.stack([torch.nn.functional.pad(contexts[r], (0, 0, 0, length - contexts[r].shape[0]))
                               for r in rows])
        layout = ShotLayout.stack([ShotLayout.from_cut_frames(FRAMES, CUTS[r], 4) for r in rows])
        sigma = flow.sigmas[index[rows]].view(-1, 1, 1, 1, 1)
        x_t = (1 - sigma) * x0[rows] + sigma * eps[rows]
        prediction = model(x_t, flow.timesteps[index[rows]], context, layout, [SPANS[r] for r in rows])
        mse = (prediction - (eps[rows] - x0[rows])).pow(2).flatten(1).mean(1)
        return mse * flow.weights[index[rows]]

    with torch.no_grad():
        batched = per_sample_loss([0, 1, 2])
        alone = torch.cat([per_sample_loss([r]) for r in range(3)])
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-7)
    assert batched.unique().numel() == 3  # three different samples, not one repeated


def gradients(policy: str | None, lora: bool = False, compile_: bool = False,
              dropout: float = 0.1) -> list[torch.Tensor]:
    """Trainable parameters' gradients of one forward/backward, wrapped in the trainer's order
    (``Trainer._build_model``): LoRA, then compile inside whole-block checkpointing or around
    selective checkpointing."""
    model = tiny_model()
    if lora:
        apply_lora(model, LoraConfig(rank=4, dropout=dropout))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if ".lora_B." in name:
                    p.normal_()
    if compile_ and policy != "selective":
        apply_compile(model, backend="aot_eager")
    if policy is not None:
        apply_activation_checkpointing(model, policy=policy, preserve_rng_state=lora)
    if compile_ and policy == "selective":
        apply_compile(model, backend="aot_eager")
    x0, contexts, _, _ = samples()
    layout = ShotLayout.stack([ShotLayout.from_cut_frames(FRAMES, c, 4) for c in CUTS])
    context = torch.stack([c[:5] for c in contexts])
    torch.manual_seed(3)  # LoRA dropout draws
    model(x0, torch.tensor([10.0, 500.0, 990.0]), context, layout, list(SPANS)).square().mean().backward()
    return [p.grad.clone() for p in model.parameters() if p.requires_grad]


@pytest.mark.parametrize("lora", [False, True], ids=["full-finetune", "lora-dropout"])
def test_selective_checkpointing_gives_the_gradients_of_none(lora):
    reference = gradients(None, lora)
    for policy in ("full", "selective"):
        for got, want in zip(gradients(policy, lora), reference, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


# whole-block recompute of compiled full fine-tunes is tests/test_model_compile.py's
@pytest.mark.parametrize(("policy", "lora"), [("selective", False), ("full", True)],
                         ids=["selective", "lora-full"])
def test_compiled_checkpointed_blocks_give_the_eager_gradients(policy, lora):
    torch._dynamo.reset()
    want = gradients(None, lora, dropout=0.0)  # compiled dropout draws its own random numbers
    got = gradients(policy, lora, compile_=True, dropout=0.0)
    assert len(got) == len(want) == (40 if lora else len(list(tiny_model().parameters())))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


def test_selective_policy_keeps_matmuls_and_recomputes_the_rest():
    from torch.utils.checkpoint import CheckpointPolicy

    from multishot.trainer.parallelize import _selective_policy

    aten = torch.ops.aten
    assert _selective_policy(None, aten.mm.default) == CheckpointPolicy.MUST_SAVE
    assert _selective_policy(None, aten._scaled_dot_product_flash_attention_for_cpu.default) \
        == CheckpointPolicy.MUST_SAVE
    for op in (aten.native_layer_norm.default, aten.mul.Tensor, aten.gelu.default, aten.rsqrt.default):
        assert _selective_policy(None, op) == CheckpointPolicy.PREFER_RECOMPUTE
    with pytest.raises(ValueError, match="policy"):
        apply_activation_checkpointing(tiny_model(), policy="some")
