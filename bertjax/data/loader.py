"""Step-indexed, per-host batches with prefetch: the data order is a pure function of (seed, step).

Global batch `s` of a run is fixed by (dataset, seed, global batch size, masking) alone:
  steps_per_epoch = len(ds) // global_batch_size  (the last len(ds) % B examples of each
                    epoch's permutation are dropped, a different few every epoch),
  epoch e = s // steps_per_epoch, and the batch is positions [(s % spe) * B, +B) of a seeded
  permutation of all indices for epoch e; each example's mask is seeded by (seed, e, index).
Process p of P takes the contiguous rows [p * B/P, (p+1) * B/P) of that global batch. So the
global batches do not change with the number of hosts, workers or devices, and resuming needs
only the step (`Loader.state()` / `Loader.from_state`).

The permutation is a keyed Feistel network over [0, n) with cycle walking: any position maps
to its example in O(1) without materialising an n-long array, identically on every numpy.
"""

import collections
import concurrent.futures
import dataclasses
import hashlib
import json
import multiprocessing

import numpy as np

from bertjax import interrupt
from bertjax.data.masking import (
    MaskingConfig,
    Vocab,
    default_max_predictions,
    mask_batch,
    mask_packed_batch,
    mix64,
    row_keys,
)
from bertjax.data.shards import open_dataset
from bertjax.errors import UserError

BATCH_KEYS = (
    "input_ids",
    "input_mask",
    "segment_ids",
    "masked_lm_positions",
    "masked_lm_ids",
    "masked_lm_weights",
    "next_sentence_labels",
)
_ORDER_SALT = np.uint64(0x6F72646572)  # keeps the order's keys apart from the masks' keys
_ROUNDS = 6


def permute(positions, n: int, seed: int, epoch: int) -> np.ndarray:
    """Example index at each position of epoch `epoch`'s permutation of [0, n); int64."""
    if n < 1:
        raise ValueError(f"cannot permute an empty range (n={n})")
    half = max(1, ((n - 1).bit_length() + 1) // 2)  # the Feistel domain 4**half covers n
    low = np.uint64((1 << half) - 1)
    shift = np.uint64(half)
    with np.errstate(over="ignore"):
        keys = mix64(row_keys(seed, epoch, np.arange(_ROUNDS)) + _ORDER_SALT)

    def encrypt(v):
        left, right = v >> shift, v & low
        for k in keys:
            with np.errstate(over="ignore"):
                left, right = right, left ^ (mix64(right + k) & low)
        return (left << shift) | right

    y = encrypt(np.asarray(positions, dtype=np.uint64).reshape(-1))
    out_of_range = y >= np.uint64(n)
    while out_of_range.any():  # cycle walking: a bijection of [0, 4**half) restricted to [0, n)
        y[out_of_range] = encrypt(y[out_of_range])
        out_of_range = y >= np.uint64(n)
    return y.astype(np.int64)


@dataclasses.dataclass(frozen=True)
class BatchPlan:
    """Everything that fixes the batches of this process, given the dataset."""

    num_examples: int
    global_batch_size: int
    seed: int
    masking: MaskingConfig
    process_index: int = 0
    process_count: int = 1

    def __post_init__(self):
        B, P = self.global_batch_size, self.process_count
        if B < 1 or P < 1 or not 0 <= self.process_index < P:
            raise UserError(
                f"need global batch size >= 1 and 0 <= process index < process "
                f"count, got B={B}, index={self.process_index}, count={P}"
            )
        if B % P:
            raise UserError(f"global batch size {B} is not divisible by the process count {P}")
        if self.num_examples < B:
            raise UserError(
                f"the dataset has {self.num_examples} examples, fewer than one "
                f"global batch of {B}: lower the global batch size or add data"
            )
        if self.seed < 0:
            raise UserError(f"seed must be >= 0, got {self.seed}")

    def _submit_quietly(self, fn, step: int):
        # A submit may start a worker process: it starts with SIGINT blocked (see
        # interrupt.blocked_while_starting).
        with interrupt.blocked_while_starting():
            return self._pool.submit(fn, step)

    @property
    def steps_per_epoch(self) -> int:
        return self.num_examples // self.global_batch_size

    @property
    def local_batch_size(self) -> int:
        return self.global_batch_size // self.process_count

    def indices(self, step: int) -> tuple[int, np.ndarray]:
        """(epoch, this process's example indices [B/P]) for a global step."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        epoch, s = divmod(int(step), self.steps_per_epoch)
        b = self.local_batch_size
        start = s * self.global_batch_size + self.process_index * b
        return epoch, permute(np.arange(start, start + b), self.num_examples, self.seed, epoch)


def masking_vocab(ds, masking: MaskingConfig) -> Vocab:
    """The masking `Vocab` of a dataset (loads its tokenizer only for whole-word masking)."""
    continuation = ds.load_tokenizer().continuation_mask() if masking.whole_word else None
    try:
        return Vocab.build(ds.special_ids, ds.vocab_size, continuation)
    except ValueError as e:
        raise UserError(f"{ds.path}/manifest.json: {e}") from None


def default_masking(
    ds, masked_lm_prob: float = 0.15, max_predictions: int | None = None, whole_word: bool = False
) -> MaskingConfig:
    """A MaskingConfig for this dataset; max_predictions defaults by its max_seq_len."""
    if max_predictions is None:
        max_predictions = default_max_predictions(ds.max_seq_len, masked_lm_prob)
    try:
        return MaskingConfig(max_predictions, masked_lm_prob, whole_word)
    except ValueError as e:
        raise UserError(str(e)) from None


def make_batch(
    ds, vocab: Vocab, indices, *, seed: int, epoch: int, masking: MaskingConfig
) -> dict[str, np.ndarray]:
    """Reads and masks these examples: a batch with the original BERT's keys and dtypes."""
    indices = np.asarray(indices, dtype=np.int64)
    raw = ds.get_batch(indices)
    if ds.packed:  # several sequences per row (packing.py), each masked as a row of its own
        return raw | mask_packed_batch(
            raw["input_ids"],
            raw["attn_segment_ids"],
            indices,
            seed=seed,
            epoch=epoch,
            cfg=masking,
            vocab=vocab,
            max_sequences_per_row=ds.max_sequences_per_row,
        )
    masked = mask_batch(
        raw["input_ids"],
        raw["input_mask"],
        indices,
        seed=seed,
        epoch=epoch,
        cfg=masking,
        vocab=vocab,
    )
    return {
        "input_ids": masked["input_ids"],
        "input_mask": raw["input_mask"].astype(np.int32),
        "segment_ids": raw["segment_ids"].astype(np.int32),
        "masked_lm_positions": masked["masked_lm_positions"],
        "masked_lm_ids": masked["masked_lm_ids"],
        "masked_lm_weights": masked["masked_lm_weights"],
        "next_sentence_labels": raw["next_sentence_labels"].astype(np.int32),
    }


def batch_for_step(ds, vocab: Vocab, plan: BatchPlan, step: int) -> dict[str, np.ndarray]:
    """This process's batch of global step `step`: a pure function of its arguments."""
    epoch, indices = plan.indices(step)
    return make_batch(ds, vocab, indices, seed=plan.seed, epoch=epoch, masking=plan.masking)


def dataset_fingerprint(ds) -> str:
    """A short hash of the dataset's content (shard checksums, shape, tokenizer)."""
    m = ds.manifest
    content = {
        "max_seq_len": m["max_seq_len"],
        "num_instances": m["num_instances"],
        "shards": [[s["count"], s["sha256"]] for s in m["shards"]],
        "tokenizer": m["tokenizer"],
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


def validate_dataset(
    ds,
    *,
    max_seq_len: int | None = None,
    vocab_size: int | None = None,
    tokenizer_identity: dict | None = None,
    source: str = "the config",
) -> None:
    """Raises UserError if the dataset was made for another sequence length or tokenizer."""
    where = f"{ds.path}/manifest.json"
    if max_seq_len is not None and ds.max_seq_len != max_seq_len:
        raise UserError(
            f"{where} has max_seq_len {ds.max_seq_len} but {source} expects "
            f"{max_seq_len}: prepare the data at {max_seq_len} or fix {source}"
        )
    if vocab_size is not None and ds.vocab_size != vocab_size:
        raise UserError(
            f"{where} has a vocabulary of {ds.vocab_size} tokens but {source} expects {vocab_size}"
        )
    found = ds.manifest["tokenizer"].get("identity")
    if tokenizer_identity is not None and found != tokenizer_identity:
        raise UserError(
            f"{where} names tokenizer {found} but {source} expects {tokenizer_identity}"
        )


# Worker processes each open the dataset once and then build batches by step number.
_WORKER = {}


def _worker_init(path: str, plan: BatchPlan) -> None:
    interrupt.ignore_in_worker()  # a Ctrl-C is the parent's to handle: it ends the pool
    # The parent opened (and, unless told not to, verified) the dataset already; hashing it
    # again in every worker would only delay the first batch. Batches still check their ids.
    ds = open_dataset(path, verify_checksums=False)
    _WORKER.update(ds=ds, vocab=masking_vocab(ds, plan.masking), plan=plan)


def _worker_batch(step: int) -> dict[str, np.ndarray]:
    return batch_for_step(_WORKER["ds"], _WORKER["vocab"], _WORKER["plan"], step)


class Loader:
    """Iterates this process's batches from `start_step` on, built ahead in the background.

    `workers=0` builds batches in `threads` background threads (numpy releases the GIL for
    most of the work; `threads=0` builds them in the caller's thread); `workers=K` uses K
    spawned processes, each opening the dataset itself. Batches come out in step order and
    are identical in every mode. `state()` is a small JSON-serialisable dict;
    `Loader.from_state(ds, state)` continues exactly where it was taken.
    """

    def __init__(
        self,
        ds,
        global_batch_size: int,
        *,
        seed: int = 0,
        start_step: int = 0,
        masking: MaskingConfig | None = None,
        process_index: int = 0,
        process_count: int = 1,
        workers: int = 0,
        threads: int = 2,
        prefetch: int = 4,
    ):
        if start_step < 0 or workers < 0 or threads < 0 or prefetch < 1:
            raise UserError(
                f"need start_step, workers, threads >= 0 and prefetch >= 1, got "
                f"{start_step}, {workers}, {threads}, {prefetch}"
            )
        self.ds = ds
        self.plan = BatchPlan(
            len(ds),
            global_batch_size,
            seed,
            masking or default_masking(ds),
            process_index,
            process_count,
        )
        self.vocab = masking_vocab(ds, self.plan.masking)
        self.fingerprint = dataset_fingerprint(ds)
        self._next_step = int(start_step)
        self._prefetch = prefetch
        self._pending = collections.deque()  # futures of steps _next_step, _next_step + 1, ...
        if workers:
            self._pool = concurrent.futures.ProcessPoolExecutor(
                workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_worker_init,
                initargs=(str(ds.path), self.plan),
            )
            self._submit = lambda step: self._submit_quietly(_worker_batch, step)
        elif threads:
            self._pool = concurrent.futures.ThreadPoolExecutor(threads, "bertjax-loader")
            self._submit = lambda step: self._pool.submit(self.batch_for_step, step)
        else:
            self._pool = None

    def _submit_quietly(self, fn, step: int):
        # A submit may start a worker process: it starts with SIGINT blocked (see
        # interrupt.blocked_while_starting).
        with interrupt.blocked_while_starting():
            return self._pool.submit(fn, step)

    @property
    def steps_per_epoch(self) -> int:
        return self.plan.steps_per_epoch

    def batch_for_step(self, step: int) -> dict[str, np.ndarray]:
        """This process's batch of global step `step` (pure; no effect on the iterator)."""
        return batch_for_step(self.ds, self.vocab, self.plan, step)

    def state(self) -> dict:
        """JSON-serialisable state: the next step this iterator returns, and what fixes it."""
        m = self.plan.masking
        return {
            "step": self._next_step,
            "seed": self.plan.seed,
            "global_batch_size": self.plan.global_batch_size,
            "dataset": self.fingerprint,
            "masked_lm_prob": m.masked_lm_prob,
            "max_predictions_per_seq": m.max_predictions_per_seq,
            "whole_word": m.whole_word,
        }

    @classmethod
    def from_state(cls, ds, state: dict, **kwargs) -> "Loader":
        """A loader that continues from `state` (kwargs: process_index/count, workers, ...)."""
        if state.get("dataset") != dataset_fingerprint(ds):
            raise UserError(
                f"the saved loader state is for dataset {state.get('dataset')}, "
                f"not {ds.path} (fingerprint {dataset_fingerprint(ds)})"
            )
        masking = MaskingConfig(
            state["max_predictions_per_seq"], state["masked_lm_prob"], state["whole_word"]
        )
        return cls(
            ds,
            state["global_batch_size"],
            seed=state["seed"],
            start_step=state["step"],
            masking=masking,
            **kwargs,
        )

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        step = self._next_step
        if self._pool is None:
            batch = self.batch_for_step(step)
        else:
            while len(self._pending) < self._prefetch:
                self._pending.append(self._submit(step + len(self._pending)))
            batch = self._pending.popleft().result()
        self._next_step = step + 1
        return batch

    def close(self) -> None:
        """Stops the background workers (pending batches are dropped)."""
        if self._pool is not None:
            for f in self._pending:
                f.cancel()
            self._pending.clear()
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def num_eval_batches(num_examples: int, batch_size: int) -> int:
    """Batches `eval_batches` yields: every example once, the last batch padded."""
    return -(-num_examples // batch_size)


def eval_batches(
    ds,
    batch_size: int,
    *,
    seed: int = 0,
    masking: MaskingConfig | None = None,
    process_index: int = 0,
    process_count: int = 1,
):
    """Yields this process's slice of each global evaluation batch, in dataset order.

    Every example appears exactly once with a fixed mask (seed, epoch 0). The last global
    batch is padded to `batch_size` with copies of example 0 whose `masked_lm_weights` and
    `next_sentence_weights` are 0, so every batch has the same shape and padding adds nothing
    to weighted metrics.
    """
    if batch_size < 1 or process_count < 1 or not 0 <= process_index < process_count:
        raise UserError(
            f"need batch size >= 1 and 0 <= process index < process count, got "
            f"{batch_size}, {process_index}, {process_count}"
        )
    if batch_size % process_count:
        raise UserError(
            f"eval batch size {batch_size} is not divisible by the process count {process_count}"
        )
    masking = masking or default_masking(ds)
    vocab = masking_vocab(ds, masking)
    n, b = len(ds), batch_size // process_count
    for g in range(num_eval_batches(n, batch_size)):
        rows = g * batch_size + process_index * b + np.arange(b)
        real = rows < n
        batch = make_batch(ds, vocab, np.where(real, rows, 0), seed=seed, epoch=0, masking=masking)
        batch["masked_lm_weights"] *= real[:, None]
        real_b = np.float32(real).reshape(-1, *(1,) * (batch["next_sentence_labels"].ndim - 1))
        batch["next_sentence_weights"] = batch.get("next_sentence_weights", 1) * real_b  # [b, (K)]
        yield batch
