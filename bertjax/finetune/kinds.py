"""The task-kind registry: which kinds of fine-tuning task there are (`KIND_MODULES`) and what
a kind is (`TaskKind`). Adding a kind is its own module(s) and one line in KIND_MODULES.

A kind module defines `DEFAULT_CONFIG` (a config in bertjax/configs), `task_names()`,
`canonical_name(name) -> str | None` (its task for any spelling of one, else None) and
`make(cfg, task) -> TaskKind`. Its modules are imported only when a task is looked up.
"""

import importlib
from pathlib import Path
from typing import Protocol

from bertjax.errors import UserError

KIND_MODULES = (
    "bertjax.finetune.kind_glue",  # GLUE: sentence(-pair) classification and regression
    "bertjax.finetune.kind_squad",  # SQuAD v1.1 / v2.0: span extraction
    "bertjax.finetune.kind_ner",  # CoNLL-2003 and other CoNLL-format NER: token classification
    "bertjax.finetune.kind_swag",  # SWAG: multiple choice
)


class TaskKind(Protocol):
    """What the fine-tuning loop (train.py), `bench finetune` and `compile` ask of a task."""

    name: str  # the task, as eval_results.json names it
    dev_splits: tuple[str, ...]  # scored after every epoch; the first picks the learning rate
    main_metric: str  # the dev metric that picks the best learning rate
    output_splits: tuple[str, ...]  # whose predictions are written after training (if loaded)
    min_seq_len: int  # the shortest data.max_seq_len that leaves room for text
    exports_model: bool  # whether `export` writes the fine-tuned model after training
    token_outputs: bool  # outputs have a sequence axis (SQuAD's, NER's logits): buckets.predict
    train_examples: int | None  # the published training set's size (bench estimates)

    def load_examples(self) -> dict: ...  # split -> examples, before the model is loaded
    def encode(self, examples: dict, tokenizer) -> dict: ...  # split -> batches.Split
    def head(self, model_cfg): ...  # train.head.Head: the model, its loss and predict step
    def synthetic_batch(
        self, batch_size: int, seq_len: int, vocab_size: int, seed: int = 0
    ) -> dict: ...  # a training batch of full rows (numpy)
    def decode(self, split, outputs): ...  # the model's outputs on a split -> predictions
    def metrics(self, split, outputs, predictions) -> dict: ...  # one split's dev metrics
    def write_predictions(self, out_dir: Path, split, predictions) -> list[Path]: ...
    def checkpoint_info(self) -> dict: ...  # recorded in the checkpoint beside the model
    def export(self, out: Path, params, model_cfg, tokenizer) -> None: ...  # a HF folder


def _modules():
    return [importlib.import_module(name) for name in KIND_MODULES]


def task_names() -> list[str]:
    """Every task of every kind, in registry order."""
    return [task for module in _modules() for task in module.task_names()]


def resolve(task: str):
    """(canonical task name, its kind's module) for any spelling of a task; a UserError
    listing every task otherwise."""
    for module in _modules():
        name = module.canonical_name(task)
        if name:
            return name, module
    raise UserError(f"unknown task {task!r}; choose one of {', '.join(task_names())}")


def default_config(task: str) -> str:
    """The config a task fine-tunes with when none is given."""
    return resolve(task)[1].DEFAULT_CONFIG


def make_kind(cfg) -> TaskKind:
    """The task kind of `cfg.task`, built from the run's config."""
    name, module = resolve(cfg.task)
    return module.make(cfg, name)
