"""`bertjax finetune`: GLUE fine-tuning of a pretraining checkpoint or a HuggingFace folder,
on the pretraining machinery (mesh and logical rules, optax AdamW, the jitted train step,
orbax checkpoints, metrics.jsonl)."""

import dataclasses
import functools
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from bertjax.errors import UserError
from bertjax.finetune import batches

PAPER_LEARNING_RATES = (2e-5, 3e-5, 5e-5)  # BERT paper, section A.3 (batch 32, 3 epochs)
RESULTS_FILE = "eval_results.json"
# The advice of a diverged run, in this command's flags (clipping is fixed at norm 1 here).
NAN_REMEDY = "Lower --lr (or the rates of --lr-sweep), or raise --warmup"


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """One `bertjax finetune` run; the defaults are the BERT paper's GLUE recipe."""

    task: str
    init: str  # a pretraining workdir (newest checkpoint, or init_step) or a HuggingFace folder
    data: str | None = None  # GLUE tsv / JSONL directory; None: `datasets` (nyu-mll/glue)
    tokenizer: str | None = None  # None: the model's own (HF vocab.txt, the dataset's tokenizer)
    init_step: int | None = None
    max_seq_len: int = 128
    batch_size: int = 32  # global, over all devices and processes
    grad_accum_steps: int = 1
    epochs: int = 3
    learning_rates: tuple[float, ...] = (2e-5,)  # more than one: a sweep, best on dev wins
    warmup: float = 0.1  # fraction of the steps with linear warm-up, then linear decay to 0
    weight_decay: float = 0.01
    seed: int = 0
    log_every: int = 50
    mesh: tuple[tuple[str, int], ...] = (("data", -1), ("fsdp", 1), ("tensor", 1))


def register(subparsers) -> None:
    """Adds `finetune` to the `bertjax` command."""
    p = subparsers.add_parser(
        "finetune",
        help="fine-tune and score BERT on a GLUE task",
        description="Fine-tune a pretraining checkpoint or a HuggingFace BERT folder on a GLUE "
        "task (paper recipe by default), score the dev set(s) after each epoch, write test "
        "predictions in GLUE's submission format. The last stdout line is the dev metrics "
        "as JSON (also in WORKDIR/eval_results.json).",
    )
    p.add_argument(
        "--task", required=True, help="cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte or wnli"
    )
    p.add_argument(
        "--init",
        required=True,
        metavar="PATH",
        help="pretraining workdir (newest checkpoint) or HuggingFace BERT folder",
    )
    p.add_argument("--init-step", type=int, default=None, help="checkpoint step of --init")
    p.add_argument("--workdir", required=True, help="where results, logs and the model go")
    p.add_argument(
        "--data",
        metavar="DIR",
        default=None,
        help="GLUE tsv files (train.tsv, dev.tsv, test.tsv) or JSONL; default: "
        "`datasets` nyu-mll/glue (needs the network or its cache)",
    )
    p.add_argument(
        "--tokenizer",
        metavar="PATH",
        default=None,
        help="vocab.txt / sentencepiece model (default: the model's own)",
    )
    p.add_argument("--max-seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32, help="global batch size")
    p.add_argument("--grad-accum-steps", type=int, default=1)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default 2e-5)")
    p.add_argument(
        "--lr-sweep",
        type=float,
        nargs="*",
        metavar="LR",
        default=None,
        help="run each learning rate (default: 2e-5 3e-5 5e-5) in WORKDIR/lr_<LR> "
        "and report the best on dev by the task's main metric",
    )
    p.add_argument("--warmup", type=float, default=0.1, help="warm-up fraction of the steps")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=50, help="steps between metrics lines")
    for axis, default in (("data", -1), ("fsdp", 1), ("tensor", 1)):
        p.add_argument(
            f"--mesh-{axis}",
            type=int,
            default=default,
            help=f"size of the '{axis}' mesh axis (-1: the remaining devices)",
        )
    p.set_defaults(func=run)


def run(args) -> int:
    """Entry point of `bertjax finetune`."""
    from bertjax.train.loop import initialize_distributed

    if args.lr_sweep is not None and args.lr is not None:
        raise UserError("--lr and --lr-sweep exclude each other: list the rates after --lr-sweep")
    if args.lr_sweep is None:
        learning_rates = (PAPER_LEARNING_RATES[0] if args.lr is None else args.lr,)
    else:
        learning_rates = tuple(args.lr_sweep) or PAPER_LEARNING_RATES
    initialize_distributed()  # before any other JAX call; a lone process does nothing
    names = [f.name for f in dataclasses.fields(FinetuneConfig) if hasattr(args, f.name)]
    mesh = (("data", args.mesh_data), ("fsdp", args.mesh_fsdp), ("tensor", args.mesh_tensor))
    cfg = FinetuneConfig(
        **{k: getattr(args, k) for k in names}, learning_rates=learning_rates, mesh=mesh
    )
    try:
        result = finetune(cfg, args.workdir)
    except FloatingPointError as e:  # a diverged run: say where, without a traceback
        print(f"bertjax finetune: error: {e}", file=sys.stderr)
        return 1
    import jax

    if jax.process_index() == 0:
        print(json.dumps(result), flush=True)
    return 0


def _log(msg: str) -> None:
    import jax

    if jax.process_index() == 0:
        print(f"bertjax finetune: {msg}", flush=True)


def check_config(cfg: FinetuneConfig) -> None:
    """Raises UserError on values no run can use (before anything is loaded)."""
    positive = {
        "--batch-size": cfg.batch_size,
        "--epochs": cfg.epochs,
        "--grad-accum-steps": cfg.grad_accum_steps,
        "--log-every": cfg.log_every,
    }
    for flag, value in positive.items():
        if value < 1:
            raise UserError(f"{flag}={value}: must be a positive integer")
    if not 0.0 <= cfg.warmup <= 1.0:
        raise UserError(f"--warmup={cfg.warmup}: a fraction of the steps, in [0, 1]")
    bad = [lr for lr in cfg.learning_rates if not lr > 0 or not math.isfinite(lr)]
    if bad or not cfg.learning_rates:
        raise UserError(f"learning rates must be positive numbers, got {list(cfg.learning_rates)}")
    if len(set(cfg.learning_rates)) != len(cfg.learning_rates):
        raise UserError(f"--lr-sweep lists a rate twice: {list(cfg.learning_rates)}")


# --- model ---------------------------------------------------------------------------------


def load_model_and_tokenizer(cfg: FinetuneConfig, task):
    """(LoadedModel, tokenizer): checks that the tokenizer's ids fit the model's embeddings
    and the sequence length its position embeddings."""
    from bertjax import export
    from bertjax.data import load_tokenizer

    loaded = export.load_model(cfg.init, cfg.init_step)
    if cfg.tokenizer:
        tok_path = cfg.tokenizer
    elif loaded.tokenizer_files:
        tok_path = str(Path(loaded.tokenizer_files[0]).parent)
    else:
        raise UserError(
            f"--init {cfg.init} comes with no tokenizer files (vocab.txt or the "
            "pretraining dataset's tokenizer/): pass --tokenizer PATH"
        )
    tokenizer = load_tokenizer(tok_path)
    vocab = loaded.model_cfg.vocab_size
    if tokenizer.vocab_size > vocab:
        raise UserError(
            f"tokenizer {tok_path} has {tokenizer.vocab_size} tokens, but the model "
            f"{loaded.source} embeds only {vocab}: pass the tokenizer it was "
            "pretrained with (--tokenizer)"
        )
    if tokenizer.vocab_size < vocab:
        print(
            f"warning: tokenizer {tok_path} has {tokenizer.vocab_size} tokens, the model "
            f"{vocab} embeddings (fine if its vocabulary was padded)",
            file=sys.stderr,
        )
    limit = loaded.model_cfg.max_position_embeddings
    if cfg.max_seq_len > limit:
        raise UserError(
            f"--max-seq-len={cfg.max_seq_len} exceeds the model's max_position_embeddings={limit}"
        )
    if cfg.max_seq_len < (5 if task.is_pair else 3):
        raise UserError(f"--max-seq-len={cfg.max_seq_len} leaves no room for {task.name}'s text")
    return loaded, tokenizer


# --- one fine-tuning run -------------------------------------------------------------------


@dataclasses.dataclass
class Prepared:
    """What every learning rate's run shares: loaded once, before any compilation."""

    cfg: FinetuneConfig
    task: object  # tasks.GlueTask
    mesh: object
    model_cfg: object  # the pretrained model's BertConfig
    bert_params: dict  # its `bert` parameters, on the host
    tokenizer_dir: str
    splits: dict  # split name -> batches.Split
    main_key: str  # the metric that picks the best learning rate ("matched_accuracy" on MNLI)


def predict(predict_fn, params, split: batches.Split, batch_size: int, mesh) -> np.ndarray:
    """The model's outputs [n, num_labels] on every example of `split`, in order: the last
    batch is padded and its padding rows dropped, so each example counts exactly once."""
    import jax

    from bertjax.train import sharding

    outputs = []
    for start in range(0, len(split), batch_size):
        rows = np.arange(start, start + batch_size)
        rows[rows >= len(split)] = -1
        batch = batches.local_slice(
            batches.take(split, rows, batches.INPUT_KEYS), jax.process_index(), jax.process_count()
        )
        del batch["weights"]
        out = jax.device_get(predict_fn(params, sharding.global_batch(batch, mesh)))
        outputs.append(np.asarray(out)[rows >= 0])
    return np.concatenate(outputs)


def score(task, split: batches.Split, outputs: np.ndarray) -> dict:
    """GLUE metrics plus the mean loss and the number of examples scored."""
    from bertjax.finetune.metrics import glue_metrics

    labels = split.arrays["labels"]
    if task.is_regression:
        predictions, loss = outputs[:, 0], np.mean((outputs[:, 0] - labels) ** 2)
    else:
        predictions = outputs.argmax(-1)
        shifted = outputs - outputs.max(-1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
        loss = -np.mean(log_probs[np.arange(len(labels)), labels])
    return {
        **glue_metrics(task.name, predictions, labels),
        "loss": float(loss),
        "examples": len(labels),
    }


def dev_prefix(split: str) -> str:
    """Key prefix of a dev split's metrics: "" for `validation`, "matched_" for MNLI's."""
    return "" if split == "validation" else split.removeprefix("validation_") + "_"


def train_one(run: Prepared, lr: float, workdir: Path) -> dict:
    """Fine-tunes from the pretrained weights at peak learning rate `lr`; returns the final
    dev metrics, also written to workdir/eval_results.json."""
    import jax

    from bertjax import export
    from bertjax.finetune import heads, submission
    from bertjax.train import checkpoint, sharding
    from bertjax.train.loop import check_finite
    from bertjax.train.report import MetricsWriter

    cfg, task, mesh, splits, model_cfg = run.cfg, run.task, run.mesh, run.splits, run.model_cfg
    train = splits["train"]
    steps_per_epoch = -(-len(train) // cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    ckpt = checkpoint.Checkpointer(workdir, keep=1)
    if ckpt.latest_step() is not None:
        ckpt.close()
        raise UserError(f"{workdir} already holds a fine-tuned checkpoint: use a new --workdir")
    optim_cfg = heads.optim_config(lr, int(cfg.warmup * total), cfg.weight_decay)
    root = jax.random.key(cfg.seed)
    setup = heads.setup_step(
        model_cfg, task, optim_cfg, total, mesh, jax.random.fold_in(root, 0), cfg.grad_accum_steps
    )
    state, shardings, model, train_fn = setup
    bert = jax.device_put(run.bert_params, shardings.params["bert"])
    state = state.replace(params={**state.params, "bert": bert})  # the head stays fresh
    dropout_rng = jax.random.fold_in(root, 1)
    predict_fn = jax.jit(
        functools.partial(heads.predict_step, model=model),
        in_shardings=(shardings.params, sharding.batch_sharding(mesh)),
        out_shardings=sharding.replicated(mesh),
    )
    _log(
        f"lr {lr:g}: {cfg.epochs} epochs x {steps_per_epoch} steps of {cfg.batch_size} "
        f"({len(train)} examples; the last batch of an epoch padded), "
        f"warm-up {optim_cfg.warmup_steps} steps"
    )

    def next_batch(rows):
        batch = batches.local_slice(
            batches.take(train, rows), jax.process_index(), jax.process_count()
        )
        return sharding.global_batch(batch, mesh)

    writer = MetricsWriter(workdir, total, enabled=jax.process_index() == 0)
    last = {"step": 0, "time": time.perf_counter()}

    def fetch(done, metrics):  # step n's metrics are fetched after step n+1 is dispatched
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        now = time.perf_counter()
        tokens = cfg.batch_size * cfg.max_seq_len * (done - last["step"])
        metrics["tokens_per_s"] = tokens / max(now - last["time"], 1e-9)
        writer.write(done, metrics)
        check_finite(done, metrics, last["step"], remedy=NAN_REMEDY)
        last.update(step=done, time=now)

    results, step, pending = {}, 0, None
    try:
        for epoch in range(cfg.epochs):
            for rows in batches.epoch_rows(len(train), cfg.batch_size, cfg.seed, epoch):
                state, metrics = train_fn(state, next_batch(rows), dropout_rng)
                if pending is not None:
                    fetch(*pending)
                step += 1
                is_log = step % cfg.log_every == 0 or step % steps_per_epoch == 0
                pending = (step, metrics) if is_log else None
            fetch(*pending)
            pending = None
            dev = {}
            for name in task.dev_splits:
                outputs = predict(predict_fn, state.params, splits[name], cfg.batch_size, mesh)
                dev |= {
                    dev_prefix(name) + k: v for k, v in score(task, splits[name], outputs).items()
                }
            writer.write_eval(step, {**dev, "epoch": epoch + 1})
            results = {
                "task": task.name,
                "learning_rate": lr,
                "epoch": epoch + 1,
                "step": step,
                **dev,
            }
            main = run.main_key
            _log(f"lr {lr:g} epoch {epoch + 1}/{cfg.epochs}: dev {main} {results[main]:.4f}")
            last["time"] = time.perf_counter()  # throughput excludes evaluation
        jax.block_until_ready(state)
        meta = export.checkpoint_metadata(model_cfg, dataclasses.asdict(cfg), run.tokenizer_dir)
        meta["finetune"] = {"task": task.name, "num_labels": task.num_labels, "learning_rate": lr}
        ckpt.save(step, state, dropout_rng, {"epoch": cfg.epochs}, meta, force=True)
        for name in (s for s in task.test_splits if s in splits):
            # Every process takes part in the prediction (a collective); process 0 writes.
            outputs = predict(predict_fn, state.params, splits[name], cfg.batch_size, mesh)
            predictions = outputs[:, 0] if task.is_regression else outputs.argmax(-1)
            if jax.process_index() == 0:
                path = submission.write_submission(
                    workdir / "predictions", task, name, splits[name].idx, predictions
                )
                _log(f"wrote {len(predictions)} {name} predictions to {path}")
    finally:
        writer.close()
        ckpt.close()
    if jax.process_index() == 0:
        (workdir / RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n")
    return results


# --- the command ---------------------------------------------------------------------------


def finetune(cfg: FinetuneConfig, workdir) -> dict:
    """Fine-tunes at each of cfg.learning_rates (each in WORKDIR/lr_<lr> when there are
    several) and returns the dev metrics of the best run by the task's main metric; they
    are written to WORKDIR/eval_results.json, its test predictions to WORKDIR/predictions."""
    import jax

    from bertjax.finetune.tasks import get_task
    from bertjax.train import sharding

    task = get_task(cfg.task)
    check_config(cfg)
    mesh = sharding.make_mesh(dict(cfg.mesh))
    ways = sharding.data_parallel_size(mesh) * cfg.grad_accum_steps
    if cfg.batch_size % ways or cfg.batch_size % jax.process_count():
        raise UserError(
            f"--batch-size={cfg.batch_size} is not divisible by the data-parallel "
            f"size x --grad-accum-steps = {ways} (and {jax.process_count()} processes)"
        )
    examples = batches.load_examples(task, cfg.data)
    loaded, tokenizer = load_model_and_tokenizer(cfg, task)
    _log(
        f"{task.name}: "
        + ", ".join(f"{len(v)} {k}" for k, v in examples.items())
        + f"; model {loaded.source} ({loaded.model_cfg.num_hidden_layers} layers, hidden "
        f"{loaded.model_cfg.hidden_size}); mesh "
        + ", ".join(f"{k}={v}" for k, v in mesh.shape.items())
    )
    run = Prepared(
        cfg=cfg,
        task=task,
        mesh=mesh,
        model_cfg=loaded.model_cfg,
        bert_params=jax.device_get(loaded.params["bert"]),
        tokenizer_dir=str(Path(tokenizer.files[0]).parent) if tokenizer.files else "",
        splits=batches.encode(task, examples, tokenizer, cfg.max_seq_len),
        main_key=dev_prefix(task.dev_splits[0]) + task.main_metric,
    )
    workdir = Path(workdir)
    if len(cfg.learning_rates) == 1:
        return train_one(run, cfg.learning_rates[0], workdir)
    runs = {lr: train_one(run, lr, workdir / f"lr_{lr:g}") for lr in cfg.learning_rates}
    best = max(runs, key=lambda lr: runs[lr][run.main_key])  # ties: the first listed
    result = {**runs[best], "lr_sweep": {f"{lr:g}": r[run.main_key] for lr, r in runs.items()}}
    if jax.process_index() == 0:
        predictions = workdir / f"lr_{best:g}" / "predictions"
        if predictions.is_dir():
            shutil.copytree(predictions, workdir / "predictions", dirs_exist_ok=True)
        (workdir / RESULTS_FILE).write_text(json.dumps(result, indent=2) + "\n")
    _log(f"best learning rate {best:g}: dev {run.main_key} {runs[best][run.main_key]:.4f}")
    return result
