"""The SWAG task kind: multiple choice for the shared fine-tuning loop (train.py): the official
CSV files (or the hub's allenai/swag), each of the four endings encoded as its own row
`[CLS] context [SEP] start ending [SEP]`, BertForMultipleChoice (a softmax over the four
scores), accuracy, a predictions file per split and an export that transformers'
BertForMultipleChoice loads."""

import csv
import io
import os
from pathlib import Path

import numpy as np

from bertjax.finetune import batches, choice_head, heads, swag_data

DEFAULT_CONFIG = "finetune_swag"
TRAIN_EXAMPLES = 73_546  # the questions of SWAG's train.csv


def task_names() -> tuple[str, ...]:
    """swag."""
    return ("swag",)


def canonical_name(name: str) -> str | None:
    """ "swag" for any spelling of it, else None."""
    return "swag" if name.lower() == "swag" else None


def make(cfg, name: str) -> "SwagKind":
    """The SWAG kind for the run's config `cfg`."""
    return SwagKind(cfg, name)


class SwagKind:
    """SWAG of a run's config (see kinds.TaskKind)."""

    exports_model = True
    token_outputs = False  # logits [n, 4]
    dev_splits = ("validation",)
    output_splits = ("validation", "test")
    main_metric = "accuracy"
    min_seq_len = 5  # [CLS] a [SEP] b [SEP]
    train_examples = TRAIN_EXAMPLES

    def __init__(self, cfg, name: str):
        self.cfg, self.name = cfg, name

    def load_examples(self) -> dict[str, list]:
        """split -> validated SwagExamples: train.csv, val.csv (and test.csv if there) in
        cfg.data, or allenai/swag's train, validation and test splits."""
        if self.cfg.data.dir is None:
            return {s: swag_data.load_swag_hub(s) for s in ("train", "validation", "test")}
        return swag_data.load_swag_dir(self.cfg.data.dir)

    def encode(self, examples: dict, tokenizer) -> dict[str, batches.Split]:
        """split -> Split of [n, 4, max_seq_len] choices and the labels (-1: unlabelled)."""
        return {
            name: batches.Split(
                name,
                swag_data.encode_examples(rows, tokenizer, self.cfg.data.max_seq_len),
                np.array([ex.idx for ex in rows], np.int64),
                rows,
            )
            for name, rows in examples.items()
        }

    def head(self, model_cfg):
        """BertForMultipleChoice: one score per choice from its pooled output."""
        return choice_head.head(model_cfg)

    def synthetic_batch(
        self, batch_size: int, seq_len: int, vocab_size: int, seed: int = 0
    ) -> dict:
        """Full-length two-segment rows for each of the four choices ([B, 4, L]), a random
        true choice and weights of 1."""
        rows = batches.synthetic_inputs(batch_size * swag_data.NUM_CHOICES, seq_len,
                                        vocab_size, seed)  # fmt: skip
        shape = (batch_size, swag_data.NUM_CHOICES, seq_len)
        batch = {k: rows[k].reshape(shape) for k in batches.INPUT_KEYS}
        rng = np.random.default_rng(seed)
        batch["labels"] = rng.integers(0, swag_data.NUM_CHOICES, batch_size).astype(np.int32)
        batch["weights"] = np.ones(batch_size, np.float32)
        return batch

    def decode(self, split: batches.Split, outputs: np.ndarray) -> np.ndarray:
        """The chosen ending of each example (the argmax of its four scores)."""
        return outputs.argmax(-1)

    def metrics(self, split: batches.Split, outputs: np.ndarray, predictions) -> dict:
        """Accuracy, the mean cross-entropy of the softmax over the choices, and the number
        of examples scored."""
        from bertjax.finetune.metrics import mean_cross_entropy

        labels = split.arrays["labels"]
        return {
            "accuracy": float(np.mean(predictions == labels)),
            "loss": mean_cross_entropy(outputs, labels),
            "examples": len(labels),
        }

    def write_predictions(self, out_dir: Path, split: batches.Split, predictions) -> list[Path]:
        """`{split}_predictions.csv`: each example's row in its file (`idx`, 0-based after
        the header) and the chosen ending (`label`, 0..3), via a temporary name."""
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["idx", "label"])
        writer.writerows(zip(split.idx.tolist(), np.asarray(predictions).tolist()))
        path = Path(out_dir) / f"{split.name}_predictions.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text.getvalue())
        os.replace(tmp, path)
        return [path]

    def checkpoint_info(self) -> dict:
        """What the checkpoint records of the task beside the model."""
        return {"task": self.name, "num_choices": swag_data.NUM_CHOICES}

    def export(self, out: Path, params, model_cfg, tokenizer) -> None:
        """`out`: a folder transformers.BertForMultipleChoice loads."""
        heads.export_folder(out, params, model_cfg, tokenizer, choice_head.HF_SPEC)
