"""Checkpoint cost of a preset's full train state (params + AdamW moments): size on disk, how
long training is blocked by an asynchronous save, the full save time, and the restore time."""

import json
import shutil
import tempfile
import time
from pathlib import Path

from bertjax import outputs


def add_arguments(parser) -> None:
    """The benchmark's options."""
    parser.add_argument("--preset", default="base", help="model preset (default: base)")
    parser.add_argument("--vocab-size", type=int, default=30522)
    parser.add_argument(
        "--dir", default=None, help="a new or empty folder to write to (default: a temporary one)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object last")


def _size_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def measure(preset: str, vocab_size: int, directory: Path) -> dict:
    """Saves and restores one train state of `preset` in `directory`; returns the timings."""
    import flax.linen as nn
    import jax

    from bertjax import model as model_lib
    from bertjax.train import checkpoint, sharding, step_setup
    from bertjax.train import config as config_lib
    from bertjax.train.head import pretraining_head

    config = config_lib.load_config("base", ["train.steps=100", "optim.warmup_steps=10"])
    model_cfg = model_lib.preset_config(preset, vocab_size=vocab_size)
    mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    setup = step_setup.build(config, pretraining_head(model_cfg), mesh)
    abstract, shardings = setup.abstract_state, setup.state_shardings
    state = setup.init_state(jax.random.key(0))
    # Fresh Adam moments are zeros, which storage compresses to nothing: give them the
    # incompressible values a trained run has, so size and times are those of a real run.
    keys = iter(jax.random.split(jax.random.key(1), len(jax.tree.leaves(state.opt_state))))
    opt_state = jax.tree.map(
        lambda x: (
            jax.random.normal(next(keys), x.shape, x.dtype) * 1e-3
            if jax.numpy.issubdtype(x.dtype, jax.numpy.floating) and x.ndim
            else x
        ),
        state.opt_state,
    )
    state = jax.block_until_ready(state.replace(opt_state=opt_state))
    ckpt = checkpoint.Checkpointer(directory, async_save=True)
    start = time.perf_counter()
    ckpt.save(1, state, jax.random.key(0), {"step": 1}, {"preset": preset})
    blocked = time.perf_counter() - start
    ckpt.wait()
    full_save = time.perf_counter() - start
    ckpt.close()
    step_dir = checkpoint.checkpoint_dir(directory) / "1"
    start = time.perf_counter()
    restored = checkpoint.Checkpointer(directory, read_only=True).restore(
        nn.meta.unbox(abstract), shardings
    )
    jax.block_until_ready(restored[0])
    restore = time.perf_counter() - start
    return {
        "preset": preset,
        "params": model_lib.count_params(abstract.params),
        "checkpoint_bytes": _size_bytes(Path(step_dir)),
        "save_blocking_s": round(blocked, 3),
        "save_total_s": round(full_save, 3),
        "restore_s": round(restore, 3),
    }


def run(args) -> int:
    """Entry point of `bertjax bench checkpoint`."""
    if args.dir:  # it saves a checkpoint there: never into a user's run
        outputs.check_new_folder(args.dir, flag="--dir")
    directory = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench_ckpt_"))
    try:
        result = measure(args.preset, args.vocab_size, directory)
    finally:
        if not args.dir:
            shutil.rmtree(directory, ignore_errors=True)
    mb = result["checkpoint_bytes"] / 2**20
    print(
        f"{result['preset']}: {result['params'] / 1e6:.1f}M params, checkpoint {mb:.0f} MiB; "
        f"training blocked {result['save_blocking_s']:.2f} s per async save, full save "
        f"{result['save_total_s']:.2f} s, restore {result['restore_s']:.2f} s"
    )
    if args.json:
        print(json.dumps(result))
    return 0
