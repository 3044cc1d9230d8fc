"""Loader throughput benchmark: sequences/s of `Loader` on a prepared dataset, or on one
generated into a temporary folder (deleted afterwards).

    bertjax bench loader [--data DATASET_DIR] [--workers 0 2] [--json FILE]

`--data` is only read: the benchmark never writes into a user's dataset.
"""

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bertjax.data.synthetic import synthetic_dataset
from bertjax.errors import UserError


def _measure(ds, global_batch_size: int, steps: int, **loader_kwargs) -> dict:
    from bertjax.data.loader import Loader

    t0 = time.perf_counter()
    with Loader(ds, global_batch_size, seed=0, **loader_kwargs) as loader:
        next(loader)  # start-up (process spawn, dataset open) is reported apart
        t1 = time.perf_counter()
        for _ in range(steps):
            next(loader)
        t2 = time.perf_counter()
    return {
        "sequences_per_s": round(steps * global_batch_size / (t2 - t1), 1),
        "ms_per_batch": round(1e3 * (t2 - t1) / steps, 2),
        "startup_s": round(t1 - t0, 2),
    }


def run_loader_benchmark(
    data_dir=None,
    global_batch_size: int = 256,
    steps: int = 60,
    workers=(0, 2),
    num_instances: int = 50_000,
    max_seq_len: int = 128,
    whole_word: bool = False,
) -> dict:
    """Loader sequences/s for each worker count (0 = background threads), plus the
    single-thread synchronous rate, over the prepared dataset `data_dir` (read only), or
    without one over `num_instances` generated instances of `max_seq_len` tokens in a
    temporary folder."""
    from bertjax.data.shards import open_dataset

    if data_dir is not None:
        if not (Path(data_dir) / "manifest.json").is_file():
            raise UserError(
                f"--data {data_dir} is not a prepared dataset (no manifest.json); "
                "leave --data out to time a generated one"
            )
        return _benchmark(open_dataset(data_dir), global_batch_size, steps, workers, whole_word)
    tmp = Path(tempfile.mkdtemp(prefix="bertjax-bench-loader-"))
    try:
        print(
            f"generating {num_instances} instances of {max_seq_len} tokens in {tmp}",
            file=sys.stderr,
        )
        synthetic_dataset(tmp / "data", num_instances, max_seq_len)
        return _benchmark(open_dataset(tmp / "data"), global_batch_size, steps, workers, whole_word)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _benchmark(ds, global_batch_size: int, steps: int, workers, whole_word: bool) -> dict:
    from bertjax.data.loader import default_masking

    max_seq_len = ds.max_seq_len
    masking = default_masking(ds, whole_word=whole_word)
    result = {
        "max_seq_len": max_seq_len,
        "global_batch_size": global_batch_size,
        "num_instances": len(ds),
        "steps": steps,
        "whole_word": whole_word,
        "runs": {},
    }
    configs = [("synchronous", {"workers": 0, "threads": 0})]
    configs += [
        (
            f"workers={w}" + (" (2 threads)" if w == 0 else " (processes)"),
            {"workers": w, "threads": 2},
        )
        for w in workers
    ]
    for name, kwargs in configs:
        print(f"measuring {name} ...", file=sys.stderr)
        result["runs"][name] = _measure(ds, global_batch_size, steps, masking=masking, **kwargs)
    return result


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options."""
    p.add_argument(
        "--data",
        default=None,
        help="a prepared dataset to time, read only (default: a generated one in a "
        "temporary folder)",
    )
    p.add_argument("--global-batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=60, help="batches timed per configuration")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument(
        "--num-instances",
        type=int,
        default=50_000,
        help="instances of the generated dataset (without --data)",
    )
    p.add_argument(
        "--max-seq-len",
        type=int,
        default=128,
        help="tokens per row of the generated dataset (without --data)",
    )
    p.add_argument("--whole-word", action="store_true")
    p.add_argument("--json", help="also write the result to this file")


def run(args) -> int:
    """Runs the benchmark and prints one line per configuration, then the JSON."""
    result = run_loader_benchmark(
        args.data,
        args.global_batch_size,
        args.steps,
        tuple(args.workers),
        args.num_instances,
        args.max_seq_len,
        args.whole_word,
    )
    for name, r in result["runs"].items():
        print(
            f"{name:28s} {r['sequences_per_s']:10.1f} seq/s  {r['ms_per_batch']:7.2f} "
            f"ms/batch  start-up {r['startup_s']} s"
        )
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0
