"""`bertjax bench NAME ...`: the benchmarks, one module of this package each.

A benchmark module exposes `add_arguments(parser)` and `run(args) -> int`. It is imported
only when its benchmark is chosen, so `bertjax bench prepare` never imports JAX.
"""

import argparse
import importlib

from bertjax.errors import UserError

# benchmark name -> module
BENCHMARKS = {
    "prepare": "bertjax.bench.prepare",  # prepare tokens/s vs raw tokenizer tokens/s
    "loader": "bertjax.bench.loader",  # input pipeline sequences/s
    "train": "bertjax.bench.train",  # training step throughput
    "packing": "bertjax.bench.packing",  # packed vs padded real tokens/s, time to accuracy
    "checkpoint": "bertjax.bench.checkpoint",  # save (blocking/total) and restore time
    "compile": "bertjax.bench.compile_time",  # train-step compile: unrolled/scanned, cache
    "finetune": "bertjax.bench.finetune",  # fine-tuning step tokens/s vs HF, epoch time
    "finetune-buckets": "bertjax.bench.finetune_buckets",  # length buckets vs padded
}


def register(subparsers) -> None:
    """Adds `bench` to the `bertjax` command."""
    p = subparsers.add_parser(
        "bench",
        help="throughput benchmarks: " + ", ".join(BENCHMARKS),
        description=__doc__.splitlines()[0],
        add_help=True,
    )
    p.add_argument("benchmark", choices=sorted(BENCHMARKS), help="which benchmark")
    p.add_argument(
        "bench_args",
        nargs=argparse.REMAINDER,
        help="the benchmark's own options (bertjax bench NAME --help)",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    """Imports the chosen benchmark, parses its options, runs it."""
    name = BENCHMARKS[args.benchmark]
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name != name:
            raise
        raise UserError(f"benchmark {args.benchmark!r} is not available ({name} is missing)")
    parser = argparse.ArgumentParser(
        prog=f"bertjax bench {args.benchmark}", description=module.__doc__.splitlines()[0]
    )
    module.add_arguments(parser)
    return int(module.run(parser.parse_args(args.bench_args)) or 0)
