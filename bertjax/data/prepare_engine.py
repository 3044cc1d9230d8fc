"""The prepare engine: document blocks -> (worker processes) -> instance arrays -> shards.

The corpus is cut into blocks of documents, numbered in stream order. Block b is tokenized
and turned into instances by `process_block` with a `random.Random` seeded by (seed, b)
alone, so its rows do not depend on the number of workers or machines.

With `held_out` N > 0, the stream starts with small eval blocks of `EVAL_BLOCK_DOCS` (at
most `block_docs`) documents, processed one at a time until they give N instances; the rest
of the last eval block is dropped, so no eval document reaches training. Then come
training blocks of `block_docs` documents; training block t (counted from the first after
the eval blocks) belongs to part `t % num_shards`. The parent writes results in block
order, so a one-shot run and the merge of all parts write the same rows in the same
order: byte-identical shards.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import multiprocessing
import os
import random
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from bertjax import interrupt, outputs
from bertjax.data import instances as inst
from bertjax.data import packing, shards
from bertjax.errors import UserError


@dataclasses.dataclass(frozen=True)
class InstanceOptions:
    """How instances are made; recorded in the manifest's `settings`."""

    max_seq_len: int = 128
    short_seq_prob: float = 0.1
    dupe_factor: int = 1
    seed: int = 12345
    nsp: bool = True
    block_docs: int = 1000
    shard_size: int = shards.DEFAULT_SHARD_SIZE
    pack: bool = False  # packed rows (packing.py)
    max_sequences_per_row: int = 3  # with pack: K, Graphcore's default

    def validate(self) -> None:
        """Raises UserError on values outside their range."""
        if not 8 <= self.max_seq_len <= 4096:
            raise UserError(f"--max-seq-len {self.max_seq_len} must be between 8 and 4096")
        if not 0.0 <= self.short_seq_prob <= 1.0:
            raise UserError(f"--short-seq-prob {self.short_seq_prob} must be in [0, 1]")
        if self.dupe_factor < 1:
            raise UserError(f"--dupe-factor {self.dupe_factor} must be at least 1")
        if self.block_docs < 2:
            raise UserError(
                f"--block-docs {self.block_docs} must be at least 2 (the random "
                "next segment comes from another document of the block)"
            )
        if self.shard_size < 1:
            raise UserError(f"--shard-size {self.shard_size} must be at least 1")
        if self.pack:
            packing.validate_max_sequences(self.max_sequences_per_row, self.max_seq_len, self.nsp)
        elif self.max_sequences_per_row != 3:
            raise UserError("--max-sequences-per-row is a setting of --pack: add --pack")


def block_rng(seed: int, block_index: int) -> random.Random:
    """The random generator of one block: a function of (seed, block index) only."""
    return random.Random(f"bertjax-block:{seed}:{block_index}")  # str seeds hash via sha512


def process_block(
    block_index: int, documents: list[list[str]], tokenizer, opts: InstanceOptions
) -> tuple[dict, int]:
    """Tokenizes one block of documents and builds its instances.

    Returns the shard arrays of the block's instances and the number of tokens read.
    """
    sentences = [s for doc in documents for s in doc]
    ids = tokenizer.encode_batch(sentences)  # one call for the block: fast path
    docs, pos = [], 0
    for doc in documents:
        docs.append(ids[pos : pos + len(doc)])
        pos += len(doc)
    rng = block_rng(opts.seed, block_index)
    if opts.nsp:
        rows = inst.create_nsp_instances(
            docs, opts.max_seq_len, opts.short_seq_prob, opts.dupe_factor, rng
        )
    else:
        rows = inst.create_contiguous_instances(
            docs, opts.max_seq_len, opts.dupe_factor, tokenizer.sep_id, rng
        )
    arrays = inst.pack_instances(
        rows, opts.max_seq_len, tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id
    )
    if opts.pack:  # within the block: rows stay a function of (seed, block index)
        return _packed(arrays, opts, tokenizer), sum(len(x) for x in ids)
    return _smallest_dtypes(arrays, tokenizer), sum(len(x) for x in ids)


def _packed(arrays: dict, opts: InstanceOptions, tokenizer) -> dict:
    """Unpacked instance arrays -> packed rows (packing.pack_rows), in their smallest dtypes."""
    packed = packing.pack_rows(arrays, opts.max_sequences_per_row, tokenizer.pad_id)
    return _smallest_dtypes(packed, tokenizer)


def _smallest_dtypes(arrays: dict, tokenizer) -> dict:
    """The arrays in their smallest dtypes, before they cross a process boundary."""
    arrays["input_ids"] = arrays["input_ids"].astype(shards.ids_dtype(tokenizer.vocab_size))
    arrays["length"] = arrays["length"].astype(np.int16)
    arrays["b_start"] = arrays["b_start"].astype(np.int16)
    return arrays


def iter_blocks(documents: Iterable[list[str]], block_docs: int) -> Iterator[list[list[str]]]:
    """Groups a document stream into lists of `block_docs` documents (the last may be short)."""
    block = []
    for doc in documents:
        block.append(doc)
        if len(block) == block_docs:
            yield block
            block = []
    if block:
        yield block


EVAL_BLOCK_DOCS = 100  # documents per eval block: the unused rest of the last one is lost

_WORKER: dict = {}


def _init_worker(tokenizer_path: str, lowercase: bool, opts: InstanceOptions) -> None:
    interrupt.ignore_in_worker()  # a Ctrl-C is the parent's to handle: it ends the pool
    # K worker processes share the cores: no extra Rust threads inside each of them.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from bertjax.data.tokenizer import load_tokenizer

    _WORKER["tokenizer"] = load_tokenizer(tokenizer_path, lowercase=lowercase)
    _WORKER["opts"] = opts


def _work(block_index: int, documents: list[list[str]]) -> tuple[dict, int]:
    return process_block(block_index, documents, _WORKER["tokenizer"], _WORKER["opts"])


def run_blocks(
    blocks: Iterable[tuple[int, list[list[str]]]],
    wanted,
    tokenizer,
    opts: InstanceOptions,
    workers: int,
) -> Iterator[tuple[int, dict | None, int]]:
    """Yields (block index, arrays or None if not `wanted(b)`, tokens) in block order.

    With K > 1 workers at most 2K blocks are in flight, so memory stays bounded however
    large the corpus.
    """
    if workers == 1:
        for b, docs in blocks:
            yield (b, *process_block(b, docs, tokenizer, opts)) if wanted(b) else (b, None, 0)
        return
    ctx = multiprocessing.get_context("spawn")  # fork after Rust threads started is unsafe
    init = (str(tokenizer.vocab_file), tokenizer.lowercase, opts)
    with interrupt.blocked_while_starting():
        pool = ctx.Pool(workers, initializer=_init_worker, initargs=init)
    with pool:
        pending: collections.deque = collections.deque()
        for b, docs in blocks:
            pending.append((b, pool.apply_async(_work, (b, docs)) if wanted(b) else None))
            while len(pending) >= 2 * workers or (pending and pending[0][1] is None):
                yield _result(pending.popleft())
        while pending:
            yield _result(pending.popleft())


def _result(item) -> tuple[int, dict | None, int]:
    b, res = item
    return (b, None, 0) if res is None else (b, *res.get())


class Progress:
    """A one-line progress report on stderr: documents, tokens/s, ETA when the size is known."""

    def __init__(self, corpus, enabled: bool = True, label: str = "prepare"):
        self.corpus, self.enabled, self.label = corpus, enabled, label
        self.tty = sys.stderr.isatty()
        self.start = self.last = time.monotonic()
        self.documents = self.tokens = self.instances = 0

    def update(self, force: bool = False) -> None:
        """Prints the line if enough time passed (1 s on a terminal, 30 s in a log)."""
        now = time.monotonic()
        if not self.enabled or (not force and now - self.last < (1 if self.tty else 30)):
            return
        self.last = now
        elapsed = max(now - self.start, 1e-9)
        line = (
            f"{self.label}: {self.documents:,} docs, {self.instances:,} instances, "
            f"{self.tokens:,} tokens, {self.tokens / elapsed:,.0f} tokens/s, "
            f"{elapsed:.0f}s"
        )
        total, done = getattr(self.corpus, "total", None), getattr(self.corpus, "done", 0)
        if total and done:
            frac = min(done / total, 1.0)
            eta = elapsed * (1 - frac) / frac
            line += f", {100 * frac:.0f}% ETA {int(eta) // 60}:{int(eta) % 60:02d}"
        print(
            ("\r" + line + " " * 4) if self.tty else line,
            end="" if self.tty else "\n",
            file=sys.stderr,
            flush=True,
        )

    def close(self) -> None:
        """Prints the final line."""
        self.update(force=True)
        if self.enabled and self.tty:
            print(file=sys.stderr)


def prepare_dataset(
    corpus,
    tokenizer,
    out_dir,
    opts: InstanceOptions,
    *,
    workers: int = 1,
    shard_index: int = 0,
    num_shards: int = 1,
    held_out: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    extra: dict | None = None,
) -> dict:
    """Turns a document stream into a dataset directory (and DIR/eval). Returns the manifest."""
    opts.validate()
    if workers < 1:
        raise UserError(f"--workers {workers} must be at least 1")
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise UserError(f"--shard-index {shard_index} must be in [0, --num-shards {num_shards})")
    if held_out < 0:
        raise UserError(f"--held-out {held_out} must be >= 0")
    out_dir = Path(out_dir)
    inputs = [*getattr(corpus, "paths", ()), *tokenizer.files]
    outputs.check_folder(out_dir, outputs.DATASET, overwrite=overwrite, inputs=inputs)
    with outputs.replacing_folder(out_dir) as staging:  # out_dir changes only when complete
        return _prepare(
            _Job(
                corpus,
                tokenizer,
                staging,
                opts,
                workers,
                shard_index,
                num_shards,
                held_out,
                progress,
                extra or {},
            )
        )


@dataclasses.dataclass
class _Job:
    """One `prepare_dataset` call's inputs, handed to its phases."""

    corpus: object
    tokenizer: object
    out_dir: Path
    opts: InstanceOptions
    workers: int
    shard_index: int
    num_shards: int
    held_out: int
    progress: bool
    extra: dict


def _writer(job: _Job, out_dir: Path) -> shards.ShardWriter:
    shards.copy_tokenizer(job.tokenizer, out_dir)
    k = job.opts.max_sequences_per_row if job.opts.pack else None
    return shards.ShardWriter(
        out_dir, job.opts.max_seq_len, job.tokenizer.vocab_size, job.opts.shard_size, k
    )


def _prepare(job: _Job) -> dict:
    opts = job.opts
    writer = _writer(job, job.out_dir)
    write_eval = job.held_out > 0 and job.shard_index == 0
    eval_writer = None
    if write_eval:
        (job.out_dir / "eval").mkdir()
        eval_writer = _writer(job, job.out_dir / "eval")
    prog = Progress(job.corpus, job.progress)

    def counted(docs_iter):
        for d in docs_iter:
            prog.documents += 1
            yield d

    docs = counted(job.corpus)
    eval_blocks = _eval_split(job, docs, eval_writer, prog)  # 1. the held-out split
    blocks_done, train_tokens = _train_blocks(job, docs, len(eval_blocks), writer, prog)  # 2.
    prog.close()

    if prog.documents == 0:
        raise UserError("the corpus is empty: no document with any text was found")
    if writer.rows == 0 and job.num_shards == 1:
        raise UserError(
            "no training instances are left after holding out "
            f"{job.held_out} for eval; lower --held-out or add text"
        )
    replacements = getattr(job.corpus, "replacements", 0)
    if replacements:
        print(
            f"prepare: replaced {replacements:,} invalid UTF-8 sequence(s) with "
            "U+FFFD (--errors replace)",
            file=sys.stderr,
        )
    fields = {
        "tokenizer": shards.tokenizer_manifest(job.tokenizer),
        "nsp": opts.nsp,
        "seed": opts.seed,
        "command": list(sys.argv),
        "settings": dataclasses.asdict(opts) | {"held_out": job.held_out},
        "part": (
            {"index": job.shard_index, "count": job.num_shards} if job.num_shards > 1 else None
        ),
        "blocks": blocks_done,
        "eval_blocks": eval_blocks,
        "stats": {
            "documents": prog.documents,
            "tokens": train_tokens,
            "utf8_replacements": replacements,
        },
        **job.extra,
    }
    if write_eval:
        eval_writer.close(fields | {"split": "eval", "blocks": eval_blocks})
    return writer.close(fields | {"split": "train", "eval": "eval" if write_eval else None})


def _eval_split(job: _Job, docs, eval_writer, prog) -> list[list[int]]:
    """Small blocks, one at a time, until they give `held_out` instances; every part reads
    them (so that block numbers agree), only part 0 writes them. Returns [[block, count]].

    `held_out` counts instances (sequences) with `--pack` too: the block's instances are made
    unpacked, the first ones taken, and those packed. A packed and an unpacked dataset of the
    same corpus and seed then hold the very same held-out and training sequences."""
    opts = job.opts
    unpacked_opts = dataclasses.replace(opts, pack=False)
    eval_blocks: list[list[int]] = []
    eval_left = job.held_out
    while eval_left > 0:
        block = list(itertools.islice(docs, min(EVAL_BLOCK_DOCS, opts.block_docs)))
        if not block:
            break
        arrays, n_tokens = process_block(len(eval_blocks), block, job.tokenizer, unpacked_opts)
        take = min(eval_left, len(arrays["length"]))
        if eval_writer is not None:
            taken = {k: v[:take] for k, v in arrays.items()}
            if opts.pack:
                taken = _packed(taken, opts, job.tokenizer)
            eval_writer.add(taken)
        eval_blocks.append([len(eval_blocks), take])
        eval_left -= take
        prog.tokens += n_tokens
        prog.update()
    if eval_left > 0 and prog.documents:
        raise UserError(
            f"--held-out {job.held_out} asks for more instances than the whole corpus "
            f"gives ({job.held_out - eval_left}); lower it"
        )
    return eval_blocks


def _train_blocks(job: _Job, docs, first: int, writer, prog) -> tuple[list[list[int]], int]:
    """The training blocks of this part (block b belongs to part (b - first) % num_shards),
    in block order; returns ([[block, count]], tokens)."""
    numbered = enumerate(iter_blocks(docs, job.opts.block_docs), start=first)
    train_tokens = 0
    blocks_done: list[list[int]] = []
    for b, arrays, n_tokens in run_blocks(
        numbered,
        lambda b: (b - first) % job.num_shards == job.shard_index,
        job.tokenizer,
        job.opts,
        job.workers,
    ):
        if arrays is not None:
            writer.add(arrays)
            train_tokens += n_tokens
            prog.tokens += n_tokens
            prog.instances += len(arrays["length"])
            blocks_done.append([b, len(arrays["length"])])
        prog.update()
    return blocks_done, train_tokens
