"""The frozen encoders: Wan VAE (diffusers ``AutoencoderKLWan``) and UMT5 (transformers).

Both are loaded from local folders (``save_pretrained`` layout) or from Wan's native ``.pth``
files (``Wan2.1_VAE.pth``, ``models_t5_umt5-xxl-enc-bf16.pth``; :mod:`model.native_wan`), put in
eval mode with gradients off, and used the way Wan / DiffSynth-Studio feed the DiT:

* video [B, 3, F, H, W] in [-1, 1] → VAE posterior mean → per-channel normalised latents
  ``(z − latents_mean) / latents_std`` [B, C, (F−1)/4+1, H/s, W/s];
* prompt → cleaned (:func:`model.prompt_spans.clean_prompt`) → UMT5 tokens (≤ text_len, padded)
  → last hidden state cut to each prompt's real length (Wan zero-pads it again in the DiT).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from multishot.model.prompt_spans import TextSpans, clean_prompt, window_spans
from multishot.model.settings import EncodersConfig


def load_tokenizer(path: str) -> Any:
    """A Hugging Face fast tokenizer from a local folder (needed for prompt token spans)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


@dataclass
class FrozenEncoders:
    """Loaded frozen encoders; any of them may be None when the config leaves its path out."""

    vae: Any | None
    text_encoder: Any | None
    tokenizer: Any | None
    device: torch.device
    dtype: torch.dtype

    @classmethod
    def load(cls, config: EncodersConfig, device: torch.device | str) -> FrozenEncoders:
        """Load what ``config`` names onto ``device``.

        Raises:
            OSError: a folder is missing or not in ``save_pretrained`` layout.
            FileNotFoundError, ValueError: a ``.pth`` is missing or not in Wan's layout; a
                ``.pth`` text encoder without ``tokenizer``.
        """
        device = torch.device(device)
        dtype = torch.bfloat16 if config.dtype == "bfloat16" else torch.float32
        vae = text_encoder = tokenizer = None
        if config.vae:
            from multishot.torchvision_cpu import import_torchvision

            import_torchvision()  # diffusers imports torchvision; the CPU wheel needs the shim
            from diffusers import AutoencoderKLWan

            if str(config.vae).endswith(".pth"):
                from multishot.model.native_wan import load_wan_vae

                vae = load_wan_vae(config.vae, dtype).to(device).eval()
            else:
                vae = AutoencoderKLWan.from_pretrained(config.vae, torch_dtype=dtype).to(device).eval()
            vae.requires_grad_(False)
        if config.text_encoder:
            from transformers import UMT5EncoderModel

            if str(config.text_encoder).endswith(".pth"):
                from multishot.model.native_wan import load_wan_t5

                if not config.tokenizer:
                    raise ValueError("encoders.text_encoder is a .pth (Wan's native T5): name the "
                                     "UMT5 tokenizer folder in encoders.tokenizer (Wan's google/umt5-xxl)")
                text_encoder = load_wan_t5(config.text_encoder, dtype)
            else:
                text_encoder = UMT5EncoderModel.from_pretrained(config.text_encoder, dtype=dtype)
            text_encoder = text_encoder.to(device).eval().requires_grad_(False)
        if config.tokenizer or config.text_encoder:
            tokenizer = load_tokenizer(config.tokenizer or config.text_encoder)
        return cls(vae, text_encoder, tokenizer, device, dtype)

    @torch.no_grad()
    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """Normalised VAE latents of ``video`` [B, 3, F, H, W] in [-1, 1] (F = 4k+1).

        Returns:
            [B, z_dim, (F−1)/4+1, H/s, W/s] float32 (s = the VAE's spatial stride).
        Raises:
            RuntimeError: no VAE configured (``encoders.vae``).
        """
        if self.vae is None:
            raise RuntimeError("encoding video needs encoders.vae")
        z = self.vae.encode(video.to(self.device, self.dtype)).latent_dist.mode().float()
        mean = torch.tensor(self.vae.config.latents_mean, device=z.device).view(1, -1, 1, 1, 1)
        std = torch.tensor(self.vae.config.latents_std, device=z.device).view(1, -1, 1, 1, 1)
        return (z - mean) / std

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str], text_len: int) -> list[torch.Tensor]:
        """UMT5 states of each prompt, cut to its real token count.

        Returns:
            per prompt a [L_real, text_dim] float32 tensor, ``L_real <= text_len``.
        Raises:
            RuntimeError: no text encoder configured (``encoders.text_encoder``).
        """
        if self.text_encoder is None or self.tokenizer is None:
            raise RuntimeError("encoding prompts needs encoders.text_encoder")
        tokens = self.tokenizer([clean_prompt(p) for p in prompts], padding="max_length",
                                truncation=True, max_length=text_len, add_special_tokens=True,
                                return_tensors="pt").to(self.device)
        states = self.text_encoder(tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state
        lengths = tokens.attention_mask.sum(1).tolist()  # host sync: once per batch, by design
        return [s[:n].float() for s, n in zip(states, lengths)]

    def text_spans(self, prompts: list[str], num_shots: list[int], text_len: int) -> list[tuple[TextSpans, str | None]]:
        """Token spans of each prompt's global caption and shots (window cross-attention) for
        videos of ``num_shots`` shots: ``(spans, None)``, or unmasked spans and the reason when
        the prompt lost shot captions to ``text_len`` (:func:`model.prompt_spans.window_spans`).

        Raises:
            RuntimeError: no tokenizer configured.
        """
        if self.tokenizer is None:
            raise RuntimeError("window cross-attention needs encoders.tokenizer or text_encoder")
        return [window_spans(self.tokenizer, p, n, text_len) for p, n in zip(prompts, num_shots)]
