"""Loader throughput benchmark: sequences/s of `Loader` on a generated dataset.

python -m bertjax.data.bench_loader --data /tmp/bench-data   (or `bertjax bench loader`)
"""

import argparse
import json
import sys
import time
from pathlib import Path

from bertjax import outputs
from bertjax.data.synthetic import synthetic_dataset


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
    data_dir,
    global_batch_size: int = 256,
    steps: int = 60,
    workers=(0, 2),
    num_instances: int = 50_000,
    max_seq_len: int = 128,
    whole_word: bool = False,
) -> dict:
    """Loader sequences/s for each worker count (0 = background threads), plus the
    single-thread synchronous rate. Times the dataset in `data_dir` when there is one (it is
    only read), else builds a generated one of `num_instances` instances of `max_seq_len`
    tokens there."""
    from bertjax.data.loader import default_masking
    from bertjax.data.shards import open_dataset

    data_dir = Path(data_dir)
    found = outputs.holding(data_dir)
    if found is not None and found.kind == outputs.DATASET and found.complete:
        ds = open_dataset(data_dir)
        print(f"timing the dataset in {data_dir} ({len(ds)} instances of {ds.max_seq_len} "
              "tokens; --num-instances and --max-seq-len build a new one only)", file=sys.stderr)
    else:
        outputs.check_new_folder(data_dir, flag="--data")
        print(
            f"building {num_instances} generated instances at {max_seq_len} tokens in {data_dir}",
            file=sys.stderr,
        )
        synthetic_dataset(data_dir, num_instances, max_seq_len)
        ds = open_dataset(data_dir)
    masking = default_masking(ds, whole_word=whole_word)
    result = {
        "max_seq_len": ds.max_seq_len,
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


def register(subparsers) -> None:
    """Adds `loader` to a subcommand group (e.g. `bertjax bench loader`)."""
    p = subparsers.add_parser(
        "loader",
        help="input-pipeline throughput (sequences/s)",
        description=__doc__.splitlines()[0],
    )
    add_arguments(p)
    p.set_defaults(func=run)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options."""
    p.add_argument("--data", required=True, help="dataset directory (built here if absent)")
    p.add_argument("--global-batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=60, help="batches timed per configuration")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--num-instances", type=int, default=50_000)
    p.add_argument("--max-seq-len", type=int, default=128)
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


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bertjax.data.bench_loader")
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
