"""`bertjax eval`: MLM and NSP metrics of a checkpoint (or HF folder) over a whole eval split."""

import json
import math
import sys
from pathlib import Path

import ml_collections

from bertjax.errors import UserError
from bertjax.model_config import ATTENTION_IMPLS

# The training settings of a model that comes without its run's config (an HF folder).
DEFAULT_CONFIG = "base"


def register(subparsers) -> None:
    """Adds `eval` to the `bertjax` command."""
    p = subparsers.add_parser(
        "eval",
        help="evaluate MLM/NSP loss, accuracy and perplexity on a prepared split",
        description="Evaluate a checkpoint (or a HuggingFace folder) on every example of a "
        "prepared dataset once; prints one JSON object. With --downstream: fine-tune it and a "
        "random initialisation of its architecture on the word-order task of a text corpus "
        "(two seeds each) and print the dev accuracies beside the task's baselines: does "
        "pretraining pay off downstream?",
    )
    p.add_argument("--workdir", required=True, help="training workdir, or a HuggingFace folder")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest)")
    p.add_argument("--data", default=None, help="dataset directory (e.g. DATA/eval)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="sequences per batch (default: the run's train.eval_batch_size)",
    )
    p.add_argument(
        "--attention-impl",
        default="auto",
        choices=ATTENTION_IMPLS,
        help="attention kernel (default auto: the fastest that runs here, whichever "
        "the checkpoint was trained with)",
    )
    d = p.add_argument_group("downstream (--downstream)")
    d.add_argument(
        "--downstream",
        action="store_true",
        help="compare fine-tuning from this model with fine-tuning from a random "
        "initialisation on the generated word-order task, instead of MLM/NSP metrics",
    )
    d.add_argument("--out", default=None, help="a new folder for the task and the fine-tunes")
    d.add_argument(
        "--corpus",
        nargs="+",
        default=None,
        help="text files in BERT's format the task is made of (default: the demo's corpus "
        "of the standard library's docs, built offline in OUT/corpus)",
    )
    d.add_argument("--seeds", type=int, default=2, help="fine-tunes per starting point")
    d.add_argument("--epochs", type=int, default=None, help="passes over the task's training rows")
    d.add_argument("--lr", type=float, default=None, help="peak learning rate of every fine-tune")
    p.set_defaults(func=run)


def run(args) -> int:
    """Entry point of `bertjax eval`."""
    if args.downstream:
        return run_downstream(args)
    if args.data is None:
        raise UserError("--data is required (a prepared dataset's split), unless --downstream")
    if args.batch_size is not None and args.batch_size < 1:
        raise UserError(
            f"--batch-size {args.batch_size} must be at least 1 (leave it out for "
            "the run's train.eval_batch_size)"
        )
    metrics = evaluate_model(
        args.workdir,
        args.data,
        step=args.step,
        batch_size=args.batch_size,
        attention_impl=args.attention_impl,
    )
    out = {
        k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in metrics.items()
    }
    if any(v is None for v in out.values()):
        # JSON has no NaN: such values are null, and the reason is given once.
        out["null_values"] = (
            "not finite (NaN or Inf): check the data first (its checksums "
            "and token ids), then the model"
        )
    print(json.dumps(out, allow_nan=False))
    return 0


def run_downstream(args) -> int:
    """`bertjax eval --downstream`: finetune.downstream.compare on the model, then its table
    on stdout (and WORKDIR's summary in OUT/downstream.json)."""
    import dataclasses

    from bertjax import outputs
    from bertjax.commands import demo
    from bertjax.finetune import downstream

    if args.data is not None:
        raise UserError("--data is the MLM/NSP evaluation's; --downstream makes its own task")
    if args.out is None:
        raise UserError("--downstream needs --out: a new folder for the task and the fine-tunes")
    if args.seeds < 1:
        raise UserError(f"--seeds {args.seeds} must be at least 1")
    changes = {"seeds": tuple(range(args.seeds))}
    for key in ("epochs", "lr"):
        value = getattr(args, key)
        if value is not None and value <= 0:
            raise UserError(f"--{key} {value} must be positive")
        if value is not None:
            changes[key] = value
    corpus = downstream.check_corpus(args.corpus) if args.corpus else []
    outputs.check_new_folder(args.out, inputs=[args.workdir, *corpus], flag="--out")
    if not corpus:
        corpus = demo.build_corpus(Path(args.out) / "corpus", "stdlib", None)
    settings = dataclasses.replace(downstream.Settings(), **changes)
    summary = downstream.compare(args.workdir, corpus, args.out, settings)
    print(downstream.format_table(summary), flush=True)
    return 0


def _run_config(loaded, workdir) -> ml_collections.ConfigDict:
    """The training config saved with the checkpoint; for an HF folder, the default config."""
    from bertjax.train import checkpoint
    from bertjax.train import config as config_lib

    if loaded.step is not None:
        saved = checkpoint.Checkpointer(workdir, read_only=True).restore_config(loaded.step)
        return ml_collections.ConfigDict(saved["config"])
    return config_lib.load_config(DEFAULT_CONFIG)


def evaluate_model(
    workdir, data_dir, *, step=None, batch_size=None, attention_impl: str = "auto"
) -> dict:
    """Metrics of the model in `workdir` over every example of `data_dir` (exactly once), its
    attention on `attention_impl` resolved for this platform (a checkpoint says which kernel
    it was trained with, not which one this machine runs)."""
    import dataclasses

    import jax

    from bertjax import attention
    from bertjax import model as model_lib
    from bertjax.data.integrity import check_same_tokenizer
    from bertjax.data.shards import open_dataset
    from bertjax.log import log
    from bertjax.train import checkpoint, sharding
    from bertjax.train import config as config_lib
    from bertjax.train.evaluator import Evaluator

    loaded = checkpoint.load_model(workdir, step)
    config = _run_config(loaded, workdir)
    try:
        ds = open_dataset(data_dir)
    except FileNotFoundError as e:
        raise UserError(f"--data={data_dir}: {e}") from None
    model_cfg = dataclasses.replace(loaded.model_cfg, attention_impl=attention_impl)
    config_lib.validate_against_data(
        config, model_cfg, ds.max_seq_len, ds.vocab_size, f"--data={data_dir}"
    )
    model_cfg, choice = attention.resolved_config(model_cfg, ds.max_seq_len)
    log("eval", f"{choice}; trained with {loaded.model_cfg.attention_impl}", sys.stderr)
    if loaded.tokenizer_identity is not None:  # recorded by every run since the identity was
        check_same_tokenizer(loaded.tokenizer_identity, ds.tokenizer_identity, f"--data={data_dir}")
    # Evaluation replicates the parameters and splits batches over every device.
    mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    batch_size = config.train.eval_batch_size if batch_size is None else batch_size
    if batch_size % sharding.data_parallel_size(mesh):
        raise UserError(
            f"--batch-size {batch_size} is not divisible by the "
            f"{sharding.data_parallel_size(mesh)} devices"
        )
    replicated = jax.tree.map(lambda _: sharding.replicated(mesh), loaded.params)
    evaluator = Evaluator(
        ds,
        batch_size=batch_size,
        seed=config.train.seed,
        masking=config_lib.masking_config(config.data, ds),
        model=model_lib.BertForPreTraining(model_cfg),
        mesh=mesh,
        rules=sharding.logical_rules(config),
        param_shardings=replicated,
        nsp=config.train.nsp and ds.manifest.get("nsp", True),
    )
    metrics = evaluator.eval(jax.device_put(jax.device_get(loaded.params), replicated))
    if config.train.nsp and not ds.manifest.get("nsp", True):
        # Its pairs carry no next-sentence labels: an accuracy on them would mean nothing.
        metrics["nsp"] = f"absent: {data_dir} was prepared with --no-nsp"
    return {"model": loaded.source, "data": str(data_dir), **metrics}
