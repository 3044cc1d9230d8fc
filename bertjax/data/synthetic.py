"""Generated BERT data for tests and benchmarks: instance arrays as `prepare` stores them, a
dataset directory of them, and masked pretraining batches from the same rows."""

from pathlib import Path

import numpy as np

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def synthetic_vocab(out_dir, vocab_size: int = 30522) -> Path:
    """Writes a BERT-style vocab.txt: the 5 specials, then words, every 4th a `##` piece."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    words = [*SPECIALS] + [
        f"##p{i}" if i % 4 == 3 else f"w{i}" for i in range(vocab_size - len(SPECIALS))
    ]
    (out_dir / "vocab.txt").write_text("".join(w + "\n" for w in words), encoding="utf-8")
    return out_dir / "vocab.txt"


def synthetic_arrays(
    n: int, max_seq_len: int, vocab_size: int, seed: int = 0, *, full_length: bool = False
) -> dict:
    """Instance arrays shaped like real BERT data: `[CLS] A [SEP] B [SEP]`, most rows nearly
    full, 10% short (the original's short_seq_prob), random non-special tokens."""
    rng = np.random.default_rng(seed)
    L = max_seq_len
    if full_length:
        length = np.full(n, L)
    else:
        short = rng.random(n) < 0.1
        length = np.where(short, rng.integers(5, L + 1, n), rng.integers(max(5, L - 24), L + 1, n))
    b_start = np.maximum(2, (length * rng.uniform(0.2, 0.8, n)).astype(np.int64))
    b_start = np.minimum(b_start, length - 2)
    # Zipf-like ids, as real text: a few tokens are very frequent.
    ids = 5 + (rng.pareto(1.0, (n, L)) * 50).astype(np.int64) % (vocab_size - 5)
    pos = np.arange(L)[None, :]
    ids[:, 0] = 2
    ids[np.arange(n), b_start - 1] = 3
    ids[np.arange(n), length - 1] = 3
    ids[pos >= length[:, None]] = 0
    return {
        "input_ids": ids.astype(np.int32),
        "length": length.astype(np.int32),
        "b_start": b_start.astype(np.int32),
        "next_sentence_label": (rng.random(n) < 0.5).astype(np.uint8),
    }


def synthetic_dataset(
    out_dir,
    num_instances: int,
    max_seq_len: int = 128,
    vocab_size: int = 30522,
    seed: int = 0,
    shard_size: int = 16_384,
    max_sequences_per_row: int | None = None,
) -> Path:
    """Writes a generated dataset directory (WordPiece vocab, several shards); returns it.

    With `max_sequences_per_row` K: packed rows (packing.py) of `num_instances` sequences of
    at most max_seq_len / 2 tokens each.
    """
    from bertjax.data.packing import pack_rows
    from bertjax.data.shards import write_dataset
    from bertjax.data.tokenizer import load_tokenizer

    out_dir = Path(out_dir)
    vocab_file = synthetic_vocab(out_dir.with_name(out_dir.name + ".vocab"), vocab_size)
    if max_sequences_per_row:
        half = synthetic_arrays(num_instances, max_seq_len // 2, vocab_size, seed)
        half["input_ids"] = np.pad(half["input_ids"], ((0, 0), (0, max_seq_len - max_seq_len // 2)))
        arrays = pack_rows(half, max_sequences_per_row, pad_id=0)
    else:
        arrays = synthetic_arrays(num_instances, max_seq_len, vocab_size, seed)
    return write_dataset(
        out_dir,
        arrays,
        load_tokenizer(vocab_file),
        max_seq_len,
        seed=seed,
        shard_size=shard_size,
        overwrite=True,
        max_sequences_per_row=max_sequences_per_row,
    )


def synthetic_batch(
    seed: int,
    *,
    batch: int,
    length: int,
    predictions: int,
    vocab: int,
    padded: bool = True,
    weight_prob: float = 1.0,
) -> dict[str, np.ndarray]:
    """A pretraining batch with the original BERT's keys, from `synthetic_arrays` rows (padded
    rows of uneven lengths, or every row full when not `padded`): up to `predictions` distinct
    masked positions per row among its real non-[CLS] tokens (rows with fewer get zero-weight
    slots, as the loader gives them), each weighted 1 with probability `weight_prob`."""
    rows = synthetic_arrays(batch, length, vocab, seed, full_length=not padded)
    rng = np.random.default_rng([seed, 1])
    pos_L = np.arange(length)[None, :]
    input_mask = pos_L < rows["length"][:, None]
    positions = np.zeros((batch, predictions), np.int32)
    weights = np.zeros((batch, predictions), np.float32)
    for r, n in enumerate(rows["length"]):
        k = min(predictions, int(n) - 2)
        positions[r, :k] = np.sort(rng.choice(np.arange(1, n - 1), k, replace=False))
        weights[r, :k] = 1.0
    weights *= rng.random((batch, predictions)) < weight_prob
    # The targets are the tokens at the masked positions, which read [MASK] (id 4), as in
    # BERT's data: frequent tokens are learnable, so a model trained on these batches learns.
    rows_B1 = np.arange(batch)[:, None]
    masked_ids = rows["input_ids"][rows_B1, positions].astype(np.int32)
    input_ids = rows["input_ids"].copy()
    input_ids[rows_B1, positions] = np.where(weights > 0, 4, input_ids[rows_B1, positions])
    return {
        "input_ids": input_ids,
        "input_mask": input_mask.astype(np.int32),
        "segment_ids": ((pos_L >= rows["b_start"][:, None]) & input_mask).astype(np.int32),
        "masked_lm_positions": positions,
        "masked_lm_ids": np.where(weights > 0, masked_ids, 0).astype(np.int32),
        "masked_lm_weights": weights,
        "next_sentence_labels": rows["next_sentence_label"].astype(np.int32),
    }
