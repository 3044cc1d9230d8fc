"""`bertjax prepare`: text -> tokenizer -> BERT sentence-pair instances -> array shards.

    bertjax prepare --input wiki.txt --tokenizer vocab.txt --out data/wiki128 \\
        --max-seq-len 128 --workers 8 --held-out 10000
    # many machines: part i of n, then one merge
    bertjax prepare --input ... --out parts/p$i --shard-index $i --num-shards $n
    bertjax prepare merge parts/p* --out data/wiki128

The output is the same for any --workers, and the merge of all --num-shards parts is the
same (byte-identical shards) as a one-shot run: see bertjax/data/prepare_engine.py.
"""

from __future__ import annotations

import argparse
import sys

from bertjax.data import merge, shards
from bertjax.data.prepare_engine import InstanceOptions, prepare_dataset
from bertjax.errors import UserError


def register(subparsers) -> None:
    """Adds `prepare` (and `prepare merge`) to the `bertjax` command."""
    p = subparsers.add_parser(
        "prepare",
        help="text -> BERT sentence-pair instances in numpy shards",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:]),
    )
    _add_input_flags(p)
    _add_instance_flags(p)
    p.add_argument("--overwrite", action="store_true", help="replace a complete dataset")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.set_defaults(func=run)
    _add_merge(p)


def _add_input_flags(p) -> None:
    """Where the text comes from and how it is tokenized."""
    src = p.add_argument_group("input (one of --input or --hf-dataset)")
    src.add_argument("--input", nargs="+", metavar="FILE", help="text files")
    src.add_argument(
        "--input-format",
        default="bert",
        choices=("bert", "docs-lines", "docs-blocks"),
        help="bert: a sentence per line, blank line between documents; "
        "docs-lines: a document per line; docs-blocks: a document per "
        "blank-line block (both split into sentences by a simple regex)",
    )
    src.add_argument(
        "--errors",
        default="strict",
        choices=("strict", "replace"),
        help="bytes that are not UTF-8: stop (strict) or replace and count",
    )
    src.add_argument(
        "--hf-dataset",
        metavar="NAME[:CONFIG]",
        help="a `datasets` dataset, or a local .parquet/.json/.jsonl/.csv/.txt",
    )
    src.add_argument("--split", default="train", help="with --hf-dataset (default train)")
    src.add_argument("--text-column", default="text", help="with --hf-dataset (default text)")
    src.add_argument("--data-files", nargs="+", help="with --hf-dataset: data_files")
    p.add_argument(
        "--tokenizer",
        metavar="PATH",
        help="vocab.txt, sentencepiece .model, or a directory holding one",
    )
    p.add_argument(
        "--cased",
        action="store_true",
        help="do not lower-case (default: the tokenizer's do_lower_case, else "
        "uncased for WordPiece)",
    )


def _add_instance_flags(p) -> None:
    """Where the dataset goes and how its instances are made (create_pretraining_data's)."""
    p.add_argument("--out", metavar="DIR", help="output dataset directory")
    p.add_argument("--max-seq-len", type=int, default=128)
    p.add_argument("--short-seq-prob", type=float, default=0.1)
    p.add_argument(
        "--dupe-factor",
        type=int,
        default=1,
        help="passes over the corpus (default 1: masking is dynamic, done later)",
    )
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument(
        "--no-nsp",
        action="store_true",
        help="no next-sentence pairs: contiguous full-length single segments",
    )
    p.add_argument("--workers", type=int, default=1, help="worker processes")
    p.add_argument("--shard-index", type=int, default=0, help="this machine's part")
    p.add_argument("--num-shards", type=int, default=1, help="number of parts (machines)")
    p.add_argument(
        "--held-out",
        type=int,
        default=0,
        metavar="N",
        help="N instances from held-out documents into DIR/eval: the first documents of the "
        "input, so shuffle documents whose order is not random (sorted by topic or source); "
        "with --pack, N sequences (the same ones as without), packed into fewer rows",
    )
    p.add_argument(
        "--block-docs",
        type=int,
        default=1000,
        help="documents per block (the random next sentence is drawn in-block)",
    )
    p.add_argument(
        "--shard-size", type=int, default=shards.DEFAULT_SHARD_SIZE, help="instances per shard file"
    )
    p.add_argument(
        "--pack",
        action="store_true",
        help="packed rows: several instances per row of --max-seq-len (best fit within each "
        "block), each with its own [CLS] A [SEP] B [SEP] and NSP label; no padding waste",
    )
    p.add_argument(
        "--max-sequences-per-row",
        type=int,
        default=3,
        metavar="K",
        help="with --pack: at most K sequences in a row (default 3, as Graphcore's packing)",
    )


def _add_merge(p) -> None:
    """`bertjax prepare merge`."""
    sub = p.add_subparsers(dest="prepare_command", metavar="merge", title="subcommand")
    m = sub.add_parser(
        "merge",
        help="bertjax prepare merge PART_DIR... --out DIR: join the parts of a --num-shards run",
        description="Merges the parts of a --num-shards run into one dataset, identical to "
        "what a one-shot run would have written.",
    )
    m.add_argument("parts", nargs="+", metavar="PART_DIR", help="every part, 0..n-1, once")
    m.add_argument("--out", required=True, metavar="DIR", help="merged dataset directory")
    m.add_argument("--overwrite", action="store_true", help="replace a complete dataset")
    m.set_defaults(func=run_merge)


def open_corpus(args):
    """The document stream the arguments name (text files or a `datasets` dataset)."""
    from bertjax.data.corpus import HFCorpus, TextCorpus

    if bool(args.input) == bool(args.hf_dataset):
        raise UserError("give exactly one of --input FILE... or --hf-dataset NAME")
    if args.input:
        return TextCorpus(args.input, args.input_format, args.errors)
    return HFCorpus(args.hf_dataset, args.split, args.text_column, args.data_files)


def run(args) -> int:
    """`bertjax prepare`."""
    from bertjax.data.tokenizer import load_tokenizer

    if not args.tokenizer or not args.out:
        raise UserError("--tokenizer PATH and --out DIR are required")
    opts = InstanceOptions(
        max_seq_len=args.max_seq_len,
        short_seq_prob=args.short_seq_prob,
        dupe_factor=args.dupe_factor,
        seed=args.seed,
        nsp=not args.no_nsp,
        block_docs=args.block_docs,
        shard_size=args.shard_size,
        pack=args.pack,
        max_sequences_per_row=args.max_sequences_per_row,
    )
    opts.validate()  # before reading anything
    tokenizer = load_tokenizer(args.tokenizer, lowercase=False if args.cased else None)
    corpus = open_corpus(args)
    source = (
        {"inputs": [str(p) for p in args.input], "input_format": args.input_format}
        if args.input
        else {"hf_dataset": args.hf_dataset, "split": args.split, "text_column": args.text_column}
    )
    manifest = prepare_dataset(
        corpus,
        tokenizer,
        args.out,
        opts,
        workers=args.workers,
        shard_index=args.shard_index,
        num_shards=args.num_shards,
        held_out=args.held_out,
        overwrite=args.overwrite,
        progress=not args.quiet,
        extra={"source": source},
    )
    ev = f", eval {args.held_out:,} in {args.out}/eval" if manifest.get("eval") else ""
    print(
        f"prepare: wrote {manifest['num_instances']:,} instances in "
        f"{len(manifest['shards'])} shard(s) to {args.out}{ev}",
        file=sys.stderr,
    )
    if manifest.get("layout"):
        lay = manifest["layout"]
        print(
            f"prepare: packed {lay['sequences']:,} sequences into {lay['rows']:,} rows; real "
            f"tokens / capacity {lay['efficiency_unpacked']:.1%} unpacked, "
            f"{lay['efficiency_packed']:.1%} packed",
            file=sys.stderr,
        )
    return 0


def run_merge(args) -> int:
    """`bertjax prepare merge`."""
    manifest = merge.merge_parts(args.parts, args.out, args.overwrite)
    print(
        f"prepare merge: wrote {manifest['num_instances']:,} instances in "
        f"{len(manifest['shards'])} shard(s) to {args.out}",
        file=sys.stderr,
    )
    return 0
