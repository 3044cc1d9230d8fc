"""The public WikiText corpus (through `datasets`), written in the demo corpus's BERT format."""

import os
import re
from collections.abc import Iterable, Iterator

from bertjax.data.corpus import split_sentences
from bertjax.data.demo_corpus import quiet, write_documents
from bertjax.errors import UserError

_WIKI_TITLE = re.compile(r"\s*= ([^=].*?) =\s*")  # " = Title = " (sections have "= =")
_WIKI_HEADING = re.compile(r"\s*(= )+.*?( =)+\s*")
_WIKI_DETOKENIZE = (
    (re.compile(r" @([-.,])@ "), r"\1"),  # "1 @,@ 000" -> "1,000"
    (re.compile(r" ([.,;:!?)\]}'%])"), r"\1"),
    (re.compile(r"([(\[{$]) "), r"\1"),
    (re.compile(r" n't\b"), "n't"),
    (re.compile(r'" (.*?) "'), r'"\1"'),
)


def wikitext_documents(lines: Iterable[str]) -> Iterator[list[str]]:
    """Parses WikiText lines into documents (one per article) of sentences.

    WikiText holds one paragraph per line, article titles as " = Title = " and section
    headings as " = = Section = = "; its text is tokenized ("the game 's") and is partly
    detokenized here.
    """
    sentences: list[str] = []
    for line in lines:
        if _WIKI_TITLE.fullmatch(line):
            if sentences:
                yield sentences
            sentences = []
        elif line.strip() and not _WIKI_HEADING.fullmatch(line):
            text = line.strip()
            for pattern, replacement in _WIKI_DETOKENIZE:
                text = pattern.sub(replacement, text)
            sentences.extend(split_sentences(text))
    if sentences:
        yield sentences


def build_wikitext_corpus(
    out_dir: str | os.PathLike,
    max_documents: int | None = None,
    *,
    name: str = "wikitext-103-raw-v1",
    num_files: int = 4,
    cache_dir: str | None = None,
) -> dict:
    """Writes WikiText's train split (through `datasets`) in the demo corpus format.

    Raises UserError, in one sentence, when the dataset cannot be downloaded (no network, or
    HF_DATASETS_OFFLINE=1 without a cached copy).
    """
    import datasets  # heavy: only imported when this corpus is asked for

    try:
        with quiet():
            dataset = datasets.load_dataset(
                "Salesforce/wikitext", name, split="train", cache_dir=cache_dir
            )
    except (ConnectionError, OSError, datasets.exceptions.DatasetNotFoundError) as e:
        raise UserError(
            f"could not load the WikiText corpus (Salesforce/wikitext, {name}) from the Hugging "
            f"Face hub: no network or no cached copy ({type(e).__name__}); run without "
            f"`--corpus wikitext` to use the built-in offline corpus"
        ) from e
    documents = wikitext_documents(row["text"] for row in dataset)
    if max_documents is not None:
        documents = (doc for _, doc in zip(range(max_documents), documents))
    stats = write_documents(documents, out_dir, prefix="wikitext", num_files=num_files)
    stats["source"] = f"Salesforce/wikitext {name} train"
    return stats
