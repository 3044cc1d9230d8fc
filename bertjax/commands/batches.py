"""`bertjax batches`: writes the exact batches one process feeds the train step, as .npz."""

import sys
from pathlib import Path

import numpy as np

from bertjax import outputs
from bertjax.errors import UserError


def register(subparsers) -> None:
    """Adds the `batches` subcommand."""
    p = subparsers.add_parser(
        "batches",
        help="dump the batches a process would train on (.npz)",
        description="Writes the batches process I would feed the train step at steps "
        "S..S+N-1, each key stacked as [N, B/P, ...] with the original BERT's keys.",
    )
    p.add_argument("--data", required=True, help="dataset directory (bertjax prepare)")
    p.add_argument("--global-batch-size", type=int, required=True, help="B, over all processes")
    p.add_argument("--steps", type=int, required=True, help="N, number of steps to write")
    p.add_argument("--start-step", type=int, default=0, help="S, first global step")
    p.add_argument("--seed", type=int, default=0, help="data seed (order and masks)")
    p.add_argument("--process-index", type=int, default=0, help="I, this process")
    p.add_argument("--process-count", type=int, default=1, help="P, number of processes")
    p.add_argument("--masked-lm-prob", type=float, default=0.15)
    p.add_argument(
        "--max-predictions",
        type=int,
        default=None,
        help="prediction slots per sequence (default: 20 at <=128 tokens, 80 at 512)",
    )
    p.add_argument("--whole-word", action="store_true", help="mask whole words")
    p.add_argument("--out", required=True, help="output .npz file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=run)


def run(args) -> int:
    """Builds the batches with `Loader` and saves them stacked."""
    from bertjax.data.loader import BATCH_KEYS, Loader, default_masking
    from bertjax.data.shards import open_dataset

    if args.steps < 1:
        raise UserError(f"--steps must be >= 1, got {args.steps}")
    if args.start_step < 0:
        raise UserError(f"--start-step must be >= 0, got {args.start_step}")
    out = Path(args.out)
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: directory {out.parent} does not exist")
    if out.suffix != ".npz":
        raise UserError(f"--out {out} must end in .npz")
    outputs.check_file(out, overwrite=args.overwrite, inputs=[args.data])
    ds = open_dataset(args.data)
    masking = default_masking(ds, args.masked_lm_prob, args.max_predictions, args.whole_word)
    batches = {k: [] for k in BATCH_KEYS}
    with Loader(
        ds,
        args.global_batch_size,
        seed=args.seed,
        start_step=args.start_step,
        masking=masking,
        process_index=args.process_index,
        process_count=args.process_count,
    ) as loader:
        every = max(1, args.steps // 10)
        for i in range(args.steps):
            batch = next(loader)
            for k in BATCH_KEYS:
                batches[k].append(batch[k])
            if (i + 1) % every == 0 or i + 1 == args.steps:
                print(f"batches: {i + 1}/{args.steps} steps", file=sys.stderr, flush=True)
    with outputs.replacing_file(out) as staging:
        np.savez(staging, **{k: np.stack(v) for k, v in batches.items()})
    b = args.global_batch_size // args.process_count
    print(
        f"wrote {out}: steps {args.start_step}..{args.start_step + args.steps - 1} of process "
        f"{args.process_index}/{args.process_count}, [{args.steps}, {b}, ...] per key "
        f"({len(ds)} examples, {loader.steps_per_epoch} steps per epoch)"
    )
    return 0
