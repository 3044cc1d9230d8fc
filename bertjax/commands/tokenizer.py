"""`bertjax tokenizer train`: a WordPiece vocab.txt or a sentencepiece model from text files.

bertjax tokenizer train --input corpus.txt --kind wordpiece --vocab-size 30522 --out tok/

The same input files and flags give byte-identical files on every run (the vocab.txt order
is documented in bertjax/data/tokenizer_train.py). An --out that holds a tokenizer is
replaced only with --overwrite; nothing is written there unless training succeeds.
"""

from __future__ import annotations

import argparse
import sys
import time

from bertjax.errors import UserError


def register(subparsers) -> None:
    """Adds `tokenizer train` to the `bertjax` command."""
    p = subparsers.add_parser(
        "tokenizer",
        help="train a WordPiece or sentencepiece tokenizer",
        description=__doc__.splitlines()[0],
    )
    sub = p.add_subparsers(dest="tokenizer_command", metavar="train")
    sub.required = True
    t = sub.add_parser(
        "train",
        help="train a tokenizer on text files",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:]),
    )
    t.add_argument("--input", nargs="+", required=True, metavar="FILE", help="text files")
    t.add_argument("--kind", required=True, choices=("wordpiece", "sentencepiece"))
    t.add_argument("--vocab-size", type=int, required=True)
    t.add_argument("--out", required=True, metavar="DIR")
    t.add_argument(
        "--cased",
        action="store_true",
        help="keep case (default: lower-case for wordpiece, keep for sentencepiece)",
    )
    t.add_argument("--min-frequency", type=int, default=2, help="wordpiece: min pair count")
    t.add_argument("--overwrite", action="store_true", help="replace a tokenizer in --out")
    t.add_argument(
        "--errors",
        default="strict",
        choices=("strict", "replace"),
        help="bytes that are not UTF-8: stop (strict) or replace",
    )
    t.set_defaults(func=run)


def run(args) -> int:
    """`bertjax tokenizer train`."""
    from bertjax.data.corpus import TextCorpus
    from bertjax.data.tokenizer import train_sentencepiece, train_wordpiece

    if args.vocab_size < 10:
        raise UserError(f"--vocab-size {args.vocab_size} is too small (at least 10)")
    corpus = TextCorpus(args.input, "bert", args.errors)
    if corpus.total == 0:
        raise UserError("the --input files are empty")
    lines = _with_progress(corpus, (line for line, _ in corpus.lines() if line))
    if args.kind == "wordpiece":
        tok = train_wordpiece(
            lines,
            args.vocab_size,
            args.out,
            lowercase=not args.cased,
            min_frequency=args.min_frequency,
            overwrite=args.overwrite,
        )
    else:
        tok = train_sentencepiece(
            lines, args.vocab_size, args.out, lowercase=False, overwrite=args.overwrite
        )
    print(
        f"tokenizer train: {tok.kind} with {tok.vocab_size:,} tokens in {args.out} "
        f"(files: {', '.join(f.name for f in tok.files)})",
        file=sys.stderr,
    )
    return 0


def _with_progress(corpus, lines):
    """Yields `lines`; says on stderr how much input was read (every 1 s on a terminal,
    30 s in a log) and when all of it was."""
    start = last = time.monotonic()
    every = 1 if sys.stderr.isatty() else 30
    for line in lines:
        yield line
        if time.monotonic() - last >= every:
            last = time.monotonic()
            print(
                f"tokenizer train: read {corpus.done / 1e6:,.1f} of {corpus.total / 1e6:,.1f} MB"
                f" ({100 * corpus.done / corpus.total:.0f}%) in {last - start:.0f}s",
                file=sys.stderr,
                flush=True,
            )
    print(
        f"tokenizer train: read {corpus.total / 1e6:,.1f} MB in {time.monotonic() - start:.0f}s,"
        " training",
        file=sys.stderr,
        flush=True,
    )
