"""Shot layout and the sparse inter-shot self-attention backends (CPU, float32)."""

import math

import pytest
import torch

from multishot.model import attention
from multishot.model.attention import (dense_attention, flex_inplace_mask, pack_kv,
                                       sparse_self_attention)
from multishot.model.layout import ShotLayout, enforce_4t_plus_1, latent_shot_starts


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def layout():
    # Two samples of 7 latent frames × 6 tokens with different shots.
    return ShotLayout.stack([ShotLayout.from_cut_frames(25, [9, 17], 6),
                             ShotLayout.from_cut_frames(25, [13], 6)])


def test_latent_shot_starts_match_holocine():
    # HoloCine's README example: 241 frames, these cuts → latent cuts 10, 19, 29, 43, 52.
    assert latent_shot_starts(241, [37, 73, 113, 169, 205]) == [0, 10, 19, 29, 43, 52]
    # Cuts are forced to the nearest 4t+1 first (Python round: ties to even t).
    assert [enforce_4t_plus_1(f) for f in (36, 38, 39, 40, 43, 47)] == [37, 37, 41, 41, 41, 49]
    assert latent_shot_starts(81, [40]) == [0, 11]           # 40 → 41 → latent 11
    # Frame 0 is no cut; duplicates and cuts past the end are dropped; frame 2 → 1 → latent 1.
    assert latent_shot_starts(81, [0, 2, 37, 38, 200]) == [0, 1, 10]
    with pytest.raises(ValueError):
        latent_shot_starts(80, [37])


def test_layout_packs_own_shot_then_global_bank(layout):
    hw, seq = 6, 42
    # Sample 0: shots at latent frames [0, 3, 5) → 18, 12, 12 tokens; bank = 3 frames = 18.
    # Sample 1: shots [0, 4) → 24, 18 tokens; bank = 2 frames = 12.
    assert layout.shot_starts == ((0, 3, 5), (0, 4))
    assert layout.q_offsets == (0, 18, 30, 42, 66, 84)
    assert layout.kv_offsets == (0, 36, 66, 96, 132, 162)
    assert (layout.max_q, layout.max_kv) == (24, 36)
    assert layout.frame_shot.tolist() == [[0, 0, 0, 1, 1, 2, 2], [0, 0, 0, 0, 1, 1, 1]]
    bank0 = list(range(0, 6)) + list(range(18, 24)) + list(range(30, 36))
    idx = layout.kv_index.tolist()
    assert idx[36:66] == list(range(18, 30)) + bank0           # shot 1: own tokens, then bank
    assert idx[96:132] == [seq + t for t in range(0, 24)] + [seq + t for t in
                                                             list(range(6)) + list(range(24, 30))]
    # The own first frame of shot 1 appears twice in its KV (HoloCine's packing).
    assert sum(1 for t in idx[36:66] if t == 18) == 2
    assert layout.attention_pairs() == 18 * 36 + 12 * 30 * 2 + 24 * 36 + 18 * 30
    assert layout.cu_seqlens_k.dtype == torch.int32 and hw * 7 == layout.seq_len


def test_layout_rejects_bad_input():
    with pytest.raises(ValueError):
        ShotLayout.from_shot_starts([[1, 3]], 5, 4)
    with pytest.raises(ValueError):
        ShotLayout.from_shot_starts([[0, 5]], 5, 4)
    with pytest.raises(ValueError):
        ShotLayout.stack([ShotLayout.from_cut_frames(25, [], 6),
                          ShotLayout.from_cut_frames(29, [], 6)])


def holocine_loop(q, k, v, layout):
    """HoloCine's ``attention_per_batch_with_shots`` restated: per sample, per shot, attention
    from the shot's queries to ``cat([K_i, K_global])`` (first h·w tokens of every shot)."""
    out = torch.empty_like(q)
    hw = layout.tokens_per_frame
    for b, starts in enumerate(layout.shot_starts):
        cuts = [s * hw for s in starts] + [layout.seq_len]
        kg = torch.cat([k[b, a:a + hw] for a in cuts[:-1]])
        vg = torch.cat([v[b, a:a + hw] for a in cuts[:-1]])
        for a, e in zip(cuts, cuts[1:]):
            kk, vv = torch.cat([k[b, a:e], kg]), torch.cat([v[b, a:e], vg])
            w = torch.einsum("qhd,khd->hqk", q[b, a:e], kk) / math.sqrt(q.shape[-1])
            out[b, a:e] = torch.einsum("hqk,khd->qhd", w.softmax(-1), vv)
    return out


def test_reference_is_holocines_packed_attention(layout):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, layout.seq_len, 3, 8, dtype=torch.float64) for _ in range(3))
    ref = sparse_self_attention(q.float(), k.float(), v.float(), layout, "reference")
    assert rel(ref.double(), holocine_loop(q, k, v, layout)) < 1e-6
    # Counting the own first frame once would be a different function.
    once = ShotLayout.from_shot_starts([[0, 3, 5]], 7, 6)
    same = (once.token_shot()[0][:, None] == once.token_shot()[0][None, :])
    first = torch.zeros(42, dtype=torch.bool)
    first[[*range(0, 6), *range(18, 24), *range(30, 36)]] = True
    dedup = dense_attention(q[:1].float(), k[:1].float(), v[:1].float(),
                            (same | first[None, :])[None])
    assert rel(dedup, ref[:1]) > 1e-3


#: layouts beyond the fixture's, as ``(shot starts per sample, latent frames, tokens per frame)``;
#: 40 tokens a frame puts shot and bank edges inside FlexAttention's 128-token blocks
LAYOUTS = {
    "one shot": ([[0]], 7, 6),
    "unequal shots, blocks": ([[0, 1, 4, 10]], 13, 40),
    "batch of 2, 3 vs 1 shots, blocks": ([[0, 3, 9], [0]], 13, 40),
    "batch of 2, 2 vs 4 shots, blocks": ([[0, 7], [0, 2, 3, 11]], 13, 40),
}


def any_layout(name, fixture):
    return fixture if name == "fixture" else ShotLayout.from_shot_starts(*LAYOUTS[name])


@pytest.mark.parametrize("name", ["fixture", *LAYOUTS])
@pytest.mark.parametrize("backend", ["sdpa", "flex", "flex_inplace"])
def test_backend_forward_equals_reference(layout, backend, name):
    layout = any_layout(name, layout)
    torch.manual_seed(1)
    q, k, v = (torch.randn(layout.batch_size, layout.seq_len, 2, 16) for _ in range(3))
    with torch.no_grad():
        ref = sparse_self_attention(q, k, v, layout, "reference")
        out = sparse_self_attention(q, k, v, layout, backend)
    assert out.shape == q.shape
    assert rel(out, ref) < 1e-5


@pytest.mark.parametrize("backend", ["flex", "flex_inplace"])
def test_flex_backends_split_past_int32_indexing(monkeypatch, backend):
    """Past the int32 element limit the flex backends split the call (samples, then head groups
    on copies): with the limit lowered to one sample, and below it, they still equal the
    reference (the in-place masks of a batch slice index its own samples)."""
    layout = ShotLayout.from_shot_starts(*LAYOUTS["batch of 2, 2 vs 4 shots, blocks"])
    torch.manual_seed(3)
    q, k, v = (torch.randn(2, layout.seq_len, 4, 8) for _ in range(3))
    with torch.no_grad():
        ref = sparse_self_attention(q, k, v, layout, "reference")
        for limit in (layout.seq_len * 4 * 8, layout.seq_len * 8):
            monkeypatch.setattr(attention, "_FLEX_MAX_ELEMENTS", limit)
            assert rel(sparse_self_attention(q, k, v, layout, backend), ref) < 1e-5, limit


@pytest.mark.parametrize("name", ["fixture", *LAYOUTS])
def test_flex_inplace_block_mask_is_the_pattern_in_blocks(layout, name):
    """The in-place BlockMask keeps exactly the 128-token blocks holding an admitted pair (own
    shot or bank), so the kernel skips the rest; ``score_mod`` adds ln 2 to the own first
    frame only."""
    layout = any_layout(name, layout)
    block_mask, score_mod = flex_inplace_mask(layout)
    assert flex_inplace_mask(layout)[0] is block_mask              # cached on the layout
    shot, in_bank = layout.token_shot(), layout.token_in_bank()
    admitted = (shot[:, :, None] == shot[:, None, :]) | in_bank[:, None, :]     # [B, L, L]
    n = -(-layout.seq_len // 128)
    padded = torch.zeros(layout.batch_size, n * 128, n * 128, dtype=torch.bool)
    padded[:, :layout.seq_len, :layout.seq_len] = admitted
    blocks = padded.view(layout.batch_size, n, 128, n, 128).any(4).any(2)
    assert torch.equal(block_mask.to_dense()[:, 0].bool(), blocks)
    if layout.seq_len > 256 and len(layout.shot_starts[0]) > 1:
        assert not blocks.all()                                    # some blocks are skipped
    b, q, kv = (torch.arange(n) for n in admitted.shape)
    logits = torch.zeros(admitted.shape)
    biased = score_mod(logits, b[:, None, None], 0, q[None, :, None], kv[None, None, :])
    assert torch.equal(biased != 0, (shot[:, :, None] == shot[:, None, :]) & in_bank[:, None, :])
    assert torch.allclose(biased.max(), torch.tensor(math.log(2.0)))


def test_sdpa_backward_equals_reference(layout):
    torch.manual_seed(2)
    q, k, v = (torch.randn(2, layout.seq_len, 2, 16, requires_grad=True) for _ in range(3))
    grad = torch.randn(2, layout.seq_len, 2, 16)
    ref = torch.autograd.grad(sparse_self_attention(q, k, v, layout, "reference"), (q, k, v), grad)
    out = torch.autograd.grad(sparse_self_attention(q, k, v, layout, "sdpa"), (q, k, v), grad)
    for a, b in zip(out, ref):
        assert rel(a, b) < 1e-5


def test_pack_kv_backward_is_the_gather_adjoint(layout):
    x = torch.randn(2 * layout.seq_len, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: pack_kv(t, layout), (x,))


def test_cpu_only_limits_raise_clearly(layout):
    q, k, v = (torch.randn(2, layout.seq_len, 2, 16, requires_grad=True) for _ in range(3))
    with pytest.raises(RuntimeError, match="varlen.*CUDA"):
        sparse_self_attention(q, k, v, layout, "varlen")
    for backend in ("flex", "flex_inplace"):
        with pytest.raises(RuntimeError, match=f"'{backend}'.*backward on CPU"):
            sparse_self_attention(q, k, v, layout, backend)
    with pytest.raises(ValueError, match="unknown attention backend"):
        sparse_self_attention(q, k, v, layout, "dense")
    with pytest.raises(ValueError, match="layout"):
        sparse_self_attention(q[:1], k[:1], v[:1], layout, "sdpa")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_additive_text_mask_equals_the_boolean_one(dtype):
    """forward_chunk builds SDPA's additive form of the window mask once for all blocks: the
    cross-attention gives the boolean mask's output bit for bit."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, n, 4, 16, generator=g).to(dtype) for n in (50, 20, 20))
    allowed = torch.rand(2, 50, 20, generator=g) > 0.5
    allowed[..., 0] = True
    additive = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, float("-inf"))
    out = dense_attention(q, k, v, additive)
    assert torch.equal(out, dense_attention(q, k, v, allowed))
    assert not torch.equal(out, dense_attention(q, k, v))
