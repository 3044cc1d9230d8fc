"""The GLUE task table: text columns, labels, splits, metrics and submission formats."""

import dataclasses

from bertjax.errors import UserError

# The GLUE download names its files after the split; MNLI has two dev and two test sets.
_TSV_FILES = {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"}
_MNLI_TSV_FILES = {
    "train": "train.tsv",
    "validation_matched": "dev_matched.tsv",
    "validation_mismatched": "dev_mismatched.tsv",
    "test_matched": "test_matched.tsv",
    "test_mismatched": "test_mismatched.tsv",
}


@dataclasses.dataclass(frozen=True)
class GlueTask:
    """One GLUE task. Column and label names follow the `datasets` GLUE configs."""

    name: str  # our name and the `datasets` config name: "sst2"
    text_columns: tuple[str, ...]  # one (single sentence) or two (pair) column names
    label_names: tuple[str, ...] | None  # class names in label-id order; None: regression
    tsv_files: dict[str, str]  # split -> file name in the GLUE download
    dev_splits: tuple[str, ...]  # splits with labels that we score
    test_splits: tuple[str, ...]  # unlabelled splits that GLUE scores from a submission
    metrics: tuple[str, ...]  # keys that metrics.glue_metrics returns for this task
    main_metric: str  # the number the BERT paper reports; picks the best learning rate
    submission_files: dict[str, str]  # test split -> file name in the submission zip
    # How a prediction is written in the submission: "names" (label strings),
    # "ids" (class ids as integers) or "float" (a regression score).
    submission_format: str
    score_range: tuple[float, float] | None = None  # regression: the lowest and highest label

    @property
    def is_regression(self) -> bool:
        return self.label_names is None

    @property
    def num_labels(self) -> int:
        """Outputs of the head: the number of classes, or 1 for regression."""
        return 1 if self.label_names is None else len(self.label_names)

    @property
    def is_pair(self) -> bool:
        return len(self.text_columns) == 2

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.tsv_files)


def _task(
    name,
    text_columns,
    label_names,
    metrics,
    main_metric,
    submission,
    fmt,
    mnli=False,
    score_range=None,
):
    if mnli:
        dev = ("validation_matched", "validation_mismatched")
        test = ("test_matched", "test_mismatched")
        files = dict(zip(test, submission))
    else:
        dev, test, files = ("validation",), ("test",), {"test": submission}
    return GlueTask(
        name=name,
        text_columns=text_columns,
        label_names=label_names,
        tsv_files=dict(_MNLI_TSV_FILES if mnli else _TSV_FILES),
        dev_splits=dev,
        test_splits=test,
        metrics=metrics,
        main_metric=main_metric,
        submission_files=files,
        submission_format=fmt,
        score_range=score_range,
    )


_ACC = ("accuracy",)
_F1_ACC = ("f1", "accuracy", "combined_score")
_ENT = ("entailment", "not_entailment")

# Label orders are those of the `datasets` GLUE configs, which also match the 0/1 columns of
# the GLUE tsv files. Submission formats follow GLUE's sample submission: label strings for
# the NLI tasks MNLI/QNLI/RTE, 0/1 for the others (WNLI too: its tsv labels are 0/1).
TASKS: dict[str, GlueTask] = {
    t.name: t
    for t in (
        _task("cola", ("sentence",), ("unacceptable", "acceptable"), ("mcc",), "mcc",
              "CoLA.tsv", "ids"),
        _task("sst2", ("sentence",), ("negative", "positive"), _ACC, "accuracy",
              "SST-2.tsv", "ids"),
        _task("mrpc", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"), _F1_ACC,
              "f1", "MRPC.tsv", "ids"),
        _task("qqp", ("question1", "question2"), ("not_duplicate", "duplicate"), _F1_ACC,
              "f1", "QQP.tsv", "ids"),
        _task("stsb", ("sentence1", "sentence2"), None,
              ("pearson", "spearmanr", "combined_score"), "spearmanr", "STS-B.tsv", "float",
              score_range=(0.0, 5.0)),  # similarity from 0 (none) to 5 (the same meaning)
        _task("mnli", ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"),
              _ACC, "accuracy", ("MNLI-m.tsv", "MNLI-mm.tsv"), "names", mnli=True),
        _task("qnli", ("question", "sentence"), _ENT, _ACC, "accuracy", "QNLI.tsv", "names"),
        _task("rte", ("sentence1", "sentence2"), _ENT, _ACC, "accuracy", "RTE.tsv", "names"),
        _task("wnli", ("sentence1", "sentence2"), ("not_entailment", "entailment"), _ACC,
              "accuracy", "WNLI.tsv", "ids"),
    )
}  # fmt: skip


# Training examples per task: the train split of `datasets` nyu-mll/glue (the same rows as the
# GLUE download's train.tsv). `bertjax bench finetune` turns them into a wall-time estimate.
TRAIN_EXAMPLES = {
    "cola": 8_551,
    "sst2": 67_349,
    "mrpc": 3_668,
    "qqp": 363_846,
    "stsb": 5_749,
    "mnli": 392_702,
    "qnli": 104_743,
    "rte": 2_490,
    "wnli": 635,
}


def get_task(name: str) -> GlueTask:
    """Returns the task named `name`; GLUE's own spellings ("SST-2", "STS-B", "CoLA") work too."""
    key = name.lower().replace("-", "").replace("_", "")
    if key not in TASKS:
        raise UserError(f"unknown GLUE task {name!r}; choose one of {', '.join(TASKS)}")
    return TASKS[key]


def check_split(task: GlueTask, split: str) -> None:
    """Raises a UserError unless `split` is one of the task's splits."""
    if split not in task.tsv_files:
        raise UserError(
            f"GLUE task {task.name} has no split {split!r}; its splits are "
            f"{', '.join(task.tsv_files)}"
        )
