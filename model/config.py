"""Architecture hyper-parameters of the Wan DiT (Wan2.1 / Wan2.2 ``wan/configs/``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WanConfig:
    """Shape of a Wan DiT.

    Fields follow Wan2.2's ``WanModel.__init__``: ``dim`` (model width), ``ffn_dim`` (FFN hidden
    width), ``num_heads``, ``num_layers`` (blocks), ``in_channels`` / ``out_channels`` (latent
    channels: 16 for the Wan2.1 VAE, 48 for the Wan2.2 VAE), ``patch_size`` (t, h, w) in latent
    frames / latent pixels, ``text_dim`` (UMT5-XXL width), ``text_len`` (text tokens; shorter
    contexts are zero-padded to it, as Wan does), ``freq_dim`` (sinusoidal timestep features),
    ``eps`` (norm epsilon). The head dim is ``dim // num_heads`` and must be even and split
    into the 3D RoPE bands ``(t, h, w) = (d - 4·(d//6), 2·(d//6), 2·(d//6))`` (44/42/42 for 128).
    """

    dim: int
    ffn_dim: int
    num_heads: int
    num_layers: int
    in_channels: int = 16
    out_channels: int = 16
    patch_size: tuple[int, int, int] = (1, 2, 2)
    text_dim: int = 4096
    text_len: int = 512
    freq_dim: int = 256
    eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.head_dim % 2 or self.head_dim < 6:
            raise ValueError(f"head dim {self.head_dim} must be even and >= 6 for 3D RoPE")

    @property
    def head_dim(self) -> int:
        """Channels per attention head (128 for every released Wan model)."""
        return self.dim // self.num_heads

    @property
    def rope_bands(self) -> tuple[int, int, int]:
        """RoPE channels per head for (latent frame, height, width): 44/42/42 at head dim 128."""
        d = self.head_dim
        return d - 4 * (d // 6), 2 * (d // 6), 2 * (d // 6)


CONFIGS: dict[str, WanConfig] = {
    # Tests only: 2 blocks of width 64 (2 heads of 32), a short text context.
    "tiny": WanConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=2, text_dim=32, text_len=16,
                      freq_dim=32),
    # The synthetic world's learning runs (issue 30, dataset/synthetic_world.py): 6 blocks of
    # width 256 (4 heads of 64), a 64-token text context of width 64 (the world's small UMT5).
    "learn": WanConfig(dim=256, ffn_dim=1024, num_heads=4, num_layers=6, text_dim=64,
                       text_len=64, freq_dim=256),
    # Wan2.1 T2V-1.3B.
    "1.3B": WanConfig(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30),
    # Wan2.2 TI2V-5B (Wan2.2 VAE, 48 latent channels).
    "5B": WanConfig(dim=3072, ffn_dim=14336, num_heads=24, num_layers=30, in_channels=48,
                    out_channels=48),
    # Wan2.1 T2V-14B and each Wan2.2 T2V-A14B expert (high-noise / low-noise); HoloCine's base.
    "14B": WanConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40),
}


def get_config(name: str) -> WanConfig:
    """The named config: ``"tiny"``, ``"learn"``, ``"1.3B"``, ``"5B"`` or ``"14B"``.

    Raises:
        KeyError: unknown name (the message lists the known ones).
    """
    try:
        return CONFIGS[name]
    except KeyError:
        raise KeyError(f"unknown Wan config {name!r}; known: {sorted(CONFIGS)}") from None
