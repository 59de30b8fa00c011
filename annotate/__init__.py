"""Captioning of multi-shot samples (HoloCine-style hierarchical captions) by Gemini or a
vision-language model behind an OpenAI-compatible endpoint: one captioner, two backends."""
