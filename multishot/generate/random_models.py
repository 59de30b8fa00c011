"""Small random models in the released layouts, for smoke runs and tests without weights.

Writes what a real run loads, so the real loading code runs on them: the ``tiny`` DiT as
safetensors in Wan's names (:func:`model.checkpoint.save_safetensors`), a diffusers
``AutoencoderKLWan`` (16 latent channels, stride 4×8×8) and a transformers ``UMT5EncoderModel``
of the tiny DiT's text width with a word-level fast tokenizer whose HoloCine tags are single
tokens (unknown words map to ``<unk>``, so any prompt encodes).
"""

from __future__ import annotations

from pathlib import Path

from multishot.dataset.record import CUT_TAG, GLOBAL_TAG, PER_SHOT_TAG

#: The only architecture a random smoke run builds (text width 32 matches the tiny UMT5).
RANDOM_MODEL = "tiny"


def random_model_paths(folder: str | Path) -> dict[str, str]:
    """Where :func:`make_random_models` puts each model:
    ``{"dit", "low_noise_dit", "vae", "text_encoder"}``."""
    folder = Path(folder)
    return {"dit": str(folder / "dit" / "high_noise.safetensors"),
            "low_noise_dit": str(folder / "dit" / "low_noise.safetensors"),
            "vae": str(folder / "vae"), "text_encoder": str(folder / "text_encoder")}


def make_random_models(folder: str | Path, seed: int = 0) -> dict[str, str]:
    """Create the random models under ``folder`` unless they are there already.

    Returns :func:`random_model_paths`. Two DiTs are written (different seeds) so that the
    A14B expert switch can be exercised too; the encoders are :func:`make_random_encoders`.
    """
    paths = random_model_paths(folder)
    if all(Path(p).exists() for p in paths.values()):
        return paths
    import torch

    from multishot.model.checkpoint import save_safetensors
    from multishot.model.config import get_config
    from multishot.model.dit import WanModel

    config = get_config(RANDOM_MODEL)
    for i, key in enumerate(("dit", "low_noise_dit")):
        torch.manual_seed(seed + i)
        dit = WanModel(config)
        # Wan zero-initialises the head; random head weights make the smoke video non-constant
        torch.nn.init.normal_(dit.head.head.weight, std=0.02)
        save_safetensors(dit.state_dict(), paths[key])
    make_random_encoders(folder, seed)
    return paths


#: the tokenizer's whole vocabulary (words of the tests' and the demo's prompts); any other
#: word is ``<unk>``, one token like a known word, so token counts do not depend on this list
VOCABULARY = ["<pad>", "</s>", "<unk>", "a", "the", "of", "shot", "scene", "video", "This",
              "contains", "shots", ".", "multi", "-", "Blender", "films", "sintel", "bbb",
              "tos", "A", "The", "It", "rabbit", "Trees", "hops"] + [str(i) for i in range(1, 10)]


def make_random_encoders(folder: str | Path, seed: int = 0) -> dict[str, str]:
    """Write a random Wan VAE (diffusers ``AutoencoderKLWan``: 16 latent channels, stride
    4×8×8) and a random UMT5 encoder of the tiny DiT's text width with its word-level tokenizer
    into ``folder/vae`` and ``folder/text_encoder`` (``save_pretrained`` layout, the trainer's
    and the generator's ``encoders.vae`` / ``encoders.text_encoder``), overwriting them.

    Returns ``{"vae": dir, "text_encoder": dir}``.
    """
    from multishot.torchvision_cpu import import_torchvision

    import_torchvision()  # diffusers imports torchvision; the CPU wheel needs the shim
    import torch
    from diffusers import AutoencoderKLWan
    from transformers import UMT5Config, UMT5EncoderModel

    from multishot.model.config import get_config

    paths = {k: v for k, v in random_model_paths(folder).items() if k in ("vae", "text_encoder")}
    config = get_config(RANDOM_MODEL)
    torch.manual_seed(seed)
    vae = AutoencoderKLWan(base_dim=8, z_dim=config.in_channels, dim_mult=[1, 2, 2, 2],
                           num_res_blocks=1, latents_mean=[0.0] * config.in_channels,
                           latents_std=[1.0] * config.in_channels)
    vae.save_pretrained(paths["vae"])
    fast = word_level_tokenizer(VOCABULARY)
    fast.save_pretrained(paths["text_encoder"])
    umt5 = UMT5EncoderModel(UMT5Config(vocab_size=len(fast), d_model=config.text_dim, d_kv=16,
                                       d_ff=64, num_layers=1, num_heads=2))
    umt5.save_pretrained(paths["text_encoder"])
    return paths


def main(argv: list[str] | None = None) -> int:
    """``python -m multishot.generate.random_models FOLDER``: create the random models there
    (the first step of ``make demo-train``) and say that they are random."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m multishot.generate.random_models",
                                     description=main.__doc__)
    parser.add_argument("folder", help="where to write dit/, vae/ and text_encoder/")
    args = parser.parse_args(argv)
    paths = make_random_models(args.folder)
    print(f"RANDOM weights (a smoke run of the code path, not a model): {RANDOM_MODEL} DiT "
          f"{paths['dit']}, Wan VAE {paths['vae']}, UMT5 {paths['text_encoder']}")
    return 0


def word_level_tokenizer(vocab: list[str]):
    """A whitespace word-level tokenizer of ``vocab`` (which starts ``<pad>``, ``</s>``,
    ``<unk>``) that appends ``</s>`` and knows the prompt tags as single tokens: the small
    models' stand-in for UMT5's sentencepiece (a ``transformers`` ``PreTrainedTokenizerFast``)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>",
                                                       special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>")
    fast.add_tokens([GLOBAL_TAG, PER_SHOT_TAG, CUT_TAG])
    return fast


if __name__ == "__main__":
    raise SystemExit(main())

