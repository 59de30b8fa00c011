"""The sample record, shard reading and writing, the shards CLI and the training loader."""
