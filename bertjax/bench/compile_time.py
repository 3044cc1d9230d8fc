"""Compile time of the train step: layers unrolled vs scanned, and a second start with JAX's
persistent compilation cache vs the first.

    bertjax bench compile [--presets base,large] [--layouts unrolled,scanned] [--json]

Each (preset, layout) is measured in two fresh processes sharing an empty temporary cache
folder: the first start traces, lowers and compiles the jitted train step (AdamW, clipping,
the config's dropout; abstract arguments, nothing runs) and writes the cache; the second
start, as a restart after a pre-emption would, finds it there. Fresh processes, so that JAX's
in-memory caches never count. One device: the program one device compiles.
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bertjax.errors import UserError

LAYOUTS = {"unrolled": False, "scanned": True}  # --layouts name -> model.scan_layers
BERT_VOCAB = 30522


def add_arguments(parser) -> None:
    """The benchmark's options."""
    parser.add_argument(
        "--presets",
        default="base,large",
        help="comma-separated model presets (default: base,large)",
    )
    parser.add_argument(
        "--layouts",
        default="unrolled,scanned",
        help="comma-separated: unrolled, scanned (default: both)",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per step")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--remat-policy", default="none", help="model.remat_policy of the step")
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    # Internal: one measurement in this process, against this cache folder (a JSON line).
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", default=None, help=argparse.SUPPRESS)


def _names(text: str, known, flag: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in known]
    if bad or not names:
        raise UserError(f"{flag}={text!r}: expected a comma-separated list of {', '.join(known)}")
    return names


def measure_in_process(
    preset: str,
    scan_layers: bool,
    *,
    batch_size: int,
    seq_len: int,
    remat_policy: str,
    cache_dir: str,
) -> dict:
    """Traces, lowers and compiles the train step of `preset` in this process, with JAX's
    persistent compilation cache in `cache_dir` switched on as `bertjax train` does
    (compile_cache.py: every entry written, however small or quick); returns the seconds of
    each stage and the cache hits and misses of the compile."""
    import jax

    from bertjax import model as model_lib
    from bertjax.data.synthetic import synthetic_batch
    from bertjax.train import compile_cache, sharding, step_setup
    from bertjax.train import config as config_lib
    from bertjax.train.head import pretraining_head

    compile_cache.configure(cache_dir)

    # configs/base.py's model (dropout 0.1, xla attention) and optimizer, as a run has them.
    config = config_lib.load_config(
        "base",
        [
            f"model.preset={preset}",
            f"model.scan_layers={scan_layers}",
            f"model.remat_policy={remat_policy}",
            "train.steps=1000",
        ],
    )
    model_cfg = config_lib.model_config(config.model, BERT_VOCAB)
    mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    setup = step_setup.build(config, pretraining_head(model_cfg), mesh)
    predictions = max(1, round(seq_len * 0.15))
    example = synthetic_batch(
        0, batch=batch_size, length=seq_len, predictions=predictions, vocab=BERT_VOCAB
    )
    state, batch, rng = setup.abstract_train_args(example)
    fn = setup.train_fn
    start = time.perf_counter()
    lowered = fn.trace(state, batch, rng).lower()
    lowered_at = time.perf_counter()
    with compile_cache.watch() as events:
        lowered.compile()
    compiled_at = time.perf_counter()
    return {
        "preset": preset,
        "layout": "scanned" if scan_layers else "unrolled",
        "params": model_lib.count_params(setup.abstract_state.params),
        "lower_s": round(lowered_at - start, 3),
        "compile_s": round(compiled_at - lowered_at, 3),
        "cache_hits": events.hits,
        "cache_misses": events.misses,
        "platform": jax.devices()[0].platform,
    }


def _child(args, preset: str, layout: str, cache_dir: str) -> dict:
    """`measure_in_process` in a fresh Python process (a "start" of a run)."""
    cmd = [
        sys.executable,
        "-m",
        "bertjax",
        "bench",
        "compile",
        "--child",
        "--presets",
        preset,
        "--layouts",
        layout,
        "--batch-size",
        str(args.batch_size),
        "--seq-len",
        str(args.seq_len),
        "--remat-policy",
        args.remat_policy,
        "--cache-dir",
        cache_dir,
    ]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(args, preset: str, layout: str) -> dict:
    """One row: a first start (empty cache) and a second start (the cache it wrote)."""
    cache_dir = tempfile.mkdtemp(prefix="bench_compile_cache_")
    try:
        first = _child(args, preset, layout, cache_dir)
        entries = sum(1 for p in Path(cache_dir).rglob("*") if p.is_file())
        second = _child(args, preset, layout, cache_dir)
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    return {
        "preset": preset,
        "layout": layout,
        "params": first["params"],
        "first_lower_s": first["lower_s"],
        "first_compile_s": first["compile_s"],
        "first_cache_misses": first["cache_misses"],
        "cache_entries_written": entries,
        "second_lower_s": second["lower_s"],
        "second_compile_s": second["compile_s"],
        "second_cache_hits": second["cache_hits"],
        "platform": first["platform"],
    }


def format_table(rows: list[dict]) -> str:
    """The rows as an aligned text table, seconds per stage."""
    header = (
        "preset",
        "layout",
        "params",
        "lower s",
        "compile s",
        "2nd start: lower s",
        "compile s (cache)",
        "cache hit",
    )
    lines = [header]
    for r in rows:
        lines.append(
            (
                r["preset"],
                r["layout"],
                f"{r['params'] / 1e6:.1f}M",
                f"{r['first_lower_s']:.1f}",
                f"{r['first_compile_s']:.1f}",
                f"{r['second_lower_s']:.1f}",
                f"{r['second_compile_s']:.2f}",
                "yes" if r["second_cache_hits"] else "no",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in lines)


def run(args) -> int:
    """Entry point of `bertjax bench compile`."""
    from bertjax.model_config import PRESETS, REMAT_POLICY_NAMES

    presets = _names(args.presets, list(PRESETS), "--presets")
    layouts = _names(args.layouts, list(LAYOUTS), "--layouts")
    if args.remat_policy not in REMAT_POLICY_NAMES:
        raise UserError(
            f"--remat-policy={args.remat_policy!r}: expected one of {', '.join(REMAT_POLICY_NAMES)}"
        )
    if args.batch_size < 1 or args.seq_len < 2:
        raise UserError("--batch-size must be at least 1 and --seq-len at least 2")
    if args.child:
        result = measure_in_process(
            presets[0],
            LAYOUTS[layouts[0]],
            batch_size=args.batch_size,
            seq_len=args.seq_len,
            remat_policy=args.remat_policy,
            cache_dir=args.cache_dir,
        )
        print(json.dumps(result))
        return 0
    rows = []
    for preset in presets:
        for layout in layouts:
            rows.append(measure(args, preset, layout))
            print(f"measured {preset} {layout}", file=sys.stderr, flush=True)
    print(
        f"train step of batch {args.batch_size} x seq {args.seq_len}, remat_policy "
        f"{args.remat_policy}, on one {rows[0]['platform']} device; every start a fresh "
        "process:"
    )
    print(format_table(rows))
    if args.json:
        print(
            json.dumps(
                {
                    "batch_size": args.batch_size,
                    "seq_len": args.seq_len,
                    "remat_policy": args.remat_policy,
                    "rows": rows,
                }
            )
        )
    return 0
