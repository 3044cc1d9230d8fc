"""SWAG: the official CSV files (test.csv without labels) and `datasets` rows read and
validated; choices encoded `[CLS] sent1 [SEP] sent2 + " " + ending [SEP]` with the same ids,
segments and truncation as run_swag's transformers fast tokenizer gives; one clear error per
bad input."""

import csv
import io

import numpy as np
import pytest

from bertjax.data.tokenizer import train_wordpiece
from bertjax.errors import UserError
from bertjax.finetune import swag_data
from bertjax.finetune.swag_data import SwagExample

HEADER = [
    "",
    "video-id",
    "fold-ind",
    "startphrase",
    "sent1",
    "sent2",
    "gold-source",
    "ending0",
    "ending1",
    "ending2",
    "ending3",
    "label",
]  # the official files' columns
ROWS = [
    ["0", "anetv_1", "5", "Members of the procession walk down the street. A drum line",
     "Members of the procession walk down the street.", "A drum line", "gold",
     "passes by walking down the street playing their instruments.",
     "has heard approaching them.", "arrives and they're outside dancing and asleep.",
     "turns the lead singer watches the performance.", "0"],
    ["1", "lsmdc_2", "7", "He looks up, grinning. Someone",
     "He looks up, grinning.", "Someone", "gen", "wipes his mouth,\nthen smiles.",
     "stares at the ceiling.", "sits down.", "is holding a \"sign\".", "3"],
]  # fmt: skip


def csv_text(header, rows):
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def write(tmp_path, name, header=HEADER, rows=ROWS):
    path = tmp_path / name
    path.write_text(csv_text(header, rows), encoding="utf-8")
    return path


def test_reads_the_official_layout(tmp_path):
    """sent1, sent2, the four endings and the label of each row (quoted commas, quotes and a
    newline inside a field); the other columns are ignored; test.csv has no label column."""
    examples = swag_data.read_swag_csv(write(tmp_path, "val.csv"), require_labels=True)
    assert examples[0] == SwagExample(0, ROWS[0][4], ROWS[0][5], tuple(ROWS[0][7:11]), 0)
    assert examples[1].endings[0] == "wipes his mouth,\nthen smiles."
    assert examples[1].endings[3] == 'is holding a "sign".' and examples[1].label == 3
    test = swag_data.read_swag_csv(write(tmp_path, "test.csv", HEADER[:-1],
                                         [r[:-1] for r in ROWS]))  # fmt: skip
    assert [ex.label for ex in test] == [None, None] and test[1].context == ROWS[1][4]
    for name in ("train.csv", "val.csv"):
        write(tmp_path, name)
    splits = swag_data.load_swag_dir(tmp_path)
    assert list(splits) == ["train", "validation", "test"]
    assert splits["validation"] == examples and splits["test"] == test


@pytest.mark.parametrize("header,rows,message", [
    (HEADER, [ROWS[0][:10] + ["", "1"]], r"val.csv, line 2 has 3 endings \(ending3 empty or "
                                         r"missing\): a SWAG row needs 4"),
    (HEADER, [ROWS[0], ROWS[0][:10]], r"val.csv, line 3 has 3 endings \(ending3 empty or missing"),
    (HEADER, [ROWS[0][:11] + ["4"]], r"val.csv, line 2: label '4' is not a choice 0..3"),
    (HEADER, [ROWS[0][:11] + ["-1"]], r"val.csv, line 2: label '-1' is not a choice 0..3"),
    (HEADER, [ROWS[0][:11] + [""]], r"val.csv, line 2: label '' is not a choice 0..3"),
    (HEADER, [ROWS[0] + ["extra"]], r"val.csv, line 2 has more fields than the header names"),
    (HEADER[:10] + ["label"], [ROWS[0][:10] + ["0"]], r"val.csv has no column ending3: a SWAG"),
    (HEADER[:-1], [r[:-1] for r in ROWS], r"val.csv has no column label"),
    (HEADER, [], r"SWAG file .*val.csv holds no examples \(a header only\)"),
])  # fmt: skip
def test_bad_files_are_one_clear_error(tmp_path, header, rows, message):
    """A row with three endings (one empty, or cut short), a label out of range or missing,
    too many fields, a missing column, a labelled split without labels, a header alone."""
    with pytest.raises(UserError, match=message):
        swag_data.read_swag_csv(write(tmp_path, "val.csv", header, rows), require_labels=True)


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "train.csv").write_text("")
    with pytest.raises(UserError, match=r"SWAG file .*train.csv is empty; expected a CSV header"):
        swag_data.read_swag_csv(tmp_path / "train.csv")
    with pytest.raises(UserError, match=r"has no val.csv \(the validation split\)"):
        write(tmp_path, "train.csv")
        swag_data.load_swag_dir(tmp_path)
    with pytest.raises(UserError, match=r"SWAG file .*nothing.csv does not exist"):
        swag_data.read_swag_csv(tmp_path / "nothing.csv")


def swag_rows(label_column):
    return [dict(zip(HEADER[1:-1], r[1:-1]), label=label)
            for r, label in zip(ROWS, label_column)]  # fmt: skip


def test_datasets_rows(monkeypatch):
    """allenai/swag rows (label -1 on the test split: unlabelled) from a local dataset standing
    in for the hub; a split mixing -1 with labels, a missing column, a label out of range and
    an unreachable hub are one error each."""
    import datasets

    ds = datasets.Dataset.from_list(swag_rows([0, 3]))
    examples = swag_data.examples_from_rows(ds, "swag[validation]")
    assert [(ex.idx, ex.label, ex.endings[3]) for ex in examples] == [
        (0, 0, ROWS[0][10]),
        (1, 3, ROWS[1][10]),
    ]
    test = swag_data.examples_from_rows(swag_rows([-1, -1]), "swag[test]")
    assert [ex.label for ex in test] == [None, None]
    monkeypatch.setattr(datasets, "load_dataset", lambda name, config, split: ds)
    assert swag_data.load_swag_hub("validation") == examples
    with pytest.raises(
        UserError,
        match=r"swag\[test\], row 1: label 3 in a split whose row 0 "
        r"has label -1",
    ):
        swag_data.examples_from_rows(swag_rows([-1, 3]), "swag[test]")
    with pytest.raises(UserError, match=r"swag\[train\], row 0: label 7 is not a choice"):
        swag_data.examples_from_rows(swag_rows([7, 0]), "swag[train]")
    rows = swag_rows([0, 1])
    for row in rows:
        del row["ending3"]
    with pytest.raises(UserError, match=r"swag\[train\] has no column ending3"):
        swag_data.examples_from_rows(rows, "swag[train]")

    def offline(name, config, split):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(UserError, match=r"could not load allenai/swag \(regular\) split 'train'"):
        swag_data.load_swag_hub("train")


def test_longest_first_truncation_rule():
    """The shorter text keeps all its tokens while it fits in half of the room; else both get
    half, the longer one (the second on a tie) the odd token."""
    rule = swag_data.truncate_longest_first
    assert rule(3, 4, 10) == (3, 4)
    assert rule(3, 20, 10) == (3, 7) and rule(20, 3, 10) == (7, 3)
    assert rule(8, 9, 10) == (5, 5) and rule(9, 8, 11) == (6, 5) and rule(8, 9, 11) == (5, 6)
    assert rule(9, 9, 11) == (5, 6) and rule(30, 2, 3) == (2, 1) and rule(1, 30, 3) == (1, 2)


@pytest.fixture(scope="module")
def wordpiece(tmp_path_factory):
    """A small uncased WordPiece vocabulary learnt from the rows' text (many words in pieces)."""
    lines = [" ".join(r[3:11]) for r in ROWS] * 10
    return train_wordpiece(lines, 150, tmp_path_factory.mktemp("swag_vocab"), min_frequency=1)


@pytest.mark.parametrize("max_seq_len", [64, 17, 16, 9, 5])
def test_choices_encode_as_run_swags_fast_tokenizer(wordpiece, max_seq_len):
    """Every choice's input_ids, segment_ids and input_mask equal transformers'
    BertTokenizerFast(sent1, sent2 + " " + ending, truncation=True, max_length, padding) on
    the same vocabulary, with room for everything and with both texts cut (odd and even
    rooms); labels are the examples' (-1 where unlabelled)."""
    from transformers import BertTokenizerFast

    hf = BertTokenizerFast.from_pretrained(str(wordpiece.vocab_file.parent), do_lower_case=True)
    examples = [SwagExample(i, r[4], r[5], tuple(r[7:11]), int(r[11])) for i, r in
                enumerate(ROWS)] + [SwagExample(2, "a very long context " * 5, "", ("x",) * 4,
                                                None)]  # fmt: skip
    arrays = swag_data.encode_examples(examples, wordpiece, max_seq_len)
    n = len(examples)
    assert {k: v.shape for k, v in arrays.items()} == {
        "input_ids": (n, 4, max_seq_len),
        "input_mask": (n, 4, max_seq_len),
        "segment_ids": (n, 4, max_seq_len),
        "labels": (n,),
    }
    assert arrays["labels"].tolist() == [0, 3, -1]
    truncated = 0
    for i, ex in enumerate(examples):
        firsts = [ex.context] * 4
        seconds = [f"{ex.start} {ending}" for ending in ex.endings]
        ref = hf(firsts, seconds, truncation=True, max_length=max_seq_len,
                 padding="max_length")  # fmt: skip
        np.testing.assert_array_equal(arrays["input_ids"][i], ref["input_ids"])
        np.testing.assert_array_equal(arrays["segment_ids"][i], ref["token_type_ids"])
        np.testing.assert_array_equal(arrays["input_mask"][i], ref["attention_mask"])
        full = [len(hf(a, b)["input_ids"]) for a, b in zip(firsts, seconds)]
        truncated += sum(length > max_seq_len for length in full)
    assert truncated > 0 or max_seq_len == 64
    for key in ("input_ids", "input_mask", "segment_ids"):
        assert arrays[key].dtype == np.int32
    with pytest.raises(UserError, match=r"--max-seq-len 4 leaves no room"):
        swag_data.encode_examples(examples, wordpiece, 4)


def test_a_split_carries_the_choices(wordpiece):
    """batches.Split takes the [n, 4, L] arrays as they are: a batch of examples (a padding
    row -1 with weight 0) holds each example's four choices."""
    from bertjax.finetune import batches

    examples = [SwagExample(i, r[4], r[5], tuple(r[7:11]), int(r[11])) for i, r in
                enumerate(ROWS)]  # fmt: skip
    arrays = swag_data.encode_examples(examples, wordpiece, 32)
    split = batches.Split("validation", arrays, np.arange(len(examples)))
    batch = batches.take(split, np.array([1, -1]))
    assert batch["input_ids"].shape == (2, 4, 32) and batch["weights"].tolist() == [1, 0]
    np.testing.assert_array_equal(batch["segment_ids"][0], arrays["segment_ids"][1])
    assert batch["labels"].tolist() == [3, 0]
