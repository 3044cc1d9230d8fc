"""Does pretraining pay off downstream (finetune/downstream.py, `bertjax eval --downstream`,
the demo's last stage)? The word-order task keeps every sentence's words and moves their
order, so a bag of words cannot solve it; the session's pretrained bert-tiny beats a random
initialisation of its architecture on it by more than the seeds' spread."""

import json
from collections import Counter

import numpy as np
import pytest

from bertjax import cli
from bertjax.finetune import downstream, word_order_task


def _documents(n_docs=60, per_doc=6, seed=0):
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(50)]
    return [
        [" ".join(rng.choice(words, rng.integers(8, 20))) + "." for _ in range(per_doc)]
        for _ in range(n_docs)
    ]


def test_a_moved_sentence_keeps_its_words_and_its_closing_mark():
    rng = np.random.default_rng(0)
    sentence = "Return the number of bytes read from the file descriptor."
    for swaps in (1, 2, 5):
        out = word_order_task.moved(sentence, rng, swaps)
        assert out != sentence and out.endswith(".")
        assert Counter(out[:-1].split()) == Counter(sentence[:-1].split())
    assert word_order_task.moved("a b c d e f g h", rng, 1).split() != list("abcdefgh")


def test_the_task_is_balanced_and_its_splits_share_no_document(tmp_path):
    documents = _documents()
    counts = word_order_task.write_word_order_task(
        documents, tmp_path / "task", n_train=200, n_dev=100
    )
    assert counts == {"dev": {"examples": 100, "labels": [50, 50]},
                      "train": {"examples": 200, "labels": [100, 100]}}  # fmt: skip
    train, dev = (
        word_order_task.read_rows(tmp_path / "task" / f) for f in ("train.tsv", "dev.tsv")
    )
    sentence_doc = {" ".join(s.split()): d for d, doc in enumerate(documents) for s in doc}
    # Intact sentences name their document; the splits never share one.
    docs = [{sentence_doc[s] for s, y in zip(*split, strict=True) if y} for split in (train, dev)]
    assert docs[0] and docs[1] and not docs[0] & docs[1]

    # Every moved sentence is a sentence of the corpus with its words in another order.
    def bag(s):
        return tuple(sorted(s.rstrip(".").split()))

    bags = {bag(s) for s in sentence_doc}
    moved = [s for s, y in zip(*train, strict=True) if not y]
    assert moved and all(bag(s) in bags and s not in sentence_doc for s in moved)
    with pytest.raises(Exception, match="already exist"):
        word_order_task.write_word_order_task(documents, tmp_path / "task", n_train=10, n_dev=10)


def test_a_bag_of_words_cannot_solve_the_task_on_real_text(demo_documents, tmp_path):
    """On the demo corpus: the unigram logistic regression and the majority label are at
    chance (a moved sentence has its original's words), so a learnt encoder above them has
    learnt word order."""
    settings = downstream.Settings()
    word_order_task.write_word_order_task(
        demo_documents, tmp_path, n_train=settings.n_train, n_dev=settings.n_dev
    )
    base = downstream.baselines(tmp_path)
    assert base["majority"] == 0.5
    assert abs(base["unigram_logistic"] - 0.5) < 0.05, base


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "--downstream needs --out"),
        (["--out", "{tmp}/o", "--data", "{tmp}"], "--data is the MLM/NSP evaluation's"),
        (["--out", "{tmp}/o", "--seeds", "0"], "--seeds 0 must be at least 1"),
        (["--out", "{tmp}/o", "--lr", "-1"], "--lr -1.0 must be positive"),
        (["--out", "{tmp}/o", "--corpus", "{tmp}/none.txt"], "--corpus: no such file(s)"),
        (["--out", "{tmp}"], "holds this command's input"),
    ],
)
def test_bad_downstream_input_is_one_clear_error(tmp_path, capsys, extra, message):
    argv = ["eval", "--workdir", str(tmp_path), "--downstream"]
    assert cli.main(argv + [a.format(tmp=tmp_path) for a in extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err


@pytest.mark.slow
def test_pretraining_pays_off_downstream(pretrained_tiny, real_text, tmp_path, capsys):
    """`bertjax eval --downstream` on the session's pretrained bert-tiny (the learning test's
    run): fine-tuned from it, the word-order task's dev accuracy beats fine-tuning from a
    random initialisation by more than the larger of the two seeds' spreads, and beats the
    baselines."""
    (corpus,) = sorted((real_text / "corpus").glob("*.txt"))
    out = tmp_path / "downstream"
    argv = ["eval", "--workdir", str(pretrained_tiny), "--downstream", "--out", str(out),
            "--corpus", str(corpus)]  # fmt: skip
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / downstream.SUMMARY_FILE).read_text())
    with capsys.disabled():
        print("\n" + printed)
    mean, spread = summary["mean"], summary["spread"]
    assert len(summary["accuracy"]["pretrained"]) == 2
    assert mean["pretrained"] - mean["random_init"] > max(spread.values()), summary
    assert summary["gain_exceeds_spread"] and "gain of pretraining" in printed
    assert mean["pretrained"] > max(summary["baselines"].values()) + 0.05, summary
