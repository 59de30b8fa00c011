"""Gemini captioning of multi-shot samples (HoloCine-style hierarchical captions)."""
