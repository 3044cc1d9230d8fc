"""`bertjax compile`: the train step of a config compiled for a TPU slice that is not here, by
the real TPU compiler (libtpu) on this host: memory per chip against its HBM, FLOPs, the
compiler's roofline, the kernels; exit status 0 when it fits, 2 (and why) when it does not."""

import json
import sys

from bertjax.errors import UserError
from bertjax.train import config as config_lib

# A dataset prepared with `bertjax prepare`'s defaults has rows of 128 tokens (its
# --max-seq-len); the configs name no length (the dataset decides), so this is the length
# compiled when neither a dataset nor --seq-len says otherwise.
DEFAULT_SEQ_LEN = 128


def register(subparsers) -> None:
    """Adds `compile` to the `bertjax` command."""
    from bertjax.train.topology import known_forms

    p = subparsers.add_parser(
        "compile",
        help="compile the train step for a TPU slice ahead of time (memory, FLOPs)",
        description="Compile the train step `bertjax train` would run with a config for a TPU "
        "slice, on this host, with the TPU compiler of libtpu (pip install 'bertjax[tpu]'); "
        "print its memory per chip, FLOPs, the compiler's roofline and its kernels. Exit "
        "status 0 when it fits in the chips' HBM, 2 when it does not.",
    )
    config_lib.add_config_arguments(
        p,
        default_help="none: required without --task; with "
        "--task the task kind's fine-tuning config",
    )
    p.add_argument("--topology", required=True, help=f"the TPU slice: {known_forms()}")
    p.add_argument(
        "--seq-len",
        type=int,
        default=None,
        help=f"tokens per row (default {DEFAULT_SEQ_LEN}, as `bertjax prepare`; "
        "with --config.data.train_dir=DIR the dataset's)",
    )
    p.add_argument(
        "--max-sequences-per-row",
        type=int,
        default=None,
        metavar="K",
        help="packed rows of up to K sequences, as `bertjax prepare --pack` makes "
        "(default: one padded sequence per row, or the dataset's layout)",
    )
    p.add_argument(
        "--task",
        default=None,
        help="compile a fine-tuning step instead: the task's head (any task of "
        "`bertjax finetune`) on its config (default: the task kind's), batches of "
        "data.max_seq_len and train.global_batch_size",
    )
    p.add_argument(
        "--preset",
        default="base",
        help="with --task: the size of the model being fine-tuned (default base)",
    )
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.set_defaults(func=run)


def _layout(args, config):
    from bertjax.train import aot

    if config.data.train_dir:
        given = [
            flag
            for flag, value in (
                ("--seq-len", args.seq_len),
                ("--max-sequences-per-row", args.max_sequences_per_row),
            )
            if value is not None
        ]
        if given:
            raise UserError(
                f"{given[0]} cannot be given with data.train_dir: the shapes come "
                f"from the dataset {config.data.train_dir}"
            )
        return aot.dataset_layout(config, config.data.train_dir)
    seq_len = args.seq_len or DEFAULT_SEQ_LEN
    source = "--seq-len" if args.seq_len else f"--seq-len default {DEFAULT_SEQ_LEN}"
    if args.max_sequences_per_row is not None:
        source += " and --max-sequences-per-row"
    return aot.batch_layout(
        config, seq_len=seq_len, source=source, max_sequences_per_row=args.max_sequences_per_row
    )


def run(args) -> int:
    """Entry point of `bertjax compile`."""
    import jax

    from bertjax.train import aot, topology

    # The step is compiled for the named slice, never for this host's own accelerators,
    # which another process may be using.
    jax.config.update("jax_platforms", "cpu")
    progress = lambda msg: print(msg, file=sys.stderr, flush=True)
    if args.task:
        return run_task(args, progress)
    if args.config is None:
        raise UserError("--config NAME is required (or --task TASK for a fine-tuning step)")
    config = config_lib.load_config(args.config, args.config_overrides)
    layout = _layout(args, config)
    tpu_slice = topology.tpu_slice(args.topology)
    report = aot.compile_for_slice(config, tpu_slice, layout, progress=progress)
    report = {"config": args.config, **report}
    return _verdict(args, report, config)


def run_task(args, progress) -> int:
    """`bertjax compile --task`: the task's fine-tuning step, as `bertjax finetune` builds it
    (step_setup.build of the kind's head, its config's optimizer at its first rate), for a
    model of --preset with BERT's vocabulary."""
    from bertjax import attention, model_config
    from bertjax.configs import finetune_schema
    from bertjax.finetune import kinds, train
    from bertjax.train import aot, sharding, step_setup, topology

    for flag, value in (
        ("--seq-len", args.seq_len),
        ("--max-sequences-per-row", args.max_sequences_per_row),
    ):
        if value is not None:
            raise UserError(
                f"{flag} applies to pretraining steps; with --task set --config.data.max_seq_len"
            )
    name = args.config or kinds.default_config(args.task)
    config = config_lib.load_config(name, [f"task={args.task}", *args.config_overrides])
    finetune_schema(config).check(config)
    kind = kinds.make_kind(config)
    tpu_slice = topology.tpu_slice(args.topology)
    try:
        base = model_config.preset_config(args.preset, vocab_size=aot.BERT_VOCAB_SIZE)
        model_cfg = model_config.override(base, config.model.to_dict())
    except ValueError as e:
        raise UserError(str(e)) from None
    seq_len, batch_size = config.data.max_seq_len, config.train.global_batch_size
    model_cfg, choice = attention.resolved_config(model_cfg, seq_len, platform="tpu")
    mesh = sharding.make_mesh(config.mesh, tpu_slice.devices)
    ways = sharding.data_parallel_size(mesh) * config.train.grad_accum_steps
    if batch_size % ways:
        raise UserError(
            f"train.global_batch_size={batch_size} is not divisible by the "
            f"data-parallel size x train.grad_accum_steps = {ways}"
        )
    steps = 1000  # the schedule's length does not change the compiled step
    setup = step_setup.build(
        config,
        kind.head(model_cfg),
        mesh,
        total_steps=steps,
        optim_cfg=train.optim_config(config, config.optim.learning_rates[0], steps),
    )
    batch_np = kind.synthetic_batch(batch_size, seq_len, model_cfg.vocab_size)
    batch = {
        "global_batch_size": batch_size,
        "grad_accum_steps": config.train.grad_accum_steps,
        "seq_len": seq_len,
        "task": kind.name,
        "shapes_from": f"{name}'s data section",
    }
    report = aot.compile_setup(
        setup,
        batch_np,
        tpu_slice,
        preset=args.preset,
        attention_choice=choice,
        batch=batch,
        progress=progress,
    )
    return _verdict(args, {"config": name, **report}, config)


def _verdict(args, report: dict, config) -> int:
    from bertjax.train import aot

    print(json.dumps(report) if args.json else format_report(report))
    if not report["fits"]:
        raise UserError(aot.no_fit_message(report, config))
    return 0


def _gib(n_bytes) -> str:
    return f"{n_bytes / 2**30:.2f} GiB"


def _bound(name: str, bound: dict) -> str:
    if "unavailable" in bound:
        return f"{name}: unavailable: {bound['unavailable']}"
    return (
        f"{name}: {bound['step_s'] * 1e3:.3g} ms/step, {bound['tokens_per_s']:,.0f} "
        f"tokens/s, MFU at most {bound['mfu']:.1%}"
    )


def format_report(r: dict) -> str:
    """The report as lines of text."""
    model, batch, memory = r["model"], r["batch"], r["memory_per_chip"]
    mesh = " ".join(f"{k}={v}" for k, v in r["mesh"].items())
    if "task" in batch:
        rows = f"{batch['task']} rows"
    else:
        rows = batch["layout"] + (
            f", up to {batch['max_sequences_per_row']} sequences per row"
            if batch["max_sequences_per_row"]
            else ""
        )
        rows += (
            f", {batch['predictions_per_row']} predictions per row, vocabulary "
            f"{batch['vocab_size']}"
        )
    lines = [
        f"{r['config']} on {r['topology']}: {r['chips']} x {r['device_kind']} ({r['hosts']} "
        f"host(s)), mesh {mesh}",
        f"model {model['preset']} + {model['head']} ({model['params'] / 1e6:.1f}M parameters), "
        f"layers {'scanned' if model['scan_layers'] else 'unrolled'}, remat "
        f"{model['remat_policy']}, {model['compute_dtype']}, {model['attention_choice']}",
        f"batch {batch['global_batch_size']} x {batch['seq_len']} tokens ({rows}; shapes from "
        f"{batch['shapes_from']}), grad_accum_steps {batch['grad_accum_steps']}",
    ]
    verdict = "fits" if r["fits"] else "DOES NOT FIT"
    if memory.get("refused_by_compiler"):
        lines.append(
            f"memory per chip: the TPU compiler refused the step: it needs "
            f"{_gib(memory['total_bytes'])}, the compiler has "
            f"{_gib(memory['compiler_available_bytes'])} of the chip's "
            f"{_gib(memory['hbm_bytes'])}: {verdict}"
        )
    else:
        lines += [
            f"memory per chip: arguments {_gib(memory['argument_bytes'])}, outputs "
            f"{_gib(memory['output_bytes'])} ({_gib(memory['alias_bytes'])} of them the donated "
            f"arguments), temporaries {_gib(memory['temp_bytes'])}, code "
            f"{_gib(memory['code_bytes'])}",
            f"  total {_gib(memory['total_bytes'])} of {_gib(memory['hbm_bytes'])} HBM "
            f"(usable {_gib(memory['limit_bytes'])}, {memory['headroom']:.0%} kept free): "
            f"{verdict}",
        ]
    if "flops" in r:
        f = r["flops"]
        lines += [
            f"FLOPs per step: compiled matmuls {f['compiled_matmul_per_step']:.4g} = "
            f"{f['ratio']:.3f} x model_flops_per_step {f['model_per_step']:.4g}",
            f"  the difference: pooler, NSP head and MLM transform run at [CLS] and the "
            f"masked slots, not at every token {-f['heads_at_every_token']:+.3g}; attention "
            f"inside the fused kernel, unseen {-f['attention_in_kernel']:+.3g}; recomputation "
            f"{f['recomputed']:+.3g} ({f['recomputed'] / f['model_per_step']:+.1%} of the model's)",
            _bound(
                "roofline, the compiler's estimate (not a measurement)",
                r["roofline"]["compiler_estimate"],
            ),
            _bound(
                f"compiled matmuls at the dense bf16 peak "
                f"({r['roofline']['peak_flops_per_chip'] / 1e12:g} TFLOP/s per chip)",
                r["roofline"]["matmuls_at_peak"],
            ),
            "kernels: " + (", ".join(r["kernels"]) or "none (XLA's own fusions only)"),
        ]
    elif "compiled_matmul_flops_per_step" in r:
        lines += [
            f"FLOPs per step: compiled matmuls {r['compiled_matmul_flops_per_step']:.4g}",
            "kernels: " + (", ".join(r["kernels"]) or "none (XLA's own fusions only)"),
        ]
    lines.append(f"lowered in {r['lower_s']:.1f} s, compiled in {r['compile_s']:.1f} s")
    return "\n".join(lines)
