"""GLUE examples from the GLUE tsv download, JSONL or `datasets`, and their encoding for BERT.

An example is a dict {text_a: str, text_b: str | None, label: int | float | None, idx: int};
the label is a class id (a float score for STS-B) and None on the unlabelled test splits.
"""

import csv
import dataclasses
import json
import os
import sys
from collections.abc import Iterator, Sequence

import numpy as np

from bertjax.errors import UserError
from bertjax.finetune.tasks import GlueTask, check_split, get_task


@dataclasses.dataclass(frozen=True)
class TsvLayout:
    """Where a GLUE tsv file keeps its fields: column names, or positions when headerless."""

    text: tuple[str | int, ...]
    label: str | int | None
    index: str | None  # the column numbering examples; None: the row number
    header: bool = True


def _layout(text, label, index, test_index=None) -> dict[str, TsvLayout]:
    # Test files have no label column; CoLA's and SST-2's test files add an index column.
    return {"labelled": TsvLayout(text, label, index),
            "test": TsvLayout(text, None, test_index or index)}  # fmt: skip


# The GLUE download's layouts (as google-research/bert's run_classifier.py processors and the
# `datasets` GLUE script read them). CoLA's train and dev files alone have no header: their
# columns are (source, label, original label, sentence).
TSV_LAYOUTS: dict[str, dict[str, TsvLayout]] = {
    "cola": {"labelled": TsvLayout((3,), 1, None, header=False),
             "test": TsvLayout(("sentence",), None, "index")},
    "sst2": _layout(("sentence",), "label", None, test_index="index"),
    "mrpc": _layout(("#1 String", "#2 String"), "Quality", None, test_index="index"),
    "qqp": _layout(("question1", "question2"), "is_duplicate", "id"),
    "stsb": _layout(("sentence1", "sentence2"), "score", "index"),
    "mnli": _layout(("sentence1", "sentence2"), "gold_label", "index"),
    "qnli": _layout(("question", "sentence"), "label", "index"),
    "rte": _layout(("sentence1", "sentence2"), "label", "index"),
    "wnli": _layout(("sentence1", "sentence2"), "label", "index"),
}  # fmt: skip


def is_test_split(split: str) -> bool:
    """True for the unlabelled splits ("test", "test_matched", "test_mismatched")."""
    return split.startswith("test")


def parse_label(task: GlueTask, value, where: str) -> int | float | None:
    """A label as a class id (float for regression); accepts class names and ids as text."""
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None
    if task.is_regression:
        try:
            score = float(value)
        except ValueError:
            raise UserError(f"{where}: STS-B score {value!r} is not a number") from None
        low, high = task.score_range
        if not low <= score <= high:  # NaN fails this too, as does inf
            raise UserError(
                f"{where}: STS-B score {value!r} is not a number from {low:g} to {high:g}"
            )
        return score
    if isinstance(value, str) and value in task.label_names:
        return task.label_names.index(value)
    try:
        label = int(value)
    except (TypeError, ValueError):
        label = None
    if label == -1:  # `datasets` marks unlabelled test rows with -1
        return None
    if label is None or not 0 <= label < task.num_labels:
        raise UserError(
            f"{where}: label {value!r} is not one of {', '.join(task.label_names)} "
            f"(or their ids 0..{task.num_labels - 1})"
        )
    return label


def read_tsv(task: str | GlueTask, path: str, split: str) -> Iterator[dict]:
    """Yields the examples of one GLUE tsv file of `split` (read with csv.QUOTE_NONE, as GLUE
    must be: its sentences contain unbalanced quotes). Rows with missing fields are skipped
    and counted in a warning on stderr."""
    task = get_task(task) if isinstance(task, str) else task
    layout = TSV_LAYOUTS[task.name]["test" if is_test_split(split) else "labelled"]
    # Some GLUE fields (MNLI parse trees) can outgrow csv's default 128 KiB field limit.
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    # utf-8-sig: the MRPC files start with a byte-order mark that would rename "Quality".
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        columns = {}
        if layout.header:
            header = next(reader, None)
            if header is None:
                raise UserError(f"{path} is empty; expected a GLUE {task.name} tsv file")
            columns = {name: i for i, name in enumerate(header)}
            wanted = [c for c in (*layout.text, layout.label, layout.index) if c is not None]
            missing = [c for c in wanted if c not in columns]
            if missing:
                raise UserError(
                    f"{path} has no column {', '.join(map(repr, missing))}: a GLUE "
                    f"{task.name} {split} file has a header with {', '.join(wanted)}"
                )
        position = lambda c: c if isinstance(c, int) else columns[c]
        text_pos = [position(c) for c in layout.text]
        label_pos = None if layout.label is None else position(layout.label)
        index_pos = None if layout.index is None else position(layout.index)
        needed = 1 + max(p for p in (*text_pos, label_pos, index_pos) if p is not None)
        skipped = []
        for row_number, row in enumerate(reader):
            line = row_number + 1 + layout.header
            if len(row) < needed:
                skipped.append(line)
                continue
            where = f"{path}, line {line}"
            label = None if label_pos is None else parse_label(task, row[label_pos], where)
            if label is None and label_pos is not None:
                raise UserError(f"{where}: a {split} row needs a label, found {row[label_pos]!r}")
            yield {
                "text_a": row[text_pos[0]],
                "text_b": row[text_pos[1]] if len(text_pos) > 1 else None,
                "label": label,
                "idx": row_number if index_pos is None else _int(row[index_pos], where),
            }
    if skipped:
        print(
            f"warning: {path}: skipped {len(skipped)} rows with fewer than {needed} fields "
            f"(lines {', '.join(map(str, skipped[:5]))}{', ...' if len(skipped) > 5 else ''})",
            file=sys.stderr,
        )


def _int(value: str, where: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise UserError(f"{where}: index {value!r} is not an integer") from None


def from_record(task: GlueTask, record: dict, row_number: int, where: str) -> dict:
    """An example from a `datasets`-style record (task's text columns, label, optional idx)."""
    missing = [c for c in task.text_columns if c not in record]
    if missing:
        raise UserError(
            f"{where}: no field {', '.join(map(repr, missing))}; GLUE {task.name} records "
            f"have {', '.join(task.text_columns)}, label and idx"
        )
    texts = [record[c] for c in task.text_columns]
    return {
        "text_a": texts[0],
        "text_b": texts[1] if len(texts) > 1 else None,
        "label": parse_label(task, record.get("label"), where),
        "idx": int(record.get("idx", row_number)),
    }


def read_jsonl(task: str | GlueTask, path: str) -> Iterator[dict]:
    """Yields the examples of a JSONL file whose records use the `datasets` GLUE column names
    (e.g. {"sentence": ..., "label": 1, "idx": 0} for SST-2); a missing or -1 label is None."""
    task = get_task(task) if isinstance(task, str) else task
    with open(path, encoding="utf-8") as f:
        for row_number, line in enumerate(f):
            if not line.strip():
                continue
            where = f"{path}, line {row_number + 1}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{where} is not valid JSON ({e.msg})") from None
            yield from_record(task, record, row_number, where)


def load_hub_split(task: str | GlueTask, split: str) -> list[dict]:
    """The examples of `datasets.load_dataset("nyu-mll/glue", task)[split]` (needs the network
    or the `datasets` cache)."""
    task = get_task(task) if isinstance(task, str) else task
    check_split(task, split)
    import datasets  # slow to import: only when the hub is really used

    try:
        ds = datasets.load_dataset("nyu-mll/glue", task.name, split=split)
    # Offline, hub down, no cache, renamed dataset: datasets and huggingface_hub raise many
    # unrelated types for these, and each means the same to the user.
    except Exception as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(
            f"cannot load GLUE {task.name} ({split}) with datasets ({reason}); without network, "
            "pass a directory with the GLUE tsv files or JSONL files instead"
        ) from None
    where = f"datasets glue/{task.name} {split}"
    return [from_record(task, r, i, f"{where}, row {i}") for i, r in enumerate(ds)]


def find_split_file(task: GlueTask, data_dir: str, split: str) -> str:
    """The file holding `split` in `data_dir`: the GLUE tsv name (dev.tsv, dev_matched.tsv...)
    or a JSONL file named after the split or the tsv (validation.jsonl or dev.jsonl)."""
    check_split(task, split)
    stem = task.tsv_files[split].removesuffix(".tsv")
    candidates = [f"{stem}.tsv", f"{split}.jsonl", f"{stem}.jsonl"]
    found = [c for c in dict.fromkeys(candidates) if os.path.isfile(os.path.join(data_dir, c))]
    if not found:
        raise UserError(
            f"{data_dir} has no {task.name} {split} file: expected {candidates[0]} (the GLUE "
            f"download's layout) or {' or '.join(candidates[1:])}"
        )
    if len(found) > 1:
        raise UserError(
            f"{data_dir} holds {task.name} {split} twice ({', '.join(found)}): keep one"
        )
    return os.path.join(data_dir, found[0])


def load_split(task: str | GlueTask, split: str, data_dir: str | None = None) -> list[dict]:
    """The examples of one split: from `data_dir` (GLUE tsv or JSONL files), else `datasets`."""
    task = get_task(task) if isinstance(task, str) else task
    if data_dir is None:
        return load_hub_split(task, split)
    if not os.path.isdir(data_dir):
        raise UserError(f"GLUE data directory {data_dir} does not exist")
    path = find_split_file(task, data_dir, split)
    reader = read_tsv(task, path, split) if path.endswith(".tsv") else read_jsonl(task, path)
    examples = list(reader)
    if not examples:
        raise UserError(f"{path} holds no examples")
    if not is_test_split(split):
        unlabelled = [e["idx"] for e in examples if e["label"] is None]
        if unlabelled:
            raise UserError(
                f"{path}: {len(unlabelled)} {split} examples have no label "
                f"(idx {', '.join(map(str, unlabelled[:5]))})"
            )
    return examples


def truncate_seq_pair(tokens_a: list, tokens_b: list, max_length: int) -> None:
    """Pops tokens from the end of the longer list (of b on a tie) until both fit in
    `max_length`, in place: google-research/bert's _truncate_seq_pair."""
    while len(tokens_a) + len(tokens_b) > max_length:
        (tokens_a if len(tokens_a) > len(tokens_b) else tokens_b).pop()


def encode_examples(
    examples: Sequence[dict],
    tokenizer,
    max_seq_len: int,
    *,
    regression: bool | None = None,
    chunk_size: int = 8192,
) -> dict[str, np.ndarray]:
    """Encodes examples as `[CLS] A [SEP]` or `[CLS] A [SEP] B [SEP]`, padded to max_seq_len.

    Returns numpy arrays input_ids, input_mask, segment_ids [N, max_seq_len] int32 (segment 0
    up to the first [SEP], 1 after it) and labels [N]: int32 class ids, or float32 scores when
    `regression` (None: when any label is a float); -1 (NaN for regression) where the label
    is None, as on the test splits. The longer text loses tokens from its end first.
    """
    n = len(examples)
    num_pairs = sum(e["text_b"] is not None for e in examples)
    if num_pairs not in (0, n):
        raise ValueError("examples mix single sentences and sentence pairs")
    if max_seq_len < (5 if num_pairs else 3):
        raise ValueError(f"max_seq_len {max_seq_len} leaves no room for text")
    labels = [e["label"] for e in examples]
    if regression is None:
        regression = any(isinstance(x, float) for x in labels)
    if any(x is None for x in labels) and not all(x is None for x in labels):
        raise ValueError("examples mix labelled and unlabelled rows")

    input_ids = np.full((n, max_seq_len), tokenizer.pad_id, np.int32)
    segment_ids = np.zeros((n, max_seq_len), np.int32)
    lengths = np.zeros(n, np.int64)
    cls, sep = tokenizer.cls_id, tokenizer.sep_id
    for start in range(0, n, chunk_size):
        chunk = examples[start : start + chunk_size]
        ids_a = tokenizer.encode_batch([e["text_a"] for e in chunk])
        ids_b = tokenizer.encode_batch([e["text_b"] for e in chunk]) if num_pairs else None
        for j, a in enumerate(ids_a):
            a = list(a)
            if ids_b is None:
                del a[max_seq_len - 2 :]
                ids, len_a = [cls, *a, sep], len(a) + 2
            else:
                b = list(ids_b[j])
                truncate_seq_pair(a, b, max_seq_len - 3)
                ids, len_a = [cls, *a, sep, *b, sep], len(a) + 2
            i = start + j
            input_ids[i, : len(ids)] = ids
            segment_ids[i, len_a : len(ids)] = 1
            lengths[i] = len(ids)
        if n > chunk_size:
            print(f"encoded {min(start + chunk_size, n)}/{n} examples", file=sys.stderr)

    input_mask = (np.arange(max_seq_len) < lengths[:, None]).astype(np.int32)
    missing = np.nan if regression else -1
    label_array = np.array(
        [missing if x is None else x for x in labels], np.float32 if regression else np.int32
    )
    return {
        "input_ids": input_ids,
        "input_mask": input_mask,
        "segment_ids": segment_ids,
        "labels": label_array.reshape(n),
    }
