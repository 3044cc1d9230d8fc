"""Entity-level precision/recall/F1 and token accuracy exactly as the CoNLL shared tasks'
conlleval script (version 2004-01-26) computes them, and the prediction file it reads.

    scores = evaluate(gold_tags, predicted_tags)    # lists of sentences of tags
    write_conll(path, words, gold_tags, predicted_tags)   # then: conlleval < path

A tag splits at its first hyphen into a prefix and a type ("B-PER" -> B, PER; "O" -> O and
no type). Between two tags a chunk ends when: B or I is followed by B or O; E by E, I or O;
any tag but O or "." by one of another type; a "[" or "]" by anything. A chunk starts at:
B after B, I or O; I after O or E; E after E or O; any tag but O or "." after one of another
type; any "[" or "]". So IOB1 chunks (opened by I-, split by B- between chunks of one type)
and IOB2 chunks (opened by B-) both count, I- after O or after another type opens a chunk,
and every chunk ends at a sentence end (a sentence break reads as an O). A predicted chunk is
correct when it starts and ends where a gold chunk does with the gold chunk's type; one of the
wrong type counts once among the predicted (precision) and once among the gold (recall).
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

BOUNDARY = "-X-"  # conlleval reads a line whose first column is this as a sentence break
_ENDS_AFTER = {"B": {"B", "O"}, "I": {"B", "O"}, "E": {"E", "I", "O"}}  # prefix -> next prefixes
_STARTS_AFTER = {"B": {"B", "I", "O"}, "I": {"O", "E"}, "E": {"E", "O"}}  # prefix -> previous
_OUTSIDE = ("O", "")  # (prefix, type) of O, and of a sentence break


def split_tag(tag: str) -> tuple[str, str]:
    """(prefix, type) as conlleval splits a tag: at the first hyphen ("I-A-B" -> I, A-B); a
    tag without one is all prefix; a type of "0" reads as none (Perl's false)."""
    prefix, dash, kind = tag.partition("-")
    return prefix, (kind if dash and kind != "0" else "")


def chunk_ends(previous: tuple[str, str], current: tuple[str, str]) -> bool:
    """A chunk ended between the two (prefix, type) tags."""
    (p, p_type), (c, c_type) = previous, current
    return (
        c in _ENDS_AFTER.get(p, ()) or (p not in ("O", ".") and p_type != c_type) or p in ("[", "]")
    )


def chunk_starts(previous: tuple[str, str], current: tuple[str, str]) -> bool:
    """A chunk started between the two (prefix, type) tags."""
    (p, p_type), (c, c_type) = previous, current
    return (
        p in _STARTS_AFTER.get(c, ())
        or (c not in ("O", ".") and p_type != c_type)
        or c in ("[", "]")
    )


def _ratios(correct: int, found: int, phrases: int) -> dict:
    precision = 100.0 * correct / found if found else 0.0
    recall = 100.0 * correct / phrases if phrases else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def evaluate(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> dict:
    """conlleval's scores of `predicted` against `gold` (sentences of tags, one per word), in
    percent: precision, recall, f1 (its FB1), accuracy (tags equal, per word); the counts
    tokens, phrases (gold chunks), found (predicted chunks), correct; and per_type: {type:
    precision, recall, f1, phrases, found, correct}, types in sorted order."""
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold sentences but {len(predicted)} predicted ones")
    phrases, found, correct = Counter(), Counter(), Counter()
    tokens = equal_tags = 0
    in_correct = False  # the chunks being read agree so far
    last_gold = last_guess = _OUTSIDE
    stream = []
    for s, (gold_tags, guessed_tags) in enumerate(zip(gold, predicted)):
        if len(gold_tags) != len(guessed_tags):
            raise ValueError(
                f"sentence {s}: {len(gold_tags)} gold tags but {len(guessed_tags)} predicted ones"
            )
        stream += [(split_tag(g), split_tag(p), True) for g, p in zip(gold_tags, guessed_tags)]
        stream.append((_OUTSIDE, _OUTSIDE, False))  # the sentence break
    for cur_gold, cur_guess, is_word in stream:
        gold_ends, guess_ends = chunk_ends(last_gold, cur_gold), chunk_ends(last_guess, cur_guess)
        if in_correct:
            if gold_ends and guess_ends and last_gold[1] == last_guess[1]:
                in_correct = False
                correct[last_gold[1]] += 1
            elif gold_ends != guess_ends or cur_gold[1] != cur_guess[1]:
                in_correct = False
        gold_starts = chunk_starts(last_gold, cur_gold)
        guess_starts = chunk_starts(last_guess, cur_guess)
        if gold_starts and guess_starts and cur_gold[1] == cur_guess[1]:
            in_correct = True
        phrases[cur_gold[1]] += gold_starts
        found[cur_guess[1]] += guess_starts
        if is_word:
            tokens += 1
            equal_tags += cur_gold == cur_guess
        last_gold, last_guess = cur_gold, cur_guess
    if in_correct:  # a chunk still open at the end (after a "." tag): the script counts it
        correct[last_gold[1]] += 1
    types = sorted(t for t in set(phrases) | set(found) if phrases[t] or found[t])
    totals = (sum(correct.values()), sum(found.values()), sum(phrases.values()))
    return {
        **_ratios(*totals),
        "accuracy": 100.0 * equal_tags / tokens if tokens else 0.0,
        "tokens": tokens, "phrases": totals[2], "found": totals[1], "correct": totals[0],
        "per_type": {t: {**_ratios(correct[t], found[t], phrases[t]), "phrases": phrases[t],
                         "found": found[t], "correct": correct[t]} for t in types},
    }  # fmt: skip


def format_report(scores: dict) -> str:
    """The text conlleval prints for these scores (overall, then a line per type)."""
    lines = [
        f"processed {scores['tokens']} tokens with {scores['phrases']} phrases; "
        f"found: {scores['found']} phrases; correct: {scores['correct']}."
    ]
    if scores["tokens"]:
        lines.append(
            f"accuracy: {scores['accuracy']:6.2f}%; precision: "
            f"{scores['precision']:6.2f}%; recall: {scores['recall']:6.2f}%; "
            f"FB1: {scores['f1']:6.2f}"
        )
    for kind, s in scores["per_type"].items():
        # The script prints the empty type (tags with no type) once per table it is in.
        repeats = (s["phrases"] > 0) + (s["found"] > 0) if kind == "" else 1
        lines += repeats * [
            f"{kind:>17}: precision: {s['precision']:6.2f}%; recall: "
            f"{s['recall']:6.2f}%; FB1: {s['f1']:6.2f}  {s['found']}"
        ]
    return "\n".join(lines) + "\n"


def conll_word(word: str) -> str:
    """`word` as a column conlleval reads back as one word: whitespace (its column separator)
    becomes "_", an empty word "_", and the word "-X-" (its sentence break) "_-X-_"."""
    word = re.sub(r"\s+", "_", word) or "_"
    return "_-X-_" if word == BOUNDARY else word


def write_conll(
    path,
    words: Sequence[Sequence[str]],
    gold: Sequence[Sequence[str]],
    predicted: Sequence[Sequence[str]],
) -> Path:
    """Writes `word gold predicted` per line and a blank line after each sentence (the file
    `conlleval < path` scores as `evaluate` does), via a temporary name so that an
    interrupted run leaves no complete-looking file."""
    if not len(words) == len(gold) == len(predicted):
        raise ValueError("words, gold and predicted tags must list the same sentences")
    lines = []
    for s, row in enumerate(zip(words, gold, predicted)):
        if not len(row[0]) == len(row[1]) == len(row[2]):
            raise ValueError(f"sentence {s}: words and tags differ in number")
        for word, g, p in zip(*row):
            if not g or not p or re.search(r"\s", g + p):
                raise ValueError(f"sentence {s}: tags {g!r} / {p!r} cannot be a column")
            lines.append(f"{conll_word(word)} {g} {p}\n")
        lines.append("\n")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(lines), encoding="utf-8")
    os.replace(tmp, path)
    return path
