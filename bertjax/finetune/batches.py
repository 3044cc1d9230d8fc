"""Fine-tuning data: encoded splits -> the rows and batches of each step."""

import dataclasses

import numpy as np

INPUT_KEYS = ("input_ids", "input_mask", "segment_ids")  # what the model reads of a batch


@dataclasses.dataclass
class Split:
    """One encoded split: arrays [n, ...] (INPUT_KEYS and the labels a batch carries), each
    row's example idx, and what decoding its outputs needs (the task kind's; None for GLUE)."""

    name: str
    arrays: dict
    idx: np.ndarray
    source: object = None

    def __len__(self) -> int:
        return len(self.idx)


def epoch_rows(n: int, batch_size: int, seed: int, epoch: int) -> np.ndarray:
    """[steps, batch_size] example rows of one epoch, a pure function of (seed, epoch):
    a fresh shuffle, the last batch padded with -1 (rows of weight 0), so every training
    example is seen once per epoch and steps = ceil(n / batch_size)."""
    order = np.random.default_rng([seed, epoch]).permutation(n)
    steps = -(-n // batch_size)
    return np.concatenate([order, np.full(steps * batch_size - n, -1)]).reshape(steps, -1)


def take(split: Split, rows: np.ndarray, keys=None) -> dict:
    """The batch of `rows` (-1: a padding row, a copy of row 0) with `weights` 1 on real rows;
    `keys`: the arrays it holds (default: all of the split's)."""
    keys = tuple(split.arrays) if keys is None else keys
    real = rows >= 0
    batch = {k: split.arrays[k][np.where(real, rows, 0)] for k in keys}
    batch["weights"] = real.astype(np.float32)
    return batch


def local_slice(batch: dict, process_index: int, process_count: int) -> dict:
    """This process's rows of a global batch (process p holds the p-th contiguous block)."""
    b = len(batch["input_ids"]) // process_count
    return {k: v[process_index * b : (process_index + 1) * b] for k, v in batch.items()}


def synthetic_inputs(batch_size: int, seq_len: int, vocab_size: int, seed: int = 0) -> dict:
    """INPUT_KEYS of full-length two-segment rows (every position a real token) and weights
    of 1: the inputs of a benchmark's or an ahead-of-time compile's batch."""
    from bertjax.data.synthetic import synthetic_batch

    full = synthetic_batch(
        seed, batch=batch_size, length=seq_len, predictions=1, vocab=vocab_size, padded=False
    )
    return {k: full[k] for k in INPUT_KEYS} | {"weights": np.ones(batch_size, np.float32)}
