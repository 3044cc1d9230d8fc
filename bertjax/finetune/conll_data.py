"""CoNLL-2003-format NER sentences from files, a directory of splits or `datasets` rows, validated.

    data = load_conll_dir("conll2003/")                    # eng.train / eng.testa / eng.testb
    sentences = read_conll_file("eng.testa", CONLL2003_LABELS)
    data = load_conll_hub("eriktks/conll2003")             # needs the network

A file holds one token per line: its word in the first column and its NER tag in the last
(the POS and chunk columns between are ignored), every token line with the same number of
columns; a blank line ends a sentence and a `-DOCSTART-` line starts a document. Tags are
O, B-TYPE or I-TYPE, in IOB1 (the original CoNLL-2003 files: I- opens a chunk, B- only
where a chunk directly follows one of its own type) or IOB2 (every chunk opens with B-).
A tag outside the label list, a line with too few (or a different number of) columns, an
empty file: each one `UserError` naming the file and line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from bertjax.errors import UserError

# The CoNLL-2003 label list in the order of the `datasets` conll2003 sets (eriktks/conll2003):
# a label's id is its position, so a head trained on either counts its classes the same way.
CONLL2003_LABELS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")
SCHEMES = ("auto", "iob1", "iob2")
DOCSTART = "-DOCSTART-"
# The usual file names of each split: the CoNLL-2003 release's, then the common .txt layout.
SPLIT_FILES = {
    "train": ("eng.train", "train.txt"),
    "validation": ("eng.testa", "valid.txt", "dev.txt"),
    "test": ("eng.testb", "test.txt"),
}
HUB_NAME = "eriktks/conll2003"


@dataclasses.dataclass(frozen=True)
class Sentence:
    """One sentence: its words and their tags, its document's number in its file (0 before
    any -DOCSTART-) and where it starts (the 1-based line of its first word in a file; the
    row number of `datasets` rows)."""

    words: tuple[str, ...]
    tags: tuple[str, ...]
    document: int = 0
    line: int = 0


@dataclasses.dataclass(frozen=True)
class NerData:
    """The splits of one NER set, its label list (a label's id is its position) and the tag
    scheme its files use."""

    splits: dict[str, list[Sentence]]  # "train", "validation" and, where there is one, "test"
    labels: tuple[str, ...]
    scheme: str  # "iob1" or "iob2"


# --- tags and label lists -------------------------------------------------------------------


def split_tag(tag: str) -> tuple[str, str] | None:
    """("O", "") for O, (prefix, type) for B-TYPE / I-TYPE, None for anything else."""
    if tag == "O":
        return "O", ""
    prefix, dash, kind = tag.partition("-")
    return (prefix, kind) if dash and prefix in ("B", "I") and kind else None


def _bad_tag(tag: str) -> str:
    return (
        f"tag {tag!r} is not O, B-TYPE or I-TYPE (NER tags in the IOB1 or IOB2 scheme, "
        "as CoNLL-2003's)"
    )


def check_label_list(labels: Iterable[str], source: str = "the label list") -> tuple[str, ...]:
    """`labels` as a tuple, once checked: distinct IOB tags, O among them."""
    labels = tuple(labels)
    for label in labels:
        if not isinstance(label, str) or split_tag(label) is None:
            raise UserError(f"{source}: {_bad_tag(label)}")
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise UserError(f"{source} lists {', '.join(repeated)} more than once")
    if "O" not in labels:
        raise UserError(f"{source} has no O label (the tag of words outside every entity)")
    return labels


def labels_from_sentences(sentences: Iterable[Sentence]) -> tuple[str, ...]:
    """The label list of a set's own entity types: O, then B- and I- of each type seen, types
    in sorted order (B- too for a type seen only with I-, as IOB1 files show it)."""
    kinds = sorted({split_tag(t)[1] for s in sentences for t in s.tags} - {""})
    return ("O", *(f"{prefix}-{kind}" for kind in kinds for prefix in ("B", "I")))


def _label_error(tag: str, labels: Sequence[str]) -> str:
    return f"tag {tag!r} is not in the label list ({', '.join(labels)})"


# --- schemes --------------------------------------------------------------------------------


def _opens_chunk(previous: str, tag: str) -> bool:
    """An I- tag that starts a chunk: after O, at a sentence start or after another type."""
    prefix, kind = split_tag(tag)
    return prefix == "I" and (previous == "O" or split_tag(previous)[1] != kind)


def scheme_violation(tags: Sequence[str], scheme: str) -> tuple[int, str] | None:
    """(word index, reason) of the first tag `scheme` ("iob1" or "iob2") does not allow."""
    previous = "O"
    for k, tag in enumerate(tags):
        prefix, kind = split_tag(tag)
        after = "the sentence start" if k == 0 else previous
        if scheme == "iob2" and _opens_chunk(previous, tag):
            return k, f"{tag} follows {after}, which IOB2 does not allow (a chunk opens with B-)"
        if (
            scheme == "iob1"
            and prefix == "B"
            and (previous == "O" or split_tag(previous)[1] != kind)
        ):
            return k, (
                f"{tag} follows {after}, which IOB1 does not allow (B- only opens a "
                "chunk that directly follows one of its own type)"
            )
        previous = tag
    return None


def detect_scheme(sentences: Iterable[Sentence]) -> str:
    """ "iob1" when an I- tag opens a chunk anywhere, else "iob2" (conlleval scores both the
    same way; the scheme says how to read the set's B- tags)."""
    for sentence in sentences:
        previous = "O"
        for tag in sentence.tags:
            if _opens_chunk(previous, tag):
                return "iob1"
            previous = tag
    return "iob2"


def to_iob2(tags: Sequence[str]) -> tuple[str, ...]:
    """The same chunks in IOB2: an I- tag that opens a chunk becomes B-."""
    out, previous = [], "O"
    for tag in tags:
        out.append("B" + tag[1:] if _opens_chunk(previous, tag) else tag)
        previous = tag
    return tuple(out)


def to_iob1(tags: Sequence[str]) -> tuple[str, ...]:
    """The same chunks in IOB1: a B- tag becomes I- unless a chunk of its type ends just
    before it."""
    out, previous = [], "O"
    for tag in tags:
        prefix, kind = split_tag(tag)
        same_type_before = previous != "O" and split_tag(previous)[1] == kind
        out.append("I" + tag[1:] if prefix == "B" and not same_type_before else tag)
        previous = tag
    return tuple(out)


def _check_scheme(scheme: str) -> None:
    if scheme not in SCHEMES:
        raise UserError(f"tag scheme {scheme!r} is not one of {', '.join(SCHEMES)}")


def resolve_scheme(splits: Mapping[str, list[Sentence]], scheme: str) -> str:
    """The scheme of a set whose files were checked against `scheme` ("auto": detected)."""
    if scheme != "auto":
        return scheme
    return detect_scheme(s for sentences in splits.values() for s in sentences)


# --- files ----------------------------------------------------------------------------------


def _lines(path: Path, encoding: str) -> list[str]:
    raw = path.read_bytes()
    try:
        return raw.decode(encoding).splitlines()
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise UserError(f"{path}, line {line}: not {encoding} text ({e.reason})") from None


def read_conll_file(
    path,
    labels: Sequence[str] | None = CONLL2003_LABELS,
    scheme: str = "auto",
    encoding: str = "utf-8",
) -> list[Sentence]:
    """The sentences of one CoNLL-format file, every tag checked against `labels` (None: any
    O / B-TYPE / I-TYPE tag) and, when `scheme` is "iob1" or "iob2", against that scheme."""
    path = Path(path)
    _check_scheme(scheme)
    if not path.is_file():
        raise UserError(f"CoNLL file {path} does not exist")
    labels = None if labels is None else check_label_list(labels)
    allowed = None if labels is None else frozenset(labels)
    sentences: list[Sentence] = []
    words: list[str] = []
    tags: list[str] = []
    first_line = columns_line = document = 0
    columns = None

    def end_sentence():
        nonlocal words, tags
        if words:
            sentences.append(Sentence(tuple(words), tuple(tags), document, first_line))
            words, tags = [], []

    for number, line in enumerate(_lines(path, encoding), start=1):
        fields = line.split()
        where = f"{path}, line {number}"
        if not fields:
            end_sentence()
            continue
        if fields[0] == DOCSTART:
            end_sentence()
            if sentences and sentences[-1].document == document:
                document += 1
            continue
        if len(fields) < 2:
            raise UserError(
                f"{where} has one column ({line.strip()!r}): a token line needs "
                "the word first and the NER tag last"
            )
        if columns is None:
            columns, columns_line = len(fields), number
        elif len(fields) != columns:
            raise UserError(
                f"{where} has {len(fields)} columns where line {columns_line} has "
                f"{columns}: every token line needs the same columns"
            )
        tag = fields[-1]
        if allowed is not None and tag not in allowed:
            raise UserError(f"{where}: {_label_error(tag, labels)}")
        if allowed is None and split_tag(tag) is None:
            raise UserError(f"{where}: {_bad_tag(tag)}")
        if not words:
            first_line = number
        words.append(fields[0])
        tags.append(tag)
    end_sentence()
    if not sentences:
        raise UserError(f"CoNLL file {path} holds no sentences (no token lines)")
    if scheme != "auto":
        for sentence in sentences:
            bad = scheme_violation(sentence.tags, scheme)
            if bad:
                raise UserError(f"{path}, line {sentence.line + bad[0]}: {bad[1]}")
    return sentences


def find_split_files(data_dir) -> dict[str, Path]:
    """split -> its file in `data_dir` under one of the usual names (SPLIT_FILES); train and
    validation must be there, test may be missing."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserError(f"CoNLL data directory {data_dir} does not exist")
    found = {}
    for split, names in SPLIT_FILES.items():
        present = [n for n in names if (data_dir / n).is_file()]
        if len(present) > 1:
            raise UserError(
                f"{data_dir} holds the {split} split twice ({', '.join(present)}): keep one"
            )
        if present:
            found[split] = data_dir / present[0]
        elif split != "test":
            raise UserError(f"{data_dir} has no {split} file: expected one of {', '.join(names)}")
    return found


def load_conll_dir(
    data_dir,
    labels: Sequence[str] | None = CONLL2003_LABELS,
    scheme: str = "auto",
    encoding: str = "utf-8",
) -> NerData:
    """The splits of a CoNLL-format directory. `labels`: the label list every tag must be in
    (default CoNLL-2003's; None: the training file's own types, labels_from_sentences)."""
    files = find_split_files(data_dir)
    train = read_conll_file(files["train"], labels, scheme, encoding)
    if labels is None:
        labels = labels_from_sentences(train)
    labels = check_label_list(labels)
    splits = {"train": train}
    for split in ("validation", "test"):
        if split in files:
            splits[split] = read_conll_file(files[split], labels, scheme, encoding)
    return NerData(splits, labels, resolve_scheme(splits, scheme))


# --- `datasets` rows ------------------------------------------------------------------------


def sentences_from_rows(
    rows: Iterable[Mapping],
    label_names: Sequence[str],
    source: str,
    scheme: str = "auto",
) -> list[Sentence]:
    """Validated sentences of `datasets` rows with `tokens` and `ner_tags` (ids into
    `label_names`, or the tags themselves); a ["-DOCSTART-"] row starts a document."""
    _check_scheme(scheme)
    label_names = check_label_list(label_names, f"{source}: the ner_tags label names")
    allowed = frozenset(label_names)
    sentences: list[Sentence] = []
    document = 0
    for row_number, row in enumerate(rows):
        where = f"{source}, row {row_number}"
        if "tokens" not in row or "ner_tags" not in row:
            raise UserError(f"{where} lacks tokens or ner_tags (it has {', '.join(row)})")
        words, ids = list(row["tokens"]), list(row["ner_tags"])
        if words[:1] == [DOCSTART]:
            document += bool(sentences and sentences[-1].document == document)
            continue
        if not words:
            raise UserError(f"{where} has no tokens")
        if len(words) != len(ids):
            raise UserError(f"{where} has {len(words)} tokens but {len(ids)} ner_tags")
        tags = []
        for k, tag in enumerate(ids):
            if not isinstance(tag, str):
                if not 0 <= int(tag) < len(label_names):
                    raise UserError(
                        f"{where}, word {k + 1}: ner tag id {tag} is outside the "
                        f"label list of {len(label_names)} names"
                    )
                tag = label_names[int(tag)]
            if tag not in allowed:
                raise UserError(f"{where}, word {k + 1}: {_label_error(tag, label_names)}")
            tags.append(tag)
        if scheme != "auto":
            bad = scheme_violation(tags, scheme)
            if bad:
                raise UserError(f"{where}, word {bad[0] + 1}: {bad[1]}")
        sentences.append(Sentence(tuple(map(str, words)), tuple(tags), document, row_number))
    if not sentences:
        raise UserError(f"{source} holds no sentences")
    return sentences


def label_names_of(dataset, source: str) -> tuple[str, ...]:
    """The tag names of a `datasets.Dataset`'s ner_tags column (a list of ClassLabel)."""
    feature = getattr(dataset, "features", {}).get("ner_tags")
    names = getattr(getattr(feature, "feature", None), "names", None)
    if not names:
        raise UserError(
            f"{source}: its ner_tags column has no label names (a list of "
            "ClassLabel); give the label list"
        )
    return tuple(names)


def load_conll_hub(name: str = HUB_NAME, scheme: str = "auto", splits=None) -> NerData:
    """The splits (default train, validation, test) of a `datasets` NER set with tokens and
    ner_tags columns, its label list from the set's own tag names (needs the network or a
    filled datasets cache)."""
    import datasets

    splits = tuple(splits or SPLIT_FILES)
    loaded, labels = {}, None
    for split in splits:
        try:
            dataset = datasets.load_dataset(name, split=split)
        except Exception as e:  # offline, unknown split, hub errors: all one message
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise UserError(
                f"could not load {name} split {split!r} from the hub ({reason}); "
                "without network, pass a directory of CoNLL files"
            ) from None
        source = f"{name}[{split}]"
        names = label_names_of(dataset, source)
        if labels is not None and names != labels:
            raise UserError(
                f"{source} names its tags {', '.join(names)}, unlike the other "
                f"splits ({', '.join(labels)})"
            )
        labels = names
        loaded[split] = sentences_from_rows(dataset, names, source, scheme)
    return NerData(loaded, check_label_list(labels), resolve_scheme(loaded, scheme))


def tag_ids(sentences: Iterable[Sentence], labels: Sequence[str]) -> list[list[int]]:
    """Each sentence's tags as ids (positions in `labels`)."""
    index = {label: i for i, label in enumerate(labels)}
    return [[index[t] for t in s.tags] for s in sentences]
