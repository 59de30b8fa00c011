"""Fine-tuning the multi-shot DiT on shards: flow matching, FSDP2, exact-resume checkpoints,
metrics (``multishot train``, ``multishot precompute``, ``torchrun -m multishot.trainer``)."""
