"""Data preparation and input pipeline: tokenizers, corpora, instances, shards, loader."""

__all__ = ["load_tokenizer", "open_dataset"]


def __getattr__(name):
    # Lazy, so `import bertjax.data` does not pull in tokenizers/numpy until needed.
    if name == "load_tokenizer":
        from bertjax.data.tokenizer import load_tokenizer

        return load_tokenizer
    if name == "open_dataset":
        from bertjax.data.shards import open_dataset

        return open_dataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
