"""Small builders shared by several test modules."""

import functools
from pathlib import Path

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from bertjax import model as model_lib
from bertjax.data.synthetic import synthetic_batch
from bertjax.train.config import load_config

TINY_CONFIG = "bert_tiny"
# The tiny preset (2 layers of 128), float32, no dropout: layouts and policies change no numbers.
SMALL_VOCAB, SMALL_LENGTH = 96, 16
TINY_NO_DROPOUT = model_lib.preset_config(
    "tiny",
    vocab_size=SMALL_VOCAB,
    max_position_embeddings=SMALL_LENGTH,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)


def optim_config(**overrides) -> ml_collections.ConfigDict:
    """configs/bert_tiny.py's optimizer section (BERT's AdamW settings) with `overrides`."""
    optim = load_config(TINY_CONFIG).optim
    with optim.unlocked():
        optim.update(overrides)
    return optim


@functools.cache
def unboxed_params(cfg, seed: int = 0):
    """`cfg`'s initial parameters as host arrays (a jitted step may donate device ones)."""
    init = jax.jit(model_lib.init_params, static_argnums=0)
    return jax.device_get(nn.meta.unbox(init(cfg, jax.random.key(seed))))


def perturbed(tree, seed: int = 1):
    """Every leaf moved by noise: LayerNorm scales off 1 and biases off 0, layers all unlike,
    so that a parameter put in the wrong place shows in the outputs."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda x: np.asarray(x) + rng.normal(0, 0.1, np.shape(x)).astype(x.dtype), tree
    )


def small_batch(seed: int) -> dict:
    """A synthetic pretraining batch of 8 rows for TINY_NO_DROPOUT."""
    return synthetic_batch(seed, batch=8, length=SMALL_LENGTH, predictions=4, vocab=SMALL_VOCAB)


def assert_trees_close(a, b, atol: float):
    """Same tree structure, every leaf within `atol` (rtol 0)."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(
        lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=0),
        a,
        b,
    )


def demo_corpus_file(out_dir) -> str:
    """The whole offline demo corpus in one file, built in a fresh process (as `bertjax demo`
    builds it): in this long-lived test process, libraries imported by earlier tests may have
    replaced stdlib objects and their docstrings, making the text depend on the tests before."""
    import subprocess
    import sys

    subprocess.run(
        [sys.executable, "-m", "bertjax.data.demo_corpus", str(out_dir), "--num-files", "1"],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (path,) = sorted(Path(out_dir).glob("*.txt"))
    return str(path)


def save_tiny_encoder(
    folder: Path,
    sentences: list[str],
    seq: int,
    hidden: int = 64,
    layers: int = 4,
    lowercase: bool = True,
    vocab_size: int = 800,
) -> Path:
    """A random BertForPreTraining (hidden `hidden`, `seq` positions) saved by transformers,
    with a WordPiece vocabulary of `vocab_size` learnt from `sentences`. Its position
    embeddings start as sinusoids (Vaswani et al.) scaled to the size of the token
    embeddings: with learnt-from-random ones a model this small needs thousands of steps
    before it attends to neighbouring tokens."""
    import torch
    import transformers

    from bertjax.data.tokenizer import train_wordpiece

    tokenizer = train_wordpiece(sentences, vocab_size, folder, lowercase=lowercase)
    config = transformers.BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=4, intermediate_size=4 * hidden, max_position_embeddings=seq,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # fmt: skip
    torch.manual_seed(0)
    model = transformers.BertForPreTraining(config)
    position, dim = np.arange(seq)[:, None], np.arange(hidden)[None, :]
    angle = position / 10_000 ** (dim // 2 * 2 / hidden)
    table = 0.2 * np.where(dim % 2 == 0, np.sin(angle), np.cos(angle))
    with torch.no_grad():
        model.bert.embeddings.position_embeddings.weight.copy_(torch.tensor(table))
    model.save_pretrained(folder)
    return folder


def snapshot(folder) -> dict[str, str]:
    """relative path -> sha256 of every file under `folder` (symlinks followed): equal before
    and after a command means the command changed none of them."""
    import hashlib

    root = Path(folder)
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# `python -m bertjax.cli ARGS`, with SIGINT honoured even when this test process runs with it
# ignored (a shell starts background jobs so, and a child inherits an ignored signal):
# [sys.executable, "-c", BERTJAX_WITH_SIGINT, *args].
BERTJAX_WITH_SIGINT = (
    "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.argv[0] = 'bertjax'; runpy.run_module('bertjax.cli', run_name='__main__')"
)
