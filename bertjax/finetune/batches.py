"""Fine-tuning data: encoded splits (GLUE examples here) -> the rows and batches of each step."""

import dataclasses
import os

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


def _has_split_file(task, data_dir: str, split: str) -> bool:
    stem = task.tsv_files[split].removesuffix(".tsv")
    names = (f"{stem}.tsv", f"{split}.jsonl", f"{stem}.jsonl")
    return any(os.path.isfile(os.path.join(data_dir, n)) for n in names)


def load_examples(task, data_dir: str | None) -> dict[str, list[dict]]:
    """split -> examples for train, the dev split(s) and the test split(s) there are (a local
    directory may lack test files: no predictions are written then)."""
    from bertjax.finetune import glue_data

    splits = ["train", *task.dev_splits]
    splits += [
        s for s in task.test_splits if data_dir is None or _has_split_file(task, data_dir, s)
    ]
    return {s: glue_data.load_split(task, s, data_dir) for s in splits}


def encode(task, examples: dict[str, list[dict]], tokenizer, max_seq_len: int) -> dict:
    """split -> Split, tokenised and padded to max_seq_len."""
    from bertjax.finetune import glue_data

    return {
        name: Split(
            name,
            glue_data.encode_examples(rows, tokenizer, max_seq_len, regression=task.is_regression),
            np.array([r["idx"] for r in rows], np.int64),
        )
        for name, rows in examples.items()
    }


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
    b = len(batch["weights"]) // process_count
    return {k: v[process_index * b : (process_index + 1) * b] for k, v in batch.items()}
