"""conlleval scores: equal to a line-by-line port of the conlleval perl script (2004-01-26)
reading the file write_conll writes, on hand-made IOB1/IOB2 and boundary cases whose counts
are also worked out by hand here, and on random tag sequences (IOB tags and the script's
other prefixes E, [, ], "."); the report text is the script's; the file keeps one word per
line whatever the words hold."""

import random
import re

import pytest

from bertjax.finetune import conlleval

# --- the port: conlleval.pl's main loop, endOfChunk, startOfChunk and report, transcribed -----


def perl_split(line):
    """Perl's split(/ /, $line): every single space separates; trailing empty fields go."""
    fields = line.split(" ")
    while fields and fields[-1] == "":
        fields.pop()
    return fields


def perl_type(value):
    """`$x = $x ? $x : ""`: Perl's false strings are "" and "0"."""
    return value if value not in ("", "0") else ""


def end_of_chunk(prev_tag, tag, prev_type, type_):
    chunk_end = False
    if prev_tag == "B" and tag == "B":
        chunk_end = True
    if prev_tag == "B" and tag == "O":
        chunk_end = True
    if prev_tag == "I" and tag == "B":
        chunk_end = True
    if prev_tag == "I" and tag == "O":
        chunk_end = True
    if prev_tag == "E" and tag == "E":
        chunk_end = True
    if prev_tag == "E" and tag == "I":
        chunk_end = True
    if prev_tag == "E" and tag == "O":
        chunk_end = True
    if prev_tag == "I" and tag == "O":
        chunk_end = True
    if prev_tag != "O" and prev_tag != "." and prev_type != type_:
        chunk_end = True
    if prev_tag == "]":
        chunk_end = True
    if prev_tag == "[":
        chunk_end = True
    return chunk_end


def start_of_chunk(prev_tag, tag, prev_type, type_):
    chunk_start = False
    if prev_tag == "B" and tag == "B":
        chunk_start = True
    if prev_tag == "I" and tag == "B":
        chunk_start = True
    if prev_tag == "O" and tag == "B":
        chunk_start = True
    if prev_tag == "O" and tag == "I":
        chunk_start = True
    if prev_tag == "E" and tag == "E":
        chunk_start = True
    if prev_tag == "E" and tag == "I":
        chunk_start = True
    if prev_tag == "O" and tag == "E":
        chunk_start = True
    if prev_tag == "O" and tag == "I":
        chunk_start = True
    if tag != "O" and tag != "." and prev_type != type_:
        chunk_start = True
    if tag == "[":
        chunk_start = True
    if tag == "]":
        chunk_start = True
    return chunk_start


def split_field(field):
    m = re.match(r"^([^-]*)-(.*)$", field)
    return (m.group(1), m.group(2)) if m else (field, "")


def port_conlleval(path):
    """(counts, report text) of `conlleval < path`."""
    boundary = "-X-"
    correct_chunk = correct_tags = found_correct = found_guessed = token_counter = 0
    correct_chunk_t, found_correct_t, found_guessed_t = {}, {}, {}
    in_correct = False
    last_correct, last_guessed, last_correct_type, last_guessed_type = "O", "O", "", ""
    nbr_of_features = -1
    text = open(path, encoding="utf-8").read()
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    for line in lines:
        features = perl_split(line)
        if nbr_of_features < 0:
            nbr_of_features = len(features) - 1
        elif nbr_of_features != len(features) - 1 and len(features) != 0:
            raise AssertionError(f"unexpected number of features in {line!r}")
        if len(features) == 0 or features[0] == boundary:
            features = [boundary, "O", "O"]
        assert len(features) >= 2
        guessed, guessed_type = split_field(features.pop())
        correct, correct_type = split_field(features.pop())
        guessed_type, correct_type = perl_type(guessed_type), perl_type(correct_type)
        first_item = features.pop(0)
        if first_item == boundary:
            guessed = "O"
        if in_correct:
            if (
                end_of_chunk(last_correct, correct, last_correct_type, correct_type)
                and end_of_chunk(last_guessed, guessed, last_guessed_type, guessed_type)
                and last_guessed_type == last_correct_type
            ):
                in_correct = False
                correct_chunk += 1
                correct_chunk_t[last_correct_type] = correct_chunk_t.get(last_correct_type, 0) + 1
            elif (
                end_of_chunk(last_correct, correct, last_correct_type, correct_type)
                != end_of_chunk(last_guessed, guessed, last_guessed_type, guessed_type)
                or guessed_type != correct_type
            ):
                in_correct = False
        if (
            start_of_chunk(last_correct, correct, last_correct_type, correct_type)
            and start_of_chunk(last_guessed, guessed, last_guessed_type, guessed_type)
            and guessed_type == correct_type
        ):
            in_correct = True
        if start_of_chunk(last_correct, correct, last_correct_type, correct_type):
            found_correct += 1
            found_correct_t[correct_type] = found_correct_t.get(correct_type, 0) + 1
        if start_of_chunk(last_guessed, guessed, last_guessed_type, guessed_type):
            found_guessed += 1
            found_guessed_t[guessed_type] = found_guessed_t.get(guessed_type, 0) + 1
        if first_item != boundary:
            if correct == guessed and guessed_type == correct_type:
                correct_tags += 1
            token_counter += 1
        last_guessed, last_correct = guessed, correct
        last_guessed_type, last_correct_type = guessed_type, correct_type
    if in_correct:
        correct_chunk += 1
        correct_chunk_t[last_correct_type] = correct_chunk_t.get(last_correct_type, 0) + 1

    precision = 100 * correct_chunk / found_guessed if found_guessed > 0 else 0.0
    recall = 100 * correct_chunk / found_correct if found_correct > 0 else 0.0
    fb1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    out = (
        f"processed {token_counter} tokens with {found_correct} phrases; "
        f"found: {found_guessed} phrases; correct: {correct_chunk}.\n"
    )
    if token_counter > 0:
        out += (
            f"accuracy: {100 * correct_tags / token_counter:6.2f}%; "
            f"precision: {precision:6.2f}%; recall: {recall:6.2f}%; FB1: {fb1:6.2f}\n"
        )
    sorted_types, last_type = [], None
    for i in sorted([*found_correct_t, *found_guessed_t]):
        if not last_type or last_type != i:
            sorted_types.append(i)
        last_type = i
    per_type = {}
    for i in sorted_types:
        c, g, f = correct_chunk_t.get(i, 0), found_guessed_t.get(i, 0), found_correct_t.get(i, 0)
        p = 100 * c / g if g else 0.0
        r = 100 * c / f if f else 0.0
        b = 0.0 if p + r == 0.0 else 2 * p * r / (p + r)
        out += f"{i:>17}: precision: {p:6.2f}%; recall: {r:6.2f}%; FB1: {b:6.2f}  {g}\n"
        per_type[i] = {"precision": p, "recall": r, "f1": b, "phrases": f, "found": g, "correct": c}
    counts = {
        "precision": precision,
        "recall": recall,
        "f1": fb1,
        "tokens": token_counter,
        "phrases": found_correct,
        "found": found_guessed,
        "correct": correct_chunk,
        "accuracy": 100 * correct_tags / token_counter if token_counter else 0.0,
        "per_type": per_type,
    }
    return counts, out


# --- helpers -----------------------------------------------------------------------------------


def both(tmp_path, gold, predicted, words=None):
    """(our scores, the port's scores, our report, the port's report) of one case."""
    words = words or [[f"w{k}" for k in range(len(s))] for s in gold]
    path = conlleval.write_conll(tmp_path / "predictions.txt", words, gold, predicted)
    ours = conlleval.evaluate(gold, predicted)
    port, report = port_conlleval(path)
    return ours, port, conlleval.format_report(ours), report


def assert_agree(tmp_path, gold, predicted, words=None):
    ours, port, our_report, port_report = both(tmp_path, gold, predicted, words)
    assert ours == port, (gold, predicted)
    assert our_report == port_report
    return ours


# (gold, predicted, phrases, found, correct, equal tags): the counts worked out by hand.
HAND_CASES = {
    # IOB1 as CoNLL-2003's files: I- opens, B- splits two PER chunks; B-LOC after O opens too.
    "iob1": ([["I-ORG", "O", "I-PER", "I-PER", "B-PER", "O", "I-LOC"]],
             [["I-ORG", "O", "I-PER", "I-PER", "I-PER", "O", "B-LOC"]], 4, 3, 2, 5),
    # IOB2 gold, the same chunks predicted in IOB1: every chunk right, two tags differ.
    "iob2 vs iob1": ([["B-PER", "I-PER", "O", "B-LOC", "B-LOC"]],
                     [["I-PER", "I-PER", "O", "I-LOC", "B-LOC"]], 3, 3, 3, 3),
    "I- after O opens a chunk": ([["O", "I-PER", "I-PER"]], [["O", "B-PER", "I-PER"]], 1, 1, 1, 2),
    "I- of another type opens one": ([["B-PER", "I-LOC"]], [["B-PER", "I-PER"]], 2, 1, 0, 1),
    "B- between same-type chunks": ([["I-PER", "B-PER"]], [["I-PER", "I-PER"]], 2, 1, 0, 1),
    "a chunk ends at a sentence end": ([["O", "B-PER"], ["I-PER", "O"]],
                                       [["O", "B-PER"], ["I-PER", "O"]], 2, 2, 2, 4),
    "a chunk at the end of the input": ([["B-PER", "I-PER"]], [["B-PER", "I-PER"]], 1, 1, 1, 2),
    "wrong type: a false positive and a false negative": ([["B-PER", "I-PER", "O"]],
                                                          [["B-LOC", "I-LOC", "O"]], 1, 1, 0, 1),
    "predicted chunk too long": ([["B-PER", "O"]], [["B-PER", "I-PER"]], 1, 1, 0, 1),
    "predicted chunk too short": ([["B-PER", "I-PER", "O"]], [["B-PER", "O", "O"]], 1, 1, 0, 2),
    "nothing found": ([["B-PER", "O"], ["B-LOC"]], [["O", "O"], ["O"]], 2, 0, 0, 1),
    "no entities at all": ([["O", "O"]], [["O", "O"]], 0, 0, 0, 2),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(HAND_CASES))
def test_hand_made_cases_score_as_worked_out_and_as_the_port(tmp_path, name):
    """Each case's phrase, found, correct and equal-tag counts are the ones worked out by hand,
    and every figure (overall and per type) and the report equal the port's."""
    gold, predicted, phrases, found, correct, equal = HAND_CASES[name]
    scores = assert_agree(tmp_path, gold, predicted)
    tokens = sum(map(len, gold))
    assert (scores["phrases"], scores["found"], scores["correct"]) == (phrases, found, correct)
    assert scores["tokens"] == tokens
    assert scores["accuracy"] == pytest.approx(100 * equal / tokens)
    precision = 100 * correct / found if found else 0.0
    recall = 100 * correct / phrases if phrases else 0.0
    assert scores["precision"] == pytest.approx(precision)
    assert scores["recall"] == pytest.approx(recall)


def test_per_type_counts_and_report(tmp_path):
    """Per type: a wrong-type chunk counts as found for its predicted type and as missed for
    its gold type; types come sorted; the report prints conlleval's lines."""
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    predicted = [["B-LOC", "I-LOC", "O", "B-LOC"], ["B-ORG", "B-MISC"]]
    scores = assert_agree(tmp_path, gold, predicted)
    assert list(scores["per_type"]) == ["LOC", "MISC", "ORG", "PER"]
    counts = {t: (s["phrases"], s["found"], s["correct"]) for t, s in scores["per_type"].items()}
    assert counts == {"LOC": (1, 2, 1), "MISC": (0, 1, 0), "ORG": (1, 1, 1), "PER": (1, 0, 0)}
    assert scores["per_type"]["LOC"]["precision"] == pytest.approx(50.0)
    assert scores["per_type"]["LOC"]["f1"] == pytest.approx(2 * 50 * 100 / 150)
    report = conlleval.format_report(scores).splitlines()
    assert report[0] == "processed 6 tokens with 3 phrases; found: 4 phrases; correct: 2."
    assert report[1] == "accuracy:  50.00%; precision:  50.00%; recall:  66.67%; FB1:  57.14"
    assert report[2] == "              LOC: precision:  50.00%; recall: 100.00%; FB1:  66.67  2"


IOB = ["O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
EXOTIC = [
    *IOB,
    "E-PER",
    "E-LOC",
    "S-PER",
    "[-PER",
    "]-LOC",
    ".-PER",
    "B",
    "I",
    "PER",
    "I-A-B",
    "B-0",
    "O-PER",
]


@pytest.mark.parametrize("alphabet", [IOB, EXOTIC], ids=["iob", "all-prefixes"])
def test_random_tag_sequences_agree_with_the_port(tmp_path, alphabet):
    """300 random cases of 1-5 sentences of 0-9 tags each: our scores and report equal the
    port's (which reads the file we wrote), for IOB tags and for the script's other prefixes,
    types with hyphens, the type "0" and tags without a type."""
    rng = random.Random(len(alphabet))
    for _ in range(300):
        lengths = [rng.randint(0, 9) for _ in range(rng.randint(1, 5))]
        gold = [[rng.choice(alphabet) for _ in range(n)] for n in lengths]
        predicted = [[rng.choice(alphabet) for _ in range(n)] for n in lengths]
        # Near-copies of the gold tags too: random pairs alone rarely hold a correct chunk.
        if rng.random() < 0.5:
            predicted = [[g if rng.random() < 0.8 else p for g, p in zip(gs, ps)]
                         for gs, ps in zip(gold, predicted)]  # fmt: skip
        assert_agree(tmp_path, gold, predicted)


def test_the_file_keeps_one_word_per_line(tmp_path):
    """Words with spaces, an empty word and the word "-X-" (conlleval's sentence break) are
    written so that the script reads every word as one token with its two tags."""
    words = [["New York", "", "-X-", "ok"], ["a\tb"]]
    gold = [["B-LOC", "I-LOC", "O", "B-PER"], ["O"]]
    predicted = [["B-LOC", "I-LOC", "B-PER", "B-PER"], ["O"]]
    ours = assert_agree(tmp_path, gold, predicted, words)
    assert ours["tokens"] == 5
    lines = (tmp_path / "predictions.txt").read_text().split("\n")
    assert lines == [
        "New_York B-LOC B-LOC",
        "_ I-LOC I-LOC",
        "_-X-_ O B-PER",
        "ok B-PER B-PER",
        "",
        "a_b O O",
        "",
        "",
    ]
    assert not (tmp_path / "predictions.txt.tmp").exists()


def test_mismatched_inputs_are_refused(tmp_path):
    with pytest.raises(ValueError, match="2 gold sentences but 1"):
        conlleval.evaluate([["O"], ["O"]], [["O"]])
    with pytest.raises(ValueError, match="sentence 0: 2 gold tags but 1"):
        conlleval.evaluate([["O", "O"]], [["O"]])
    with pytest.raises(ValueError, match="cannot be a column"):
        conlleval.write_conll(tmp_path / "p.txt", [["a"]], [["B PER"]], [["O"]])
    assert not (tmp_path / "p.txt").exists()
