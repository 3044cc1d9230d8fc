"""GLUE fine-tuning of a pretraining checkpoint or a HuggingFace folder, on the pretraining
machinery (mesh and logical rules, optax AdamW, the jitted train step, orbax checkpoints,
metrics.jsonl); the config is `bertjax/configs/finetune_glue.py`'s."""

import dataclasses
import functools
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np

from bertjax.errors import UserError
from bertjax.finetune import batches

RESULTS_FILE = "eval_results.json"
# The advice of a diverged run, in this command's flags (clipping is fixed at norm 1 here).
NAN_REMEDY = (
    "Check the data first (labels, --max-seq-len), then the learning rate: lower --lr (or the "
    "rates of --lr-sweep), or raise --warmup"
)


def _log(msg: str) -> None:
    from bertjax.train.step_metrics import log

    log("finetune", msg)


def check_config(cfg) -> None:
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


def load_model_and_tokenizer(cfg, task):
    """(LoadedModel, tokenizer): checks that the tokenizer's ids fit the model's embeddings
    and the sequence length its position embeddings."""
    from bertjax.data import load_tokenizer
    from bertjax.train import checkpoint

    loaded = checkpoint.load_model(cfg.init, cfg.init_step)
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

    cfg: object  # the run's ConfigDict (configs/finetune_glue.py)
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

    from bertjax.finetune import heads, step_setup, submission
    from bertjax.train import checkpoint, sharding
    from bertjax.train.metrics_writer import MetricsWriter
    from bertjax.train.step_metrics import StepMetrics

    cfg, task, mesh, splits, model_cfg = run.cfg, run.task, run.mesh, run.splits, run.model_cfg
    train = splits["train"]
    steps_per_epoch = -(-len(train) // cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    ckpt = checkpoint.Checkpointer(workdir, keep=1)
    if ckpt.latest_step() is not None:
        ckpt.close()
        raise UserError(f"{workdir} already holds a fine-tuned checkpoint: use a new --workdir")
    optim_cfg = step_setup.optim_config(cfg, lr, total)
    root = jax.random.key(cfg.seed)
    setup = step_setup.setup_step(
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
    tokens_per_step = cfg.batch_size * cfg.max_seq_len
    step_metrics = StepMetrics(writer, tokens_per_step, 0, remedy=NAN_REMEDY)
    results, step = {}, 0
    try:
        for epoch in range(cfg.epochs):
            for rows in batches.epoch_rows(len(train), cfg.batch_size, cfg.seed, epoch):
                state, metrics = train_fn(state, next_batch(rows), dropout_rng)
                step += 1
                is_log = step % cfg.log_every == 0 or step % steps_per_epoch == 0
                step_metrics.dispatched(step, metrics, log=is_log)
            step_metrics.flush()
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
            step_metrics.restart_clock()  # throughput excludes evaluation
        jax.block_until_ready(state)
        meta = checkpoint.checkpoint_metadata(model_cfg, cfg, run.tokenizer_dir)
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


def finetune(cfg, workdir) -> dict:
    """Fine-tunes by `cfg` (a config with `configs/finetune_glue.py`'s keys) at each of
    cfg.learning_rates (each in WORKDIR/lr_<lr> when there are
    several) and returns the dev metrics of the best run by the task's main metric; they
    are written to WORKDIR/eval_results.json, its test predictions to WORKDIR/predictions."""
    import jax

    from bertjax.finetune.tasks import get_task
    from bertjax.train import compile_cache, sharding

    task = get_task(cfg.task)
    check_config(cfg)
    cache_dir = compile_cache.enable(cfg.compilation_cache_dir, workdir, jax.process_count(),
                                     key="compilation_cache_dir")
    mesh = sharding.make_mesh(cfg.mesh)
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
        + f"; compilation cache {cache_dir or 'off'}"
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
