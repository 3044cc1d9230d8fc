"""The GLUE task kind: sentence(-pair) classification and regression for the shared fine-tuning
loop (train.py): GLUE data, a classifier on the pooled output, GLUE metrics and submission
files of the test splits."""

from pathlib import Path

import numpy as np

from bertjax.finetune import batches, heads
from bertjax.finetune.tasks import GlueTask


class GlueKind:
    """One GLUE task of a run's config (see train.TaskKind for what each member does)."""

    exports_model = False  # the classifier stays in the checkpoint (no `export`)
    token_outputs = False  # logits [n, num_labels]

    def __init__(self, cfg, task: GlueTask):
        self.cfg, self.task = cfg, task
        self.name = task.name
        self.dev_splits = task.dev_splits
        self.main_metric = task.main_metric
        self.min_seq_len = 5 if task.is_pair else 3  # [CLS] a [SEP] (b [SEP])
        self.output_splits = task.test_splits

    def load_examples(self) -> dict[str, list[dict]]:
        """split -> examples: train, the dev split(s) and the test split(s) there are."""
        return batches.load_examples(self.task, self.cfg.data)

    def encode(self, examples: dict, tokenizer) -> dict[str, batches.Split]:
        """split -> Split, tokenised and padded to max_seq_len."""
        return batches.encode(self.task, examples, tokenizer, self.cfg.max_seq_len)

    def head(self, model_cfg) -> heads.Head:
        """BertForSequenceClassification with the task's labels (one output for STS-B)."""
        return heads.classifier_head(model_cfg, self.task.num_labels, self.task.is_regression)

    def decode(self, split: batches.Split, outputs: np.ndarray) -> np.ndarray:
        """Class ids (argmax of the logits), or the scores of a regression."""
        return outputs[:, 0] if self.task.is_regression else outputs.argmax(-1)

    def metrics(self, split: batches.Split, outputs: np.ndarray, predictions) -> dict:
        """GLUE metrics plus the mean loss and the number of examples scored."""
        from bertjax.finetune.metrics import glue_metrics

        labels = split.arrays["labels"]
        if self.task.is_regression:
            loss = np.mean((outputs[:, 0] - labels) ** 2)
        else:
            shifted = outputs - outputs.max(-1, keepdims=True)
            log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
            loss = -np.mean(log_probs[np.arange(len(labels)), labels])
        return {
            **glue_metrics(self.task.name, predictions, labels),
            "loss": float(loss),
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
