"""Small builders shared by several test modules."""

from pathlib import Path

import ml_collections
import numpy as np

from bertjax.train.config import load_config

TINY_CONFIG = "bert_tiny"


def optim_config(**overrides) -> ml_collections.ConfigDict:
    """configs/bert_tiny.py's optimizer section (BERT's AdamW settings) with `overrides`."""
    optim = load_config(TINY_CONFIG).optim
    with optim.unlocked():
        optim.update(overrides)
    return optim


def random_batch(seed, *, batch, length, predictions, vocab, weight_prob=0.8) -> dict:
    """A pretraining batch of random tokens with padded rows of uneven lengths, two segments,
    and masked-LM weights that are 1 with probability `weight_prob` (uneven per row)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(length // 2, length + 1, batch)
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
    return {
        "input_ids": (rng.integers(5, vocab, (batch, length)) * mask).astype(np.int32),
        "input_mask": mask,
        "segment_ids": ((np.arange(length)[None] >= lengths[:, None] // 2) * mask).astype(np.int32),
        "masked_lm_positions": rng.integers(1, length // 2, (batch, predictions)).astype(np.int32),
        "masked_lm_ids": rng.integers(5, vocab, (batch, predictions)).astype(np.int32),
        "masked_lm_weights": (rng.random((batch, predictions)) < weight_prob).astype(np.float32),
        "next_sentence_labels": rng.integers(0, 2, batch).astype(np.int32),
    }
