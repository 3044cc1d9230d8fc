"""Length-bucketed fine-tuning batches: a few static lengths chosen from the training split,
each epoch's batches drawn bucket by bucket in a seeded order, and prediction in buckets with
the outputs of every row back in place at max_seq_len."""

import dataclasses

import numpy as np

from bertjax.finetune import batches

# Bucket lengths are multiples of 8: the sequence dimension then tiles evenly on every
# backend (TPU sublanes of 8, GPU tensor-core k/n multiples of 8), so a short bucket loses
# no speed to padding inside the kernels.
ALIGN = 8


def row_lengths(split: batches.Split) -> np.ndarray:
    """[n] real tokens of each row (its input_mask sum, [CLS] and [SEP]s included); a row of
    several sequences (SWAG's [n, C, L] choices) is as long as its longest."""
    mask = split.arrays["input_mask"]
    return mask.sum(axis=-1).reshape(len(mask), -1).max(axis=1).astype(np.int64)


def cut(arrays: dict, length: int, token_shape: tuple[int, ...]) -> dict:
    """`arrays` with every per-token array (rows of `token_shape`, input_ids' row shape:
    the inputs, NER's label ids and weights, SWAG's [C, L] choices) cut to its first `length`
    positions along the last axis; per-row arrays (labels, answer positions, weights) as
    they are."""
    return {k: v[..., :length] if v.shape[1:] == token_shape else v for k, v in arrays.items()}


def choose_lengths(lengths: np.ndarray, count: int, max_seq_len: int) -> tuple[int, ...]:
    """Up to `count` bucket lengths (ascending, multiples of ALIGN or max_seq_len) that
    minimise the padded tokens of `lengths`' rows when each row goes into the smallest bucket
    that holds it; the largest holds the longest row. count 0: (max_seq_len,), every row
    padded to max_seq_len as without buckets."""
    if count == 0 or len(lengths) == 0:
        return (max_seq_len,)
    rounded = np.minimum(-(-np.asarray(lengths) // ALIGN) * ALIGN, max_seq_len)
    sizes, rows = np.unique(rounded, return_counts=True)  # candidate lengths, rows at each
    # cost[k][j]: the fewest padded tokens of the rows up to sizes[j] in k + 1 buckets, the
    # last ending at sizes[j]; a small exact dynamic programme (at most max_seq_len / 8
    # candidates), not quantiles, so that no bucket boundary is wasted on a crowded length.
    below = np.concatenate([[0], np.cumsum(rows)])  # rows of sizes[:j]
    m, count = len(sizes), min(count, len(sizes))
    cost = np.full((count, m), np.inf)
    prev = np.zeros((count, m), np.int64)
    cost[0] = sizes * below[1:]
    for k in range(1, count):
        for j in range(k, m):
            # the bucket ending at sizes[j] starts after the one ending at sizes[i]
            options = [cost[k - 1, i] + sizes[j] * (below[j + 1] - below[i + 1])
                       for i in range(k - 1, j)]  # fmt: skip
            prev[k, j] = k - 1 + int(np.argmin(options))
            cost[k, j] = min(options)
    k = int(np.argmin(cost[:, m - 1]))  # fewer buckets when more would not save a token
    chosen, j = [], m - 1
    while k >= 0:
        chosen.append(int(sizes[j]))
        j, k = prev[k, j], k - 1
    return tuple(sorted(chosen))


def prediction_lengths(train_lengths: tuple[int, ...], max_seq_len: int) -> tuple[int, ...]:
    """The training buckets plus max_seq_len, for dev and test rows longer than all of them
    (compiled only when such a row exists)."""
    return tuple(sorted({*train_lengths, max_seq_len}))


def assign(lengths: np.ndarray, bucket_lengths: tuple[int, ...]) -> np.ndarray:
    """[n] index of the smallest bucket that holds each row (len(bucket_lengths) when none
    does)."""
    return np.searchsorted(np.asarray(bucket_lengths), lengths, side="left")


@dataclasses.dataclass(frozen=True)
class Plan:
    """A run's buckets: the static lengths and the training rows' bucket indices."""

    lengths: tuple[int, ...]  # ascending; each batch is sliced to one of them
    train_bucket: np.ndarray  # [n_train] bucket index of each training row

    @classmethod
    def of(cls, train: batches.Split, count: int, max_seq_len: int) -> "Plan":
        """The plan of `count` buckets (0: one, max_seq_len) for the training split."""
        lengths = row_lengths(train)
        chosen = choose_lengths(lengths, count, max_seq_len)
        return cls(chosen, assign(lengths, chosen))

    def rows_per_bucket(self) -> np.ndarray:
        """[len(lengths)] training rows in each bucket."""
        return np.bincount(self.train_bucket, minlength=len(self.lengths))

    def steps_per_epoch(self, batch_size: int) -> int:
        """ceil(rows / batch_size), as without buckets: `epoch` carries each bucket's
        leftover rows into the next, so only the last batch of an epoch is partial."""
        return -(-len(self.train_bucket) // batch_size)

    def batches_per_bucket(self, batch_size: int) -> list[int]:
        """The batches of each bucket in an epoch (leftovers carried up, see `epoch`)."""
        counts, carried = [], 0
        for b, n in enumerate(self.rows_per_bucket()):
            rows = carried + int(n)
            last = b == len(self.lengths) - 1
            counts.append(-(-rows // batch_size) if last else rows // batch_size)
            carried = 0 if last else rows % batch_size
        return counts

    def padded_fraction(self, batch_size: int) -> float:
        """Tokens of an epoch's batches as a fraction of the same rows padded to the largest
        of `lengths` in ceil(n / batch_size) batches, for the log."""
        tokens = sum(
            n * batch_size * length
            for n, length in zip(self.batches_per_bucket(batch_size), self.lengths)
        )
        full = self.steps_per_epoch(batch_size) * batch_size * max(self.lengths)
        return tokens / max(full, 1)

    def epoch(self, batch_size: int, seed: int, epoch: int) -> list[tuple[int, np.ndarray]]:
        """(bucket length, [batch_size] rows) of each step of one epoch, a pure function of
        (seed, epoch). The epoch's permutation (batches.epoch_rows's) is split by bucket, in
        order within each; the rows of a bucket that do not fill a last batch are carried
        into the next (longer) one, so that only the epoch's last batch is partial (padded
        with -1 rows of weight 0), as without buckets; then each bucket's batches are spread
        evenly over the epoch (its batch j of n at (j + u) / n, u a random offset per bucket),
        so that any few consecutive steps hold the buckets' mix. Runs of one bucket's batches
        would skew the optimizer where a row's length and its label go together (SQuAD: only
        long contexts have windows without the answer). With one bucket the batches are
        epoch_rows' own, in its order."""
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(len(self.train_bucket))
        keyed, carried = [], np.zeros(0, np.int64)
        for b, length in enumerate(self.lengths):
            rows = np.concatenate([carried, order[self.train_bucket[order] == b]])
            if b == len(self.lengths) - 1:
                full = -(-len(rows) // batch_size) * batch_size
                rows, carried = np.concatenate([rows, np.full(full - len(rows), -1)]), rows[:0]
            else:
                full = len(rows) // batch_size * batch_size
                rows, carried = rows[:full], rows[full:]
            chunks = rows.reshape(-1, batch_size)
            offset = rng.random() if len(self.lengths) > 1 else 0.0
            keyed += [
                ((j + offset) / len(chunks), b, length, chunk) for j, chunk in enumerate(chunks)
            ]
        keyed.sort(key=lambda item: item[:2])
        return [(length, chunk) for _, _, length, chunk in keyed]


def take(split: batches.Split, rows: np.ndarray, length: int, keys=None) -> dict:
    """batches.take's batch with its per-token arrays cut to `length` tokens (`cut`): nothing
    real is lost, as every row of a bucket fits in it; per-row labels (and SQuAD's answer
    positions, always inside a row's real tokens) as they are."""
    return cut(batches.take(split, rows, keys), length, split.arrays["input_ids"].shape[1:])


def prediction_batch(split: batches.Split, rows: np.ndarray, length: int) -> dict:
    """The model inputs alone (batches.INPUT_KEYS, no weights) of `rows` cut to `length`."""
    batch = take(split, rows, length, batches.INPUT_KEYS)
    del batch["weights"]
    return batch


def predict(
    predict_fn,
    params,
    split: batches.Split,
    batch_size: int,
    mesh,
    bucket_lengths: tuple[int, ...],
    max_seq_len: int,
    token_outputs: bool,
):
    """The model's outputs (each [n, ...]) on every row of `split`, in the split's order: rows
    grouped by the smallest of `bucket_lengths` that holds them, each group in batches of
    `batch_size` (the last padded, its padding rows dropped), so each row counts exactly once.
    `token_outputs`: the outputs have a sequence axis second (SQuAD's start/end logits [n, L],
    NER's [n, L, K]), restored to max_seq_len with -inf beyond the bucket (positions past a
    row's real tokens are padding, which decoding leaves out)."""
    import jax

    from bertjax.train import sharding

    lengths = row_lengths(split)
    bucket = assign(lengths, bucket_lengths)
    if (bucket == len(bucket_lengths)).any():  # a caller's mistake: no bucket holds the row
        raise ValueError(f"rows longer than every bucket {bucket_lengths}")

    def fetch(pending):  # the device's outputs of a dispatched batch, its padding rows cut
        out, chunk, length = pending
        out = jax.tree.map(lambda x: np.asarray(x)[: len(chunk)], jax.device_get(out))
        if token_outputs and length < max_seq_len:
            out = jax.tree.map(lambda x: np.pad(
                x, [(0, 0), (0, max_seq_len - length)] + [(0, 0)] * (x.ndim - 2),
                constant_values=-np.inf), out)  # fmt: skip
        parts.append(out)
        order.append(chunk)

    # Batch n+1 is built and dispatched before batch n's outputs are fetched, so the host's
    # fetching, padding and batch building overlap the device's work.
    parts, order, pending = [], [], None
    for b, length in enumerate(bucket_lengths):
        members = np.flatnonzero(bucket == b)
        for start in range(0, len(members), batch_size):
            rows = np.full(batch_size, -1)
            chunk = members[start : start + batch_size]
            rows[: len(chunk)] = chunk
            batch = batches.local_slice(prediction_batch(split, rows, length),
                                        jax.process_index(), jax.process_count())  # fmt: skip
            dispatched = (predict_fn(params, sharding.global_batch(batch, mesh)), chunk, length)
            if pending is not None:
                fetch(pending)
            pending = dispatched
    if pending is not None:
        fetch(pending)
    if not parts:
        raise ValueError(f"split {split.name} has no rows")
    outputs = jax.tree.map(lambda *p: np.concatenate(p), *parts)
    inverse = np.empty(len(split), np.int64)
    inverse[np.concatenate(order)] = np.arange(len(split))
    return jax.tree.map(lambda x: x[inverse], outputs)
