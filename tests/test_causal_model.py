"""CausalCine's causal chunk-wise mode (``model.causal``, ``WanModel.forward_teacher_forcing`` /
``forward_chunk``) on CPU in float32: the teacher-forcing mask against a dense reference built
from the four rules, CAMR against a brute-force top-k, the attention backends against the dense
masked reference, training equal to inference across a shot change, and per-frame timesteps
against diffusers' Wan2.2 per-token path. Tiny random models, loaded from disk."""

import math

import pytest
import torch

from multishot.config import load_config
from multishot.errors import UsageError
from multishot.model.causal import (CausalConfig, ChunkLayout, ChunkPlan, KVCache, LayerKV,
                                    TeacherForcingAttention, frame_descriptors, route_frames,
                                    teacher_forcing_attention_pairs, teacher_forcing_frame_mask)
from multishot.model.checkpoint import load_into, load_state_dict_file
from multishot.model.config import get_config
from multishot.model.dit import WanModel
from multishot.model.layout import ShotLayout
from multishot.model.prompt_spans import TextSpans
from multishot.trainer.config import TrainConfig

TINY = get_config("tiny")
F_LAT, H_LAT, W_LAT = 13, 4, 4          # chunks of 3: frames [0] [1-3] [4-6] [7-9] [10-12]
HW = (H_LAT // 2) * (W_LAT // 2)
#: CAMR off; CAMR on the noisy→clean quadrant (the paper's); CAMR on both quadrants
CONFIGS = {
    "full": CausalConfig(chunk_latent_frames=3, routed_frames=0),
    "camr": CausalConfig(chunk_latent_frames=3, local_window_chunks=1, routed_frames=2),
    "camr_clean": CausalConfig(chunk_latent_frames=3, local_window_chunks=1, routed_frames=2,
                               route_clean=True),
    # a horizon shorter than the sample: clean chunks attend the last 8 − 3 frames, and the
    # streaming cache's ring (7 frames) wraps into its pool
    "camr_horizon": CausalConfig(chunk_latent_frames=3, local_window_chunks=1, routed_frames=2,
                                 horizon_frames=8, memory_frames=6),
    "full_horizon": CausalConfig(chunk_latent_frames=3, routed_frames=0, horizon_frames=7),
}


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random Wan transformer saved by diffusers (non-zero output head)."""
    from multishot.torchvision_cpu import import_torchvision

    import_torchvision()
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    dit = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=TINY.num_heads,
        attention_head_dim=TINY.head_dim, in_channels=TINY.in_channels,
        out_channels=TINY.out_channels, text_dim=TINY.text_dim, freq_dim=TINY.freq_dim,
        ffn_dim=TINY.ffn_dim, num_layers=TINY.num_layers, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=TINY.eps)
    with torch.no_grad():  # larger modulation tables than diffusers' init: timesteps matter more
        dit.scale_shift_table.normal_(std=0.5)
        for block in dit.blocks:
            block.scale_shift_table.normal_(std=0.5)
    path = tmp_path_factory.mktemp("causal") / "dit"
    dit.save_pretrained(path)
    return path


def load_model(path, backend="reference") -> WanModel:
    model = WanModel(TINY, backend)
    report = load_into(model, load_state_dict_file(path))
    assert report.ok, report
    return model.eval()


# ---- chunk layout ----------------------------------------------------------------------------

def test_chunk_layout_first_chunk_takes_the_remainder():
    five_b = ChunkLayout.build(61, 3)        # Wan2.2-5B, 241 frames
    assert five_b.num_chunks == 21 and five_b.starts[:3] == (0, 1, 4) and five_b.ends[-1] == 61
    assert all(e - s == 3 for s, e in zip(five_b.starts[1:], five_b.ends[1:]))
    self_forcing = ChunkLayout.build(21, 3)  # 81 frames: Self-Forcing / CausVid's 7 × 3
    assert self_forcing.starts == (0, 3, 6, 9, 12, 15, 18)
    assert ChunkLayout.build(5, 3).starts == (0, 2) and ChunkLayout.build(1, 3).starts == (0,)
    assert ChunkLayout.build(F_LAT, 3).chunk_of_frame() == [0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
    with pytest.raises(ValueError, match="cannot chunk"):
        ChunkLayout.build(0, 3)


# ---- the mask: four rules and CAMR, brute force ------------------------------------------------

def brute_force_top_k(query_desc, key_desc, candidates, k):
    """Scores in float64 by explicit sums; the k best, earlier frame first on ties, ascending."""
    scores = {f: sum(float(query_desc[h, d]) * float(key_desc[f, h, d])
                     for h in range(query_desc.shape[0]) for d in range(query_desc.shape[1]))
              for f in candidates}
    return sorted(sorted(candidates, key=lambda f: (-scores[f], f))[:k])


def four_rules_mask(chunks, config, query_desc=None, key_desc=None, batch=1):
    """Token-level ``[B, 2L, 2L]`` mask written from CausalCine's four rules, token by token,
    a chunk of n frames attending at most ``horizon_frames`` frames (the last ones unrouted)."""
    f, n = chunks.num_latent_frames, chunks.num_chunks
    chunk_of = chunks.chunk_of_frame()
    seq = 2 * f * HW
    mask = torch.zeros(batch, seq, seq, dtype=torch.bool)
    for b in range(batch):
        allowed = {}  # (copy, chunk) → set of admitted clean history frames
        for copy in ("clean", "noisy"):
            for i in range(n):
                size = chunks.ends[i] - chunks.starts[i]
                history = [fr for fr in range(chunks.starts[i])
                           if fr >= chunks.starts[i] - (config.horizon_frames - size)]
                routed = config.routed_frames > 0 and (copy == "noisy" or config.route_clean)
                window = chunks.starts[max(0, i - config.local_window_chunks)]
                if routed and window > 0:
                    q = query_desc[b, i + (n if copy == "noisy" else 0)]
                    history = [fr for fr in history if fr >= window] + \
                        brute_force_top_k(q, key_desc[b], list(range(window)),
                                          config.routed_frames)
                allowed[copy, i] = set(history)
        for qt in range(seq):
            q_noisy, q_frame = qt >= f * HW, (qt % (f * HW)) // HW
            qc = chunk_of[q_frame]
            for kt in range(seq):
                k_noisy, k_frame = kt >= f * HW, (kt % (f * HW)) // HW
                kc = chunk_of[k_frame]
                if not q_noisy and not k_noisy:    # clean → clean: itself and earlier chunks
                    ok = kc == qc or k_frame in allowed["clean", qc]
                elif q_noisy and not k_noisy:      # noisy → clean: strictly earlier chunks
                    ok = k_frame in allowed["noisy", qc]
                elif q_noisy and k_noisy:          # noisy → noisy: only itself
                    ok = kc == qc
                else:                              # clean → noisy: nothing
                    ok = False
                mask[b, qt, kt] = ok
    return mask


def descriptors(batch=2, heads=2, dim=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = ChunkLayout.build(F_LAT, 3).num_chunks
    return (torch.randn(batch, 2 * n, heads, dim, generator=g),
            torch.randn(batch, F_LAT, heads, dim, generator=g))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_teacher_forcing_mask_equals_the_four_rules(name):
    config, chunks = CONFIGS[name], ChunkLayout.build(F_LAT, 3)
    query_desc, key_desc = descriptors()
    ours = teacher_forcing_frame_mask(chunks, config, 2, query_desc, key_desc)
    tokens = ours.repeat_interleave(HW, 1).repeat_interleave(HW, 2)
    assert torch.equal(tokens, four_rules_mask(chunks, config, query_desc, key_desc, batch=2))
    assert teacher_forcing_attention_pairs(F_LAT, HW, config) * 2 == tokens.sum()
    full = teacher_forcing_frame_mask(chunks, CausalConfig(
        chunk_latent_frames=3, routed_frames=0, horizon_frames=config.horizon_frames), 2)
    assert ours.sum(-1).max() <= config.horizon_frames  # no query attends beyond the horizon
    if config.routing:
        if config.horizon_frames >= F_LAT:  # CAMR drops history frames, never adds any
            assert (ours & ~full).sum() == 0
        assert (full & ~ours).sum() > 0
        noisy_last = slice(F_LAT + 10, 2 * F_LAT)  # noisy chunk 4: window [7, 10), 2 of [0, 7)
        assert (ours[:, noisy_last, :F_LAT].sum(-1) == 3 + 2).all()
        assert not torch.equal(ours[0], ours[1])  # routing differs between samples
        # the clean → clean quadrant is routed only with route_clean
        same_clean = torch.equal(ours[:, :F_LAT, :F_LAT], full[:, :F_LAT, :F_LAT])
        assert same_clean == (not config.route_clean)


def test_camr_selection_equals_brute_force_top_k_with_ties():
    g = torch.Generator().manual_seed(3)
    # small integers: scores are exact, so ties are real ties
    query_desc = torch.randint(-2, 3, (3, 2, 4), generator=g).float()
    key_desc = torch.randint(-2, 3, (3, 9, 2, 4), generator=g).float()
    key_desc[:, 6] = key_desc[:, 1]  # a tie between frames 1 and 6 in every sample
    for k in (1, 2, 4, 9, 12):
        ours = route_frames(query_desc, key_desc, k)
        for b in range(3):
            assert ours[b].tolist() == brute_force_top_k(query_desc[b], key_desc[b],
                                                         list(range(9)), k)


def rope64(x, t, hh, ww):
    """Wan's 3D RoPE written out in float64 complex numbers (``rope_params`` per band): ``x``
    ``[..., D]`` of one token at positions ``(t, hh, ww)``."""
    angles = []
    for pos, band in zip((t, hh, ww), TINY.rope_bands):
        inv = 1.0 / 10000 ** (torch.arange(0, band, 2, dtype=torch.float64) / band)
        angles.append(pos * inv)
    rotation = torch.polar(torch.ones(x.shape[-1] // 2, dtype=torch.float64), torch.cat(angles))
    xc = torch.view_as_complex(x.double().reshape(*x.shape[:-1], -1, 2).contiguous())
    return torch.view_as_real(xc * rotation).flatten(-2)


def block_relative_reference(q, k, v, mask):
    """Attention as the four rules and Block-Relative RoPE define it, query frame by query
    frame in float64: the admitted key frames in temporal order (clean frames, then the query's
    own noisy frames) take positions 0, 1, …; the query its own frame's; tokens keep (h, w)."""
    b, seq, heads, d = q.shape
    frames = seq // HW
    out = torch.zeros(b, seq, heads, d, dtype=torch.float64)
    for bi in range(b):
        for qf in range(frames):
            admitted = sorted({kt // HW for kt in mask[bi, qf * HW].nonzero().flatten().tolist()})
            rank = {fr: r for r, fr in enumerate(admitted)}
            keys, values = [], []
            for fr in admitted:
                for tok in range(HW):
                    keys.append(rope64(k[bi, fr * HW + tok], rank[fr], *divmod(tok, 2)))
                    values.append(v[bi, fr * HW + tok].double())
            keys, values = torch.stack(keys), torch.stack(values)         # [Lk, H, D]
            for tok in range(HW):
                qt = rope64(q[bi, qf * HW + tok], rank[qf], *divmod(tok, 2))  # [H, D]
                scores = torch.einsum("hd,khd->hk", qt, keys) / math.sqrt(d)
                out[bi, qf * HW + tok] = torch.einsum("hk,khd->hd", scores.softmax(-1), values)
    return out


@pytest.mark.parametrize("name", list(CONFIGS))
def test_routed_attention_equals_block_relative_reference(name):
    """Teacher forcing's attention (unrotated q, k in) against the four rules' mask, CAMR on
    unrotated descriptors (brute-force top-k) and Block-Relative RoPE written out per query."""
    from multishot.model.rope import rope_cos_sin

    config, chunks = CONFIGS[name], ChunkLayout.build(F_LAT, 3)
    torch.manual_seed(4)
    b, heads, d = 2, TINY.num_heads, TINY.head_dim
    q, k, v = (torch.randn(b, 2 * F_LAT * HW, heads, d) for _ in range(3))
    # CAMR's descriptors from the same (unrotated) q, k, computed here in float64
    k_desc = k[:, :F_LAT * HW].double().view(b, F_LAT, HW, heads, d).mean(2)
    q_frames = q.double().view(b, 2 * F_LAT, HW, heads, d)
    q_desc = torch.stack([q_frames[:, off + s:off + e].mean((1, 2)) for off in (0, F_LAT)
                          for s, e in zip(chunks.starts, chunks.ends)], 1)
    mask = four_rules_mask(chunks, config, q_desc, k_desc, batch=b)
    expected = block_relative_reference(q, k, v, mask)

    def rope(frames):
        return rope_cos_sin(TINY, (frames, H_LAT // 2, W_LAT // 2), torch.device("cpu"))

    for backend in ("reference", "sdpa", "flex"):
        ours = TeacherForcingAttention(chunks, config, HW, backend, rope)(q, k, v)
        assert rel(ours.double(), expected) < 1e-6, backend
    # the positions matter: the same pattern at absolute positions differs
    absolute = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()).masked_fill(
        ~mask[:, None], float("-inf")).softmax(-1)
    assert rel(torch.einsum("bhqk,bkhd->bqhd", absolute, v.double()), expected) > 1e-2


# ---- the model: training equals inference ------------------------------------------------------

def two_shot_text():
    """Two shots cut at latent frame 5 (inside chunk [4, 7)), HoloCine window spans."""
    layout = ShotLayout.from_shot_starts([[0, 5], [0, 5]], F_LAT, HW)
    spans = [TextSpans((0, 3), ((3, 7), (7, 11)))] * 2
    return layout, spans


def test_camr_routing_among_the_first_frames_of_a_storage_equals_routing_the_slice():
    """The streaming cache routes over its whole storage with frames past the candidates
    masked: the same frames as routing over the candidates alone, ties included, whatever the
    rest of the storage holds (larger scores, NaN)."""
    g = torch.Generator().manual_seed(4)
    query_desc = torch.randint(-2, 3, (2, 2, 4), generator=g).float()
    storage = torch.randint(-2, 3, (2, 12, 2, 4), generator=g).float()
    storage[:, 5] = storage[:, 2]                      # a tie inside the candidates
    storage[:, 9:] = 100.0                             # would win if not masked
    storage[:, 8] = float("nan")
    for n in (3, 6, 8):
        for k in (1, 2, n):
            masked = route_frames(query_desc, storage, k, torch.tensor(n))
            assert torch.equal(masked, route_frames(query_desc, storage[:, :n], k)), (n, k)


def test_kv_cache_keeps_a_ring_and_a_least_recently_routed_pool():
    """LayerKV: storage grows by doubling up to the ring (4 frames), then once to ring + pool
    (4 + 2) and never again; a frame leaving the ring moves to the pool, evicting the frame
    routed least recently (the oldest among equals); every slot holds the keys appended for
    its frame, unrotated."""
    g = torch.Generator().manual_seed(5)
    kv, keys, capacities = LayerKV(), {}, []
    ring, pool = 4, 2

    def append(frames, stamp):
        k = torch.randn(2, frames * HW, 3, 4, generator=g)
        for j in range(frames):
            keys[kv.frames + j] = k[:, j * HW:(j + 1) * HW]
        kv.append(k, k * 2, HW, torch.tensor(stamp), ring, pool)
        capacities.append(kv.capacity)

    def cached(row=0):
        return sorted(f for f in kv.frame_storage[row].tolist() if f >= 0)

    append(1, 0)
    append(2, 1)
    assert capacities == [1, 3] and cached() == [0, 1, 2]
    append(2, 2)            # frames 3, 4: frame 0 leaves the ring for the pool
    assert capacities[-1] == ring + pool and cached() == [0, 1, 2, 3, 4]
    # chunk 3 routes frame 0 for row 0 only (row 1 routes frame 1): 0 was used at 3
    query = kv.descriptor_storage[:, kv.frame_storage[0].tolist().index(0)].clone()
    query[1] = kv.descriptor_storage[1, kv.frame_storage[1].tolist().index(1)]
    picked = kv.route(query * 100, torch.tensor(3), 1, torch.tensor(3))
    assert kv.frame_storage.gather(1, picked).flatten().tolist() == [0, 1]
    append(2, 4)            # frames 5, 6: frames 1, 2 leave the ring; the pool holds 2
    assert cached(0) == [0, 2, 3, 4, 5, 6]   # row 0: frame 1 (used at 1) evicted, 0 kept
    assert cached(1) == [1, 2, 3, 4, 5, 6]   # row 1: frame 0 (used at 0) evicted
    for _ in range(20):     # a long stream: the storage never grows or moves again
        append(2, 5)
    assert set(capacities[2:]) == {ring + pool} and cached(0)[-4:] == list(range(43, 47))
    for row in range(2):
        for slot, frame in enumerate(kv.frame_storage[row].tolist()):
            assert torch.equal(kv.key_storage[row, slot], keys[frame][row].view(HW, 3, 4))
            assert torch.equal(kv.value_storage[row, slot], 2 * keys[frame][row].view(HW, 3, 4))
    with pytest.raises(ValueError, match="ring 4 and pool 2"):
        kv.reserve(60, torch.zeros(2, 1, HW, 3, 4), 5, 2)


def test_a_plan_refilled_from_the_next_chunk_gives_that_chunks_output(checkpoint):
    """What a CUDA graph of a denoising pass relies on (generate.graphs): the plan of chunk 3,
    its tensors refilled with chunk 4's (same shapes with CAMR), computes chunk 4's pass; a
    plan of other shapes is refused."""
    model = load_model(checkpoint, "sdpa")
    clean, noisy, context = latents(seed=6)
    config, timestep = CONFIGS["camr"], torch.tensor([400.0, 700.0])
    chunks = ChunkLayout.build(F_LAT, 3)
    cache = KVCache.empty(len(model.blocks), reserve_frames=F_LAT)
    plans = {}
    with torch.no_grad():
        for i, (s, e) in enumerate(zip(chunks.starts, chunks.ends)):
            plans[i] = model.chunk_plan(noisy[:, :, s:e], cache, config, False)
            if i == 4:
                break
            model.forward_chunk(clean[:, :, s:e], torch.zeros(2), context, cache, i, config,
                                write_cache=True)
        assert plans[3].key == plans[4].key and not torch.equal(plans[3].history,
                                                                plans[4].history)
        # Block-Relative RoPE: the same positions for every chunk of a shape
        assert torch.equal(plans[3].cos, plans[4].cos)
        static = ChunkPlan(*(t.clone() for t in (plans[3].cos, plans[3].sin, plans[3].history,
                                                  plans[3].window_start, plans[3].stamp)),
                           plans[3].routed, False, config)
        static.copy_(plans[4])
        x = noisy[:, :, 10:13]
        expected = model.forward_chunk(x, timestep, context, cache, 4, config)
        assert torch.equal(model.forward_chunk(x, timestep, context, cache, 4, config,
                                               plan=static), expected)
        with pytest.raises(ValueError, match="does not fit"):
            static.copy_(plans[1])
        with pytest.raises(ValueError, match="does not fit"):
            model.forward_chunk(x, timestep, context, cache, 4, config, write_cache=True,
                                plan=static)


def latents(seed=1, batch=2):
    g = torch.Generator().manual_seed(seed)
    shape = (batch, TINY.in_channels, F_LAT, H_LAT, W_LAT)
    return (torch.randn(shape, generator=g), torch.randn(shape, generator=g),
            torch.randn(batch, 12, TINY.text_dim, generator=g))


def rollout(model, clean, noisy, timestep, context, config, text_mask):
    """Streaming: per chunk the noisy pass, then the clean pass that writes the cache."""
    chunks = ChunkLayout.build(clean.shape[2], config.chunk_latent_frames)
    cache = KVCache.empty(len(model.blocks))
    outs = []
    for i, (s, e) in enumerate(zip(chunks.starts, chunks.ends)):
        mask = None if text_mask is None else text_mask[:, s:e]
        outs.append(model.forward_chunk(noisy[:, :, s:e], timestep, context, cache, i, config,
                                        mask))
        model.forward_chunk(clean[:, :, s:e], torch.zeros_like(timestep), context, cache, i,
                            config, mask, write_cache=True)
    assert cache.num_frames == clean.shape[2] and cache.num_chunks == chunks.num_chunks
    return outs, chunks


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_training_equals_inference_across_a_shot_change(checkpoint, backend, name):
    config = CONFIGS[name]
    model = load_model(checkpoint, backend)
    clean, noisy, context = latents()
    timestep = torch.tensor([700.0, 250.0])
    layout, spans = two_shot_text()
    text_mask = model.frame_text_mask(layout, spans)
    assert not torch.equal(text_mask[:, 4], text_mask[:, 5])  # per-shot prompts differ
    frames_seen = []
    hook = model.patch_embedding.register_forward_hook(
        lambda mod, args, out: frames_seen.append(args[0].shape[2]))
    with torch.no_grad():
        taught = model.forward_teacher_forcing(clean, noisy, timestep, context, config, text_mask)
        frames_seen.clear()
        streamed, chunks = rollout(model, clean, noisy, timestep, context, config, text_mask)
    hook.remove()
    # never recomputes earlier chunks: each pass embeds only its chunk's frames
    assert frames_seen == [e - s for s, e in zip(chunks.starts, chunks.ends) for _ in range(2)]
    for i, (s, e) in enumerate(zip(chunks.starts, chunks.ends)):
        err = rel(streamed[i], taught[:, :, s:e])
        assert err < 1e-5, f"chunk {i}: relative error {err:.2e}"
    assert taught.abs().mean() > 0.1
    with torch.no_grad():  # the per-shot text and (for CAMR) the routing change the outputs
        unmasked = model.forward_teacher_forcing(clean, noisy, timestep, context, config)
        full = model.forward_teacher_forcing(clean, noisy, timestep, context, CONFIGS["full"],
                                             text_mask)
    assert rel(unmasked, taught) > 1e-3
    if config.routing:
        assert rel(full[:, :, 10:], taught[:, :, 10:]) > 1e-3


def test_teacher_forcing_fast_backends_equal_reference_with_gradients(checkpoint):
    """sdpa (gathered keys) against the dense reference, forward and backward, with CAMR;
    flex forward (PyTorch has no FlexAttention backward on CPU)."""
    clean, noisy, context = latents(seed=2)
    timestep = torch.tensor([500.0, 900.0])
    layout, spans = two_shot_text()
    grads, outs = {}, {}
    for backend in ("reference", "sdpa"):
        model = load_model(checkpoint, backend)
        text_mask = model.frame_text_mask(layout, spans)
        out = model.forward_teacher_forcing(clean, noisy, timestep, context, CONFIGS["camr"],
                                            text_mask)
        out.square().mean().backward()
        outs[backend] = out.detach()
        grads[backend] = {n: p.grad for n, p in model.named_parameters()}
    assert rel(outs["sdpa"], outs["reference"]) < 1e-5
    for name, g in grads["reference"].items():
        assert rel(grads["sdpa"][name], g) < 1e-4, name
    model = load_model(checkpoint, "flex")
    with torch.no_grad():
        flex = model.forward_teacher_forcing(clean, noisy, timestep, context, CONFIGS["camr"],
                                             model.frame_text_mask(layout, spans))
    assert rel(flex, outs["reference"]) < 1e-5


def test_activation_checkpointing_keeps_gradients_and_the_cache(checkpoint):
    """Under the trainer's activation checkpointing (a block's forward runs again in backward)
    teacher forcing gives the same gradients, and a cache-writing chunk pass with gradients
    (self-forcing style rollouts) appends each chunk once and the same gradients."""
    from multishot.trainer.parallelize import apply_activation_checkpointing

    clean, noisy, context = latents(seed=3)
    timestep, config = torch.tensor([500.0, 100.0]), CONFIGS["camr_clean"]
    results = []
    for checkpointed in (False, True):
        model = load_model(checkpoint, "sdpa")
        if checkpointed:
            apply_activation_checkpointing(model)
        loss = model.forward_teacher_forcing(clean, noisy, timestep, context, config).square().mean()
        cache = KVCache.empty(2)
        for i, (s, e) in enumerate(zip((0, 1, 4), (1, 4, 7))):
            model.forward_chunk(clean[:, :, s:e], torch.zeros(2), context, cache, i, config,
                                write_cache=True)
        loss = loss + model.forward_chunk(noisy[:, :, 7:10], timestep, context, cache, 3,
                                          config).square().mean()
        loss.backward()
        assert [kv.frames for kv in cache.layers] == [7] * 2  # each chunk appended once
        results.append({n.replace("._checkpoint_wrapped_module", ""): p.grad
                        for n, p in model.named_parameters()})
    plain, checkpointed = results
    for name, grad in plain.items():
        assert rel(checkpointed[name], grad) < 1e-5, name


# ---- per-frame timesteps: Wan2.2's per-token path, against diffusers -----------------------------

def test_per_frame_timesteps_equal_diffusers_per_token_timesteps(checkpoint):
    """One chunk on an empty cache is full attention over its frames: with a timestep per
    latent frame it equals diffusers' WanTransformer3DModel given Wan2.2's per-token timesteps
    (``[B, L]``), and with one timestep our bidirectional ``forward``. The context is
    zero-padded to the text length, which our DiT does itself (as Wan's) and diffusers'
    WanPipeline does before its transformer."""
    from diffusers import WanTransformer3DModel

    theirs = WanTransformer3DModel.from_pretrained(checkpoint).eval()
    model = load_model(checkpoint, "sdpa")
    _, x, context = latents(seed=5)
    x = x[:, :, :4]
    context = torch.nn.functional.pad(context, (0, 0, 0, TINY.text_len - context.shape[1]))
    per_frame = torch.tensor([[0.0, 0.0, 600.0, 600.0], [999.0, 400.0, 300.0, 0.0]])
    with torch.no_grad():
        ours = model.forward_chunk(x, per_frame, context, KVCache.empty(2), 0, CONFIGS["full"])
        expected = theirs(x, per_frame.repeat_interleave(HW, 1), context,
                          return_dict=False)[0]
        uniform = model.forward_chunk(x, torch.tensor([300.0, 20.0]), context, KVCache.empty(2),
                                      0, CONFIGS["full"])
        bidirectional = model(x, torch.tensor([300.0, 20.0]), context)
    assert rel(ours, expected) < 1e-5
    assert rel(uniform, bidirectional) < 1e-6


# ---- errors and config -------------------------------------------------------------------------

def test_bad_inputs_raise(checkpoint):
    model = load_model(checkpoint)
    clean, noisy, context = latents()
    config = CONFIGS["camr"]
    with pytest.raises(ValueError, match="differ in shape"):
        model.forward_teacher_forcing(clean, noisy[:, :, :6], torch.zeros(2), context, config)
    with pytest.raises(ValueError, match="timestep"):
        model.forward_teacher_forcing(clean, noisy, torch.zeros(2, 3), context, config)
    with pytest.raises(ValueError, match="text mask"):
        model.forward_teacher_forcing(clean, noisy, torch.zeros(2), context, config,
                                      torch.ones(2, F_LAT, 3, dtype=torch.bool))
    cache = KVCache.empty(2)
    with pytest.raises(ValueError, match="does not follow"):
        model.forward_chunk(noisy[:, :, :1], torch.zeros(2), context, cache, 1, config)
    with pytest.raises(ValueError, match="layers"):
        model.forward_chunk(noisy[:, :, :1], torch.zeros(2), context, KVCache.empty(3), 0, config)
    model.forward_chunk(clean[:, :, :1], torch.zeros(2), context, cache, 0, config,
                        write_cache=True)
    with pytest.raises(ValueError, match="batch 1, cache of batch 2"):
        model.forward_chunk(noisy[:1, :, 1:4], torch.zeros(1), context[:1], cache, 1, config)
    with pytest.raises(ValueError, match="tokens per frame"):
        model.forward_chunk(noisy[:, :, 1:4, :2], torch.zeros(2), context, cache, 1, config)


def test_causal_config_section_in_train_and_generate_yaml():
    from pathlib import Path

    from multishot.generate.config import GenerateConfig

    configs = Path(__file__).resolve().parents[1] / "configs"
    encoders = {"encoders": {"vae": "vae", "text_encoder": "umt5"}}  # paths the tests fill in
    causal = {"model": {"causal": {"chunk_latent_frames": 3, "routed_frames": 4}}, **encoders}
    train = load_config(configs / "train/tiny_cpu.yaml", TrainConfig, causal)
    generate = load_config(configs / "generate/tiny_cpu.yaml", GenerateConfig, causal)
    assert train.model.causal == generate.model.causal == CausalConfig(routed_frames=4)
    assert load_config(configs / "train/tiny_cpu.yaml", TrainConfig, encoders).model.causal is None
    with pytest.raises(UsageError, match="model.causal.routed_frame: Extra inputs"):
        load_config(configs / "train/tiny_cpu.yaml", TrainConfig,
                    {"model": {"causal": {"routed_frame": 4}}, **encoders})
    with pytest.raises(UsageError, match="model.causal.chunk_latent_frames"):
        load_config(configs / "generate/tiny_cpu.yaml", GenerateConfig,
                    {"model": {"causal": {"chunk_latent_frames": 0}}})


# ---- long streams: Block-Relative RoPE within the horizon, bounded memory -----------------------

@pytest.fixture
def one_thread():
    """Tiny ops by the thousand: with two intra-op threads on a busy 2-core machine every op
    waits for both (a 200-frame stream: 150 s against 2.7 s with one thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def stream_chunks(model, config, num_frames, hw_side=H_LAT, on_chunk=None, seed=7):
    """A one-step stream of ``num_frames`` latent frames, batch 1: per chunk the noisy pass at
    t = 1000, x̂0 = x − v, and the clean pass that writes x̂0's K/V. Returns the cache."""
    g = torch.Generator().manual_seed(seed)
    context = torch.randn(1, 4, TINY.text_dim, generator=g)
    chunks = ChunkLayout.build(num_frames, config.chunk_latent_frames)
    cache = KVCache.empty(len(model.blocks))
    t, zero = torch.full((1,), 1000.0), torch.zeros(1)
    with torch.no_grad():
        for i, (s, e) in enumerate(zip(chunks.starts, chunks.ends)):
            x = torch.randn(1, TINY.in_channels, e - s, hw_side, hw_side, generator=g)
            x0 = x - model.forward_chunk(x, t, context, cache, i, config)
            model.forward_chunk(x0, zero, context, cache, i, config, write_cache=True)
            if on_chunk is not None:
                on_chunk(i, cache)
    return cache


def test_no_attention_call_sees_a_distance_beyond_the_training_horizon(checkpoint, monkeypatch,
                                                                       one_thread):
    """A stream 20× as long as a training sample (13 latent frames → 259) with CAMR: the RoPE
    positions every attention call actually applied (recovered from the cos/sin tables it
    rotated q and k with, matched against Wan's table) keep every query–key distance below the
    horizon, while CAMR does retrieve frames from far beyond it."""
    import multishot.model.causal as causal
    from multishot.model.rope import rope_cos_sin

    config = CausalConfig(chunk_latent_frames=3, local_window_chunks=1, routed_frames=2,
                          horizon_frames=F_LAT, memory_frames=8)
    model = load_model(checkpoint, "sdpa")
    band = TINY.rope_bands[0] // 2                      # the temporal channels of the tables
    ref_cos, ref_sin = (t[::HW, 0, :band] for t in rope_cos_sin(TINY, (1024, 2, 2), "cpu"))
    calls = []
    original = causal.apply_rope

    def recording(x, cos, sin):
        rows_cos, rows_sin = cos[::HW, 0, :band], sin[::HW, 0, :band]
        distance = (rows_cos[:, None] - ref_cos[None]).square().sum(-1) + \
            (rows_sin[:, None] - ref_sin[None]).square().sum(-1)
        best = distance.min(1)
        assert best.values.max() < 1e-10               # every row is a row of Wan's table
        calls.append(best.indices.tolist())
        return original(x, cos, sin)

    monkeypatch.setattr(causal, "apply_rope", recording)
    oldest_routed = []

    def on_chunk(i, cache):
        frames = cache.layers[0].frame_storage[0]
        oldest_routed.append(cache.num_frames - int(frames[frames >= 0].min()))

    cache = stream_chunks(model, config, 20 * F_LAT - 1, on_chunk=on_chunk)
    assert cache.num_frames == 259 and len(calls) == 2 * 2 * 2 * cache.num_chunks
    distances = []
    for q_pos, k_pos in zip(calls[::2], calls[1::2]):   # attend_chunk rotates q, then k
        assert min(k_pos) == 0 and max(q_pos) == max(k_pos)  # the chunk's own frames last
        distances.append(max(q_pos) - min(k_pos))
    assert max(distances) == F_LAT - 1                  # the clean pass spans the horizon
    assert max(max(c) for c in calls) < F_LAT
    # CAMR keeps frames 4× the horizon back in its pool (the absolute positions would reach 258)
    assert max(oldest_routed) > 4 * F_LAT


def test_a_stream_of_5000_latent_frames_runs_with_a_flat_cache(checkpoint, one_thread):
    """5,000 latent frames (about 20,000 video frames) on the tiny model, one step a chunk,
    CAMR on: the cache's storage stops growing once the ring wraps and keeps its address, and
    every pass attends a bounded number of frames (one plan shape per pass kind)."""
    config = CausalConfig(chunk_latent_frames=4, local_window_chunks=1, routed_frames=4,
                          horizon_frames=16, memory_frames=8)
    model = load_model(checkpoint, "sdpa")
    capacities, addresses, keys = [], set(), set()
    chunk_plan = model.chunk_plan

    def plan(x, cache, causal, write):
        p = chunk_plan(x, cache, causal, write)
        keys.add(p.key)
        return p

    model.chunk_plan = plan

    def on_chunk(i, cache):
        capacities.append(cache.layers[0].capacity)
        if i > 10:
            addresses.add(cache.layers[0].key_storage.data_ptr())

    cache = stream_chunks(model, config, 5000, hw_side=2, on_chunk=on_chunk)
    assert cache.num_frames == 5000 and cache.num_chunks == 1250
    assert capacities[-1] == config.recent_frames + config.memory_frames == 23
    assert set(capacities[10:]) == {23} and len(addresses) == 1
    assert len(cache.recent_starts) == 1  # bookkeeping bounded too
    assert len(keys) <= 12    # the first chunks' shapes, then one noisy and one clean shape
