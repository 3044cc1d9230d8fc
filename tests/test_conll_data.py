"""Reading CoNLL-2003-format NER files, directories and `datasets` rows: words and tags from
the first and last columns, sentences and documents, label lists (CoNLL-2003's, a set's own,
given), IOB1/IOB2 detection, declaration and conversion, and one clear error per bad input."""

import pytest

from bertjax.errors import UserError
from bertjax.finetune import conll_data, conlleval
from bertjax.finetune.conll_data import CONLL2003_LABELS, Sentence

# The original release's layout: word, POS, chunk, NER tag (IOB1), -DOCSTART- documents.
ENG = """-DOCSTART- -X- -X- O

EU NNP I-NP I-ORG
rejects VBZ I-VP O
German JJ I-NP I-MISC
call NN I-NP O
. . O O

Peter NNP I-NP I-PER
Blackburn NNP I-NP I-PER

-DOCSTART- -X- -X- O

BRUSSELS NNP I-NP I-LOC
1996-08-22 CD I-NP O
In IN I-PP O
Paris NNP I-NP I-LOC
Berlin NNP I-NP B-LOC
"""

# The common .txt layout, here in IOB2, with Windows line ends and no -DOCSTART-.
TXT = (
    "SOCCER NN B-NP O\r\nJapan NNP B-NP B-LOC\r\nwins VBZ B-VP O\r\n\r\n\r\n"
    "Leeds NNP B-NP B-ORG\r\n"
)


def write(folder, name, text):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(text.encode("utf-8"))
    return folder / name


def test_reads_words_tags_sentences_and_documents(tmp_path):
    """First column the word, last the tag; blank lines end sentences (several in a row, and
    the end of the file, too); -DOCSTART- lines start documents; each sentence records the
    line of its first word."""
    sentences = conll_data.read_conll_file(write(tmp_path, "eng.testa", ENG))
    assert sentences == [
        Sentence(("EU", "rejects", "German", "call", "."),
                 ("I-ORG", "O", "I-MISC", "O", "O"), 0, 3),
        Sentence(("Peter", "Blackburn"), ("I-PER", "I-PER"), 0, 9),
        Sentence(("BRUSSELS", "1996-08-22", "In", "Paris", "Berlin"),
                 ("I-LOC", "O", "O", "I-LOC", "B-LOC"), 1, 14),
    ]  # fmt: skip
    txt = conll_data.read_conll_file(write(tmp_path, "valid.txt", TXT))
    assert [(s.words, s.tags, s.document, s.line) for s in txt] == [
        (("SOCCER", "Japan", "wins"), ("O", "B-LOC", "O"), 0, 1),
        (("Leeds",), ("B-ORG",), 0, 6),
    ]


def test_a_directory_under_either_naming(tmp_path):
    """eng.train/eng.testa/eng.testb and train.txt/valid.txt/test.txt are found; test may be
    missing; the scheme is detected over all splits."""
    eng = tmp_path / "eng"
    for name in ("eng.train", "eng.testa", "eng.testb"):
        write(eng, name, ENG)
    data = conll_data.load_conll_dir(eng)
    assert list(data.splits) == ["train", "validation", "test"]
    assert data.labels == CONLL2003_LABELS and data.scheme == "iob1"
    txt = tmp_path / "txt"
    for name in ("train.txt", "valid.txt"):
        write(txt, name, TXT)
    data = conll_data.load_conll_dir(txt)
    assert list(data.splits) == ["train", "validation"] and data.scheme == "iob2"
    assert len(data.splits["validation"]) == 2


def test_a_sets_own_label_list(tmp_path):
    """labels=None: O, then B-/I- of each type the training file holds (sorted); a dev tag of
    a type training never saw is an error naming its file and line. A given list is used as
    given (ids are positions in it)."""
    folder = tmp_path / "own"
    write(folder, "train.txt", "a B-NUM\nb O\n\nthe O\nX B-ORG\nY I-ORG\n")
    write(folder, "valid.txt", "c B-ORG\nd B-PER\n")
    with pytest.raises(
        UserError,
        match=r"valid.txt, line 2: tag 'B-PER' is not in the label "
        r"list \(O, B-NUM, I-NUM, B-ORG, I-ORG\)",
    ):
        conll_data.load_conll_dir(folder, labels=None)
    write(folder, "valid.txt", "c B-ORG\nd O\n")
    data = conll_data.load_conll_dir(folder, labels=None)
    assert data.labels == ("O", "B-NUM", "I-NUM", "B-ORG", "I-ORG")
    assert conll_data.tag_ids(data.splits["validation"], data.labels) == [[3, 0]]
    given = ("O", "B-ORG", "I-ORG", "B-NUM", "I-NUM", "B-PER", "I-PER")
    data = conll_data.load_conll_dir(folder, labels=given)
    assert data.labels == given
    assert conll_data.tag_ids(data.splits["train"], given) == [[3, 0], [0, 1, 2]]


@pytest.mark.parametrize("text,message", [
    ("EU NNP I-NP I-ORG\nrejects VBZ I-VP B-FOO\n",
     r"eng.train, line 2: tag 'B-FOO' is not in the label list \(O, B-PER"),
    ("EU NNP I-NP I-ORG\nrejects\n", r"eng.train, line 2 has one column \('rejects'\)"),
    ("EU NNP I-NP I-ORG\n\nrejects VBZ O\n",
     r"eng.train, line 3 has 3 columns where line 1 has 4"),
    ("", r"CoNLL file .*eng.train holds no sentences"),
    ("-DOCSTART- -X- -X- O\n\n\n", r"CoNLL file .*eng.train holds no sentences"),
    (b"EU NNP I-NP I-ORG\nM\xfcnchen NNP I-NP I-LOC\n", r"eng.train, line 2: not utf-8 text"),
])  # fmt: skip
def test_bad_files_are_one_clear_error(tmp_path, text, message):
    """A tag outside the label list, a line of too few (or other than the file's) columns, an
    empty file, a file of -DOCSTART- lines only, bytes that are not UTF-8: each one error
    naming the file and line."""
    path = tmp_path / "eng.train"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(UserError, match=message):
        conll_data.read_conll_file(path)


def test_bad_directories_and_label_lists(tmp_path):
    write(tmp_path, "eng.train", ENG)
    with pytest.raises(
        UserError,
        match=r"has no validation file: expected one of eng.testa, "
        r"valid.txt, dev.txt",
    ):
        conll_data.load_conll_dir(tmp_path)
    write(tmp_path, "eng.testa", ENG)
    write(tmp_path, "valid.txt", TXT)
    with pytest.raises(UserError, match=r"holds the validation split twice \(eng.testa, "):
        conll_data.load_conll_dir(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        conll_data.load_conll_dir(tmp_path / "missing")
    with pytest.raises(UserError, match=r"tag 'PER' is not O, B-TYPE or I-TYPE"):
        conll_data.check_label_list(["O", "PER"])
    with pytest.raises(UserError, match=r"lists B-PER more than once"):
        conll_data.check_label_list(["O", "B-PER", "B-PER"])
    with pytest.raises(UserError, match=r"has no O label"):
        conll_data.check_label_list(["B-PER", "I-PER"])
    write(tmp_path, "x.txt", "a S-PER\n")
    with pytest.raises(UserError, match=r"x.txt, line 1: tag 'S-PER' is not O, B-TYPE or I-TYPE"):
        conll_data.read_conll_file(tmp_path / "x.txt", labels=None)


def test_declared_schemes_are_checked(tmp_path):
    """iob2 refuses an I- that opens a chunk, iob1 a B- that does not follow its own type;
    each error names the line. auto detects (iob1 as soon as an I- opens a chunk)."""
    path = write(tmp_path, "eng.train", ENG)
    with pytest.raises(
        UserError,
        match=r"eng.train, line 3: I-ORG follows the sentence start, "
        r"which IOB2 does not allow",
    ):
        conll_data.read_conll_file(path, scheme="iob2")
    assert len(conll_data.read_conll_file(path, scheme="iob1")) == 3
    path = write(tmp_path, "valid.txt", TXT)
    with pytest.raises(UserError, match=r"valid.txt, line 2: B-LOC follows O, which IOB1 does"):
        conll_data.read_conll_file(path, scheme="iob1")
    with pytest.raises(UserError, match=r"tag scheme 'bio' is not one of auto, iob1, iob2"):
        conll_data.read_conll_file(path, scheme="bio")
    iob1 = [Sentence(("a", "b"), ("B-PER", "I-LOC"))]  # I-LOC after another type opens one
    assert conll_data.detect_scheme(iob1) == "iob1"
    assert conll_data.detect_scheme([Sentence(("a", "b"), ("B-PER", "I-PER"))]) == "iob2"


def test_scheme_conversions_keep_conllevals_chunks():
    """to_iob2 / to_iob1 rewrite the tags of the other scheme and leave every chunk as
    conlleval reads it (both ways, on all sequences of up to 5 tags)."""
    import itertools

    assert conll_data.to_iob2(["I-PER", "I-PER", "B-PER", "O", "I-LOC", "I-ORG"]) == (
        "B-PER",
        "I-PER",
        "B-PER",
        "O",
        "B-LOC",
        "B-ORG",
    )
    assert conll_data.to_iob1(["B-PER", "I-PER", "B-PER", "O", "B-LOC", "B-ORG"]) == (
        "I-PER",
        "I-PER",
        "B-PER",
        "O",
        "I-LOC",
        "I-ORG",
    )
    alphabet = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    for n in range(1, 6):
        for tags in itertools.product(alphabet, repeat=n):
            tags = list(tags)
            for converted in (conll_data.to_iob2(tags), conll_data.to_iob1(tags)):
                scores = conlleval.evaluate([tags], [list(converted)])
                assert scores["correct"] == scores["phrases"] == scores["found"], tags
            assert conll_data.scheme_violation(conll_data.to_iob2(tags), "iob2") is None
            assert conll_data.scheme_violation(conll_data.to_iob1(tags), "iob1") is None


def conll_dataset(rows, names=CONLL2003_LABELS):
    """A local `datasets.Dataset` shaped as eriktks/conll2003 (tokens, ner_tags ClassLabel)."""
    import datasets

    features = datasets.Features({
        "id": datasets.Value("string"),
        "tokens": datasets.Sequence(datasets.Value("string")),
        "ner_tags": datasets.Sequence(datasets.ClassLabel(names=list(names))),
    })  # fmt: skip
    columns = {"id": [str(i) for i in range(len(rows))], "tokens": [r[0] for r in rows],
               "ner_tags": [r[1] for r in rows]}  # fmt: skip
    return datasets.Dataset.from_dict(columns, features=features)


def test_datasets_rows(monkeypatch):
    """Rows of tokens and ner_tag ids become sentences with the set's tag names; a
    ["-DOCSTART-"] row starts a document; load_conll_hub reads every split so (here from a
    local dataset standing in for the hub)."""
    rows = [(["-DOCSTART-"], [0]), (["EU", "rejects", "German"], [3, 0, 7]),
            (["Peter"], [1]), (["-DOCSTART-"], [0]), (["Paris"], [5])]  # fmt: skip
    ds = conll_dataset(rows)
    assert conll_data.label_names_of(ds, "x") == CONLL2003_LABELS
    sentences = conll_data.sentences_from_rows(ds, CONLL2003_LABELS, "rows")
    assert [(s.words, s.tags, s.document, s.line) for s in sentences] == [
        (("EU", "rejects", "German"), ("B-ORG", "O", "B-MISC"), 0, 1),
        (("Peter",), ("B-PER",), 0, 2),
        (("Paris",), ("B-LOC",), 1, 4),
    ]
    import datasets

    asked = []
    monkeypatch.setattr(
        datasets, "load_dataset", lambda name, split: asked.append((name, split)) or ds
    )
    data = conll_data.load_conll_hub()
    assert asked == [("eriktks/conll2003", s) for s in ("train", "validation", "test")]
    assert data.labels == CONLL2003_LABELS and data.scheme == "iob2"
    assert data.splits["test"] == sentences


def test_bad_datasets_rows(monkeypatch):
    """An id outside the label names, tokens and tags of different lengths, an empty row, a
    declared scheme the tags break, missing label names, an unreachable hub: one error each."""
    source = "conll[train]"
    cases = [
        ([(["EU"], [9])], r"row 0, word 1: ner tag id 9 is outside the label list of 9 names"),
        ([(["EU", "x"], [1])], r"row 0 has 2 tokens but 1 ner_tags"),
        ([([], [])], r"row 0 has no tokens"),
        ([(["a", "b"], ["O", "B-FOO"])], r"row 0, word 2: tag 'B-FOO' is not in the label list"),
    ]
    for rows, message in cases:
        with pytest.raises(UserError, match=message):
            conll_data.sentences_from_rows(
                [{"tokens": t, "ner_tags": g} for t, g in rows], CONLL2003_LABELS, source
            )
    with pytest.raises(UserError, match=r"row 0, word 2: I-LOC follows B-PER, which IOB2"):
        conll_data.sentences_from_rows(
            [{"tokens": ["a", "b"], "ner_tags": [1, 6]}], CONLL2003_LABELS, source, scheme="iob2"
        )
    with pytest.raises(UserError, match=r"row 0 lacks tokens or ner_tags \(it has words\)"):
        conll_data.sentences_from_rows([{"words": ["a"]}], CONLL2003_LABELS, source)
    import datasets

    plain = datasets.Dataset.from_dict({"tokens": [["a"]], "ner_tags": [[0]]})
    with pytest.raises(UserError, match=r"its ner_tags column has no label names"):
        conll_data.label_names_of(plain, source)

    def offline(name, split):
        raise ConnectionError("no network\nmore")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(
        UserError,
        match=r"could not load eriktks/conll2003 split 'train' from "
        r"the hub \(no network\); without network, pass a ",
    ):
        conll_data.load_conll_hub()
