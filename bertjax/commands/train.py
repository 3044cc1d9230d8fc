"""`bertjax train`: parses the config and the multi-process flags, joins the processes, runs
`loop.train`."""

import sys

from bertjax import interrupt
from bertjax.errors import UserError
from bertjax.train import config as config_lib


def register(subparsers) -> None:
    """Adds `train` to the `bertjax` command."""
    p = subparsers.add_parser(
        "train",
        help="pretrain BERT (MLM + NSP) from a config file",
        description="Pretrain BERT (masked LM + next-sentence prediction) on a prepared "
        "dataset, on every device of every process.",
    )
    config_lib.add_config_arguments(p)
    p.add_argument("--workdir", required=True, help="where metrics.jsonl (and checkpoints) go")
    group = p.add_argument_group(
        "multi-process",
        "Several hosts run the same command; detected automatically on TPU "
        "VMs, Slurm and Open MPI, or given explicitly here (or by JAX_COORDINATOR_ADDRESS, "
        "JAX_NUM_PROCESSES, JAX_PROCESS_ID).",
    )
    group.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0")
    group.add_argument("--num-processes", type=int, metavar="N", help="number of processes")
    group.add_argument("--process-id", type=int, metavar="I", help="this process, 0 .. N-1")
    p.add_argument(
        "--init-from",
        metavar="PATH",
        default=None,
        help="warm start from a HuggingFace folder or a training workdir "
        "(= --config.train.init_from); a workdir with checkpoints resumes instead",
    )
    p.add_argument(
        "--profile-steps",
        metavar="A:B",
        default=None,
        help="write a jax.profiler trace of steps A..B to WORKDIR/profile",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    """Entry point of `bertjax train`."""
    from bertjax.configs import base
    from bertjax.train import accelerator, distributed, loop

    overrides = list(args.config_overrides)
    if args.init_from is not None:
        overrides.append(f"train.init_from={args.init_from}")
    if args.profile_steps is not None:
        overrides.append(f"train.profile_steps={args.profile_steps}")
    config = config_lib.load_config(args.config, overrides)
    base.SCHEMA.check(config)  # every key's type and range, and the rules across keys
    distributed.initialize_distributed(
        args.coordinator,
        args.num_processes,
        args.process_id,
        peer_timeout_s=config.train.peer_timeout_s,
    )
    accelerator.check_in_use()  # not a silent fall-back to the CPU of a TPU or GPU machine
    check_resume(config, args.workdir, base.SCHEMA)
    try:
        loop.train(config, args.workdir)
    except FloatingPointError as e:  # a diverged run: say where, without a traceback
        print(f"bertjax train: error: {e}", file=sys.stderr)
        return 1
    except interrupt.Stopped:  # saved at the step the other processes saved at: not lost
        distributed.finish()
        raise
    distributed.finish()
    return 0


def check_resume(config, workdir, schema) -> None:
    """A UserError when `workdir` has checkpoints trained with other values of the keys that
    change the objective, the data or the saved state (those the schema marks fixed)."""
    from bertjax.train import checkpoint

    saved = checkpoint.latest_config(workdir)
    changed = schema.changed_on_resume(config, saved) if saved else []
    if changed:
        raise UserError(
            f"cannot resume {workdir}: its checkpoints were trained with other "
            f"settings ({'; '.join(changed)}); resume with the checkpoint's values, "
            "or train in a new --workdir"
        )
