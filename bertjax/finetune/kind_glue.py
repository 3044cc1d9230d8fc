"""The GLUE task kind: sentence(-pair) classification and regression for the shared fine-tuning
loop (train.py): GLUE data, a classifier on the pooled output, GLUE metrics and submission
files of the test splits."""

import os
from pathlib import Path

import numpy as np

from bertjax.finetune import batches, classifier_head
from bertjax.finetune.tasks import TASKS, TRAIN_EXAMPLES, GlueTask, get_task

DEFAULT_CONFIG = "finetune_glue"


def task_names() -> tuple[str, ...]:
    """The nine GLUE tasks."""
    return tuple(TASKS)


def canonical_name(name: str) -> str | None:
    """The GLUE task of any of its spellings ("SST-2", "sst2"), else None."""
    key = name.lower().replace("-", "").replace("_", "")
    return key if key in TASKS else None


def make(cfg, name: str) -> "GlueKind":
    """The GLUE kind of task `name` for the run's config `cfg`."""
    return GlueKind(cfg, get_task(name))


class GlueKind:
    """One GLUE task of a run's config (see kinds.TaskKind for what each member does)."""

    exports_model = False  # the classifier stays in the checkpoint (no `export`)
    token_outputs = False  # logits [n, num_labels]

    def __init__(self, cfg, task: GlueTask):
        self.cfg, self.task = cfg, task
        self.name = task.name
        self.dev_splits = task.dev_splits
        self.main_metric = task.main_metric
        self.min_seq_len = 5 if task.is_pair else 3  # [CLS] a [SEP] (b [SEP])
        self.output_splits = task.test_splits
        self.train_examples = TRAIN_EXAMPLES[task.name]

    def load_examples(self) -> dict[str, list[dict]]:
        """split -> examples for train, the dev split(s) and the test split(s) there are (a
        local directory may lack test files: no predictions are written then)."""
        from bertjax.finetune import glue_data

        task, data_dir = self.task, self.cfg.data.dir
        splits = ["train", *task.dev_splits]
        splits += [
            s for s in task.test_splits if data_dir is None or _has_split_file(task, data_dir, s)
        ]
        return {s: glue_data.load_split(task, s, data_dir) for s in splits}

    def encode(self, examples: dict, tokenizer) -> dict[str, batches.Split]:
        """split -> Split, tokenised and padded to data.max_seq_len."""
        from bertjax.finetune import glue_data

        return {
            name: batches.Split(
                name,
                glue_data.encode_examples(
                    rows, tokenizer, self.cfg.data.max_seq_len, regression=self.task.is_regression
                ),
                np.array([r["idx"] for r in rows], np.int64),
            )
            for name, rows in examples.items()
        }

    def head(self, model_cfg):
        """BertForSequenceClassification with the task's labels (one output for STS-B)."""
        return classifier_head.head(model_cfg, self.task.num_labels, self.task.is_regression)

    def synthetic_batch(
        self, batch_size: int, seq_len: int, vocab_size: int, seed: int = 0
    ) -> dict:
        """Full-length two-segment rows, random labels (class ids, or scores in [0, 5] for a
        regression) and weights of 1."""
        batch = batches.synthetic_inputs(batch_size, seq_len, vocab_size, seed)
        rng = np.random.default_rng(seed)
        if self.task.is_regression:
            batch["labels"] = rng.uniform(0, 5, batch_size).astype(np.float32)
        else:
            batch["labels"] = rng.integers(0, self.task.num_labels, batch_size).astype(np.int32)
        return batch

    def decode(self, split: batches.Split, outputs: np.ndarray) -> np.ndarray:
        """Class ids (argmax of the logits), or the scores of a regression."""
        return outputs[:, 0] if self.task.is_regression else outputs.argmax(-1)

    def metrics(self, split: batches.Split, outputs: np.ndarray, predictions) -> dict:
        """GLUE metrics plus the mean loss and the number of examples scored."""
        from bertjax.finetune.metrics import glue_metrics, mean_cross_entropy

        labels = split.arrays["labels"]
        if self.task.is_regression:
            loss = float(np.mean((outputs[:, 0] - labels) ** 2))
        else:
            loss = mean_cross_entropy(outputs, labels)
        return {
            **glue_metrics(self.task.name, predictions, labels),
            "loss": loss,
            "examples": len(labels),
        }

    def write_predictions(self, out_dir: Path, split: batches.Split, predictions) -> list[Path]:
        """The test split's submission file in GLUE's format."""
        from bertjax.finetune import submission

        path = submission.write_submission(out_dir, self.task, split.name, split.idx, predictions)
        return [Path(path)]

    def checkpoint_info(self) -> dict:
        """What the checkpoint records of the task beside the model."""
        return {"task": self.task.name, "num_labels": self.task.num_labels}


def _has_split_file(task: GlueTask, data_dir: str, split: str) -> bool:
    stem = task.tsv_files[split].removesuffix(".tsv")
    names = (f"{stem}.tsv", f"{split}.jsonl", f"{stem}.jsonl")
    return any(os.path.isfile(os.path.join(data_dir, n)) for n in names)
