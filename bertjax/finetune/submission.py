"""Predictions in the GLUE submission format: `index<TAB>prediction`, one file per test set."""

import os

import numpy as np

from bertjax import outputs
from bertjax.errors import UserError
from bertjax.finetune.tasks import GlueTask, get_task


def submission_filename(task: str | GlueTask, split: str) -> str:
    """The file name GLUE expects for `split` of `task` (SST-2.tsv, MNLI-m.tsv, MNLI-mm.tsv...)."""
    task = get_task(task) if isinstance(task, str) else task
    if split not in task.submission_files:
        raise UserError(
            f"GLUE scores only the test splits of {task.name} "
            f"({', '.join(task.submission_files)}), not {split!r}"
        )
    return task.submission_files[split]


def format_predictions(task: str | GlueTask, predictions) -> list[str]:
    """Predictions as GLUE wants them written: label names for MNLI/QNLI/RTE, class ids for
    the other classification tasks, scores for STS-B."""
    task = get_task(task) if isinstance(task, str) else task
    p = np.asarray(predictions)
    if p.ndim != 1:
        raise ValueError(f"predictions must be a 1-D array, got shape {p.shape}")
    if task.submission_format == "float":
        if not np.all(np.isfinite(p)):
            raise ValueError(f"{task.name} predictions hold NaN or infinite scores")
        return [f"{x:.6f}" for x in p.astype(np.float64)]
    if not np.issubdtype(p.dtype, np.integer):
        raise ValueError(f"{task.name} predictions must be class ids (integers), got {p.dtype}")
    if p.size and (p.min() < 0 or p.max() >= task.num_labels):
        raise ValueError(f"{task.name} class ids must lie in 0..{task.num_labels - 1}")
    if task.submission_format == "names":
        return [task.label_names[i] for i in p]
    return [str(int(i)) for i in p]


def write_predictions(path: str, task: str | GlueTask, indices, predictions) -> None:
    """Writes `index<TAB>prediction` lines under that header, in the order given."""
    indices = np.asarray(indices)
    lines = format_predictions(task, predictions)
    if indices.shape != (len(lines),):
        raise ValueError(f"{indices.shape[0]} indices for {len(lines)} predictions")
    rows = "".join(f"{int(i)}\t{line}\n" for i, line in zip(indices, lines))
    outputs.write_file(path, "index\tprediction\n" + rows)  # whole or not at all


def write_submission(out_dir: str, task: str | GlueTask, split: str, indices, predictions) -> str:
    """Writes the predictions on one GLUE test set under its submission name; returns the path.

    Args:
      indices: the `idx` of each predicted example (the test file's index column).
      predictions: class ids, or scores for STS-B.
    """
    path = os.path.join(out_dir, submission_filename(task, split))
    os.makedirs(out_dir, exist_ok=True)
    write_predictions(path, task, indices, predictions)
    return path
