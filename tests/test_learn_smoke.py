"""The learning path of issue 30 at the smallest size, on CPU: the synthetic world → a trained
(two steps) Wan VAE and a small UMT5 → encoded films → a few flow-matching steps of a small
WanModel (the loss on fixed draws falls) → the project's sampler → VAE decode → the world's
classifier and SCA. `python -m multishot.learn run` is the full-size run (GPU)."""

from __future__ import annotations

import torch

from multishot import learn
from multishot.dataset.synthetic_world import sample_film
from multishot.model.config import WanConfig
from multishot.model.settings import EncodersConfig
from multishot.model.encoders import FrozenEncoders


def test_the_learning_path_runs_and_the_loss_falls(tmp_path):
    torch.set_num_threads(2)
    films = [sample_film(i, num_shots=2, height=32, width=32, name=f"s{i}") for i in range(4)]
    frames = learn.render_many(films)
    assert frames.shape == (4, 33, 32, 32, 3)
    text_dir = learn.make_text_encoder(tmp_path / "text_encoder", text_dim=16)
    info = learn.train_vae(tmp_path / "vae", frames, steps=2, device=torch.device("cpu"),
                           batch=1, clip=5, log=lambda m: None, base_dim=8)
    assert info["steps"] == 2
    encoders = FrozenEncoders.load(EncodersConfig(vae=str(tmp_path / "vae"), text_encoder=text_dir,
                                                  dtype="float32"), "cpu")
    data = learn.encode_films(encoders, films, frames, text_len=48)
    assert data["latents"].shape == (4, 16, 9, 4, 4) and data["context"].shape == (4, 48, 16)
    assert [len(s) for s in data["shot_starts"]] == [2] * 4 and all(s.num_shots == 2 for s in data["spans"])
    config = WanConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=2, text_dim=16, text_len=48,
                       freq_dim=32)
    torch.manual_seed(0)
    from multishot.model.dit import WanModel
    before = learn.fixed_loss(WanModel(config, "sdpa"), data, "full", torch.device("cpu"), count=4)
    model, losses, _ = learn.train_variant("full", data, steps=40, batch=4, lr=5e-3,
                                           device=torch.device("cpu"), log=lambda m: None,
                                           config=config)
    after = learn.fixed_loss(model, data, "full", torch.device("cpu"), count=4)
    assert len(losses) == 40 and after < 0.9 * before, (before, after)
    latents = learn.generate_all(model, encoders, films[:1], torch.device("cpu"), steps=2,
                                 window=True, latent_hw=(4, 4))
    assert not latents.requires_grad  # sampled without autograd: no graph kept per film
    videos = learn.decode(encoders.vae, latents, torch.device("cpu"))
    assert videos.shape == (1, 33, 32, 32, 3)
    scores = learn.score(films[:1], videos)
    assert 0 < scores["sca"] <= 1 and 0 <= scores["caption_following"] <= 1


def test_the_scores_are_perfect_on_ground_truth_and_fall_with_errors():
    from multishot.dataset.synthetic_world import Character, render_film

    films = learn.eval_films(12)
    videos = learn.render_many(films)
    perfect = learn.score(films, videos)
    for key in ("sca", "caption_following", "named_character", "named_colour", "named_shape",
                "named_texture", "character_consistency", "aba_recall"):
        assert perfect[key] == 1.0, key
    assert perfect["shot_count_error"] == 0 and perfect["aba_films"] >= 1
    # a film that never cuts: its first shot's frames all through
    broken = videos.copy()
    broken[0] = videos[0][[0] * len(videos[0])]
    worse = learn.score(films, broken)
    assert worse["sca"] < 1 and worse["caption_following"] < 1 and worse["shot_count_error"] > 0
    # another character after the first shot of an anonymous film
    anon = next(i for i, f in enumerate(films) if f.caption_mode == "anonymous")
    other = Character("square" if films[anon].character.shape != "square" else "circle",
                      films[anon].character.colour, films[anon].character.texture)
    swapped = videos.copy()
    swapped[anon] = render_film(films[anon].__class__(**{**films[anon].__dict__, "character": other}))
    start = films[anon].shots[1].start_frame
    swapped[anon][:start] = videos[anon][:start]
    assert learn.score(films, swapped)["character_consistency"] < 1
    # a named film drawn in another colour: its colour is wrong, its shape and texture right
    named = next(i for i, f in enumerate(films) if f.caption_mode == "named")
    c = films[named].character
    recoloured = videos.copy()
    recoloured[named] = render_film(films[named].__class__(**{
        **films[named].__dict__, "character": Character(c.shape, "cyan" if c.colour != "cyan" else "red",
                                                        c.texture)}))
    wrong = learn.score(films, recoloured)
    assert wrong["named_colour"] < 1 and wrong["named_character"] < 1
    assert wrong["named_shape"] == 1.0 and wrong["named_texture"] == 1.0


def test_a_generated_videos_request_is_read_back_from_its_prompt():
    prompt = ("[global caption] A red dotted circle. This scene contains 3 shots. "
              "[per shot caption] forest. [shot cut] snow. [shot cut] forest.")
    film = learn.film_of_request(prompt, [13, 25], 33, 64, 64)
    assert film.scenes == ["forest", "snow", "forest"] and film.aba and film.caption_mode == "named"
    assert film.character.words() == "red dotted circle" and film.cut_frames == [13, 25]
    anonymous = learn.film_of_request(prompt.replace("red dotted circle", "character"), [13, 25], 33, 64, 64)
    assert anonymous.caption_mode == "anonymous"
    import pytest
    with pytest.raises(ValueError, match="name no scene"):
        learn.film_of_request(prompt.replace("snow", "moon"), [13, 25], 33, 64, 64)


def test_the_committed_full_checkpoint_loads_as_multishot_generate_loads_it():
    """configs/generate/learn_full.yaml names the committed checkpoint, VAE and UMT5 (≤ 25 MB),
    and the real loaders read them into the 'learn' architecture."""
    from pathlib import Path

    from multishot.config import load_config
    from multishot.generate.config import GenerateConfig
    from multishot.model.checkpoint import load_dit

    root = Path(__file__).resolve().parents[1]
    config = load_config(root / "configs/generate/learn_full.yaml", GenerateConfig)
    files = [p for name in ("checkpoints/learn",) for p in (root / name).rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 25e6
    model = load_dit(config.model.name, str(root / config.model.checkpoint), torch.device("cpu"),
                     torch.float32)
    assert model.config.dim == 256 and len(model.blocks) == 6
    encoders = FrozenEncoders.load(config.encoders.model_copy(update={
        "vae": str(root / config.encoders.vae), "text_encoder": str(root / config.encoders.text_encoder)}), "cpu")
    assert encoders.vae.config.z_dim == 16 and encoders.text_encoder.config.d_model == 64
    spans, why = encoders.text_spans([learn.eval_films(1)[0].prompt], [2], model.config.text_len)[0]
    assert why is None and spans.num_shots == 2


def test_the_vae_ceiling_is_perfect_on_ground_truth_and_locates_where_the_character_is_lost():
    """multishot.learn.vae_ceiling: the renders as their own reconstruction score 1.0 in every
    column and every latent frame; a character recoloured from pixel frame 17 on (latent frames
    5-8) is lost exactly there, as a colour error."""
    from dataclasses import replace

    from multishot.dataset.synthetic_world import COLOURS, Character

    films = learn.eval_films(6)
    frames = learn.render_many(films)
    perfect = learn.vae_ceiling(films, frames, frames)
    for part in ("ground_truth", "reconstruction"):
        for key in ("sca", "caption_following", "named_character", "character_consistency"):
            assert perfect[part][key] == 1.0, (part, key)
    assert perfect["psnr_db"] > 100 and perfect["where"]["latent_frame_character_read"] == [1.0] * 9
    assert perfect["where"]["shot_index_character_read"] == [1.0] * 4
    recoloured = frames.copy()
    for i, film in enumerate(films):
        other = next(c for c in COLOURS if c != film.character.colour)
        c = film.character
        recoloured[i, 17:] = learn.render_many([replace(film, character=Character(c.shape, other, c.texture))])[0, 17:]
    lost = learn.vae_ceiling(films, frames, recoloured)
    where = lost["where"]
    assert where["latent_frame_character_read"] == [1.0] * 5 + [0.0] * 4
    assert where["latent_frame_colour_wrong"] == [0.0] * 5 + [1.0] * 4
    assert where["latent_frame_shape_wrong"] == [0.0] * 9 and lost["ground_truth"]["sca"] == 1.0
    assert lost["reconstruction"]["named_character"] < 1 and lost["reconstruction"]["sca"] == 1.0


def test_every_shot_window_admits_the_named_characters_words():
    """The committed tokenizer at the 'learn' text_len: no world word is <unk>, the longest
    world caption (4 shots) is not truncated, and every word of a named character lies in the
    global caption's span, which the window mask admits for every shot (a truncation or span
    error here would hide the character from the DiT: benchmarks/learn_character.py)."""
    from pathlib import Path

    from multishot.dataset.synthetic_world import COLOURS, SHAPES, TEXTURES
    from multishot.model.config import get_config
    from multishot.model.encoders import load_tokenizer
    from multishot.model.prompt_spans import clean_prompt, shot_text_mask, window_spans

    tok = load_tokenizer(str(Path(__file__).resolve().parents[1] / "checkpoints/learn/text_encoder"))
    text_len = get_config(learn.MODEL).text_len
    unk = tok.convert_tokens_to_ids("<unk>")
    films = [sample_film(500 + i, num_shots=4, caption_mode="named") for i in range(8)]
    for f in films:
        ids = tok(clean_prompt(f.prompt))["input_ids"]
        assert unk not in ids and len(ids) < text_len, f.prompt
        spans, why = window_spans(tok, f.prompt, 4, text_len)
        assert why is None
        words = tok.convert_ids_to_tokens(ids)
        mask = shot_text_mask(spans, 4, text_len)
        for w in f.character.words().split():
            p = words.index(w)
            assert spans.global_span[0] <= p < spans.global_span[1] and bool(mask[:, p].all()), (w, f.prompt)
    assert all(tok.convert_tokens_to_ids(w) != unk for w in [*COLOURS, *SHAPES, *TEXTURES])


def test_caption_sensitivity_tells_a_model_that_reads_the_caption_from_one_that_does_not():
    """multishot.learn.recaption changes one word; character_cover finds the character's pixels;
    caption_sensitivity: the true caption changes nothing, a random DiT's prediction moves with
    the colour word, and the same DiT with its text embedding zeroed (blind to the caption)
    does not move at all."""
    from pathlib import Path

    from multishot.dataset.synthetic_world import _size, character_mask
    from multishot.model.dit import WanModel

    torch.set_num_threads(2)
    film = sample_film(3, num_shots=2, caption_mode="named")
    for change in ("colour", "shape", "texture", "scene"):
        other = learn.recaption(film, change)
        assert sum(a != b for a, b in zip(film.prompt.split(), other.split())) == 1, (change, other)
    assert film.character.colour not in learn.recaption(film, "anonymous")
    cover = learn.character_cover(film)
    shot = film.shots[0]
    visible = character_mask(film.character.shape, shot.x0, shot.y, _size(64, 64), 64, 64)
    assert cover.shape == (9, 8, 8) and abs(cover[0].sum() * 64 - visible.sum()) < 1e-6
    root = Path(__file__).resolve().parents[1] / "checkpoints/learn"
    encoders = FrozenEncoders.load(EncodersConfig(vae=str(root / "vae"), text_encoder=str(root / "text_encoder"),
                                                  dtype="float32"), "cpu")
    config = WanConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=2, text_dim=64, text_len=64, freq_dim=32)
    torch.manual_seed(0)
    model = WanModel(config, "reference").eval()
    torch.nn.init.normal_(model.head.head.weight, std=0.02)  # Wan zero-initialises the head
    films = [sample_film(10 + i, num_shots=2, caption_mode="named") for i in range(2)]
    reads = learn.caption_sensitivity(model, encoders, films, sigmas=(0.5,), changes=("colour",))
    row = reads["sigma_0.501"]
    assert row["true"]["change_character"] == 0 and row["colour"]["change_character"] > 0
    assert reads["character_positions_per_frame"] > 2
    # the timestep shift reaches the sampler (python -m multishot.learn --shift)
    same = [learn.generate_all(model, encoders, films[:1], torch.device("cpu"), 2, True, shift=x)
            for x in (None, 5.0, 1.0)]
    assert torch.equal(same[0], same[1]) and not torch.allclose(same[0], same[2])
    with torch.no_grad():
        for p in model.text_embedding.parameters():
            p.zero_()
    blind = learn.caption_sensitivity(model, encoders, films, sigmas=(0.5,), changes=("colour",))
    assert blind["sigma_0.501"]["colour"]["change_character"] == 0



def test_consistency_splits_by_attribute_against_its_chance_level():
    """multishot.learn.attribute_consistency on hand-built reads (a missing read is a miss;
    a collapsed shape scores at its chance), and score()'s per-attribute keys on rendered
    anonymous films whose later shots keep the colour and texture but change the shape (or,
    in one film, the texture)."""
    from dataclasses import replace

    from multishot.dataset.synthetic_world import SHAPES, Character, render_film

    def c(words):                                             # "red plain circle"
        colour, texture, shape = words.split()
        return Character(shape, colour, texture)

    reads = [[c("red plain circle"), c("red plain circle")],
             [c("cyan plain circle"), c("cyan dotted circle")],
             [None, c("red plain circle")],
             [c("yellow dotted square")]]                     # one shot: no later shot
    kept = learn.attribute_consistency(reads)
    assert kept["later_shots"] == 3 and kept["films"] == 3
    assert kept["consistency"] == {"colour": 2 / 3, "shape": 2 / 3, "texture": 1 / 3, "character": 1 / 3}
    # shot 1 of another film: colour red|cyan,None → 0; cyan|red,None → 0; red|red,cyan → 1/2
    assert kept["chance"] == {"colour": 1 / 6, "shape": 2 / 3, "texture": 1 / 2, "character": 1 / 6}
    assert learn.attribute_consistency([]) == {"consistency": dict.fromkeys(kept["consistency"]),
                                               "chance": dict.fromkeys(kept["chance"]),
                                               "later_shots": 0, "films": 0}

    films = [f for f in learn.eval_films(16) if f.caption_mode == "anonymous"]
    videos = learn.render_many(films)
    perfect = learn.score(films, videos)
    assert [perfect[f"consistency_{a}"] for a in ("colour", "shape", "texture")] == [1.0] * 3
    changed = videos.copy()
    for i, film in enumerate(films):
        ch = film.character
        other = (Character(ch.shape, ch.colour, "plain" if ch.texture == "dotted" else "dotted") if i == 0
                 else Character(next(s for s in SHAPES if s != ch.shape), ch.colour, ch.texture))
        start = film.shots[1].start_frame
        changed[i, start:] = render_film(replace(film, character=other))[start:]
    later = sum(len(f.shots) - 1 for f in films)
    first = len(films[0].shots) - 1
    s = learn.score(films, changed)
    assert s["character_consistency"] == 0 and s["consistency_colour"] == 1.0
    assert s["consistency_shape"] == first / later and s["consistency_texture"] == 1 - first / later
    assert 0 < s["consistency_colour_chance"] < 1
    assert s["consistency_character_chance"] <= s["consistency_colour_chance"]
    assert s["sca"] == 1.0 and perfect["character_consistency"] == 1.0


def test_the_report_puts_each_attributes_consistency_beside_its_chance():
    results = {"full": {"character_consistency": 0.25, "consistency_colour": 0.5, "consistency_colour_chance": 0.2,
                        "consistency_shape": 1.0, "consistency_shape_chance": 1.0, "consistency_texture": None,
                        "consistency_texture_chance": None, "consistency_character_chance": 0.125}}
    ceiling = {"reconstruction": {"character_consistency": 0.75, "consistency_colour": 0.875}}
    text = learn.consistency_table(results, ceiling)
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert rows["full"] == "| full | 0.500 / 0.200 | 1.000 / 1.000 | - / - | 0.250 / 0.125 |"
    assert rows["VAE ceiling"] == "| VAE ceiling | 0.875 / - | - / - | - / - | 0.750 / - |"
    assert "VAE ceiling" not in learn.consistency_table(results, None)
