"""Multi-shot video generation from HoloCine prompts (``multishot generate``)."""
