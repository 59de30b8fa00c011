"""`multishot generate`'s HoloCine inputs against HoloCine's own inference code, on the example
prompts of its README and inference scripts.

HoloCine's functions are copied below as the reference (github yihao-meng/HoloCine, commit
ab32068): ``HoloCine_inference_full_attention.py`` (``enforce_4t_plus_1`` lines 10–13,
``prepare_multishot_inputs`` 15–62, ``run_inference``'s raw branch 131–154),
``diffsynth/pipelines/wan_video_holocine.py`` (``WanVideoUnit_ShotEmbedder.process``) and
``diffsynth/prompters/wan_prompter.py`` (``WanPrompter.encode_prompt``'s spans, lines 124–199).
The tokenizer is a SentencePiece-style Unigram model (``Metaspace`` pre-tokenizer, like UMT5's)
trained here on the prompts with the ``tokenizers`` library; UMT5's own cannot be downloaded.
"""

from __future__ import annotations

import argparse
import json
import logging
import re

import pytest
import torch

from multishot.generate.holocine import raw_inputs, structured_inputs, structured_prompt
from multishot.generate.shots import read_prompts_file, resolve_request
from multishot.model.layout import latent_shot_starts
from multishot.model.prompt_spans import clean_prompt, prompt_token_spans

# ---- HoloCine's README / script examples --------------------------------------------------------
BALLROOM_GLOBAL = ("The scene is set in a lavish, 1920s Art Deco ballroom during a masquerade party. [character1] is a "
                   "mysterious woman with a sleek bob, wearing a sequined silver dress and an ornate feather mask. "
                   "[character2] is a dapper gentleman in a black tuxedo, his face half-hidden by a simple black "
                   "domino mask. The environment is filled with champagne fountains, a live jazz band, and dancing "
                   "couples in extravagant costumes. This scene contains 5 shots.")
BALLROOM_SHOTS = [  # README.md "Choice 1" (the third caption ends in a space there)
    "Medium shot of [character1] standing by a pillar, observing the crowd, a champagne flute in her hand.",
    "Close-up of [character2] watching her from across the room, a look of intrigue on his visible features.",
    "Medium shot as [character2] navigates the crowd and approaches [character1], offering a polite bow. ",
    "Close-up on [character1]'s eyes through her mask, as they crinkle in a subtle, amused smile.",
    "A stylish medium two-shot of them standing together, the swirling party out of focus behind them, as they begin to converse.",
]
PAINTER = ("[global caption] The scene features a young painter, [character1], with paint-smudged cheeks and intense, "
           "focused eyes. Her hair is tied up messily. The setting is a bright, sun-drenched art studio with large "
           "windows, canvases, and the smell of oil paint. This scene contains 6 shots. [per shot caption] Medium shot "
           "of [character1] standing back from a large canvas, brush in hand, critically observing her work. [shot cut] "
           "Close-up of her hand holding the brush, dabbing it thoughtfully onto a palette of vibrant colors. [shot cut] "
           "Extreme close-up of her eyes, narrowed in concentration as she studies the canvas. [shot cut] Close-up on "
           "the canvas, showing a detailed, textured brushstroke being slowly applied. [shot cut] Medium close-up of "
           "[character1]'s face, a small, satisfied smile appears as she finds the right color. [shot cut] "
           "Over-the-shoulder shot showing her add a final, delicate highlight to the painting.")
CELTIC = ("[global caption] The scene is a magical encounter in a misty, ancient Celtic ruin at dawn. [character1] is a "
          "modern-day historian, a skeptical woman with practical hiking gear and a camera. [character2] is the spectral "
          "figure of an ancient Celtic queen, translucent and ethereal, with long, flowing red hair and a silver circlet. "
          "The environment is comprised of mossy standing stones and rolling green hills shrouded in morning mist. This "
          "scene contains 5 shots. [per shot caption] Medium shot of [character1] carefully touching a moss-covered "
          "standing stone, a look of academic interest on her face. [shot cut] Close-up of her face, her expression "
          "changing to one of utter shock as she sees something off-camera. [shot cut] A soft-focus shot of [character2] "
          "slowly materializing from the mist between two stones. [shot cut] Medium shot of [character1] stumbling "
          "backward, lowering her camera, her skepticism completely shattered. [shot cut] Close-up of [character2]'s "
          "spectral face, her expression sad and timeless as she looks at the historian.")
RAW_EXAMPLES = [(PAINTER, 241, [37, 73, 113, 169, 205]), (CELTIC, 241, [49, 93, 137, 189])]


# ---- HoloCine's code, copied -----------------------------------------------------------------------
def enforce_4t_plus_1(n: int) -> int:
    """Forces an integer 'n' to the closest 4t+1 form."""
    t = round((n - 1) / 4)
    return 4 * t + 1


def prepare_multishot_inputs(global_caption, shot_captions, total_frames, custom_shot_cut_frames=None):
    num_shots = len(shot_captions)
    if "This scene contains" not in global_caption:
        global_caption = global_caption.strip() + f" This scene contains {num_shots} shots."
    per_shot_string = " [shot cut] ".join(shot_captions)
    prompt = f"[global caption] {global_caption} [per shot caption] {per_shot_string}"
    processed_total_frames = enforce_4t_plus_1(total_frames)
    num_cuts = num_shots - 1
    processed_shot_cuts = []
    if custom_shot_cut_frames:
        for frame in custom_shot_cut_frames:
            processed_shot_cuts.append(enforce_4t_plus_1(frame))
    else:
        if num_cuts > 0:
            ideal_step = processed_total_frames / num_shots
            for i in range(1, num_shots):
                approx_cut_frame = i * ideal_step
                processed_shot_cuts.append(enforce_4t_plus_1(round(approx_cut_frame)))
    processed_shot_cuts = sorted(list(set(processed_shot_cuts)))
    processed_shot_cuts = [f for f in processed_shot_cuts if f > 0 and f < processed_total_frames]
    return {"prompt": prompt, "shot_cut_frames": processed_shot_cuts, "num_frames": processed_total_frames}


def raw_branch(prompt, num_frames, shot_cut_frames):
    """run_inference, Mode 2 (the values it hands the pipeline)."""
    kwargs = {"prompt": prompt}
    kwargs["num_frames"] = enforce_4t_plus_1(num_frames) if num_frames is not None else None
    kwargs["shot_cut_frames"] = [enforce_4t_plus_1(f) for f in shot_cut_frames] if shot_cut_frames is not None else None
    return kwargs


def shot_embedder_latent_cuts(shot_cut_frames, num_frames):
    """WanVideoUnit_ShotEmbedder.process: the latent frame where each shot starts."""
    num_latent_frames = (num_frames - 1) // 4 + 1
    shot_cut_latents = [0]
    for frame_idx in sorted(shot_cut_frames):
        if frame_idx > 0:
            latent_idx = (frame_idx - 1) // 4 + 1
            if latent_idx < num_latent_frames:
                shot_cut_latents.append(latent_idx)
    return sorted(list(set(shot_cut_latents)))


def holocine_positions(tokenizer, prompt):
    """WanPrompter.encode_prompt's ``positions`` (HuggingfaceTokenizer(seq_len=512, clean='whitespace');
    basic_clean's ftfy.fix_text is a no-op on these ASCII prompts)."""
    cleaned_prompt = re.sub(r"\s+", " ", prompt.strip()).strip()
    char_spans = []
    global_match = re.search(r'\[global caption\]', cleaned_prompt)
    per_shot_match = re.search(r'\[per shot caption\]', cleaned_prompt)
    shot_cut_matches = list(re.finditer(r'\[shot cut\]', cleaned_prompt))
    if global_match:
        end_char = per_shot_match.start() if per_shot_match else len(cleaned_prompt)
        char_spans.append({'id': -1, 'start': global_match.start(), 'end': end_char})
    if per_shot_match:
        current_start_pos = per_shot_match.start()
        shot_id = 0
        for shot_cut_match in shot_cut_matches:
            char_spans.append({'id': shot_id, 'start': current_start_pos, 'end': shot_cut_match.end()})
            current_start_pos = shot_cut_match.end()
            shot_id += 1
        if current_start_pos < len(cleaned_prompt):
            char_spans.append({'id': shot_id, 'start': current_start_pos, 'end': len(cleaned_prompt)})
    enc = tokenizer([cleaned_prompt], return_tensors="pt", padding="max_length", truncation=True, max_length=512,
                    return_offsets_mapping=True, add_special_tokens=True)
    offsets = enc.offset_mapping[0]
    token_shot_ids = torch.full((enc.input_ids.shape[1],), fill_value=-2, dtype=torch.long)
    for i, (token_start, token_end) in enumerate(offsets):
        if token_start == token_end:
            continue
        for span in char_spans:
            if not (token_end <= span['start'] or token_start >= span['end']):
                token_shot_ids[i] = span['id']
                break
    positions = {"global": None, "shots": []}
    global_indices = torch.where(token_shot_ids == -1)[0]
    if len(global_indices) > 0:
        positions["global"] = [global_indices.min().item(), global_indices.max().item() + 1]
    for i in range(token_shot_ids.max().item() + 1):
        shot_indices = torch.where(token_shot_ids == i)[0]
        if len(shot_indices) > 0:
            positions["shots"].append([shot_indices.min().item(), shot_indices.max().item() + 1])
    return positions


@pytest.fixture(scope="module")
def tokenizer():
    """A T5-like fast tokenizer: Unigram model, Metaspace pre-tokenizer, ``</s>`` appended."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [PAINTER, CELTIC, BALLROOM_GLOBAL, *BALLROOM_SHOTS]
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.train_from_iterator(texts, trainers.UnigramTrainer(vocab_size=300, special_tokens=["<pad>", "</s>", "<unk>"],
                                                           unk_token="<unk>"))
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


# ---- tests ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("global_caption, frames, cuts", [
    (BALLROOM_GLOBAL, 241, None),  # README Choice 1
    (BALLROOM_GLOBAL.replace(" This scene contains 5 shots.", ""), 241, None),  # HoloCine appends the sentence
    (BALLROOM_GLOBAL, 240, [50, 95, 150, 190]),  # not 4t+1: rounded
    (BALLROOM_GLOBAL, 81, [19, 19, 3, 90]),  # duplicates, unsorted, outside: dropped
])
def test_structured_mode_is_holocine_s(tokenizer, global_caption, frames, cuts):
    ref = prepare_multishot_inputs(global_caption, BALLROOM_SHOTS, frames, cuts)
    ours = structured_inputs(global_caption, BALLROOM_SHOTS, frames, cuts)
    assert ours.prompt == ref["prompt"] == structured_prompt(global_caption, BALLROOM_SHOTS)
    assert (ours.num_frames, ours.cut_frames) == (ref["num_frames"], ref["shot_cut_frames"])
    assert ours.prompt.count("This scene contains 5 shots.") == 1
    assert latent_shot_starts(ours.num_frames, ours.cut_frames) == shot_embedder_latent_cuts(ours.cut_frames, ours.num_frames)
    ref_positions = holocine_positions(tokenizer, ref["prompt"])
    spans = prompt_token_spans(tokenizer, ours.prompt, 512)
    assert spans.global_span == tuple(ref_positions["global"])
    assert [list(s) for s in spans.shot_spans] == ref_positions["shots"] and spans.num_shots == 5


def test_structured_readme_example_values():
    ours = structured_inputs(BALLROOM_GLOBAL, BALLROOM_SHOTS, 241)
    assert ours.cut_frames == [49, 97, 145, 193] and ours.num_frames == 241 and ours.corrections == []
    assert ours.prompt.startswith("[global caption] The scene is set") and "bow.  [shot cut] Close-up on" in ours.prompt


@pytest.mark.parametrize("prompt, frames, cuts", RAW_EXAMPLES + [(PAINTER, 240, [36, 75, 110, 170, 206])])
def test_raw_mode_is_holocine_s(tokenizer, prompt, frames, cuts):
    ref = raw_branch(prompt, frames, cuts)
    ours = raw_inputs(prompt, frames, cuts)
    assert (ours.prompt, ours.num_frames, ours.cut_frames) == (ref["prompt"], ref["num_frames"], ref["shot_cut_frames"])
    request = resolve_request(ours.prompt, ours.num_frames, ours.cut_frames)
    assert latent_shot_starts(request.num_frames, request.cut_frames) == shot_embedder_latent_cuts(
        ref["shot_cut_frames"], ref["num_frames"])
    ref_positions = holocine_positions(tokenizer, prompt)
    spans = prompt_token_spans(tokenizer, prompt, 512)
    assert spans.global_span == tuple(ref_positions["global"])
    assert [list(s) for s in spans.shot_spans] == ref_positions["shots"]
    assert clean_prompt(prompt) == re.sub(r"\s+", " ", prompt.strip()).strip()


def test_painter_latent_cuts():
    """REFERENCE.md's worked example: 241 frames, cuts [37, 73, 113, 169, 205] → latent [10, 19, 29, 43, 52]."""
    assert latent_shot_starts(241, [37, 73, 113, 169, 205]) == [0, 10, 19, 29, 43, 52]


def test_rounding_warns_with_the_new_values(caplog):
    with caplog.at_level(logging.WARNING, logger="multishot.generate.holocine"):
        ours = raw_inputs(PAINTER, 240, [36, 75, 110, 170, 206])
    assert ours.num_frames == 241 and ours.cut_frames == [37, 73, 109, 169, 205]
    assert ours.corrections == ["num_frames 240 -> 241", "cut_frames [36, 75, 110, 170, 206] -> [37, 73, 109, 169, 205]"]
    assert "num_frames 240 -> 241" in caplog.text and "-> [37, 73, 109, 169, 205]" in caplog.text
    assert raw_inputs(PAINTER, 241, [37, 73, 113, 169, 205]).corrections == []


def _args(**given) -> argparse.Namespace:
    from multishot.cli import generate

    parser = argparse.ArgumentParser()
    generate.register(parser.add_subparsers())
    argv = ["generate", "--config", "x.yaml", "-o", "out/scene.mp4"]
    for key, value in given.items():
        for v in value if isinstance(value, list) else [value]:
            argv += [f"--{key.replace('_', '-')}", str(v)]
    return parser.parse_args(argv)


def test_cli_structured_and_raw_requests():
    from multishot.cli.generate import requests

    (r,) = requests(_args(global_caption=BALLROOM_GLOBAL, shot_caption=BALLROOM_SHOTS, num_frames=240), 241)
    ref = prepare_multishot_inputs(BALLROOM_GLOBAL, BALLROOM_SHOTS, 240)
    assert (r.prompt, r.num_frames, r.cut_frames) == (ref["prompt"], ref["num_frames"], ref["shot_cut_frames"])
    assert r.extra == {"rounded": ["num_frames 240 -> 241"]} and r.name == "scene"
    (r,) = requests(_args(prompt=PAINTER, num_frames=241, cut_frames="36,75,110,170,206"), 81)
    assert r.cut_frames == [37, 73, 109, 169, 205] and r.extra["rounded"]
    with pytest.raises(ValueError, match="needs --global-caption and one --shot-caption"):
        requests(_args(shot_caption=["a"]), 81)
    with pytest.raises(ValueError, match="give one of"):
        requests(_args(prompt=PAINTER, global_caption="g", shot_caption=["a"]), 81)


def test_prompts_file_takes_structured_items_and_json_lists(tmp_path):
    items = [{"global_caption": BALLROOM_GLOBAL, "shot_captions": BALLROOM_SHOTS, "num_frames": 240, "name": "ballroom"},
             {"prompt": CELTIC, "cut_frames": [49, 93, 137, 189]}]
    listed = tmp_path / "prompts.json"
    listed.write_text(json.dumps(items))
    lines = tmp_path / "prompts.jsonl"
    lines.write_text("\n".join(json.dumps(i) for i in items) + "\n")
    for path in (listed, lines):
        ballroom, celtic = read_prompts_file(path, 241, 7)
        assert ballroom.prompt == prepare_multishot_inputs(BALLROOM_GLOBAL, BALLROOM_SHOTS, 240)["prompt"]
        assert (ballroom.name, ballroom.num_frames, ballroom.seed) == ("ballroom", 241, 7)
        assert ballroom.extra == {"rounded": ["num_frames 240 -> 241"]}
        assert (celtic.name, celtic.cut_frames, celtic.extra) == ("prompt_0001", [49, 93, 137, 189], {})
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": CELTIC}) + "\n" + json.dumps({"global_caption": "g"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: expected a 'prompt' string, or a 'global_caption'"):
        read_prompts_file(bad, 241, 0)


def test_holocine_variant_chosen_by_name(tmp_path):
    from multishot.config import ConfigError, load_config
    from multishot.generate.config import GenerateConfig, GenModelConfig

    from pathlib import Path

    config = load_config(Path(__file__).parents[1] / "configs/generate/holocine_a14b.yaml", GenerateConfig)
    assert config.model.holocine_variant == "full" and config.model.sparse_self_attention is False
    assert config.model.checkpoint == "checkpoints/HoloCine_dit/full/full_high_noise.safetensors"
    assert config.model.low_noise_checkpoint == "checkpoints/HoloCine_dit/full/full_low_noise.safetensors"
    sparse = GenModelConfig(name="14B", holocine_dir="ckpt", holocine_variant="sparse")
    assert sparse.sparse_self_attention is True and sparse.low_noise_checkpoint == "ckpt/sparse/sparse_low_noise.safetensors"
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {name: 14B, holocine_dir: ckpt, checkpoint: x.safetensors}\n"
                   "encoders: {vae: v, text_encoder: t}\n")
    with pytest.raises(ConfigError, match="holocine_dir sets checkpoint"):
        load_config(bad, GenerateConfig)
    bad.write_text("model: {name: 14B, holocine_dir: ckpt, holocine_variant: dense}\nencoders: {vae: v, text_encoder: t}\n")
    with pytest.raises(ConfigError, match="holocine_variant"):
        load_config(bad, GenerateConfig)


def test_generate_structured_cli_writes_holocine_prompt_at_fps(tmp_path, monkeypatch, caplog):
    """End to end on the tiny random models: --global-caption/--shot-caption, a frame count that is
    not 4t+1 (rounded, warned, recorded) and HoloCine's 15 fps."""
    from pathlib import Path

    import av

    from multishot.cli import main as multishot_main

    monkeypatch.chdir(tmp_path)  # tiny_cpu's random_weights folder is relative to the run
    config = Path(__file__).parents[1] / "configs/generate/tiny_cpu.yaml"
    out = tmp_path / "scene.mp4"
    shots = ["a shot", "the shot", "a video"]
    with caplog.at_level(logging.WARNING):
        assert multishot_main(["generate", "--config", str(config), "--global-caption", "a scene",
                               *[a for s in shots for a in ("--shot-caption", s)], "--num-frames", "16",
                               "--fps", "15", "-o", str(out)]) == 0
    assert "num_frames 16 -> 17" in caplog.text
    info = json.loads(out.with_suffix(".json").read_text())
    ref = prepare_multishot_inputs("a scene", shots, 16)
    assert info["prompt"] == ref["prompt"] == ("[global caption] a scene This scene contains 3 shots. "
                                               "[per shot caption] a shot [shot cut] the shot [shot cut] a video")
    assert info["cut_frames"] == ref["shot_cut_frames"] and info["rounded"] == ["num_frames 16 -> 17"]
    assert info["fps"] == 15
    with av.open(str(out)) as container:
        assert container.streams.video[0].average_rate == 15 and container.streams.video[0].frames in (0, 17)
