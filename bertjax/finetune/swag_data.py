"""SWAG multiple-choice examples from the official CSV files or `datasets` rows, validated, and
their encoding: one row per choice, as HuggingFace's run_swag (and the BERT paper) builds it.

    examples = read_swag_csv("val.csv")              # train.csv / val.csv; test.csv: no labels
    examples = load_swag_hub("validation")           # allenai/swag, needs the network
    arrays = encode_examples(examples, tokenizer, max_seq_len)

Choice k of an example is `[CLS] sent1 [SEP] sent2 + " " + ending_k [SEP]` (sent1 the context,
sent2 the start of the next sentence, segment 1 from the first [SEP] on). A pair longer than
max_seq_len is cut as run_swag's fast tokenizer cuts it (`truncation=True`, longest first):
the shorter text keeps its tokens while it fits in half of the room; otherwise both get
half, the longer (the second on a tie) one token more for an odd room; each keeps its first
tokens. A row with fewer than four endings, a label outside 0..3, an empty file and a missing
column are each one `UserError` naming the file and line (or row).
"""

from __future__ import annotations

import csv
import dataclasses
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from bertjax.errors import UserError

NUM_CHOICES = 4
ENDINGS = tuple(f"ending{k}" for k in range(NUM_CHOICES))
TEXT_COLUMNS = ("sent1", "sent2", *ENDINGS)
FILES = {"train": "train.csv", "validation": "val.csv", "test": "test.csv"}  # the official names
HUB_NAME, HUB_CONFIG = "allenai/swag", "regular"


@dataclasses.dataclass(frozen=True)
class SwagExample:
    """One SWAG question: a context, the start of its next sentence and the endings to choose
    from; `label` is the true ending's index (None where the split has no labels)."""

    idx: int  # the example's row (0-based) in its file or split
    context: str  # sent1
    start: str  # sent2
    endings: tuple[str, ...]
    label: int | None


def _label(value, where: str) -> int:
    try:
        label = int(str(value).strip())
    except ValueError:
        label = None
    if label is None or not 0 <= label < NUM_CHOICES:
        raise UserError(f"{where}: label {value!r} is not a choice 0..{NUM_CHOICES - 1}")
    return label


def _example(record: Mapping, idx: int, where: str, labelled: bool) -> SwagExample:
    missing = [k for k in ENDINGS if not (record.get(k) or "").strip()]
    if missing:
        raise UserError(
            f"{where} has {NUM_CHOICES - len(missing)} endings ({', '.join(missing)} "
            f"empty or missing): a SWAG row needs {NUM_CHOICES}"
        )
    label = _label(record.get("label"), where) if labelled else None
    return SwagExample(
        idx,
        record.get("sent1") or "",
        record.get("sent2") or "",
        tuple(record[k] for k in ENDINGS),
        label,
    )


def read_swag_csv(path, require_labels: bool = False) -> list[SwagExample]:
    """The examples of an official SWAG CSV file (columns sent1, sent2, ending0..3 and label;
    others ignored). A file with a label column is labelled (every label must be 0..3); test.csv
    has none, and its examples have label None (an error when `require_labels`)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"SWAG file {path} does not exist")
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames
        if not header:
            raise UserError(
                f"SWAG file {path} is empty; expected a CSV header with "
                f"{', '.join(TEXT_COLUMNS)}, label"
            )
        wanted = [*TEXT_COLUMNS, *(["label"] if require_labels else [])]
        missing = [c for c in wanted if c not in header]
        if missing:
            raise UserError(
                f"{path} has no column {', '.join(missing)}: a SWAG file's header "
                f"names {', '.join(TEXT_COLUMNS)} and (but for test.csv) label"
            )
        labelled = "label" in header
        examples = []
        try:
            for row in reader:
                where = f"{path}, line {reader.line_num}"
                if None in row:
                    raise UserError(f"{where} has more fields than the header names")
                examples.append(_example(row, len(examples), where, labelled))
        except csv.Error as e:
            raise UserError(f"{path}, line {reader.line_num}: not valid CSV ({e})") from None
    if not examples:
        raise UserError(f"SWAG file {path} holds no examples (a header only)")
    return examples


def examples_from_rows(rows: Iterable[Mapping], source: str) -> list[SwagExample]:
    """Validated examples of `datasets` rows (allenai/swag's columns); label -1 (the hub's
    test split) on every row: an unlabelled split."""
    rows = list(rows)
    if not rows:
        raise UserError(f"{source} holds no examples")
    missing = [c for c in (*TEXT_COLUMNS, "label") if c not in rows[0]]
    if missing:
        raise UserError(f"{source} has no column {', '.join(missing)}")
    unlabelled = [r["label"] in (-1, None) for r in rows]
    if any(unlabelled) and not all(unlabelled):
        row = unlabelled.index(not unlabelled[0])
        raise UserError(
            f"{source}, row {row}: label {rows[row]['label']!r} in a split whose "
            f"row 0 has label {rows[0]['label']!r}; a split is labelled or not"
        )
    return [_example(r, i, f"{source}, row {i}", not unlabelled[0]) for i, r in enumerate(rows)]


def load_swag_hub(split: str, name: str = HUB_NAME, config: str = HUB_CONFIG):
    """The examples of a split (train, validation, test) of allenai/swag from the HuggingFace
    hub (needs the network or a filled datasets cache)."""
    import datasets

    try:
        rows = datasets.load_dataset(name, config, split=split)
    except Exception as e:  # offline, unknown split, hub errors: all one message
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(
            f"could not load {name} ({config}) split {split!r} from the hub "
            f"({reason}); without network, pass a directory of SWAG CSV "
            "files"
        ) from None
    return examples_from_rows(rows, f"{name}[{split}]")


def load_swag_dir(data_dir) -> dict[str, list[SwagExample]]:
    """split -> examples of the official files in `data_dir`: train.csv and val.csv (labelled)
    and test.csv when it is there."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserError(f"SWAG data directory {data_dir} does not exist")
    splits = {}
    for split, name in FILES.items():
        if (data_dir / name).is_file():
            splits[split] = read_swag_csv(data_dir / name, require_labels=split != "test")
        elif split != "test":
            raise UserError(f"SWAG data directory {data_dir} has no {name} (the {split} split)")
    return splits


def truncate_longest_first(len_a: int, len_b: int, room: int) -> tuple[int, int]:
    """How many of its first tokens each text keeps so that both fit in `room`, as the
    `tokenizers` library's longest-first truncation of a pair (what run_swag uses)."""
    if len_a + len_b <= room:
        return len_a, len_b
    swap = len_a > len_b
    short, long = (len_b, len_a) if swap else (len_a, len_b)
    long = short if short > room else max(short, room - short)
    if short + long > room:
        short, long = room // 2, room // 2 + room % 2
    return (long, short) if swap else (short, long)


def encode_examples(
    examples: Sequence[SwagExample], tokenizer, max_seq_len: int, chunk_size: int = 4096
) -> dict[str, np.ndarray]:
    """input_ids, input_mask, segment_ids int32 [n, 4, max_seq_len] (each choice a row padded
    with pad_id) and labels int32 [n] (-1 where unlabelled)."""
    if max_seq_len < 5:
        raise UserError(
            f"--max-seq-len {max_seq_len} leaves no room for a context and an "
            "ending beside [CLS] and two [SEP]; it must be at least 5"
        )
    n, room = len(examples), max_seq_len - 3
    input_ids = np.full((n, NUM_CHOICES, max_seq_len), tokenizer.pad_id, np.int32)
    input_mask = np.zeros((n, NUM_CHOICES, max_seq_len), np.int32)
    segment_ids = np.zeros((n, NUM_CHOICES, max_seq_len), np.int32)
    cls, sep = tokenizer.cls_id, tokenizer.sep_id
    for first in range(0, n, chunk_size):
        chunk = examples[first : first + chunk_size]
        contexts = tokenizer.encode_batch([ex.context for ex in chunk])
        seconds = tokenizer.encode_batch(
            [f"{ex.start} {ending}" for ex in chunk for ending in ex.endings]
        )
        for j, a in enumerate(contexts):
            for k in range(NUM_CHOICES):
                b = seconds[j * NUM_CHOICES + k]
                keep_a, keep_b = truncate_longest_first(len(a), len(b), room)
                ids = [cls, *a[:keep_a], sep, *b[:keep_b], sep]
                i = first + j
                input_ids[i, k, : len(ids)] = ids
                input_mask[i, k, : len(ids)] = 1
                segment_ids[i, k, keep_a + 2 : len(ids)] = 1
        if n > chunk_size:
            print(f"encoded {min(first + chunk_size, n)}/{n} SWAG examples", file=sys.stderr)
    labels = np.array([-1 if ex.label is None else ex.label for ex in examples], np.int32)
    return {
        "input_ids": input_ids,
        "input_mask": input_mask,
        "segment_ids": segment_ids,
        "labels": labels.reshape(n),
    }
