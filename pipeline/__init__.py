"""The main job: Ray Data stages that turn video files into multi-shot samples and shards."""
