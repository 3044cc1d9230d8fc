"""A fine-tuning run's compiled programs: the train step at each of its length buckets and the
predict step at each length its predicted splits' rows need, compiled before the first step,
several at once.

jit would compile each the first time its shape came up, one after another, in the middle
of the first epoch and the first evaluation. Compiled here instead: XLA compiles in threads
of its own (tracing and lowering take the GIL, compiling does not), so on a host with idle
cores (a TPU VM's, a GPU machine's) the run waits for about the slowest program instead of
all of them in turn (on this 2-core CPU a SQuAD run's 4 train programs alone take 32 s two at
a time against 46 s one after another; a whole short run gains less, 4-6%, as jit's lazy
compiles there overlapped the steps already dispatched); and a step too large for the chip
is one error before any step runs (the compiler's refusal, or the longest bucket's memory),
not a failure at that bucket's first batch mid-epoch.
"""

import concurrent.futures
import dataclasses
import os
import time

import numpy as np

from bertjax.finetune import batches, buckets

# Concurrent compiles at most: each holds its module's compiler state in host memory.
MAX_WORKERS = 8


@dataclasses.dataclass(frozen=True)
class Programs:
    """Compiled steps by the token length of their batches (the last axis of input_ids)."""

    train: dict  # length -> compiled (state, batch, rng) -> (state, metrics); state donated
    predict: dict  # length -> compiled (params, batch) -> outputs, replicated

    def train_step(self, state, batch: dict, rng):
        """The train step of the batch's length."""
        return _at_length(self.train, batch, "train")(state, batch, rng)

    def predict_step(self, params, batch: dict):
        """The predict step of the batch's length."""
        return _at_length(self.predict, batch, "predict")(params, batch)


def _at_length(compiled: dict, batch: dict, what: str):
    length = batch["input_ids"].shape[-1]
    if length not in compiled:  # a caller's mistake: every length used is compiled ahead
        raise ValueError(f"no {what} step compiled for length {length} (have {sorted(compiled)})")
    return compiled[length]


def train_batch_shapes(train: batches.Split, plan: buckets.Plan, batch_size: int) -> dict:
    """length -> one global training batch's arrays at that bucket length (only their shapes
    and dtypes are read), for every bucket of `plan` that holds a row."""
    rows = np.zeros(batch_size, np.int64)
    return {
        length: buckets.take(train, rows, length)
        for length, n in zip(plan.lengths, plan.rows_per_bucket())
        if n
    }


def predict_batch_shapes(splits: list, bucket_lengths: tuple, batch_size: int) -> dict:
    """length -> one prediction batch's arrays (buckets.predict's keys) at each of
    `bucket_lengths` that a row of `splits` falls into."""
    splits = [s for s in splits if len(s)]  # an empty one predicts nothing
    used = set()
    for split in splits:
        bucket = buckets.assign(buckets.row_lengths(split), bucket_lengths)
        used |= {bucket_lengths[b] for b in np.unique(bucket) if b < len(bucket_lengths)}
    rows = np.zeros(batch_size, np.int64)
    return {n: buckets.prediction_batch(splits[0], rows, n) for n in sorted(used)}


def compile_all(setup, config, train_shapes: dict, predict_shapes: dict, log, workers=None):
    """Programs of `setup`'s (step_setup.StepSetup) train step at each of `train_shapes`'
    lengths and its predict step at each of `predict_shapes`', compiled concurrently
    (`workers` at a time; default one per core, at most MAX_WORKERS). A step that cannot fit
    the chip is a UserError naming what in `config` to change: the TPU compiler's refusal
    (aot.compile_fitting) or the longest train step's memory (aot.check_fits). `log` gets a
    line of what was compiled and how long it took, and one of the memory."""
    from bertjax.train import aot, compile_cache

    predict_fn = setup.predict_fn()
    params = setup.abstract_train_args({})[0].params
    jobs = [("train", n, setup.train_fn, setup.abstract_train_args(b))
            for n, b in train_shapes.items()]  # fmt: skip
    jobs += [("predict", n, predict_fn, (params, setup.abstract_batch(b)))
             for n, b in predict_shapes.items()]  # fmt: skip
    if workers is None:
        workers = min(len(jobs), os.cpu_count() or 1, MAX_WORKERS)

    def compile_one(job):
        _, _, fn, args = job
        return aot.compile_fitting(fn.trace(*args).lower(), setup.mesh, config)

    start = time.perf_counter()
    with compile_cache.watch() as cache_events:
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            compiled = list(pool.map(compile_one, jobs))
    by_kind = {"train": {}, "predict": {}}
    for (kind, length, _, _), program in zip(jobs, compiled):
        by_kind[kind][length] = program
    programs = Programs(train=by_kind["train"], predict=by_kind["predict"])
    log(
        f"compiled the train step at {_lengths(programs.train)} and the predict step at "
        f"{_lengths(programs.predict)} in {time.perf_counter() - start:.1f}s, {workers} at a "
        f"time ({cache_events.describe(compile_cache.current_dir())})"
    )
    aot.check_fits(programs.train[max(programs.train)], setup.mesh, config, log)
    return programs


def _lengths(compiled: dict) -> str:
    if not compiled:
        return "no length"
    return f"length{'s' * (len(compiled) > 1)} {'/'.join(map(str, sorted(compiled)))}"
