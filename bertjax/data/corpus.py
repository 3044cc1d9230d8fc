"""Text files or `datasets` datasets -> a stream of documents (lists of sentence strings).

Formats (`--input-format`):
  bert         the original BERT format: one sentence per line, a blank line between
               documents (the end of a file also ends a document);
  docs-lines   one document per line, split into sentences by `split_sentences`;
  docs-blocks  one document per blank-line-separated block of lines; the lines are joined
               with spaces, then split into sentences.
A `datasets` dataset (hub name or local parquet/json/jsonl/csv/text file) gives one
document per row of its text column, split like docs-blocks. Everything is streamed: only
the current document is held in memory.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

from bertjax.errors import UserError

INPUT_FORMATS = ("bert", "docs-lines", "docs-blocks")

# A sentence ends at . ! ? (plus closing quotes/brackets) followed by whitespace and then
# anything but a lower-case letter or continuing punctuation; or at a CJK full stop / ! / ?.
# Deliberately simple (no model, no language data): good enough for NSP segment boundaries,
# which only need to fall between sentences most of the time.
_SENTENCE_END = re.compile(
    r"[.!?]+[\"'\u201d\u2019)\]]*(?=\s+\S)|[\u3002\uff01\uff1f]+[\u300d\u300f\uff09]*"
)
_CONTINUES = frozenset(",;:)]}-\u2013\u2014")
# A period after these words (or after a single capital letter, an initial) ends no sentence.
_ABBREVIATION_TEXT = """mr mrs ms dr prof st jr sr vs etc e.g i.e cf fig no vol approx inc ltd
co corp dept gen col lt sgt rev hon mt ft jan feb mar apr jun jul aug sep sept oct nov dec"""
_ABBREVIATIONS = frozenset(_ABBREVIATION_TEXT.split())
_LAST_WORD = re.compile(r"([A-Za-z][A-Za-z.]*)$")
_NEXT_CHAR = re.compile(r"\s*(\S)")


def split_sentences(text: str) -> list[str]:
    """Splits running text into sentences with the simple rule above; strips whitespace."""
    out, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        nxt = _NEXT_CHAR.match(text, m.end())
        if nxt and (nxt.group(1).islower() or nxt.group(1) in _CONTINUES):
            continue
        if text[m.start()] == ".":
            w = _LAST_WORD.search(text, 0, m.start())
            if w and (
                w.group(1).lower() in _ABBREVIATIONS
                or (len(w.group(1)) == 1 and w.group(1).isupper())
            ):
                continue
        piece = text[start : m.end()].strip()
        if piece:
            out.append(piece)
        start = m.end()
    tail = text[start:].strip()
    if tail:
        out.append(tail)
    return out


class TextCorpus:
    """Documents from text files; tracks bytes read (for an ETA) and bad-byte replacements.

    `errors="strict"` stops at the first byte that is not UTF-8 with a UserError naming the
    file and byte offset; `errors="replace"` puts U+FFFD there and counts the replacements.
    """

    def __init__(self, paths, input_format: str = "bert", errors: str = "strict"):
        if input_format not in INPUT_FORMATS:
            raise UserError(f"--input-format {input_format!r} is not one of {INPUT_FORMATS}")
        if errors not in ("strict", "replace"):
            raise UserError(f"--errors {errors!r} must be strict or replace")
        self.paths = [Path(p) for p in paths]
        if not self.paths:
            raise UserError("no --input files given")
        for p in self.paths:
            if not p.is_file():
                raise UserError(f"input file {p} does not exist or is not a file")
        self.input_format = input_format
        self.errors = errors
        self.total = sum(os.path.getsize(p) for p in self.paths)  # bytes
        self.done = 0  # bytes read so far
        self.replacements = 0

    def _decode(self, raw: bytes, path: Path, offset: int) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            if self.errors == "strict":
                raise UserError(
                    f"{path} is not valid UTF-8: byte 0x{raw[e.start]:02x} at byte offset "
                    f"{offset + e.start}; fix the file or pass --errors replace"
                ) from None
        # Replace bad bytes one error at a time, so the count is exact.
        parts, pos = [], 0
        while True:
            try:
                parts.append(raw[pos:].decode("utf-8"))
                return "".join(parts)
            except UnicodeDecodeError as e:
                parts.append(raw[pos : pos + e.start].decode("utf-8") + "\ufffd")
                self.replacements += 1
                pos += e.end

    def lines(self) -> Iterator[tuple[str, bool]]:
        """Yields (stripped line, is_last_line_of_its_file)."""
        for path in self.paths:
            offset = 0
            with open(path, "rb") as f:
                for raw in f:
                    line = self._decode(raw, path, offset)
                    if offset == 0:
                        line = line.lstrip("\ufeff")  # a UTF-8 byte-order mark
                    offset += len(raw)
                    self.done += len(raw)
                    yield line.strip(), False
            yield "", True

    def __iter__(self) -> Iterator[list[str]]:
        if self.input_format == "docs-lines":
            for line, _ in self.lines():
                if line and (doc := split_sentences(line)):
                    yield doc
            return
        doc: list[str] = []
        for line, _ in self.lines():
            if line:
                doc.append(line)
            elif doc:
                yield doc if self.input_format == "bert" else split_sentences(" ".join(doc))
                doc = []


def _resolve_hf(name: str, data_files) -> tuple[str, str | None, object]:
    """(builder or hub name, config, data_files) for `--hf-dataset NAME[:CONFIG]`.

    A local file is read through the matching `datasets` builder (parquet/json/csv/text).
    """
    builders = {
        ".parquet": "parquet",
        ".json": "json",
        ".jsonl": "json",
        ".csv": "csv",
        ".txt": "text",
    }
    local = Path(name)
    if local.is_file():
        if local.suffix not in builders:
            raise UserError(
                f"--hf-dataset {name}: a local file must end in one of {', '.join(builders)}"
            )
        return builders[local.suffix], None, str(local)
    if local.is_dir():
        return str(local), None, data_files
    base, _, config = name.partition(":")
    return base, config or None, data_files


class HFCorpus:
    """Documents from a `datasets` dataset: one per row of `text_column`, streamed."""

    def __init__(
        self,
        name: str,
        split: str = "train",
        text_column: str = "text",
        data_files=None,
        streaming: bool = True,
    ):
        import datasets

        path, config, data_files = _resolve_hf(name, data_files)
        self.name, self.text_column = name, text_column
        try:
            self.ds = datasets.load_dataset(
                path, config, split=split, data_files=data_files, streaming=streaming
            )
        except (FileNotFoundError, ValueError, ConnectionError) as e:
            raise UserError(
                f"--hf-dataset {name} (split {split!r}) cannot be loaded: "
                f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
            ) from None
        self.total = None  # rows
        try:
            self.total = self.ds.info.splits[split].num_examples or None
        except (AttributeError, KeyError, TypeError):
            pass
        if not streaming:
            self.total = len(self.ds)
        self.done = 0
        self.replacements = 0

    def __iter__(self) -> Iterator[list[str]]:
        for row in self.ds:
            if self.text_column not in row:
                raise UserError(
                    f"--hf-dataset {self.name} has no column "
                    f"{self.text_column!r} (columns: {', '.join(row)}); "
                    "set --text-column"
                )
            self.done += 1
            text = row[self.text_column]
            if not isinstance(text, str):
                raise UserError(
                    f"--hf-dataset {self.name}: column {self.text_column!r} "
                    f"holds {type(text).__name__}, not text"
                )
            lines = " ".join(line.strip() for line in text.splitlines() if line.strip())
            if doc := split_sentences(lines):
                yield doc
