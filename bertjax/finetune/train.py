"""Fine-tuning runs of every task kind on the pretraining machinery (mesh and logical rules,
optax AdamW, the one step set-up, orbax checkpoints, metrics.jsonl): one loop for all; what
differs per kind (head, encoding, loss, decoding, metrics, output files) is a
`kinds.TaskKind`. The configs are `bertjax/configs/finetune_glue.py`, `finetune_squad.py`,
`finetune_ner.py` and `finetune_swag.py`."""

import dataclasses
import json
import shutil
import sys
from pathlib import Path
from typing import NamedTuple

from bertjax import outputs
from bertjax.errors import UserError
from bertjax.finetune import batches, buckets, programs
from bertjax.finetune.kinds import TaskKind, make_kind

RESULTS_FILE = "eval_results.json"
PREDICTIONS_DIR = "predictions"  # WORKDIR/predictions: submission / predictions.json files
EXPORT_DIR = "hf_model"  # WORKDIR/hf_model: the fine-tuned model as a HuggingFace folder
# The advice of a diverged run, in this command's flags (clipping is fixed at norm 1 here).
NAN_REMEDY = (
    "Check the data first (labels, --max-seq-len), then the learning rate: lower --lr (or the "
    "rates of --lr-sweep), or raise --warmup"
)


def _log(msg: str) -> None:
    from bertjax.log import log

    log("finetune", msg)


def optim_config(cfg, lr: float, total_steps: int):
    """The optimizer settings of one run: the config's `optim` section at peak rate `lr`,
    warming up over its `warmup_fraction` of `total_steps`."""
    import ml_collections

    return ml_collections.ConfigDict(
        {
            **cfg.optim.to_dict(),
            "peak_lr": float(lr),
            "warmup_steps": int(cfg.optim.warmup_fraction * total_steps),
        }
    )


# --- model ---------------------------------------------------------------------------------


def load_model_and_tokenizer(cfg, kind: TaskKind):
    """(LoadedModel, tokenizer): checks that the tokenizer's ids fit the model's embeddings
    and the sequence length its position embeddings."""
    from bertjax.data import load_tokenizer
    from bertjax.train import checkpoint

    loaded = checkpoint.load_model(cfg.init, cfg.init_step)
    if cfg.data.tokenizer:
        tok_path = cfg.data.tokenizer
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
    limit, max_seq_len = loaded.model_cfg.max_position_embeddings, cfg.data.max_seq_len
    if max_seq_len > limit:
        raise UserError(
            f"--max-seq-len={max_seq_len} exceeds the model's max_position_embeddings={limit}"
        )
    if max_seq_len < kind.min_seq_len:
        raise UserError(f"--max-seq-len={max_seq_len} leaves no room for {kind.name}'s text")
    return loaded, tokenizer


def run_model_config(cfg, loaded_cfg, lengths):
    """(the model config the run computes with, the attention log line): the checkpoint's
    config with the config's `model` section over it (compute dtype, kernel, scan, remat,
    dropout: None keeps the checkpoint's), the attention kernel resolved once for this
    platform at every length a batch can have (the length buckets and max_seq_len)."""
    from bertjax import attention, model_config

    try:
        model_cfg = model_config.override(loaded_cfg, cfg.model.to_dict())
    except ValueError as e:
        raise UserError(str(e)) from None
    choices = [attention.resolved_config(model_cfg, length) for length in sorted(set(lengths))]
    # A fused kernel must run at every length; where one length rules it out, all take xla.
    resolved, line = next((c for c in choices if c[0].attention_impl == "xla"), choices[-1])
    return resolved, f"{line}; the checkpoint's: {loaded_cfg.attention_impl}"


# --- one fine-tuning run ---------------------------------------------------------------


@dataclasses.dataclass
class Prepared:
    """What every learning rate's run shares: loaded once, before any compilation."""

    cfg: object  # the run's ConfigDict (configs/finetune_*.py)
    kind: TaskKind
    mesh: object
    model_cfg: object  # the pretrained model's BertConfig
    bert_params: dict  # its `bert` parameters, on the host
    tokenizer: object  # data.tokenizer's WordPiece or sentencepiece tokenizer
    splits: dict  # split name -> batches.Split
    plan: buckets.Plan  # the training split's length buckets (one of max_seq_len without)
    main_key: str  # the metric that picks the best learning rate ("matched_accuracy" on MNLI)


class Session(NamedTuple):
    """One learning rate's compiled functions and starting state."""

    state: object  # step.TrainState: the pretrained encoder, a fresh head, fresh moments
    train_fn: object  # (state, batch, rng) -> (state, metrics), compiled at each length
    predict_fn: object  # (params, batch) -> outputs, compiled at each length
    dropout_rng: object
    warmup_steps: int


def predict(run: Prepared, predict_fn, params, split: batches.Split):
    """The model's outputs (each [n, ...]) on every row of `split`, in order, predicted in
    the run's length buckets (buckets.predict)."""
    max_seq_len = run.cfg.data.max_seq_len
    lengths = buckets.prediction_lengths(run.plan.lengths, max_seq_len)
    return buckets.predict(
        predict_fn,
        params,
        split,
        run.cfg.train.global_batch_size,
        run.mesh,
        lengths,
        max_seq_len,
        run.kind.token_outputs,
    )


def dev_prefix(split: str) -> str:
    """Key prefix of a dev split's metrics: "" for `validation`, "matched_" for MNLI's."""
    return "" if split == "validation" else split.removeprefix("validation_") + "_"


def start_session(run: Prepared, lr: float, total_steps: int) -> Session:
    """The sharded state (the pretrained encoder and a fresh head) and the train and predict
    steps of the kind's head at peak learning rate `lr` (step_setup.build), compiled for
    every length the run's batches have before the first step (programs.compile_all)."""
    import jax

    from bertjax.train import step_setup

    cfg = run.cfg
    optim_cfg = optim_config(cfg, lr, total_steps)
    setup = step_setup.build(
        cfg, run.kind.head(run.model_cfg), run.mesh, optim_cfg=optim_cfg, total_steps=total_steps
    )
    root = jax.random.key(cfg.train.seed)
    bert = jax.device_put(run.bert_params, setup.state_shardings.params["bert"])
    # The head fresh; the encoder the pretrained one, never randomly initialised first.
    state = setup.init_state(jax.random.fold_in(root, 0), given_params={"bert": bert})
    batch_size = cfg.train.global_batch_size
    predicted = [run.splits[name] for name in predicted_splits(run)]
    compiled = programs.compile_all(
        setup,
        cfg,
        programs.train_batch_shapes(run.splits["train"], run.plan, batch_size),
        programs.predict_batch_shapes(
            predicted,
            buckets.prediction_lengths(run.plan.lengths, cfg.data.max_seq_len),
            batch_size,
        ),
        _log,
    )
    return Session(
        state,
        compiled.train_step,
        compiled.predict_step,
        jax.random.fold_in(root, 1),
        optim_cfg.warmup_steps,
    )


def predicted_splits(run: Prepared) -> list[str]:
    """The splits a run predicts: its dev splits after each epoch, then those it writes
    predictions of (GLUE's test sets) that it has."""
    kind = run.kind
    return list(dict.fromkeys([*kind.dev_splits, *(s for s in kind.output_splits
                                                    if s in run.splits)]))  # fmt: skip


def train_epoch(run: Prepared, session: Session, state, epoch: int, step: int, step_metrics):
    """One pass over the training split in a fresh seeded order (run.plan's bucketed
    batches, each cut to its bucket's length); returns (state, step)."""
    import jax

    from bertjax.train import sharding

    train_cfg, train = run.cfg.train, run.splits["train"]
    batch_size = train_cfg.global_batch_size
    steps_per_epoch = run.plan.steps_per_epoch(batch_size)
    for length, rows in run.plan.epoch(batch_size, train_cfg.seed, epoch):
        whole = buckets.take(train, rows, length)
        batch = batches.local_slice(whole, jax.process_index(), jax.process_count())
        state, metrics = session.train_fn(
            state, sharding.global_batch(batch, run.mesh), session.dropout_rng
        )
        step += 1
        is_log = step % train_cfg.log_every == 0 or step % steps_per_epoch == 0
        # The tokens this step computed, padding included (its bucket's length, not
        # max_seq_len; every choice of a multiple-choice example).
        step_metrics.dispatched(step, metrics, log=is_log, tokens=whole["input_ids"].size)
    step_metrics.flush()
    return state, step


def evaluate(run: Prepared, predict_fn, params) -> tuple[dict, dict]:
    """(dev metrics of every dev split, keys prefixed by dev_prefix; split -> predictions)."""
    metrics, predictions = {}, {}
    for name in run.kind.dev_splits:
        split = run.splits[name]
        outputs = predict(run, predict_fn, params, split)
        predictions[name] = run.kind.decode(split, outputs)
        scores = run.kind.metrics(split, outputs, predictions[name])
        metrics |= {dev_prefix(name) + k: v for k, v in scores.items()}
    return metrics, predictions


def write_outputs(run: Prepared, workdir: Path, session: Session, params, dev_predictions):
    """The kind's prediction files (dev ones from the last evaluation, others predicted
    now) in WORKDIR/predictions, and its exported model; every process takes part in the
    predictions and the parameter gathering (collectives), process 0 writes."""
    import jax
    from jax.experimental import multihost_utils

    kind, writes = run.kind, jax.process_index() == 0
    for name in (s for s in kind.output_splits if s in run.splits):
        split = run.splits[name]
        predictions = dev_predictions.get(name)
        if predictions is None:
            outputs = predict(run, session.predict_fn, params, split)
            predictions = kind.decode(split, outputs)
        if writes:
            for path in kind.write_predictions(workdir / PREDICTIONS_DIR, split, predictions):
                _log(f"wrote {name} predictions to {path}")
    if kind.exports_model:
        host_params = multihost_utils.process_allgather(params, tiled=True)
        if writes:
            kind.export(workdir / EXPORT_DIR, host_params, run.model_cfg, run.tokenizer)
            _log(f"exported the fine-tuned model to {workdir / EXPORT_DIR}")


def train_one(run: Prepared, lr: float, workdir: Path) -> dict:
    """Fine-tunes from the pretrained weights at peak learning rate `lr`; returns the final
    dev metrics, also written to workdir/eval_results.json."""
    import jax

    from bertjax.train import checkpoint
    from bertjax.train.metrics_writer import MetricsWriter
    from bertjax.train.step_metrics import StepMetrics

    cfg, kind, train = run.cfg, run.kind, run.splits["train"]
    batch_size, epochs = cfg.train.global_batch_size, cfg.train.epochs
    steps_per_epoch = run.plan.steps_per_epoch(batch_size)
    total = epochs * steps_per_epoch
    ckpt = checkpoint.Checkpointer(workdir, keep=1)
    if ckpt.latest_step() is not None:
        ckpt.close()
        raise UserError(f"{workdir} already holds a fine-tuned checkpoint: use a new --workdir")
    session = start_session(run, lr, total)
    _log(
        f"lr {lr:g}: {epochs} epochs x {steps_per_epoch} steps of {batch_size} "
        f"({len(train)} training rows; the last batch padded), "
        f"warm-up {session.warmup_steps} steps"
    )
    writer = MetricsWriter(workdir, total, enabled=jax.process_index() == 0)
    tokens_per_step = batch_size * train.arrays["input_ids"][:1].size  # [.., max_seq_len]
    step_metrics = StepMetrics(writer, tokens_per_step, 0, remedy=NAN_REMEDY)
    state, results, step = session.state, {}, 0
    try:
        for epoch in range(epochs):
            state, step = train_epoch(run, session, state, epoch, step, step_metrics)
            dev, dev_predictions = evaluate(run, session.predict_fn, state.params)
            writer.write_eval(step, {**dev, "epoch": epoch + 1})
            results = {"task": kind.name, "learning_rate": lr, "epoch": epoch + 1, "step": step,
                       **dev}  # fmt: skip
            main = run.main_key
            _log(f"lr {lr:g} epoch {epoch + 1}/{epochs}: dev {main} {results[main]:.4f}")
            step_metrics.restart_clock()  # throughput excludes evaluation
        jax.block_until_ready(state)
        tokenizer_dir = Path(run.tokenizer.files[0]).parent if run.tokenizer.files else ""
        meta = checkpoint.checkpoint_metadata(run.model_cfg, cfg, tokenizer_dir)
        meta["finetune"] = {**kind.checkpoint_info(), "learning_rate": lr}
        ckpt.save(step, state, session.dropout_rng, {"epoch": epochs}, meta, force=True)
        write_outputs(run, workdir, session, state.params, dev_predictions)
    finally:
        writer.close()
        ckpt.close()
    if jax.process_index() == 0:
        outputs.write_file(workdir / RESULTS_FILE, json.dumps(results, indent=2) + "\n")
    return results


# --- the command ---------------------------------------------------------------------------


def prepare(cfg, workdir) -> Prepared:
    """Checks `cfg`, makes the mesh, loads the examples, model and tokenizer, encodes the
    splits and chooses the length buckets: everything before the first compilation."""
    import jax

    from bertjax import encoder
    from bertjax.train import compile_cache, sharding

    kind = make_kind(cfg)
    cache_dir = compile_cache.enable(
        cfg.train.compilation_cache_dir,
        workdir,
        jax.process_count(),
        key="train.compilation_cache_dir",
    )
    mesh = sharding.make_mesh(cfg.mesh)
    batch_size = cfg.train.global_batch_size
    ways = sharding.data_parallel_size(mesh) * cfg.train.grad_accum_steps
    if batch_size % ways or batch_size % jax.process_count():
        raise UserError(
            f"--batch-size={batch_size} is not divisible by the data-parallel "
            f"size x --grad-accum-steps = {ways} (and {jax.process_count()} processes)"
        )
    examples = kind.load_examples()
    loaded, tokenizer = load_model_and_tokenizer(cfg, kind)
    splits = kind.encode(examples, tokenizer)
    plan = buckets.Plan.of(splits["train"], cfg.data.length_buckets, cfg.data.max_seq_len)
    model_cfg, attention_line = run_model_config(
        cfg, loaded.model_cfg, [*plan.lengths, cfg.data.max_seq_len]
    )
    _log(
        f"{kind.name}: "
        + ", ".join(f"{len(v)} {k}" for k, v in examples.items())
        + f" examples ({len(splits['train'])} training rows); model {loaded.source} "
        f"({loaded.model_cfg.num_hidden_layers} layers, hidden "
        f"{loaded.model_cfg.hidden_size}); mesh "
        + ", ".join(f"{k}={v}" for k, v in mesh.shape.items())
        + f"; compilation cache {cache_dir or 'off'}"
    )
    _log(attention_line)
    _log(
        f"length buckets {'/'.join(map(str, plan.lengths))} (--length-buckets="
        f"{cfg.data.length_buckets}): rows per bucket "
        f"{'/'.join(map(str, plan.rows_per_bucket()))}, an epoch computes "
        f"{plan.padded_fraction(batch_size):.0%} of the positions of "
        f"every row padded to {max(plan.lengths)}"
    )
    return Prepared(
        cfg=cfg,
        kind=kind,
        mesh=mesh,
        model_cfg=model_cfg,
        # In the run's layer layout (the `model` section may change scan_layers).
        bert_params=encoder.to_layout(jax.device_get(loaded.params["bert"]), model_cfg.scan_layers),
        tokenizer=tokenizer,
        splits=splits,
        plan=plan,
        main_key=dev_prefix(kind.dev_splits[0]) + kind.main_metric,
    )


def finetune(cfg, workdir) -> dict:
    """Fine-tunes by `cfg` (a config with the keys of `configs/finetune_glue.py`, plus its
    kind's section: `finetune_squad.py`, `finetune_ner.py`) at each of optim.learning_rates
    (each in WORKDIR/lr_<lr> when there are several) and returns the dev metrics of the best
    run by the task's main metric; they are written to WORKDIR/eval_results.json, its
    predictions to WORKDIR/predictions."""
    import jax

    run = prepare(cfg, workdir)
    workdir = Path(workdir)
    rates = cfg.optim.learning_rates
    if len(rates) == 1:
        return train_one(run, rates[0], workdir)
    runs = {lr: train_one(run, lr, workdir / f"lr_{lr:g}") for lr in rates}
    best = max(runs, key=lambda lr: runs[lr][run.main_key])  # ties: the first listed
    result = {**runs[best], "lr_sweep": {f"{lr:g}": r[run.main_key] for lr, r in runs.items()}}
    if jax.process_index() == 0:
        for folder in (PREDICTIONS_DIR, EXPORT_DIR):  # the best run's, beside its results
            if (workdir / f"lr_{best:g}" / folder).is_dir():
                shutil.copytree(
                    workdir / f"lr_{best:g}" / folder, workdir / folder, dirs_exist_ok=True
                )
        outputs.write_file(workdir / RESULTS_FILE, json.dumps(result, indent=2) + "\n")
    _log(f"best learning rate {best:g}: dev {run.main_key} {runs[best][run.main_key]:.4f}")
    return result
