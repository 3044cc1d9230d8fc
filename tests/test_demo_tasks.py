"""The generated NER and SWAG-style tasks on the demo corpus: the files read back through the
CoNLL and SWAG readers with the rule's tags and the true continuations at their labels, the
splits share no document, the baselines are what a learning test must beat (entity F1 0 for
the majority tag, about 0.25 for a fixed choice), and existing files are never replaced."""

import re

import numpy as np
import pytest

from bertjax.errors import UserError
from bertjax.finetune import conll_data, conlleval, demo_tasks, swag_data


@pytest.fixture(scope="module")
def documents(demo_corpus_dir):
    return demo_tasks.corpus_documents(demo_corpus_dir)


def test_the_ner_rule():
    """A run of capitalised words right after "the" (any case) is one ORG chunk, every number
    its own NUM chunk, everything else O."""
    words = (
        "The Python Software Foundation and the C API list 3 or 3.14 12 items of the code"
    ).split()
    assert demo_tasks.ner_tags(words) == (
        "O", "B-ORG", "I-ORG", "I-ORG", "O", "O", "B-ORG", "I-ORG", "O", "B-NUM", "O", "B-NUM",
        "B-NUM", "O", "O", "O", "O")  # fmt: skip


@pytest.mark.parametrize("scheme", ["iob2", "iob1"])
def test_the_ner_files_read_back(documents, tmp_path, scheme):
    """train.txt / valid.txt / test.txt read back through load_conll_dir with the set's own
    labels and the declared scheme; every sentence carries the rule's tags; the entity counts
    are the summary's; the majority tag (O) scores entity F1 0 on dev."""
    summary = demo_tasks.write_ner_task(documents, tmp_path, n_dev=300, n_test=200,
                                        n_train=2000, scheme=scheme)  # fmt: skip
    data = conll_data.load_conll_dir(tmp_path, labels=None, scheme=scheme)
    assert data.labels == ("O", "B-NUM", "I-NUM", "B-ORG", "I-ORG") and data.scheme == scheme
    for split, sentences in data.splits.items():
        assert summary[split]["sentences"] == len(sentences)
        assert summary[split]["words"] == sum(len(s.words) for s in sentences)
        for s in sentences:
            assert conll_data.to_iob2(s.tags) == demo_tasks.ner_tags(s.words)
        gold = [s.tags for s in sentences]
        per_type = conlleval.evaluate(gold, gold)["per_type"]
        assert {t: v["phrases"] for t, v in per_type.items()} == summary[split]["entities"]
    assert 300 <= summary["validation"]["sentences"] < 400
    assert min(summary["validation"]["entities"].values()) >= 30  # both types, in numbers
    train = [s.tags for s in data.splits["train"]]
    dev = [s.tags for s in data.splits["validation"]]
    baseline = demo_tasks.majority_tag_scores(train, dev)
    assert baseline["f1"] == 0.0 and baseline["found"] == 0 and baseline["phrases"] > 100
    assert baseline["accuracy"] > 90  # words are mostly O: accuracy says little, F1 counts


@pytest.mark.parametrize("mode", demo_tasks.SWAG_MODES)
def test_the_swag_files_read_back(documents, tmp_path, mode):
    """train.csv / val.csv / test.csv read back through load_swag_dir (test.csv unlabelled);
    the ending at each label continues its context and start into a sentence of the corpus;
    no document gives questions to two splits; a fixed choice scores about the chance level."""
    summary = demo_tasks.write_swag_task(documents, tmp_path, n_train=1500, n_dev=300,
                                         n_test=100, mode=mode)  # fmt: skip
    splits = swag_data.load_swag_dir(tmp_path)
    assert {s: len(v) for s, v in splits.items()} == {"train": 1500, "validation": 300,
                                                      "test": 100}  # fmt: skip
    assert all(ex.label is None for ex in splits["test"])
    sentences = {" ".join(s.split()) for d in documents for s in d}
    for split in ("train", "validation"):
        labels = [ex.label for ex in splits[split]]
        assert np.bincount(labels, minlength=4).tolist() == summary[split]["labels"]
        for ex in splits[split]:
            true = f"{ex.start} {ex.endings[ex.label]}"
            if mode == "second_half":
                assert f"{ex.context} {true}" in sentences
            else:
                assert ex.context in sentences and true in sentences
            assert len(set(ex.endings)) == 4
    video_ids = {split: set(re.findall(r"\n\d+,(demo-\d+),", (tmp_path / name).read_text()))
                 for split, name in swag_data.FILES.items()}  # fmt: skip
    assert not (video_ids["train"] & video_ids["validation"])
    assert not (video_ids["test"] & (video_ids["train"] | video_ids["validation"]))
    accuracy = demo_tasks.majority_label_accuracy(
        [ex.label for ex in splits["train"]], [ex.label for ex in splits["validation"]]
    )
    assert demo_tasks.CHANCE_ACCURACY == 0.25 and 0.15 < accuracy < 0.35


def test_existing_files_are_never_replaced(documents, tmp_path):
    """A folder that already holds a task's file is refused, and the file is left as it was;
    so is a split the corpus cannot fill and a mode that does not exist."""
    (tmp_path / "valid.txt").write_text("mine\n")
    with pytest.raises(UserError, match=r"valid.txt already exist\(s\); choose an empty"):
        demo_tasks.write_ner_task(documents, tmp_path)
    assert (tmp_path / "valid.txt").read_text() == "mine\n"
    assert not (tmp_path / "train.txt").exists()
    (tmp_path / "val.csv").write_text("mine\n")
    with pytest.raises(UserError, match=r"val.csv already exist"):
        demo_tasks.write_swag_task(documents, tmp_path)
    assert (tmp_path / "val.csv").read_text() == "mine\n"
    with pytest.raises(UserError, match=r"too few items for a validation split of 10000000"):
        demo_tasks.write_ner_task(documents, tmp_path / "big", n_dev=10_000_000)
    with pytest.raises(UserError, match=r"mode 'halves' is not one of"):
        demo_tasks.write_swag_task(documents, tmp_path / "m", mode="halves")
    assert not (tmp_path / "big").exists() and not (tmp_path / "m").exists()
