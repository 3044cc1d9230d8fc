"""`bertjax finetune`: a fine-tuning config (by default the task kind's: kinds.py),
`--config.KEY=VALUE` overrides and the flags that are shorthands for its keys, then
`finetune.train.finetune`."""

import json
import sys

from bertjax import outputs
from bertjax.errors import UserError
from bertjax.train import config as config_lib

# flag -> (config key, type, help); a tuple of keys: the first the config has (a flag two task
# kinds share). Every flag's default is None: "the config's value", so that defaults live in
# the config files alone.
SHORTHANDS = {
    "--task": (
        "task",
        str,
        "cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli, squad (v1.1), "
        "squad_v2, conll2003, ner (a CoNLL-format set's own labels) or swag",
    ),
    "--init": ("init", str, "pretraining workdir (newest checkpoint) or HuggingFace BERT folder"),
    "--init-step": ("init_step", int, "checkpoint step of --init"),
    "--data": (
        "data.dir",
        str,
        "GLUE tsv files (train.tsv, dev.tsv, test.tsv) or JSONL; "
        "SQuAD's train-v1.1.json and dev-v1.1.json (v2.0: train-v2.0.json, "
        "dev-v2.0.json); CoNLL files (eng.train, eng.testa, eng.testb or train.txt, "
        "valid.txt, test.txt); SWAG's train.csv, val.csv, test.csv. Unset: the "
        "`datasets` hub's nyu-mll/glue, rajpurkar/squad(_v2), eriktks/conll2003 or "
        "allenai/swag (needs the network or its cache)",
    ),
    "--tokenizer": (
        "data.tokenizer",
        str,
        "vocab.txt / sentencepiece model (unset: the model's own)",
    ),
    "--max-seq-len": ("data.max_seq_len", int, "tokens per example, specials included"),
    "--length-buckets": (
        "data.length_buckets",
        int,
        "static batch lengths chosen from the "
        "training rows' lengths (0: every batch padded to --max-seq-len)",
    ),
    "--batch-size": ("train.global_batch_size", int, "global batch size"),
    "--grad-accum-steps": ("train.grad_accum_steps", int, "micro-batches per step"),
    "--epochs": ("train.epochs", int, "passes over the training split"),
    "--seed": ("train.seed", int, "head initialisation, data order and dropout"),
    "--log-every": ("train.log_every", int, "steps between metrics lines"),
    "--warmup": ("optim.warmup_fraction", float, "warm-up fraction of the steps"),
    "--weight-decay": ("optim.weight_decay", float, "decoupled weight decay"),
    "--mesh-data": ("mesh.data", int, "size of the 'data' mesh axis (-1: the remaining devices)"),
    "--mesh-fsdp": ("mesh.fsdp", int, "size of the 'fsdp' mesh axis"),
    "--mesh-tensor": ("mesh.tensor", int, "size of the 'tensor' mesh axis"),
    "--doc-stride": (
        ("squad.doc_stride", "ner.doc_stride"),
        int,
        "SQuAD: tokens between "
        "the starts of a context's windows; NER: pieces between the starts of a "
        "long sentence's windows",
    ),
    "--max-query-length": ("squad.max_query_length", int, "SQuAD: question tokens kept"),
    "--n-best-size": (
        "squad.n_best_size",
        int,
        "SQuAD: start/end candidates per window when decoding",
    ),
    "--max-answer-length": ("squad.max_answer_length", int, "SQuAD: longest answer in tokens"),
    "--null-score-diff-threshold": (
        "squad.null_score_diff_threshold",
        float,
        "SQuAD v2.0: answer nothing where the null score exceeds the best answer's by more",
    ),
    "--labels": (
        "ner.labels",
        str,
        "NER (--task ner): the label list, comma-separated "
        "(O,B-PER,I-PER,...; unset: the training file's types)",
    ),
    "--tag-scheme": ("ner.scheme", str, "NER: the files' tags, iob1 or iob2 (checked), or auto"),
}
# The config section of a task kind's flags -> the tasks and config they apply to.
SECTIONS = {
    "squad": "SQuAD tasks (--config finetune_squad, the default for --task squad/squad_v2)",
    "ner": "NER tasks (--config finetune_ner, the default for --task conll2003/ner)",
}


def register(subparsers) -> None:
    """Adds `finetune` to the `bertjax` command."""
    p = subparsers.add_parser(
        "finetune",
        help="fine-tune and score BERT on GLUE, SQuAD, CoNLL-2003 NER or SWAG",
        description="Fine-tune a pretraining checkpoint or a HuggingFace BERT folder on a GLUE "
        "task, SQuAD v1.1/v2.0, CoNLL-2003 (or another CoNLL-format NER set) or SWAG (paper "
        "recipes by default), score the dev set(s) after each epoch, write predictions to "
        "WORKDIR/predictions (GLUE: test submission files; SQuAD: the dev set's "
        "predictions.json, and null_odds.json for v2.0; NER: CoNLL files and conlleval "
        "reports; SWAG: the chosen endings) and, but for GLUE, the model as a HuggingFace "
        "folder (BertForQuestionAnswering, BertForTokenClassification, BertForMultipleChoice) "
        "in WORKDIR/hf_model. The last stdout line is the dev metrics as JSON (also in "
        "WORKDIR/eval_results.json). Each flag below sets the config key it names; "
        "--config.KEY=VALUE sets any key. Defaults are the config's: "
        "bertjax/configs/finetune_glue.py, finetune_squad.py, finetune_ner.py, "
        "finetune_swag.py.",
    )
    config_lib.add_config_arguments(
        p,
        default_help="the task kind's (finetune_squad for "
        "SQuAD, finetune_ner for conll2003/ner, finetune_swag for "
        "swag, else finetune_glue)",
    )
    p.add_argument("--workdir", required=True, help="where results, logs and the model go")
    for flag, (keys, kind, text) in SHORTHANDS.items():
        keys = (keys,) if isinstance(keys, str) else keys
        p.add_argument(
            flag,
            type=kind,
            metavar=keys[0].rpartition(".")[2].upper(),
            help=f"{text} ({' or '.join(keys)})",
        )
    p.add_argument(
        "--lr", type=float, default=None, help="peak learning rate (optim.learning_rates = (LR,))"
    )
    p.add_argument(
        "--lr-sweep",
        type=float,
        nargs="*",
        metavar="LR",
        default=None,
        help="run each learning rate (none listed: the paper's 2e-5 3e-5 5e-5) in "
        "WORKDIR/lr_<LR> and report the best on dev by the task's main metric",
    )
    p.set_defaults(func=run)


def config_from_args(args):
    """The run's config: the file, then its `--config.KEY=VALUE` overrides, then the flags."""
    from bertjax.configs.finetune_glue import PAPER_LEARNING_RATES
    from bertjax.finetune.kinds import default_config

    if args.lr_sweep is not None and args.lr is not None:
        raise UserError("--lr and --lr-sweep exclude each other: list the rates after --lr-sweep")
    spec = args.config or (default_config(args.task) if args.task else "finetune_glue")
    config = config_lib.load_config(spec, args.config_overrides)
    for flag, (keys, _, _) in SHORTHANDS.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is None:
            continue
        keys = (keys,) if isinstance(keys, str) else keys
        found = [
            (node, leaf)
            for node, leaf in (_parent(config, k) for k in keys)
            if node is not None and leaf in node
        ]
        if not found:
            sections = [SECTIONS[k.partition(".")[0]] for k in keys if k.partition(".")[0]
                        in SECTIONS]  # fmt: skip
            hint = f": it applies to {' and '.join(sections)}" if sections else ""
            raise UserError(
                f"{flag} sets the config key {' or '.join(keys)}, which config {spec} lacks{hint}"
            )
        node, leaf = found[0]
        node[leaf] = value
    if args.lr is not None:
        config.optim.learning_rates = (args.lr,)
    elif args.lr_sweep is not None:
        config.optim.learning_rates = tuple(args.lr_sweep) or PAPER_LEARNING_RATES
    for key, flag in (("task", "--task"), ("init", "--init")):
        if not config[key]:
            raise UserError(f"{flag} (config key {key}) is required")
    return config


def _parent(config, key: str):
    """(the section holding `key`'s leaf, the leaf's name); (None, leaf) without the section."""
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
        node = node[part] if node is not None and part in node else None
    return node, leaf


def run(args) -> int:
    """Entry point of `bertjax finetune`."""
    from bertjax.configs import finetune_schema
    from bertjax.finetune.train import finetune
    from bertjax.train import accelerator, distributed

    config = config_from_args(args)
    # Every key's type and range, and the rules across keys, before anything is read.
    finetune_schema(config).check(config)
    # A folder of its own: never a run's, a dataset's, or one holding the model or data read.
    # Checked by every process before they join, so before any of them writes there.
    inputs = [p for p in (config.init, config.data.dir, config.data.tokenizer) if p]
    outputs.check_new_folder(args.workdir, inputs=inputs)
    # Before any other JAX call; a lone process does nothing. With several, a lost one is
    # named by the watchdog, as in pretraining.
    distributed.initialize_distributed(peer_timeout_s=distributed.DEFAULT_PEER_TIMEOUT_S)
    accelerator.check_in_use()  # not a silent fall-back to the CPU of a TPU or GPU machine
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
