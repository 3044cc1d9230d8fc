"""Data preparation and input pipeline: tokenizers, corpora, instances, shards, loader."""
