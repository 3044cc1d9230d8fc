"""Small builders shared by several test modules."""


import ml_collections

from bertjax.train.config import load_config

TINY_CONFIG = "bert_tiny"


def optim_config(**overrides) -> ml_collections.ConfigDict:
    """configs/bert_tiny.py's optimizer section (BERT's AdamW settings) with `overrides`."""
    optim = load_config(TINY_CONFIG).optim
    with optim.unlocked():
        optim.update(overrides)
    return optim
