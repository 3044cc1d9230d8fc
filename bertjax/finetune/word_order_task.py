"""The demo's downstream task, generated from a corpus's own sentences with no labels given:
is a sentence in its written order, or were some of its words moved? Half the sentences keep
their order (label 1); in the other half `swaps` random pairs of words trade places (label 0),
the closing punctuation staying last. Every sentence is used once, and the splits never share
a document.

A bag of words cannot solve it: a sentence and its shuffled form hold the same words, so a
unigram model sees nothing but noise (`unigram_logistic_accuracy` measures it). What solves it
is knowing which words follow which: what masked-LM pretraining on the same kind of text
learns and a randomly initialised encoder must learn from the labelled examples alone.

    write_word_order_task(documents, "order/")   # train.tsv / dev.tsv (SST-2's layout)
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bertjax.errors import UserError
from bertjax.finetune.demo_tasks import _deal, _publish, _refuse_existing

CLOSING = ".:;?!"
MIN_WORDS, MAX_WORDS = 8, 30  # sentences shorter have too few orders; longer ones are rare
BOW_WORD = re.compile(r"\w+")


def moved(sentence: str, rng: np.random.Generator, swaps: int) -> str:
    """`sentence` with `swaps` random pairs of its words exchanged (different words each time,
    so that the text changes) and its closing punctuation kept last."""
    words = sentence.split()
    closing = ""
    if words[-1][-1] in CLOSING and len(words[-1]) > 1:
        words[-1], closing = words[-1][:-1], words[-1][-1]
    for _ in range(swaps):
        for _ in range(20):  # a pair of equal words would leave the text as it was
            i, j = rng.choice(len(words), 2, replace=False)
            if words[i] != words[j]:
                words[i], words[j] = words[j], words[i]
                break
    return " ".join(words) + closing


def _kept(sentence: str) -> str:
    """An intact sentence spaced as `moved` spaces its output (no tell in the whitespace)."""
    return " ".join(sentence.split())


def usable_sentences(documents) -> int:
    """How many sentences of `documents` the task can use (MIN_WORDS to MAX_WORDS words)."""
    return sum(_usable(s) for document in documents for s in document)


def _usable(sentence: str) -> bool:
    words = sentence.split()
    return MIN_WORDS <= len(words) <= MAX_WORDS and len(set(words)) > 2


def write_word_order_task(
    documents,
    out_dir,
    *,
    n_train: int = 4000,
    n_dev: int = 1000,
    swaps: int = 2,
    seed: int = 0,
) -> dict:
    """Writes train.tsv and dev.tsv (columns sentence, label: SST-2's layout, so `bertjax
    finetune --task sst2 --data OUT_DIR` trains on it). Returns {split: {examples, labels}}
    with the count of each label."""
    if swaps < 1:
        raise UserError(f"swaps={swaps}: must be 1 or more (0 would leave every sentence intact)")
    out_dir = Path(out_dir)
    names = {"dev": "dev.tsv", "train": "train.tsv"}
    _refuse_existing([out_dir / n for n in names.values()])
    usable = [[s for s in document if _usable(s)] for document in documents]
    dealt = _deal(usable, {"dev": n_dev, "train": n_train}, seed)
    rng = np.random.default_rng([seed, 3])
    files, summary = {}, {}
    for split, indices in dealt.items():
        size = {"dev": n_dev, "train": n_train}[split]
        sentences = [s for d in indices for s in usable[d]][:size]
        labels = rng.permutation(np.arange(len(sentences)) % 2)  # balanced, in random order
        rows = ["sentence\tlabel"]
        for sentence, label in zip(sentences, labels, strict=True):
            text = _kept(sentence) if label else moved(sentence, rng, swaps)
            rows.append(f"{text.replace(chr(9), ' ')}\t{int(label)}")
        files[out_dir / names[split]] = "\n".join(rows) + "\n"
        summary[split] = {"examples": len(sentences), "labels": np.bincount(labels).tolist()}
    out_dir.mkdir(parents=True, exist_ok=True)
    _publish(files)
    return summary


def read_rows(path) -> tuple[list[str], np.ndarray]:
    """(sentences, labels) of a train.tsv or dev.tsv written by `write_word_order_task`."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()[1:]
    sentences, labels = zip(*(line.rsplit("\t", 1) for line in lines), strict=True)
    return list(sentences), np.array([int(x) for x in labels])


def _bags(sentences: Sequence[str], index: dict[str, int]) -> np.ndarray:
    bags = np.zeros((len(sentences), len(index) + 1), np.float32)
    bags[:, -1] = 1.0  # the bias
    for row, sentence in enumerate(sentences):
        for word in BOW_WORD.findall(sentence.lower()):
            if word in index:
                bags[row, index[word]] += 1
    return bags


def unigram_logistic_accuracy(
    train: tuple[Sequence[str], np.ndarray],
    dev: tuple[Sequence[str], np.ndarray],
    *,
    epochs: int = 300,
    lr: float = 0.5,
    l2: float = 1e-3,
) -> float:
    """Dev accuracy of a logistic regression on word counts (the words seen twice or more in
    training), trained by full-batch gradient descent: the bag-of-words baseline."""
    counts = Counter(w for s in train[0] for w in BOW_WORD.findall(s.lower()))
    index = {w: i for i, w in enumerate(sorted(w for w, c in counts.items() if c >= 2))}
    x_train, x_dev = _bags(train[0], index), _bags(dev[0], index)
    y_train = np.asarray(train[1], np.float32)
    weights = np.zeros(x_train.shape[1], np.float32)
    for _ in range(epochs):
        p = 1 / (1 + np.exp(-(x_train @ weights)))
        weights -= lr * (x_train.T @ (p - y_train) / len(y_train) + l2 * weights)
    return float(np.mean((x_dev @ weights > 0) == np.asarray(dev[1])))


def majority_accuracy(train_labels: np.ndarray, dev_labels: np.ndarray) -> float:
    """Dev accuracy of always answering the most frequent training label."""
    majority = Counter(int(x) for x in train_labels).most_common(1)[0][0]
    return float(np.mean(np.asarray(dev_labels) == majority))
