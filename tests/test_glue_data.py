"""GLUE readers (the GLUE tsv layouts, JSONL, `datasets` offline), encoding and submissions."""

import json
import os

import numpy as np
import pytest

from bertjax.data.tokenizer import load_tokenizer
from bertjax.errors import UserError
from bertjax.finetune import glue_data, submission
from bertjax.finetune.glue_data import encode_examples, load_split, truncate_seq_pair
from bertjax.finetune.tasks import TASKS, get_task

T = "\t"


def _tsv(*rows):
    return "".join(T.join(map(str, r)) + "\n" for r in rows)


_MNLI_HEAD = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse",
              "sentence2_binary_parse", "sentence1_parse", "sentence2_parse", "sentence1",
              "sentence2"]  # fmt: skip
_STSB_HEAD = ["index", "genre", "filename", "year", "old_index", "source1", "source2",
              "sentence1", "sentence2"]  # fmt: skip

# Small files in the GLUE download's real layouts, with the awkward bits of the real data:
# CoLA's headerless train/dev, MRPC's byte-order mark, unbalanced quotes (which only
# csv.QUOTE_NONE reads right), MNLI's parse columns and per-file column counts.
GLUE_FILES = {
    "cola": {
        "train.tsv": _tsv(["gj04", 1, "", "Our friends won't buy this analysis."],
                          ["gj04", 0, "*", '"They drank the pub.']),
        "dev.tsv": _tsv(["clc95", 1, "", "The sailors rode the breeze clear of the rocks."]),
        "test.tsv": _tsv(["index", "sentence"], [0, "Bill whistled past the house."],
                         [1, 'He said "hi.']),
    },
    "sst2": {
        "train.tsv": _tsv(["sentence", "label"], ["hide new secretions ", 0],
                          ['"a charming film', 1]),
        "dev.tsv": _tsv(["sentence", "label"], ["it 's a charming journey . ", 1]),
        "test.tsv": _tsv(["index", "sentence"], [0, "uneasy mishmash of styles"]),
    },
    "mrpc": {
        "train.tsv": "\ufeff" + _tsv(
            ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
            [1, 702876, 702977, 'Amrozi accused his brother , whom he called " the witness',
             "Referring to him as only the witness , Amrozi accused his brother ."],
            [0, 2108705, 2108831, "Yucaipa owned Dominick 's .", "Yucaipa bought Dominick 's ."]),
        "dev.tsv": "\ufeff" + _tsv(["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
                                   [1, 1, 2, "He said so .", "He told us so ."]),
        "test.tsv": _tsv(["index", "#1 ID", "#2 ID", "#1 String", "#2 String"],
                         [0, 1089874, 1089925, "PCCW 's chief .", "Current Chief ."]),
    },
    "qqp": {
        "train.tsv": _tsv(["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
                          [133273, 213221, 213222, '"How is the life?', "What is life?", 0],
                          [402555, 536040, 536041, "How do I win?", "How can I win?", 1]),
        "dev.tsv": _tsv(["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
                        [7, 1, 2, "Why?", "Why not?", 0]),
        "test.tsv": _tsv(["id", "question1", "question2"], [0, "Is it?", "Is it so?"]),
    },
    "stsb": {
        "train.tsv": _tsv([*_STSB_HEAD, "score"],
                          [0, "main-captions", "MSRvid", "2012test", "0001", "none", "none",
                           "A plane is taking off.", "An air plane is taking off.", "5.000"],
                          [1, "main-captions", "MSRvid", "2012test", "0004", "none", "none",
                           'A man is "playing a flute.', "A man is playing a flute.", "3.800"]),
        "dev.tsv": _tsv([*_STSB_HEAD, "score"],
                        [0, "main-captions", "MSRvid", "2012test", "0000", "none", "none",
                         "A man with a hard hat.", "A man wearing a hard hat.", "5.000"]),
        "test.tsv": _tsv(_STSB_HEAD, [0, "main-captions", "MSRvid", "2012test", "0024", "none",
                                      "none", "A girl is styling her hair.", "A girl hair."]),
    },
    "mnli": {
        "train.tsv": _tsv([*_MNLI_HEAD, "label1", "gold_label"],
                          [0, 31193, "31193n", "government", "( ( Conceptually cream )",
                           "( Product )", "(ROOT (S))", "(ROOT (S))",
                           "Conceptually cream skimming has two dimensions.",
                           "Product and geography are what make cream skimming work.",
                           "neutral", "neutral"],
                          [1, 101457, "101457e", "telephone", "( you )", "( You )", "(ROOT)",
                           "(ROOT)", '"you know during the season', "You lose the things.",
                           "entailment", "entailment"]),
        "dev_matched.tsv": _tsv([*_MNLI_HEAD, "label1", "label2", "label3", "label4", "label5",
                                 "gold_label"],
                                [0, 63735, "63735n", "slate", "(x)", "(y)", "(X)", "(Y)",
                                 "The new rights are nice enough",
                                 "Everyone really likes the newest benefits ", "neutral",
                                 "entailment", "neutral", "neutral", "neutral", "neutral"]),
        "dev_mismatched.tsv": _tsv([*_MNLI_HEAD, "label1", "label2", "label3", "label4",
                                    "label5", "gold_label"],
                                   [0, 75290, "75290c", "letters", "(x)", "(y)", "(X)", "(Y)",
                                    "Your contribution helped.", "It did not help.",
                                    "contradiction", "contradiction", "contradiction",
                                    "contradiction", "contradiction", "contradiction"]),
        "test_matched.tsv": _tsv(_MNLI_HEAD, [0, 31493, "31493", "travel", "(x)", "(y)", "(X)",
                                              "(Y)", "Hierbas is a drink.", "It is a drink."]),
        "test_mismatched.tsv": _tsv(_MNLI_HEAD, [0, 1, "1", "letters", "(x)", "(y)", "(X)",
                                                 "(Y)", "What a day.", "The day was bad."]),
    },
    "qnli": {
        "train.tsv": _tsv(["index", "question", "sentence", "label"],
                          [0, "What came into force?", "The law came into force.", "entailment"],
                          [1, "Who is he?", '"It was late.', "not_entailment"]),
        "dev.tsv": _tsv(["index", "question", "sentence", "label"],
                        [0, "What is it?", "It is a cat.", "entailment"]),
        "test.tsv": _tsv(["index", "question", "sentence"], [0, "Where?", "Here."]),
    },
    "rte": {
        "train.tsv": _tsv(["index", "sentence1", "sentence2", "label"],
                          [0, "No Weapons of Mass Destruction Found.", "Weapons found.",
                           "not_entailment"],
                          [1, "A place of sorrow.", "A place.", "entailment"]),
        "dev.tsv": _tsv(["index", "sentence1", "sentence2", "label"],
                        [0, "Dana Reeve died.", "Reeve died.", "entailment"]),
        "test.tsv": _tsv(["index", "sentence1", "sentence2"], [0, "Mangla was a dam.", "A dam."]),
    },
    "wnli": {
        "train.tsv": _tsv(["index", "sentence1", "sentence2", "label"],
                          [0, "I stuck a pin through a carrot.", "The carrot had a hole.", 1],
                          [1, "John couldn't see.", "John was short.", 0]),
        "dev.tsv": _tsv(["index", "sentence1", "sentence2", "label"],
                        [0, "The drain is clogged.", "The hair is clogged.", 0]),
        "test.tsv": _tsv(["index", "sentence1", "sentence2"], [0, "Maude had tea.", "She did."]),
    },
}  # fmt: skip

# What each task's files must parse to: (text_a, text_b, label, idx) per split, in order.
EXPECTED = {
    ("cola", "train"): [("Our friends won't buy this analysis.", None, 1, 0),
                        ('"They drank the pub.', None, 0, 1)],
    ("cola", "validation"): [("The sailors rode the breeze clear of the rocks.", None, 1, 0)],
    ("cola", "test"): [("Bill whistled past the house.", None, None, 0),
                       ('He said "hi.', None, None, 1)],
    ("sst2", "train"): [("hide new secretions ", None, 0, 0), ('"a charming film', None, 1, 1)],
    ("sst2", "test"): [("uneasy mishmash of styles", None, None, 0)],
    ("mrpc", "train"): [('Amrozi accused his brother , whom he called " the witness',
                         "Referring to him as only the witness , Amrozi accused his brother .",
                         1, 0),
                        ("Yucaipa owned Dominick 's .", "Yucaipa bought Dominick 's .", 0, 1)],
    ("mrpc", "test"): [("PCCW 's chief .", "Current Chief .", None, 0)],
    ("qqp", "train"): [('"How is the life?', "What is life?", 0, 133273),
                       ("How do I win?", "How can I win?", 1, 402555)],
    ("qqp", "test"): [("Is it?", "Is it so?", None, 0)],
    ("stsb", "train"): [("A plane is taking off.", "An air plane is taking off.", 5.0, 0),
                        ('A man is "playing a flute.', "A man is playing a flute.", 3.8, 1)],
    ("stsb", "test"): [("A girl is styling her hair.", "A girl hair.", None, 0)],
    ("mnli", "train"): [("Conceptually cream skimming has two dimensions.",
                         "Product and geography are what make cream skimming work.", 1, 0),
                        ('"you know during the season', "You lose the things.", 0, 1)],
    ("mnli", "validation_matched"): [("The new rights are nice enough",
                                      "Everyone really likes the newest benefits ", 1, 0)],
    ("mnli", "validation_mismatched"): [("Your contribution helped.", "It did not help.", 2, 0)],
    ("mnli", "test_matched"): [("Hierbas is a drink.", "It is a drink.", None, 0)],
    ("mnli", "test_mismatched"): [("What a day.", "The day was bad.", None, 0)],
    ("qnli", "train"): [("What came into force?", "The law came into force.", 0, 0),
                        ("Who is he?", '"It was late.', 1, 1)],
    ("rte", "train"): [("No Weapons of Mass Destruction Found.", "Weapons found.", 1, 0),
                       ("A place of sorrow.", "A place.", 0, 1)],
    ("rte", "validation"): [("Dana Reeve died.", "Reeve died.", 0, 0)],
    ("wnli", "train"): [("I stuck a pin through a carrot.", "The carrot had a hole.", 1, 0),
                        ("John couldn't see.", "John was short.", 0, 1)],
    ("wnli", "test"): [("Maude had tea.", "She did.", None, 0)],
}  # fmt: skip


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("glue")
    for task, files in GLUE_FILES.items():
        os.makedirs(root / task)
        for name, text in files.items():
            (root / task / name).write_text(text, encoding="utf-8")
    return root


VOCAB = """[PAD] [UNK] [CLS] [SEP] [MASK] a the man is playing flute plane taking off air he
said so told us . , ? ' " s ##s ##ing ##ed hat hard with wearing"""


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    words = VOCAB.split()
    path = tmp_path_factory.mktemp("tok") / "vocab.txt"
    path.write_text("\n".join(words) + "\n", encoding="utf-8")
    return load_tokenizer(path)


def _as_tuples(examples):
    return [(e["text_a"], e["text_b"], e["label"], e["idx"]) for e in examples]


@pytest.mark.parametrize("task,split", sorted(EXPECTED))
def test_every_glue_tsv_layout_parses(glue_dir, task, split):
    examples = load_split(task, split, str(glue_dir / task))
    assert _as_tuples(examples) == EXPECTED[(task, split)]
    for e in examples:
        assert type(e["label"]) is (float if task == "stsb" else int) or e["label"] is None


def test_every_task_and_split_has_a_file_and_parses(glue_dir):
    for name, task in TASKS.items():
        assert set(task.tsv_files.values()) == set(GLUE_FILES[name]), name
        for split in task.splits:
            examples = load_split(name, split, str(glue_dir / name))
            assert examples, (name, split)
            labelled = not split.startswith("test")
            assert all((e["label"] is not None) == labelled for e in examples)
            assert all((e["text_b"] is not None) == task.is_pair for e in examples)


def test_jsonl_with_datasets_column_names(tmp_path):
    rows = [
        {"premise": "A cat sat.", "hypothesis": "An animal sat.", "label": 0, "idx": 5},
        {"premise": "A dog ran.", "hypothesis": "Nothing moved.", "label": "contradiction"},
        {"premise": "It rained.", "hypothesis": "It was wet.", "label": -1, "idx": 7},
    ]
    lines = [json.dumps(r) + "\n" for r in rows]
    (tmp_path / "validation_matched.jsonl").write_text("".join(lines[:2]) + "\n")
    (tmp_path / "test_matched.jsonl").write_text(lines[2] + lines[1])
    (tmp_path / "dev_mismatched.jsonl").write_text(lines[0], encoding="utf-8")
    got = _as_tuples(load_split("mnli", "validation_matched", str(tmp_path)))
    assert got == [("A cat sat.", "An animal sat.", 0, 5), ("A dog ran.", "Nothing moved.", 2, 1)]
    got = _as_tuples(load_split("mnli", "test_matched", str(tmp_path)))
    assert got == [("It rained.", "It was wet.", None, 7), ("A dog ran.", "Nothing moved.", 2, 1)]
    assert len(load_split("mnli", "validation_mismatched", str(tmp_path))) == 1  # tsv-style name
    (tmp_path / "train.jsonl").write_text('{"sentence": "x", "label": 1}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"no field 'premise', 'hypothesis'"):
        load_split("mnli", "train", str(tmp_path))
    (tmp_path / "train.jsonl").write_text('{"sentence": "x", "label": 1}\n', encoding="utf-8")
    assert _as_tuples(load_split("sst2", "train", str(tmp_path))) == [("x", None, 1, 0)]
    (tmp_path / "validation.jsonl").write_text(
        '{"sentence1": "a", "sentence2": "b", "label": 2.5}\n', encoding="utf-8"
    )
    assert _as_tuples(load_split("stsb", "validation", str(tmp_path))) == [("a", "b", 2.5, 0)]
    (tmp_path / "validation.jsonl").write_text('{"sentence1": "a", "sentence2": "b"}\n')
    with pytest.raises(UserError, match="1 validation examples have no label"):
        load_split("stsb", "validation", str(tmp_path))


def test_bad_inputs_give_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="unknown GLUE task 'sst'"):
        get_task("sst")
    assert get_task("SST-2").name == "sst2" and get_task("STS-B").name == "stsb"
    with pytest.raises(UserError, match="does not exist"):
        load_split("rte", "train", str(tmp_path / "nope"))
    with pytest.raises(UserError, match=r"no rte validation file: expected dev.tsv"):
        load_split("rte", "validation", str(tmp_path))
    with pytest.raises(UserError, match="has no split 'validation'"):
        load_split("mnli", "validation", str(tmp_path))
    (tmp_path / "dev.tsv").write_text(
        _tsv(["index", "sentence1", "sentence2", "label"], [0, "a", "b", "maybe"]), encoding="utf-8"
    )
    with pytest.raises(UserError, match=r"dev.tsv, line 2: label 'maybe' is not one of entail"):
        load_split("rte", "validation", str(tmp_path))
    (tmp_path / "dev.tsv").write_text(
        _tsv(["idx", "s1", "s2", "label"], [0, "a", "b", 1]), encoding="utf-8"
    )
    with pytest.raises(UserError, match="has no column 'sentence1', 'sentence2', 'index'"):
        load_split("rte", "validation", str(tmp_path))
    (tmp_path / "validation.jsonl").write_text("{}\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"holds rte validation twice \(dev.tsv, validation.jsonl"):
        load_split("rte", "validation", str(tmp_path))


def test_short_rows_are_skipped_with_a_warning(tmp_path, capsys):
    path = tmp_path / "dev.tsv"
    path.write_text(
        _tsv(
            ["index", "sentence1", "sentence2", "label"],
            [0, "a", "b", 1],
            [1, "broken row"],
            [2, "c", "d", 0],
        ),
        encoding="utf-8",
    )
    assert [e["idx"] for e in glue_data.read_tsv("wnli", str(path), "validation")] == [0, 2]
    assert "skipped 1 rows with fewer than 4 fields (lines 3)" in capsys.readouterr().err


def test_datasets_offline_gives_a_clear_error():
    # conftest.py sets HF_DATASETS_OFFLINE=1: no hub, and these tests never download.
    with pytest.raises(UserError) as info:
        load_split("sst2", "validation")
    message = str(info.value)
    assert message.startswith("cannot load GLUE sst2 (validation) with datasets (")
    assert "pass a directory with the GLUE tsv files or JSONL files" in message
    assert "\n" not in message


def test_truncate_seq_pair_matches_run_classifier():
    a, b = list(range(10)), list(range(100, 104))
    truncate_seq_pair(a, b, 9)
    assert a == [0, 1, 2, 3, 4] and b == [100, 101, 102, 103]
    a, b = list(range(5)), list(range(100, 105))
    truncate_seq_pair(a, b, 8)  # tie: b loses first, then the longer a
    assert a == [0, 1, 2, 3] and b == [100, 101, 102, 103]
    a, b = [1, 2], [3]
    truncate_seq_pair(a, b, 5)
    assert (a, b) == ([1, 2], [3])


def test_encode_pairs_cls_sep_segments_padding(tokenizer):
    tok = tokenizer
    examples = [
        {"text_a": "the man is playing", "text_b": "a flute", "label": 1, "idx": 0},
        {"text_a": "a plane " * 10, "text_b": "he said so", "label": 0, "idx": 1},
    ]
    out = encode_examples(examples, tok, max_seq_len=10)
    assert set(out) == {"input_ids", "input_mask", "segment_ids", "labels"}
    assert all(v.shape[0] == 2 for v in out.values()) and out["input_ids"].shape == (2, 10)
    assert out["input_ids"].dtype == out["input_mask"].dtype == np.int32
    ids = lambda s: tok.encode(s)
    row0 = [tok.cls_id, *ids("the man is playing"), tok.sep_id, *ids("a flute"), tok.sep_id]
    assert out["input_ids"][0].tolist() == row0 + [tok.pad_id] * (10 - len(row0))
    assert out["segment_ids"][0].tolist() == [0] * 6 + [1] * 3 + [0]
    assert out["input_mask"][0].tolist() == [1] * 9 + [0]
    # 20 + 3 tokens into 7: the long first text is cut from its end, b kept whole.
    row1 = [tok.cls_id, *ids("a plane a plane"), tok.sep_id, *ids("he said so"), tok.sep_id]
    assert out["input_ids"][1].tolist() == row1
    assert out["segment_ids"][1].tolist() == [0] * 6 + [1] * 4
    assert out["labels"].tolist() == [1, 0] and out["labels"].dtype == np.int32


def test_encode_single_sentences_regression_and_test_labels(tokenizer):
    tok = tokenizer
    single = [{"text_a": "the man with a hard hat " * 3, "text_b": None, "label": None,
               "idx": i} for i in range(3)]  # fmt: skip
    out = encode_examples(single, tok, max_seq_len=8, chunk_size=2)
    assert out["input_ids"][0].tolist() == [
        tok.cls_id,
        *tok.encode("the man with a hard hat"),
        tok.sep_id,
    ]
    assert not out["segment_ids"].any() and out["input_mask"].all()
    assert out["labels"].tolist() == [-1, -1, -1]
    pairs = [{"text_a": "a", "text_b": "the", "label": s, "idx": 0} for s in (0.5, 4.0)]
    out = encode_examples(pairs, tok, max_seq_len=6)
    assert out["labels"].dtype == np.float32 and out["labels"].tolist() == [0.5, 4.0]
    unlabelled = [dict(p, label=None) for p in pairs]
    labels = encode_examples(unlabelled, tok, max_seq_len=6, regression=True)["labels"]
    assert labels.dtype == np.float32 and np.isnan(labels).all()
    with pytest.raises(ValueError, match="mix single sentences and sentence pairs"):
        encode_examples([single[0], pairs[0]], tok, 8)


def test_truncation_lengths_follow_the_closed_form_rule():
    # The original's rule, stated without its loop: the longer text is cut down to the shorter
    # one's length, then both alternately; an odd token left over stays with text a.
    rng = np.random.default_rng(0)
    for _ in range(500):
        la, lb, m = (int(x) for x in rng.integers(0, 40, 3))
        a, b = list(range(la)), list(range(100, 100 + lb))
        truncate_seq_pair(a, b, m)
        if la + lb <= m:
            want = (la, lb)
        elif min(la, lb) <= m - min(la, lb):
            want = (la, m - la) if la < lb else (m - lb, lb)
        else:
            want = ((m + 1) // 2, m // 2)
        assert (len(a), len(b)) == want, (la, lb, m)
        assert a == list(range(len(a))) and b == list(range(100, 100 + len(b)))  # prefixes


def test_encode_matches_huggingface_bert_tokenizer(tokenizer, glue_dir):
    # Same ids, segments and mask as HF's BertTokenizer wherever no truncation happens (HF's
    # "longest_first" cuts text a first on a tie, the original BERT text b: not compared).
    from transformers import BertTokenizer

    hf = BertTokenizer(str(tokenizer.vocab_file), do_lower_case=True)
    rng = np.random.default_rng(0)
    words = [
        "the",
        "man",
        "is",
        "playing",
        "a",
        "flute",
        "plane",
        "taking",
        "off",
        "he",
        "said",
        "so",
        ",",
        ".",
        "?",
        "hats",
        "Wearing",
    ]
    examples = []
    for i in range(60):
        text_a = " ".join(rng.choice(words, int(rng.integers(1, 14))))
        text_b = " ".join(rng.choice(words, int(rng.integers(1, 14))))
        examples.append({"text_a": text_a, "text_b": text_b, "label": i % 2, "idx": i})
    examples += load_split("mrpc", "train", str(glue_dir / "mrpc"))  # quotes, BOM file
    out = encode_examples(examples, tokenizer, 48)
    for i, e in enumerate(examples):
        ref = hf(e["text_a"], e["text_b"], max_length=48, padding="max_length")
        assert out["input_ids"][i].tolist() == ref["input_ids"], e
        assert out["segment_ids"][i].tolist() == ref["token_type_ids"]
        assert out["input_mask"][i].tolist() == ref["attention_mask"]
    single = [{"text_a": e["text_a"], "text_b": None, "label": 0, "idx": 0} for e in examples]
    out = encode_examples(single, tokenizer, 7)  # single texts: HF truncates as we do
    for i, e in enumerate(single):
        ref = hf(e["text_a"], max_length=7, truncation=True, padding="max_length")
        assert out["input_ids"][i].tolist() == ref["input_ids"], e


def test_submission_files_names_and_formats(tmp_path):
    def read(path):
        with open(path, encoding="utf-8") as f:
            return f.read()

    path = submission.write_submission(str(tmp_path), "sst2", "test", [0, 1, 2], [1, 0, 1])
    assert os.path.basename(path) == "SST-2.tsv"
    assert read(path) == "index\tprediction\n0\t1\n1\t0\n2\t1\n"
    m = submission.write_submission(str(tmp_path), "mnli", "test_matched", [0, 1, 2], [0, 1, 2])
    mm = submission.write_submission(str(tmp_path), "mnli", "test_mismatched", [0], [2])
    assert read(m) == "index\tprediction\n0\tentailment\n1\tneutral\n2\tcontradiction\n"
    assert os.path.basename(mm) == "MNLI-mm.tsv" and read(mm).endswith("0\tcontradiction\n")
    rte = submission.write_submission(str(tmp_path), "rte", "test", [3, 4], np.array([1, 0]))
    assert read(rte) == "index\tprediction\n3\tnot_entailment\n4\tentailment\n"
    sts = submission.write_submission(str(tmp_path), "stsb", "test", [0, 1], [4.25, 0.1])
    assert read(sts) == "index\tprediction\n0\t4.250000\n1\t0.100000\n"
    names = [submission.submission_filename(t, s) for t, task in TASKS.items()
             for s in task.test_splits]  # fmt: skip
    assert sorted(names) == sorted(
        ["CoLA.tsv", "SST-2.tsv", "MRPC.tsv", "QQP.tsv", "STS-B.tsv", "MNLI-m.tsv", "MNLI-mm.tsv",
         "QNLI.tsv", "RTE.tsv", "WNLI.tsv"])  # fmt: skip
    assert submission.format_predictions("wnli", [0, 1]) == ["0", "1"]
    assert submission.format_predictions("qnli", [0, 1]) == ["entailment", "not_entailment"]
    with pytest.raises(UserError, match="GLUE scores only the test splits"):
        submission.submission_filename("cola", "validation")
    with pytest.raises(ValueError, match="class ids must lie in 0..1"):
        submission.format_predictions("cola", [0, 2])
    with pytest.raises(ValueError, match="must be class ids"):
        submission.format_predictions("cola", [0.0, 1.0])
    with pytest.raises(ValueError, match="2 indices for 3 predictions"):
        submission.write_predictions(str(tmp_path / "x.tsv"), "cola", [0, 1], [0, 1, 1])


def test_test_split_round_trip_to_submission(glue_dir, tmp_path, tokenizer):
    # Test set -> encoded batch -> (dummy) predictions -> a submission keyed by the file's idx.
    examples = load_split("qqp", "test", str(glue_dir / "qqp"))
    batch = encode_examples(examples, tokenizer, 16)
    assert batch["labels"].tolist() == [-1]
    path = submission.write_submission(str(tmp_path), "qqp", "test",
                                       [e["idx"] for e in examples], [1])  # fmt: skip
    with open(path, encoding="utf-8") as f:
        assert f.read() == "index\tprediction\n0\t1\n"
