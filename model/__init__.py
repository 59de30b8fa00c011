"""The multi-shot video DiT: Wan2.1/2.2 with HoloCine's window cross-attention and sparse
inter-shot self-attention (arXiv 2510.20822), its attention backends, prompt-span parsing and
checkpoint I/O. Single-device code: parallelism lives in ``trainer/``."""
