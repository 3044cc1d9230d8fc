"""Generated NER, SWAG-style and SQuAD-style tasks on the demo corpus's real text, and their
baselines.

    documents = corpus_documents(folder)            # `python -m bertjax.data.demo_corpus folder`
    write_ner_task(documents, "ner/")               # train.txt / valid.txt / test.txt (CoNLL)
    write_swag_task(documents, "swag/")             # train.csv / val.csv / test.csv (SWAG)
    write_squad_task(sentences, "squad/")           # train-v1.1.json / dev-v1.1.json

NER: sentences cut into words and punctuation; a run of capitalised words right after "the"
is one ORG entity ("the Python Software Foundation"), every number a NUM entity, the rest O.
Capitals carry the ORG rule: a model learns it with a cased tokenizer. Multiple choice: the
true continuation of a sentence against three taken from sentences of other documents, the
true one at a random position. Splits never share a document. The baselines a learnt model
must beat: tagging every word with the most frequent training tag (O: entity F1 0) and the
chance level of four choices (accuracy 0.25). Extractive QA: a context of a sentence with one
parenthesised span and a filler sentence, in random order; the answer is the text in the
parentheses (answering the first sentence, or the whole sentence holding the parentheses,
scores F1 below 50).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bertjax.errors import UserError
from bertjax.finetune import conll_data, conlleval
from bertjax.finetune.swag_data import ENDINGS, NUM_CHOICES

CHANCE_ACCURACY = 1 / NUM_CHOICES
WORD = re.compile(r"\w+(?:[.'\u2019-]\w+)*|[^\w\s]")  # words (3.14, don't, Content-Type), marks
NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
SWAG_MODES = ("second_half", "next_sentence")
SWAG_HEADER = (
    "",
    "video-id",
    "fold-ind",
    "startphrase",
    "sent1",
    "sent2",
    "gold-source",
    *ENDINGS,
    "label",
)  # the official files' columns (the first: a row number)


def corpus_documents(folder) -> list[list[str]]:
    """The documents (lists of sentences) of a demo corpus folder's .txt files, in order."""
    paths = sorted(Path(folder).glob("*.txt"))
    if not paths:
        raise UserError(f"{folder} holds no demo corpus (.txt) files")
    return corpus_documents_of(paths)


def corpus_documents_of(files) -> list[list[str]]:
    """The documents (lists of sentences) of text files in BERT's format (a sentence per
    line, a blank line between documents), in order."""
    from bertjax.data.corpus import TextCorpus

    return list(TextCorpus([str(f) for f in files], "bert"))


def ner_tags(words: Sequence[str]) -> tuple[str, ...]:
    """IOB2 tags of one sentence's words under the generated rule (ORG after "the", NUM)."""
    tags = []
    for k, word in enumerate(words):
        capital = word[0].isupper()
        if NUMBER.fullmatch(word):
            tags.append("B-NUM")
        elif capital and k and words[k - 1].lower() == "the":
            tags.append("B-ORG")
        elif capital and tags and tags[-1] in ("B-ORG", "I-ORG"):
            tags.append("I-ORG")
        else:
            tags.append("O")
    return tuple(tags)


def _deal(documents, sizes: dict[str, int | None], seed: int) -> dict[str, list[int]]:
    """split -> document indices: documents in a seeded order, each split taking whole
    documents until it holds its size in items (None: all that remain)."""
    order = np.random.default_rng(seed).permutation(len(documents))
    dealt, position = {}, 0
    for split, size in sizes.items():
        taken, count = [], 0
        while position < len(order) and (size is None or count < size):
            taken.append(int(order[position]))
            count += len(documents[order[position]])
            position += 1
        if size is not None and count < size:
            raise UserError(f"the corpus has too few items for a {split} split of {size}")
        dealt[split] = taken
    return dealt


def _refuse_existing(paths: Sequence[Path]) -> None:
    present = [str(p) for p in paths if p.exists()]
    if present:
        raise UserError(f"{', '.join(present)} already exist(s); choose an empty folder")


def _publish(files: dict[Path, str]) -> None:
    """Writes each file under a temporary name, then renames them all."""
    for path, text in files.items():
        path.with_name(path.name + ".tmp").write_text(text, encoding="utf-8")
    for path in files:
        os.replace(path.with_name(path.name + ".tmp"), path)


def write_ner_task(
    documents,
    out_dir,
    *,
    n_dev: int = 500,
    n_test: int = 500,
    n_train: int | None = None,
    keep_plain: float = 0.25,
    scheme: str = "iob2",
    seed: int = 0,
) -> dict:
    """Writes train.txt, valid.txt and test.txt in CoNLL format (word, two "_" columns, tag;
    a -DOCSTART- line before each document). Every sentence with an entity is kept, and a
    seeded `keep_plain` fraction of the others; n_*: sentences per split (None: the rest).
    Returns {split: {sentences, words, entities: {type: count}}}."""
    if scheme not in ("iob1", "iob2"):
        raise UserError(f"scheme {scheme!r} is not iob1 or iob2")
    out_dir = Path(out_dir)
    paths = {s: out_dir / n for s, n in (("test", "test.txt"), ("validation", "valid.txt"),
                                         ("train", "train.txt"))}  # fmt: skip
    _refuse_existing(list(paths.values()))
    rng = np.random.default_rng([seed, 1])
    tagged = []
    for document in documents:
        kept = []
        for sentence in document:
            words = WORD.findall(sentence)
            tags = ner_tags(words)
            if words and (set(tags) != {"O"} or rng.random() < keep_plain):
                kept.append((words, conll_data.to_iob1(tags) if scheme == "iob1" else tags))
        if kept:
            tagged.append(kept)
    dealt = _deal(tagged, {"test": n_test, "validation": n_dev, "train": n_train}, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    files, summary = {}, {}
    for split, indices in dealt.items():
        sentences = [s for d in indices for s in tagged[d]]
        lines = []
        for d in indices:
            lines.append("-DOCSTART- -X- -X- O\n\n")
            for words, tags in tagged[d]:
                lines += [f"{w} _ _ {t}\n" for w, t in zip(words, tags)] + ["\n"]
        files[paths[split]] = "".join(lines)
        chunks = Counter(
            t[2:] for _, tags in sentences for t in conll_data.to_iob2(tags) if t.startswith("B-")
        )
        summary[split] = {
            "sentences": len(sentences),
            "words": sum(len(w) for w, _ in sentences),
            "entities": dict(chunks),
        }
    _publish(files)
    return summary


def _second_half(sentence: str):
    """(first half, the next two words, the rest) of a sentence of at least 8 words."""
    words = sentence.split()
    if len(words) < 8:
        return None
    k = len(words) // 2
    return " ".join(words[:k]), " ".join(words[k : k + 2]), " ".join(words[k + 2 :])


def _questions(documents, indices, mode: str):
    """(document, context, start, true ending) of the documents `indices`."""
    out = []
    for d in indices:
        sentences = documents[d]
        for i, sentence in enumerate(sentences):
            if mode == "second_half" and (parts := _second_half(sentence)):
                out.append((d, *parts))
            elif mode == "next_sentence" and i + 1 < len(sentences):
                words = sentences[i + 1].split()
                if len(words) >= 4:
                    out.append((d, sentence, " ".join(words[:2]), " ".join(words[2:])))
    return out


def write_swag_task(
    documents,
    out_dir,
    *,
    n_train: int | None = 4000,
    n_dev: int = 500,
    n_test: int = 500,
    mode: str = "second_half",
    seed: int = 0,
) -> dict:
    """Writes train.csv, val.csv and test.csv (no label column) in the official SWAG layout.
    mode "second_half": the context is the first half of a sentence (of 8 or more words), the
    start its next two words, the true ending the rest; "next_sentence": the context is a
    sentence, the start the next sentence's first two words, the true ending its rest. The
    three other endings are the same parts of sentences of other documents of the split.
    Returns {split: {examples, labels: [count of each label]}}."""
    if mode not in SWAG_MODES:
        raise UserError(f"SWAG-style mode {mode!r} is not one of {', '.join(SWAG_MODES)}")
    out_dir = Path(out_dir)
    names = {"test": "test.csv", "validation": "val.csv", "train": "train.csv"}
    _refuse_existing([out_dir / n for n in names.values()])
    # Deal documents by the questions they give, so each split can hold its size.
    per_document = [[q[1:] for q in _questions(documents, [d], mode)]
                    for d in range(len(documents))]  # fmt: skip
    dealt = _deal(per_document, {"test": n_test, "validation": n_dev, "train": n_train}, seed)
    rng = np.random.default_rng([seed, 2])
    files, summary = {}, {}
    out_dir.mkdir(parents=True, exist_ok=True)
    for split, indices in dealt.items():
        size = {"test": n_test, "validation": n_dev, "train": n_train}[split]
        questions = _questions(documents, indices, mode)[:size]
        doc_of = np.array([q[0] for q in questions])
        if len(set(doc_of.tolist())) < 2 or min(np.bincount(doc_of)[doc_of]) > len(doc_of) - 3:
            raise UserError(
                f"the {split} split's questions come from too few documents to "
                f"draw {NUM_CHOICES - 1} other endings from other documents"
            )
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(SWAG_HEADER if split != "test" else SWAG_HEADER[:-1])
        labels = rng.integers(NUM_CHOICES, size=len(questions))
        for i, (d, context, start, ending) in enumerate(questions):
            others = np.flatnonzero(doc_of != d)
            picks = rng.choice(others, NUM_CHOICES - 1, replace=False)
            endings = [questions[j][3] for j in picks]
            endings.insert(int(labels[i]), ending)
            row = [i, f"demo-{d}", i, f"{context} {start}", context, start, "generated", *endings]
            writer.writerow(row + [int(labels[i])] if split != "test" else row)
        files[out_dir / names[split]] = text.getvalue()
        summary[split] = {
            "examples": len(questions),
            "labels": np.bincount(labels, minlength=NUM_CHOICES).tolist(),
        }
    _publish(files)
    return summary


def majority_tag_scores(train: Sequence[Sequence[str]], dev: Sequence[Sequence[str]]) -> dict:
    """conlleval's scores on `dev` (sentences of tags) of tagging every word with the most
    frequent tag of `train` (O on any NER set: no entity found, F1 0)."""
    majority = Counter(t for tags in train for t in tags).most_common(1)[0][0]
    return conlleval.evaluate(dev, [[majority] * len(tags) for tags in dev])


def majority_label_accuracy(train_labels: Sequence[int], dev_labels: Sequence[int]) -> float:
    """Accuracy on `dev_labels` of always choosing the most frequent training label (about
    CHANCE_ACCURACY when the true ending's position is uniformly random)."""
    majority = Counter(int(x) for x in train_labels).most_common(1)[0][0]
    return float(np.mean(np.asarray(dev_labels) == majority))


SQUAD_QUESTION = "What does the text say in parentheses?"


def parenthesised(sentence: str) -> tuple[int, int] | None:
    """[start, end) of the text inside the sentence's one pair of parentheses, if it has
    exactly one (of 1-6 words) and no quotes, else None."""
    if sentence.count("(") != 1 or sentence.count(")") != 1 or '"' in sentence:
        return None
    start, end = sentence.index("(") + 1, sentence.index(")")
    return (start, end) if start < end and 1 <= len(sentence[start:end].split()) <= 6 else None


def squad_json(groups, version: str = "1.1") -> dict:
    """An official-format SQuAD file: one paragraph per group of (sentence, answer span or
    None) whose context is the sentences joined by spaces; a question per group, unanswerable
    (v2.0) when no sentence has a span."""
    data = []
    for g, group in enumerate(groups):
        context, qa = "", {"id": f"q{g}", "question": SQUAD_QUESTION, "answers": []}
        for sentence, span in group:
            offset = len(context) + (1 if context else 0)
            context = f"{context} {sentence}" if context else sentence
            if span:
                text = sentence[span[0] : span[1]]
                qa["answers"].append({"text": text, "answer_start": offset + span[0]})
        if version == "v2.0":
            qa["is_impossible"] = not qa["answers"]
        data.append({"title": f"t{g}", "paragraphs": [{"context": context, "qas": [qa]}]})
    return {"version": version, "data": data}


def squad_sentences(sentences: Sequence[str]) -> tuple[list[str], list[str]]:
    """(sentences with one parenthesised span, sentences without parentheses or quotes), each
    of 4-18 words."""
    short = [s for s in sentences if 4 <= len(s.split()) <= 18]
    return [s for s in short if parenthesised(s)], [s for s in short if not set('()"') & set(s)]


def write_squad_task(
    sentences: Sequence[str], out_dir, *, n_train: int, n_dev: int, seed: int = 0
) -> list[list[str]]:
    """train-v1.1.json / dev-v1.1.json in `out_dir`: each context a parenthesised sentence and
    a filler in random order, the answer the text in the parentheses; dev uses sentences
    training never sees (the first 150 parenthesised ones and 300 fillers of a seeded order).
    Returns each dev context's sentences (for the baselines)."""
    spans, fillers = squad_sentences(sentences)
    if len(spans) <= 150 or len(fillers) <= 300:
        raise UserError(
            f"{len(spans)} sentences with parentheses and {len(fillers)} without: "
            "too few for a SQuAD-style task (more than 150 and 300)"
        )
    rng = np.random.default_rng(seed)
    spans = [spans[i] for i in rng.permutation(len(spans))]
    fillers = [fillers[i] for i in rng.permutation(len(fillers))]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files, dev_contexts = {}, []
    for name, n, (pool, pad) in (
        ("train", n_train, (spans[150:], fillers[300:])),
        ("dev", n_dev, (spans[:150], fillers[:300])),
    ):
        groups = []
        for _ in range(n):
            pair = (pool[rng.integers(len(pool))], pad[rng.integers(len(pad))])
            groups.append([(pair[i], parenthesised(pair[i])) for i in rng.permutation(2)])
        files[out_dir / f"{name}-v1.1.json"] = json.dumps(squad_json(groups))
        if name == "dev":
            dev_contexts = [[sentence for sentence, _ in group] for group in groups]
    _refuse_existing(list(files))
    _publish(files)
    return dev_contexts
