"""multishot: video archives → multi-shot WebDataset shards → holistic multi-shot DiT fine-tunes."""

__version__ = "0.1.0"
