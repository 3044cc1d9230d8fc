"""Tests for bertjax.data.demo_corpus and bertjax.data.wikitext: cleaning, corpora, format."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from bertjax.data import demo_corpus, wikitext
from bertjax.errors import UserError

DOCSTRING = """Summary line of the function, e.g. a short one.

    Longer text with :func:`os.path.join` and ``literal`` and *emphasis* [1]_. It
    continues here!  Does it split? Yes, J. Smith said so.

    Example::

        x = compute(1, 2)
        print(x)

    >>> compute(1, 2)
    3

    .. versionadded:: 3.2
       Some directive body text here that goes away.

    Parameters
    ----------
    x : int
        The first operand of the sum we want.

    +-----+-----+
    | a   | b   |
    +-----+-----+

    * A bullet item with several words
      continued on the next line.
    * Second bullet item here.
    """


def test_document_sentences_drops_code_and_markup():
    assert demo_corpus.document_sentences(DOCSTRING) == [
        "Summary line of the function, e.g. a short one.",
        "Longer text with os.path.join and literal and emphasis.",
        "It continues here!",
        "Does it split?",
        "Yes, J. Smith said so.",
        "The first operand of the sum we want.",
        "A bullet item with several words continued on the next line.",
        "Second bullet item here.",
    ]


def test_document_sentences_drops_short_documents_and_code_paragraphs():
    assert demo_corpus.document_sentences("Return self+value.") == []
    code = "for key, value in items.items():\n    result[key] = f(value) ** 2  # {x: y}"
    assert demo_corpus.document_sentences(code + "\n\n" + code) == []


def _documents(paths):
    """Reads documents back as google-research/bert does: files concatenated, a blank line ends
    a document."""
    text = "".join(pathlib.Path(p).read_text(encoding="utf-8") for p in paths)
    assert text.endswith("\n\n") and "\n\n\n" not in text
    return [doc.split("\n") for doc in text.strip("\n").split("\n\n")]


def test_small_corpus_format_and_determinism(tmp_path):
    first = demo_corpus.build_demo_corpus(tmp_path / "a", max_documents=150, num_files=3)
    second = demo_corpus.build_demo_corpus(tmp_path / "b", max_documents=150, num_files=3)
    assert first["documents"] == 150 and len(first["paths"]) == 3
    for p, q in zip(first["paths"], second["paths"], strict=True):
        assert os.path.basename(p) == os.path.basename(q)
        assert pathlib.Path(p).read_bytes() == pathlib.Path(q).read_bytes()
    docs = _documents(first["paths"])
    assert len(docs) == first["documents"]
    assert sum(map(len, docs)) == first["sentences"]
    assert sum(len(s.split()) for d in docs for s in d) == first["words"]
    assert all(line.strip() == line and line for d in docs for line in d)
    assert all(sum(len(s.split()) for s in d) >= demo_corpus.MIN_DOCUMENT_WORDS for d in docs)
    assert first["texts_read"]["pydoc topics"] == 79 or sys.version_info[:2] != (3, 11)


def test_documents_are_written_in_a_seeded_random_order(tmp_path):
    """Source order puts the 79 pydoc topics first, and `prepare --held-out` holds out the
    first documents: shuffled, the topics spread over the whole corpus."""
    ordered = demo_corpus.build_demo_corpus(tmp_path / "o", 300, num_files=1, shuffle_seed=None)
    shuffled = demo_corpus.build_demo_corpus(tmp_path / "s", 300, num_files=1)
    other = demo_corpus.build_demo_corpus(tmp_path / "t", 300, num_files=1, shuffle_seed=1)
    in_order, docs, docs_other = (_documents(r["paths"]) for r in (ordered, shuffled, other))
    # The "assert" statement is the first pydoc topic.
    assert in_order[0][0].startswith("Assert statements are a convenient way")
    assert sorted(map(tuple, docs)) == sorted(map(tuple, in_order))  # same documents
    assert docs != in_order and docs != docs_other
    topics = {tuple(d) for d in in_order[:79]}
    positions = [i for i, d in enumerate(docs) if tuple(d) in topics]
    assert len(positions) == 79 and positions[-1] > 150  # not all at the front
    assert sum(p < 79 for p in positions) < 40


def test_rebuild_replaces_files_of_an_earlier_run(tmp_path):
    demo_corpus.build_demo_corpus(tmp_path, max_documents=20, num_files=4)
    stats = demo_corpus.build_demo_corpus(tmp_path, max_documents=20, num_files=2)
    assert sorted(str(p) for p in tmp_path.glob("*.txt")) == sorted(stats["paths"])


def test_full_stdlib_corpus_is_quiet_and_large(tmp_path):
    """The whole build, in a fresh interpreter: its imports must not print or warn."""
    script = textwrap.dedent("""
        import json, sys
        from bertjax.data.demo_corpus import build_demo_corpus
        stats = build_demo_corpus(sys.argv[1])
        sys.stdout.write("STATS" + json.dumps(stats))
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert proc.stderr == ""
    assert proc.stdout.startswith("STATS")  # nothing printed by any imported module
    stats = json.loads(proc.stdout.removeprefix("STATS"))
    assert stats["documents"] > 2_000 and stats["words"] > 150_000
    assert stats["texts_read"]["stdlib docstrings"] > 10_000
    text = "".join(pathlib.Path(p).read_text(encoding="utf-8") for p in stats["paths"])
    assert ">>>" not in text and ":func:`" not in text and "``" not in text


def test_package_docstrings_are_read_from_source_without_import(tmp_path, monkeypatch):
    package = tmp_path / "fakepkg"
    (package / "tests").mkdir(parents=True)
    (package / "__init__.py").write_text('"""Package doc."""\nraise RuntimeError("imported")\n')
    (package / "mod.py").write_text(
        textwrap.dedent('''
        """Module doc."""
        class A:
            """Class doc."""
            def f(self):
                """Method doc."""
        def g():
            """Function doc."""
    ''')
    )
    (package / "tests" / "test_x.py").write_text('"""Test doc."""\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    assert list(demo_corpus.package_docstrings("fakepkg")) == [
        "Package doc.",
        "Module doc.",
        "Class doc.",
        "Method doc.",
        "Function doc.",
    ]
    with pytest.raises(ValueError, match="'no_such_package_xyz' is not an installed package"):
        list(demo_corpus.package_docstrings("no_such_package_xyz"))


def test_wikitext_documents_split_articles_and_detokenize():
    lines = [
        "",
        " = Valkyria Chronicles III = \n",
        "",
        " The game 's sales reached 1 @,@ 000 copies ( in Japan ) . It was well received . \n",
        " = = Gameplay = = \n",
        " Battles are turn @-@ based . \n",
        " = Second Article = \n",
        " Another text here . \n",
    ]
    assert list(wikitext.wikitext_documents(lines)) == [
        [
            "The game's sales reached 1,000 copies (in Japan).",
            "It was well received.",
            "Battles are turn-based.",
        ],
        ["Another text here."],
    ]


def test_wikitext_without_network_is_one_clear_error(tmp_path):
    assert os.environ.get("HF_DATASETS_OFFLINE") == "1"  # set by conftest: no network here
    with pytest.raises(UserError) as e:
        wikitext.build_wikitext_corpus(
            tmp_path / "out", name="wikitext-2-raw-v1", cache_dir=str(tmp_path / "hf-cache")
        )
    message = str(e.value)
    assert "could not load the WikiText corpus" in message and "no network" in message
    assert "\n" not in message and message.count(". ") == 0
    assert not (tmp_path / "out").exists()
