"""Offline demo corpus from text every Python installation holds: pydoc topics and docstrings."""

import ast
import contextlib
import importlib
import importlib.util
import inspect
import io
import os
import pathlib
import pkgutil
import random
import re
import sys
import types
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence

from bertjax.data.corpus import split_sentences

# Modules never imported, by reason: side effects on import (opens a browser, prints, GUI,
# sets up the terminal, writes grammar pickles next to its source); the running program,
# frozen greeting modules and the regression suite; not the stdlib's own text (setuptools
# may substitute its distutils); read separately as the pydoc topics.
DENY_MODULES = frozenset(
    "antigravity this idlelib tkinter _tkinter turtle turtledemo readline rlcompleter lib2to3 "
    "__main__ __hello__ __phello__ test distutils pydoc_data".split()
)
# Submodule names never imported: they run programs (`__main__`) or tests.
_DENY_SUBMODULE_NAMES = frozenset({"__main__", "test", "tests", "testing"})
# Packages whose submodules are all boilerplate (120 codecs "generated from MAPPINGS/...").
_NO_SUBMODULES = frozenset({"encodings"})

# Installed with bertjax itself, so still offline: `packages=DEPENDENCY_PACKAGES` roughly
# quadruples the corpus (see build_demo_corpus), at the cost of ~40 s of parsing.
DEPENDENCY_PACKAGES = ("numpy", "jax", "flax", "optax", "orbax", "matplotlib", "datasets")

MIN_DOCUMENT_WORDS = 12  # shorter docstrings ("Return self+value.") are noise, not text
MIN_SENTENCE_WORDS = 3  # alphabetic words; drops headings, parameter names and stray symbols
_CODE_CHARS = frozenset("()[]{}=<>_;:'\"*+/\\@#%|&^~$`")
MAX_CODE_CHAR_FRACTION = 0.12  # paragraphs above this are code, not prose (prose is ~0.02)

# --- text cleaning (sentence splitting: corpus.split_sentences) --------------------------

_UNDERLINE = re.compile(r"([=\-~^*#+\"'`.:])\1{2,}")  # RST section underline or table border
_BULLET = re.compile(r"(?:[*\-+\u2022]|\d{1,2}[.)]|#\.|\(\w\))\s+(?=\S)")
_SIGNATURE = re.compile(r"[\w.]+\(.*\)(\s*->\s*.*)?")  # old-style C signature line
_MARKUP = (
    (re.compile(r":[\w.+-]+:`~?([^`<]*?)\s*(?:<[^>]*>)?`"), r"\1"),  # :func:`~os.path.join`
    (re.compile(r"`([^`<]*?)\s*<[^>]*>`_{1,2}"), r"\1"),  # `text <https://...>`_
    (re.compile(r"``([^`]*)``"), r"\1"),  # ``literal``
    (re.compile(r"`([^`]*)`_{0,2}"), r"\1"),  # `interpreted` or `reference`_
    (re.compile(r"\*\*([^*\s][^*]*?)\*\*"), r"\1"),  # **strong**
    (re.compile(r"(?<![\w*])\*([^*\s][^*]*?)\*(?![\w*])"), r"\1"),  # *emphasis*
    (re.compile(r"\s*\[(?:\d+|#\w*|\*)\]_?"), ""),  # footnote references [1]_
    (re.compile(r"(?<!\S)~?\.(?=[A-Za-z_])"), ""),  # matplotlib's default role: ~.Figure.dpi
    (re.compile(r"\s+"), " "),
)


def strip_markup(text: str) -> str:
    """Removes inline reStructuredText markup (roles, literals, links, emphasis, footnotes)."""
    for pattern, replacement in _MARKUP:
        text = pattern.sub(replacement, text)
    return text.strip()


def _code_fraction(text: str) -> float:
    chars = [c for c in text if not c.isspace()]
    return sum(c in _CODE_CHARS for c in chars) / max(len(chars), 1)


def _paragraphs(text: str) -> Iterator[str]:
    """Yields the prose paragraphs of a docstring, each joined into one line.

    A paragraph is a run of non-blank lines at one indentation; a bullet starts a new one.
    Dropped: doctest blocks (`>>>` up to the next blank line), literal blocks after `::`,
    directives (`.. note::` and their bodies), tables, section headings with underlines.
    """
    current: list[str] = []
    indent = -1  # content indentation of the current paragraph
    skip_deeper_than = None  # inside a literal block or directive body
    in_doctest = False

    def flush():
        if current:
            yield " ".join(current)
            current.clear()

    lines = inspect.cleandoc(text).expandtabs().splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        line_indent = len(line) - len(line.lstrip())
        if in_doctest:
            in_doctest = bool(stripped)
            continue
        if skip_deeper_than is not None:
            if not stripped or line_indent > skip_deeper_than:
                continue
            skip_deeper_than = None
        if not stripped:
            yield from flush()
            continue
        if stripped.startswith((">>>", "...")):
            yield from flush()
            in_doctest = True
            continue
        if _UNDERLINE.fullmatch(stripped):
            if current and len(current) == 1:  # the line above was a section title
                current.clear()
            yield from flush()
            continue
        if stripped.startswith(("|", "+-", "+=")) or (i == 0 and _SIGNATURE.fullmatch(stripped)):
            continue  # a table row, or a C function's signature line
        if stripped.startswith(".. "):
            yield from flush()
            skip_deeper_than = line_indent
            continue
        bullet = _BULLET.match(stripped)
        if bullet or line_indent != indent:
            yield from flush()
            indent = line_indent + (bullet.end() if bullet else 0)
            stripped = stripped[bullet.end() :] if bullet else stripped
        if stripped.endswith("::"):  # RST: the indented block that follows is literal
            stripped = stripped[:-2].rstrip()
            if stripped:
                current.append(stripped + ":")
            yield from flush()
            skip_deeper_than = line_indent
            continue
        current.append(stripped)
    yield from flush()


def document_sentences(text: str) -> list[str]:
    """Turns one docstring or help topic into the sentences of one document (may be empty)."""
    sentences = []
    for paragraph in _paragraphs(text):
        paragraph = strip_markup(paragraph)
        if _code_fraction(paragraph) > MAX_CODE_CHAR_FRACTION:
            continue
        for sentence in split_sentences(paragraph):
            if len(re.findall(r"\b[A-Za-z]{2,}\b", sentence)) >= MIN_SENTENCE_WORDS:
                sentences.append(sentence)
    if sum(len(s.split()) for s in sentences) < MIN_DOCUMENT_WORDS:
        return []
    return sentences


# --- sources ------------------------------------------------------------------------------


def pydoc_topics() -> Iterator[str]:
    """Yields the pydoc help topics (the language reference), sorted by topic name."""
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions package pydoc_data separately
        return
    for name in sorted(topics):
        yield topics[name]


@contextlib.contextmanager
def quiet():
    """Silences what an import prints or warns (deprecations), restoring both afterwards."""
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
    ):
        warnings.simplefilter("ignore")
        yield


def stdlib_modules() -> Iterator[types.ModuleType]:
    """Imports and yields the public stdlib modules and submodules, in sorted name order.

    Private (`_name`) modules are skipped: their objects reappear, with the same docstrings,
    in the public modules that re-export them. Anything that fails to import is skipped
    (platform-specific modules such as `winreg` or `multiprocessing.popen_spawn_win32`).
    """

    def visit(name: str) -> Iterator[types.ModuleType]:
        try:
            with quiet():
                module = importlib.import_module(name)
        except (Exception, SystemExit):
            return
        yield module
        if hasattr(module, "__path__") and name not in _NO_SUBMODULES:
            subs = sorted(info.name for info in pkgutil.iter_modules(module.__path__))
            for sub in subs:
                if not (sub.startswith(("_", "test_")) or sub in _DENY_SUBMODULE_NAMES):
                    yield from visit(f"{name}.{sub}")

    for name in sorted(sys.stdlib_module_names):
        if not name.startswith("_") and name not in DENY_MODULES:
            yield from visit(name)


def _object_docs(obj, depth: int = 0) -> Iterator[str]:
    """Yields the docstrings of a class or function and, for classes, of their members."""
    with quiet():  # touching some attributes (typing.io) warns
        doc = getattr(obj, "__doc__", None)
    if isinstance(doc, str):
        yield doc
    if inspect.isclass(obj) and depth < 2:
        for _, member in sorted(vars(obj).items()):
            if isinstance(member, (staticmethod, classmethod)):
                member = member.__func__
            if inspect.isclass(member) or callable(member) or inspect.isdatadescriptor(member):
                yield from _object_docs(member, depth + 1)


def stdlib_docstrings() -> Iterator[str]:
    """Yields the docstrings of the stdlib: each module's, then its members' (sorted by name)."""
    for module in stdlib_modules():
        if isinstance(module.__doc__, str):
            yield module.__doc__
        for _, obj in sorted(vars(module).items()):
            if not isinstance(obj, types.ModuleType) and (inspect.isclass(obj) or callable(obj)):
                yield from _object_docs(obj)


def package_docstrings(package: str) -> Iterator[str]:
    """Yields the docstrings in an installed package's source (parsed with `ast`, not imported)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"{package!r} is not an installed package (no source directory found)")
    for location in spec.submodule_search_locations:
        for path in sorted(pathlib.Path(location).rglob("*.py")):
            if _DENY_SUBMODULE_NAMES.intersection(path.relative_to(location).parts):
                continue
            try:
                tree = ast.parse(path.read_bytes())
            except (SyntaxError, ValueError):
                continue  # a template or a file for another Python version
            yield from _ast_docstrings(tree)


def _ast_docstrings(node: ast.AST) -> Iterator[str]:
    """Yields docstrings in source order (module, then classes/functions depth first)."""
    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        doc = ast.get_docstring(node, clean=False)
        if doc:
            yield doc
    for child in ast.iter_child_nodes(node):
        yield from _ast_docstrings(child)


# --- writing ------------------------------------------------------------------------------


def write_documents(
    documents: Iterable[list[str]], out_dir: str | os.PathLike, *, prefix: str, num_files: int
) -> dict:
    """Writes documents in BERT text format, streamed round-robin over `num_files` files.

    Format: one sentence per line, a blank line after every document (the last included:
    google-research/bert's reader starts a new document only at a blank line, even across
    files), UTF-8. Files are written under a temporary name and renamed at the end, so a killed
    run never leaves complete-looking partial files; stale files with the same prefix go.
    Returns {paths, documents, sentences, words}.
    """
    if num_files < 1:
        raise ValueError(f"num_files must be at least 1, got {num_files}")
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(f"{prefix}-*.txt"):
        stale.unlink()
    paths = [out_dir / f"{prefix}-{k:05d}-of-{num_files:05d}.txt" for k in range(num_files)]
    stats = {"paths": [str(p) for p in paths], "documents": 0, "sentences": 0, "words": 0}
    with contextlib.ExitStack() as stack:
        files = [
            stack.enter_context(open(p.with_suffix(".tmp"), "w", encoding="utf-8")) for p in paths
        ]
        for i, doc in enumerate(documents):
            files[i % num_files].write("\n".join(doc) + "\n\n")
            stats["documents"] += 1
            stats["sentences"] += len(doc)
            stats["words"] += sum(len(s.split()) for s in doc)
    for path in paths:
        path.with_suffix(".tmp").replace(path)
    return stats


def _unique_documents(texts: Iterable[str], max_documents: int | None) -> Iterator[list[str]]:
    """Cleans texts into documents, dropping empty and duplicate ones, up to max_documents."""
    seen: set[tuple[str, ...]] = set()
    count = 0
    for text in texts:
        if max_documents is not None and count >= max_documents:
            return
        sentences = document_sentences(text)
        key = tuple(sentences)
        if sentences and key not in seen:
            seen.add(key)
            count += 1
            yield sentences


def build_demo_corpus(
    out_dir: str | os.PathLike,
    max_documents: int | None = None,
    *,
    packages: Sequence[str] = (),
    num_files: int = 4,
    shuffle_seed: int | None = 0,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Writes the offline demo corpus to out_dir; returns {paths, documents, sentences, words}.

    Sources, in this order, each docstring or topic one document:
      1. `pydoc_data.topics.topics`: the language reference chapters `help()` shows.
      2. The docstrings of the public standard-library modules in `sys.stdlib_module_names`
         and their submodules (module, class, method, property, function), taken from the
         imported objects so that C modules (`str`, `math`, `os`...) count too.
      3. Optionally, the docstrings of installed packages, parsed from source with `ast`.
    Text is read at run time, never stored in the repository, and cleaned by
    document_sentences(); exact duplicate documents are dropped. The documents are then
    written in a seeded random order: `bertjax prepare --held-out` holds out the *first*
    documents of its input, and in source order those would be the long language-reference
    chapters while training sees docstrings, an eval split unlike the training text. The
    output is a pure function of the Python (and package) versions. With Python 3.11.7,
    sources 1+2 give ~3,800 documents and ~240,000 words; adding DEPENDENCY_PACKAGES gives
    ~12,000 and ~950,000.

    Args:
      out_dir: directory for the text files (`stdlib-00000-of-00004.txt`...; documents are
        dealt round-robin over them).
      max_documents: stop after this many documents (quick runs and tests).
      packages: installed packages whose docstrings follow the stdlib's, e.g.
        DEPENDENCY_PACKAGES; they are read from source, never imported.
      num_files: number of output files (e.g. one per `bertjax prepare` worker).
      shuffle_seed: seed of the document order; None keeps the source order.
      log: called with one progress line per source.
    """
    log = log or (lambda message: None)
    counts = {}

    def counted(source: str, texts: Iterable[str]) -> Iterator[str]:
        counts[source] = 0
        log(f"reading {source}")
        for text in texts:
            counts[source] += 1
            yield text

    def texts() -> Iterator[str]:
        yield from counted("pydoc topics", pydoc_topics())
        yield from counted("stdlib docstrings", stdlib_docstrings())
        for package in packages:
            yield from counted(f"{package} docstrings", package_docstrings(package))

    documents = _unique_documents(texts(), max_documents)
    if shuffle_seed is not None:
        # All documents in memory: ~12,000 of them (~6 MB) with every package, so cheap.
        documents = list(documents)
        random.Random(shuffle_seed).shuffle(documents)
    stats = write_documents(documents, out_dir, prefix="stdlib", num_files=num_files)
    stats["texts_read"] = counts
    stats["python"] = sys.version.split()[0]
    log(
        f"wrote {stats['documents']} documents, {stats['sentences']} sentences, "
        f"{stats['words']} words to {out_dir}"
    )
    return stats


if __name__ == "__main__":
    # `python -m bertjax.data.demo_corpus OUT_DIR [PACKAGE...] [--max-documents N]
    # [--num-files K]`: build it and print the counts as JSON on the last line (what `bertjax
    # demo` reads). A fresh process reads the docstrings as the modules define them: in a
    # long-lived one (a test session), imported libraries and earlier code may have replaced
    # stdlib objects (and their docstrings), so the corpus would depend on what ran before.
    import argparse
    import json

    parser = argparse.ArgumentParser(description="Build the offline demo corpus.")
    parser.add_argument("out_dir")
    parser.add_argument("packages", nargs="*", help="also read these installed packages' docs")
    parser.add_argument("--max-documents", type=int, default=None)
    parser.add_argument("--num-files", type=int, default=4)
    cli_args = parser.parse_args()
    result = build_demo_corpus(
        cli_args.out_dir,
        cli_args.max_documents,
        packages=cli_args.packages,
        num_files=cli_args.num_files,
    )
    print(json.dumps({k: v for k, v in result.items() if k != "paths"}))
