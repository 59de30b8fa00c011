"""Evaluation of generated multi-shot videos: Shot Cut Accuracy and consistency (``multishot eval``)."""
