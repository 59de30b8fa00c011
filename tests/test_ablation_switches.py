"""HoloCine's Table 2 ablations as switches of the real model (issue 30): what each one lets a
shot's tokens see, shown by perturbing one shot and watching another in a one-block WanModel."""

from __future__ import annotations

import pytest
import torch

from multishot.model.config import WanConfig
from multishot.model.dit import WanModel
from multishot.model.layout import ShotLayout
from multishot.model.prompt_spans import TextSpans
from multishot.trainer.config import ModelConfig
from multishot.generate.config import GenModelConfig

CONFIG = WanConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=1, text_dim=8, text_len=16, freq_dim=16)
#: 4 latent frames of 2×2 tokens; shot 0 = frames 0-1, shot 1 = frames 2-3 (its first frame: 2)
LAYOUT = ShotLayout.from_shot_starts([[0, 2]], 4, 4)
#: global caption tokens 0-2, shot 0's 3-5, shot 1's 6-8 (inclusive ends: shot 0 also admits 6)
SPANS = [TextSpans((0, 3), ((3, 6), (6, 9)))]


def _model(**switches) -> WanModel:
    torch.manual_seed(0)
    model = WanModel(CONFIG, "reference", **switches).eval()
    torch.nn.init.normal_(model.head.head.weight, std=0.5)  # Wan zero-initialises the head
    return model


def _run(model: WanModel, x: torch.Tensor, context: torch.Tensor, window: bool) -> torch.Tensor:
    with torch.no_grad():
        return model(x, torch.tensor([500.0]), context, LAYOUT, SPANS if window else None)


def _shot0_change(model: WanModel, frames: slice | None = None, text: slice | None = None,
                  window: bool = True) -> float:
    """Largest change of shot 0's output (latent frames 0-1) when shot 1's latent ``frames`` or
    the context tokens ``text`` are perturbed."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 16, 4, 4, 4, generator=g)
    context = torch.randn(1, 9, 8, generator=g)
    base = _run(model, x, context, window)
    x2, c2 = x.clone(), context.clone()
    if frames is not None:
        x2[:, :, frames] += 3 * torch.randn(x2[:, :, frames].shape, generator=g)
    if text is not None:
        c2[:, text] += 3 * torch.randn(c2[:, text].shape, generator=g)
    return float((_run(model, x2, c2, window) - base)[:, :, :2].abs().max())


def test_sparse_with_global_bank_sees_only_the_other_shots_first_frame():
    model = _model()
    assert _shot0_change(model, frames=slice(3, 4)) < 1e-5       # shot 1's later frame: hidden
    assert _shot0_change(model, frames=slice(2, 3)) > 1e-3       # its first frame: in the bank


def test_sparse_without_global_bank_isolates_each_shot():
    model = _model(global_bank=False)
    assert _shot0_change(model, frames=slice(2, 4)) < 1e-5       # nothing of shot 1 passes
    assert _shot0_change(model, frames=slice(1, 2)) > 1e-3       # its own frames do


def test_full_self_attention_sees_every_frame():
    model = _model(sparse_self_attention=False)
    assert _shot0_change(model, frames=slice(3, 4)) > 1e-3


def test_window_cross_attention_hides_other_shots_captions():
    model = _model(sparse_self_attention=False)
    text = slice(7, 9)  # shot 1's caption tokens past the inclusive-end token 6
    assert _shot0_change(model, text=text, window=True) < 1e-5
    assert _shot0_change(model, text=text, window=False) > 1e-3  # w/o window: the whole prompt
    mask = model.text_mask(LAYOUT, SPANS, CONFIG.text_len)[0]     # [L, text_len]
    assert mask[0, 3:7].all() and not mask[0, 7:9].any() and mask[-1, 6:9].all()


def test_the_global_bank_switch_is_a_key_of_train_and_generate_configs():
    assert ModelConfig(name="learn", global_bank=False).global_bank is False
    assert GenModelConfig(name="learn", random_weights=None, global_bank=False).global_bank is False
    with pytest.raises(ValueError, match="global_bnak"):
        ModelConfig(name="tiny", global_bnak=False)


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
def test_sparse_without_global_is_attention_within_each_shot(backend):
    """The kernel equals plain attention over each shot's tokens alone, and the model's output
    does not depend on the sparse backend (the switch bypasses it)."""
    from multishot.model.attention import shot_local_attention
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, LAYOUT.seq_len, 2, 8, generator=g) for _ in range(3))
    out = shot_local_attention(q, k, v, LAYOUT)
    for a, b in ((0, 8), (8, 16)):
        ref = torch.nn.functional.scaled_dot_product_attention(
            q[:, a:b].transpose(1, 2), k[:, a:b].transpose(1, 2), v[:, a:b].transpose(1, 2)).transpose(1, 2)
        torch.testing.assert_close(out[:, a:b], ref)
    torch.manual_seed(0)
    model = WanModel(CONFIG, backend, global_bank=False).eval()
    torch.nn.init.normal_(model.head.head.weight, std=0.5)
    reference = _model(global_bank=False)
    x, context = torch.randn(1, 16, 4, 4, 4, generator=g), torch.randn(1, 9, 8, generator=g)
    torch.testing.assert_close(_run(model, x, context, True), _run(reference, x, context, True))
