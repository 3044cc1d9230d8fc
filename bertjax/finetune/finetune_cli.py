"""`bertjax finetune`: a fine-tuning config (default `finetune_squad` for SQuAD tasks, else
`finetune_glue`), `--config.KEY=VALUE` overrides and the flags that are shorthands for its
keys, then `finetune.train.finetune`."""

import json
import sys

from bertjax import outputs
from bertjax.errors import UserError
from bertjax.train import config as config_lib

# flag (its argparse dest) -> config key; the flags' defaults are None: "the config's value".
SHORTHANDS = {
    "task": "task",
    "init": "init",
    "init_step": "init_step",
    "data": "data",
    "tokenizer": "tokenizer",
    "max_seq_len": "max_seq_len",
    "length_buckets": "length_buckets",
    "batch_size": "batch_size",
    "grad_accum_steps": "grad_accum_steps",
    "epochs": "epochs",
    "warmup": "warmup",
    "weight_decay": "weight_decay",
    "seed": "seed",
    "log_every": "log_every",
    "mesh_data": "mesh.data",
    "mesh_fsdp": "mesh.fsdp",
    "mesh_tensor": "mesh.tensor",
}
SQUAD_FLAGS = ("doc_stride", "max_query_length", "n_best_size", "max_answer_length",
               "null_score_diff_threshold")  # fmt: skip
SHORTHANDS |= {flag: flag for flag in SQUAD_FLAGS}  # SQuAD only: configs/finetune_squad.py
GLUE_CONFIG, SQUAD_CONFIG = "finetune_glue", "finetune_squad"


def register(subparsers) -> None:
    """Adds `finetune` to the `bertjax` command."""
    p = subparsers.add_parser(
        "finetune",
        help="fine-tune and score BERT on a GLUE task or SQuAD",
        description="Fine-tune a pretraining checkpoint or a HuggingFace BERT folder on a GLUE "
        "task or SQuAD v1.1/v2.0 (paper recipes by default), score the dev set(s) after each "
        "epoch, write predictions to WORKDIR/predictions (GLUE: test submission files; SQuAD: "
        "the dev set's predictions.json, and null_odds.json for v2.0) and, for SQuAD, the model "
        "as a HuggingFace BertForQuestionAnswering folder in WORKDIR/hf_model. The last stdout "
        "line is the dev metrics as JSON (also in WORKDIR/eval_results.json). Each flag below "
        "sets the config key of the same name (--mesh-data: mesh.data); --config.KEY=VALUE "
        "sets any key.",
    )
    config_lib.add_config_arguments(
        p, default_help=f"{SQUAD_CONFIG} for --task squad/squad_v2, else {GLUE_CONFIG}"
    )
    p.add_argument("--workdir", required=True, help="where results, logs and the model go")
    p.add_argument("--task", help="cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli, "
                   "squad (v1.1) or squad_v2")
    p.add_argument("--init", metavar="PATH",
                   help="pretraining workdir (newest checkpoint) or HuggingFace BERT folder")
    p.add_argument("--init-step", type=int, help="checkpoint step of --init")
    p.add_argument("--data", metavar="DIR",
                   help="GLUE tsv files (train.tsv, dev.tsv, test.tsv) or JSONL, or SQuAD's "
                   "train-v1.1.json and dev-v1.1.json (v2.0: train-v2.0.json, dev-v2.0.json); "
                   "default: `datasets` nyu-mll/glue or rajpurkar/squad(_v2) (needs the network "
                   "or its cache)")
    p.add_argument("--tokenizer", metavar="PATH",
                   help="vocab.txt / sentencepiece model (default: the model's own)")
    p.add_argument("--max-seq-len", type=int, help="default 128 (SQuAD: 384)")
    p.add_argument("--length-buckets", type=int, metavar="K",
                   help="static batch lengths chosen from the training rows' lengths; each "
                   "batch is cut to the smallest that holds its rows (default 4; 0: every "
                   "batch padded to --max-seq-len)")
    p.add_argument("--batch-size", type=int, help="global batch size (default 32)")
    p.add_argument("--grad-accum-steps", type=int)
    p.add_argument("--epochs", type=int, help="default 3 (SQuAD: 2)")
    p.add_argument("--lr", type=float, default=None,
                   help="peak learning rate (default 2e-5; SQuAD: 3e-5)")
    p.add_argument("--lr-sweep", type=float, nargs="*", metavar="LR", default=None,
                   help="run each learning rate (default: 2e-5 3e-5 5e-5) in WORKDIR/lr_<LR> "
                   "and report the best on dev by the task's main metric")
    p.add_argument("--warmup", type=float, help="warm-up fraction of the steps (default 0.1)")
    p.add_argument("--weight-decay", type=float, help="default 0.01")
    p.add_argument("--seed", type=int)
    p.add_argument("--log-every", type=int, help="steps between metrics lines (default 50)")
    for axis in ("data", "fsdp", "tensor"):
        p.add_argument(f"--mesh-{axis}", type=int,
                       help=f"size of the '{axis}' mesh axis (-1: the remaining devices)")
    squad = p.add_argument_group("SQuAD (configs/finetune_squad.py)")
    squad.add_argument("--doc-stride", type=int,
                       help="tokens between the starts of a context's windows (default 128)")
    squad.add_argument("--max-query-length", type=int,
                       help="question tokens kept (default 64)")
    squad.add_argument("--n-best-size", type=int,
                       help="start/end candidates per window when decoding (default 20)")
    squad.add_argument("--max-answer-length", type=int,
                       help="longest answer in tokens (default 30)")
    squad.add_argument("--null-score-diff-threshold", type=float,
                       help="v2.0: answer nothing where the null score exceeds the best "
                       "answer's by more (default 0.0)")
    p.set_defaults(func=run)


def default_config(task: str | None) -> str:
    """The config a run uses without --config: finetune_squad for SQuAD tasks."""
    from bertjax.finetune.kind_squad import canonical_name

    return SQUAD_CONFIG if task and canonical_name(task) else GLUE_CONFIG


def config_from_args(args):
    """The run's config: the file, then its `--config.KEY=VALUE` overrides, then the flags."""
    from bertjax.configs.finetune_glue import PAPER_LEARNING_RATES

    if args.lr_sweep is not None and args.lr is not None:
        raise UserError("--lr and --lr-sweep exclude each other: list the rates after --lr-sweep")
    spec = args.config or default_config(args.task)
    config = config_lib.load_config(spec, args.config_overrides)
    for dest, key in SHORTHANDS.items():
        value = getattr(args, dest)
        if value is not None:
            *parents, leaf = key.split(".")
            node = config
            for part in parents:
                node = node[part]
            if leaf not in node:
                squad = f": it applies to SQuAD tasks (--config {SQUAD_CONFIG}, the default " \
                    "for --task squad/squad_v2)" if dest in SQUAD_FLAGS else ""
                raise UserError(f"--{dest.replace('_', '-')} sets the config key {key}, which "
                                f"config {spec} lacks{squad}")
            node[leaf] = value
    if args.lr is not None:
        config.learning_rates = (args.lr,)
    elif args.lr_sweep is not None:
        config.learning_rates = tuple(args.lr_sweep) or PAPER_LEARNING_RATES
    for key, flag in (("task", "--task"), ("init", "--init")):
        if not config[key]:
            raise UserError(f"{flag} (config key {key}) is required")
    return config


def run(args) -> int:
    """Entry point of `bertjax finetune`."""
    from bertjax.configs import finetune_glue, finetune_squad
    from bertjax.finetune.kind_squad import canonical_name
    from bertjax.finetune.train import finetune
    from bertjax.train import distributed

    config = config_from_args(args)
    # Every key's type and range, and the rules across keys, before anything is read.
    (finetune_squad if canonical_name(config.task) else finetune_glue).SCHEMA.check(config)
    # A folder of its own: never a run's, a dataset's, or one holding the model or data read.
    # Checked by every process before they join, so before any of them writes there.
    inputs = [p for p in (config.init, config.data, config.tokenizer) if p]
    outputs.check_new_folder(args.workdir, inputs=inputs)
    # Before any other JAX call; a lone process does nothing. With several, a lost one is
    # named by the watchdog, as in pretraining.
    distributed.initialize_distributed(peer_timeout_s=distributed.DEFAULT_PEER_TIMEOUT_S)
    try:
        result = finetune(config, args.workdir)
    except FloatingPointError as e:  # a diverged run: say where, without a traceback
        print(f"bertjax finetune: error: {e}", file=sys.stderr)
        return 1
    distributed.finish()
    import jax

    if jax.process_index() == 0:
        print(json.dumps(result), flush=True)
    return 0
