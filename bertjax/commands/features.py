"""`bertjax features`: contextual embeddings of every token of a text file, as
google-research/bert's extract_features.py writes them.

    bertjax features --init MODEL --input lines.txt --out features.jsonl [--layers -1,-2,-3,-4]

Each input line is one sequence, or a pair `A ||| B` (segment A, then B); it is encoded
`[CLS] A [SEP] (B [SEP])`, cut to --max-seq-len as the original cuts it (a single text keeps
its first pieces; a pair loses pieces from the end of the longer text, one at a time). The
output has one JSON line per input line: {"linex_index": i, "features": [{"token": piece,
"layers": [{"index": -1, "values": [...]}, ...]}, ...]} (the original's keys, its "linex"
spelling included), the values of each chosen encoder layer's output (-1: the last; 0: the
first) rounded to 6 decimals. The file is read and written in batches (it may be larger than
memory), into a temporary sibling of --out renamed when complete.
"""

import dataclasses
import functools
import json
import os
import re
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from bertjax.errors import UserError

PAIR = re.compile(r"^(.*) \|\|\| (.*)$")  # the original's `text_a ||| text_b`
DEFAULT_LAYERS = "-1,-2,-3,-4"
DEFAULT_MAX_SEQ_LEN = 128
DECIMALS = 6  # the original rounds every value to 6 decimals
MIN_LENGTH = 16  # batches are padded to a power of two from here up to --max-seq-len
PROGRESS_SECONDS = 10.0


def register(subparsers) -> None:
    """Adds `features` to the `bertjax` command."""
    p = subparsers.add_parser(
        "features",
        help="per-token hidden states of a text file (extract_features.py's JSONL)",
        description="Write the outputs of chosen encoder layers for every token of every "
        "line of a text file (a line `A ||| B`: a sentence pair) as the JSONL of "
        "google-research/bert's extract_features.py, streamed in batches.",
    )
    p.add_argument(
        "--init",
        required=True,
        help="pretraining or fine-tuning workdir (newest checkpoint) or a HuggingFace "
        "BERT folder (any head; its encoder is read)",
    )
    p.add_argument("--init-step", type=int, default=None, help="checkpoint step of --init")
    p.add_argument(
        "--input", required=True, help="UTF-8 text, one sequence per line (`A ||| B`: a pair)"
    )
    p.add_argument("--out", required=True, help="the JSONL file to write")
    # `--layers -1,-2` as the original's flag is written: argparse takes a word starting with
    # "-" for an option unless it looks like a negative number, and a list of them does not.
    p._negative_number_matcher = re.compile(r"^-\d+(,-?\d+)*$|^-\d*\.\d+$")
    p.add_argument(
        "--layers",
        default=DEFAULT_LAYERS,
        help="encoder layers, comma-separated: -1 the last, 0 the first (default: "
        "the last four, the paper's feature-based NER input)",
    )
    p.add_argument(
        "--max-seq-len",
        type=int,
        default=None,
        help=f"pieces per sequence, [CLS] and [SEP]s included (default "
        f"{DEFAULT_MAX_SEQ_LEN}, the original's, or the model's "
        "max_position_embeddings if fewer)",
    )
    p.add_argument("--batch-size", type=int, default=32, help="lines per forward pass")
    p.add_argument(
        "--tokenizer",
        default=None,
        help="vocab.txt / sentencepiece model (default: the model's own)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=run)


@dataclasses.dataclass(frozen=True)
class Encoded:
    """One input line as the model reads it."""

    ids: list[int]  # [CLS] A [SEP] (B [SEP])
    segments: list[int]  # 0 up to the first [SEP], then 1


def parse_layers(text: str) -> tuple[int, ...]:
    """The layer indices of `--layers` (Python's: -1 the last, 0 the first)."""
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise UserError(
            f"--layers {text!r}: expected comma-separated integers such as {DEFAULT_LAYERS}"
        ) from None


def check_layers(layers: Sequence[int], num_layers: int) -> None:
    """A UserError unless every index names one of the model's `num_layers` encoder layers."""
    for index in layers:
        if not -num_layers <= index < num_layers:
            raise UserError(
                f"--layers {','.join(map(str, layers))}: the model has {num_layers} "
                f"encoder layers, so a layer index is between {-num_layers} and "
                f"{num_layers - 1}, not {index}"
            )


def truncate_pair(a: list, b: list, room: int) -> tuple[list, list]:
    """The original's _truncate_seq_pair: drop the last piece of the longer text (of `b` on a
    tie) until both fit in `room`."""
    a, b = list(a), list(b)
    while len(a) + len(b) > room:
        (a if len(a) > len(b) else b).pop()
    return a, b


def encode_line(line: str, tokenizer, max_seq_len: int) -> Encoded:
    """One input line (stripped, as the original strips it) as the model's ids and segments."""
    match = PAIR.match(line.strip())
    cls, sep = tokenizer.cls_id, tokenizer.sep_id
    if match is None:
        a = tokenizer.encode(line.strip())[: max_seq_len - 2]
        return Encoded([cls, *a, sep], [0] * (len(a) + 2))
    a, b = truncate_pair(tokenizer.encode(match.group(1)), tokenizer.encode(match.group(2)),
                         max_seq_len - 3)  # fmt: skip
    return Encoded([cls, *a, sep, *b, sep], [0] * (len(a) + 2) + [1] * (len(b) + 1))


def read_lines(path: Path) -> Iterator[str]:
    """The lines of `path`, split at "\\n" only (as the original's reader), read as they are
    needed; a UserError names the line of the first byte that is not UTF-8 text (or NUL)."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise UserError(
                    f"--input {path}, line {number}: not UTF-8 text ({e.reason} at "
                    f"byte {e.start}); give a text file, one sequence per "
                    "line"
                ) from None
            if "\x00" in line:
                raise UserError(
                    f"--input {path}, line {number}: holds a NUL byte, so it is not "
                    "a text file; give a text file, one sequence per line"
                )
            yield line


def padded_length(longest: int, max_seq_len: int) -> int:
    """The batch length for a batch whose longest row is `longest`: the next power of two from
    MIN_LENGTH, at most max_seq_len (a few compiled shapes; padding changes no value)."""
    length = MIN_LENGTH
    while length < longest:
        length *= 2
    return min(length, max_seq_len)


def batch_arrays(rows: Sequence[Encoded], batch_size: int, length: int) -> dict:
    """input_ids, segment_ids, input_mask [batch_size, length]; rows beyond len(rows) copy the
    first (their outputs are dropped)."""
    out = {k: np.zeros((batch_size, length), np.int32) for k in ("ids", "segments", "mask")}
    for i in range(batch_size):
        row = rows[i] if i < len(rows) else rows[0]
        n = len(row.ids)
        out["ids"][i, :n], out["segments"][i, :n], out["mask"][i, :n] = row.ids, row.segments, 1
    return out


@functools.cache
def layers_fn(cfg, layers: tuple[int, ...]):
    """(params, input_ids, segment_ids, input_mask) -> the outputs of the encoder layers
    `layers` [len(layers), B, L, H] float32, jitted (one compile per batch length)."""
    import jax
    import jax.numpy as jnp

    from bertjax.model import BertModel

    def chosen(params, input_ids, segment_ids, input_mask):
        _, _, hidden_NxBxLxH = BertModel(cfg).apply(
            {"params": params}, input_ids, segment_ids, input_mask, True, output_hidden_states=True
        )
        return jnp.stack([hidden_NxBxLxH[i] for i in layers]).astype(jnp.float32)

    return jax.jit(chosen)


def feature_line(index: int, tokens: Sequence[str], layers: Sequence[int], values_SxLxH) -> str:
    """One output line: the original's OrderedDicts, as json.dumps writes them."""
    features = []
    for t, token in enumerate(tokens):
        features.append({"token": token, "layers": [
            {"index": layer, "values": [round(x, DECIMALS) for x in values_SxLxH[j, t].tolist()]}
            for j, layer in enumerate(layers)]})  # fmt: skip
    return json.dumps({"linex_index": index, "features": features}) + "\n"


def extract(
    lines,
    out_file,
    tokenizer,
    params,
    cfg,
    layers: tuple[int, ...],
    max_seq_len: int,
    batch_size: int,
    progress=None,
) -> int:
    """Writes the feature line of each of `lines` (an iterable of str) to `out_file` (a text
    file object), `batch_size` lines per forward pass; returns the number of lines."""
    count, batch = 0, []

    def flush():
        nonlocal count
        length = padded_length(max(len(r.ids) for r in batch), max_seq_len)
        arrays = batch_arrays(batch, batch_size, length)
        values = np.asarray(
            layers_fn(cfg, layers)(params, arrays["ids"], arrays["segments"], arrays["mask"])
        )
        for i, row in enumerate(batch):
            tokens = [tokenizer.id_to_token(t) for t in row.ids]
            out_file.write(feature_line(count + i, tokens, layers, values[:, i]))
        count += len(batch)
        batch.clear()
        if progress:
            progress(count)

    for line in lines:
        batch.append(encode_line(line, tokenizer, max_seq_len))
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return count


def check_paths(input_path: Path, out: Path, overwrite: bool) -> None:
    """Refuses a missing --input, an --out that is a folder, the input itself, or (without
    `overwrite`) a file that exists: nothing is ever replaced silently."""
    if not input_path.is_file():
        raise UserError(f"--input {input_path} is not a file")
    if input_path.stat().st_size == 0:
        raise UserError(f"--input {input_path} is empty: give a text file, one sequence per line")
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give the JSONL file to write")
    if out.exists() and out.resolve() == input_path.resolve():
        raise UserError(f"--out {out} is the --input file")
    if out.exists() and not overwrite:
        raise UserError(f"--out {out} already exists: pass --overwrite to replace it")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: folder {out.parent} does not exist")


def load(init: str, init_step, tokenizer_path, max_seq_len: int | None):
    """(float32 BertConfig, `bert` parameters in its layout, tokenizer, max_seq_len) of
    --init (max_seq_len None: DEFAULT_MAX_SEQ_LEN or the model's positions if fewer)."""
    import jax

    from bertjax import encoder, model_config
    from bertjax.data import load_tokenizer
    from bertjax.train import checkpoint

    loaded = checkpoint.load_model(init, init_step, encoder_only=True)
    cfg = model_config.override(loaded.model_cfg, {"compute_dtype": "float32"})
    if tokenizer_path is None:
        if not loaded.tokenizer_files:
            raise UserError(f"--init {init} comes with no tokenizer files: pass --tokenizer PATH")
        tokenizer_path = Path(loaded.tokenizer_files[0]).parent
    tokenizer = load_tokenizer(tokenizer_path)
    if tokenizer.vocab_size > cfg.vocab_size:
        raise UserError(
            f"tokenizer {tokenizer_path} has {tokenizer.vocab_size} tokens, but the "
            f"model {loaded.source} embeds only {cfg.vocab_size}: pass the "
            "tokenizer it was trained with (--tokenizer)"
        )
    if max_seq_len is None:
        max_seq_len = min(DEFAULT_MAX_SEQ_LEN, cfg.max_position_embeddings)
    if not 3 <= max_seq_len <= cfg.max_position_embeddings:
        raise UserError(
            f"--max-seq-len {max_seq_len} is outside [3, the model's "
            f"max_position_embeddings={cfg.max_position_embeddings}]"
        )
    # On the device once: every batch's forward pass reads them.
    params = jax.device_put(encoder.to_layout(loaded.params["bert"], cfg.scan_layers))
    return cfg, params, tokenizer, max_seq_len


def run(args) -> int:
    """Entry point of `bertjax features`."""
    input_path, out = Path(args.input), Path(args.out)
    check_paths(input_path, out, args.overwrite)
    if args.batch_size < 1:
        raise UserError(f"--batch-size={args.batch_size}: must be a positive integer")
    layers = parse_layers(args.layers)
    cfg, params, tokenizer, max_seq_len = load(
        args.init, args.init_step, args.tokenizer, args.max_seq_len
    )
    check_layers(layers, cfg.num_hidden_layers)
    start, last = time.perf_counter(), [time.perf_counter()]

    def progress(count: int) -> None:
        now = time.perf_counter()
        if now - last[0] >= PROGRESS_SECONDS:
            last[0] = now
            print(
                f"bertjax features: {count:,} lines ({count / (now - start):.0f} lines/s)",
                file=sys.stderr,
                flush=True,
            )

    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            count = extract(
                read_lines(input_path),
                f,
                tokenizer,
                params,
                cfg,
                layers,
                max_seq_len,
                args.batch_size,
                progress,
            )
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    print(
        json.dumps(
            {
                "lines": count,
                "layers": list(layers),
                "hidden_size": cfg.hidden_size,
                "max_seq_len": max_seq_len,
                "out": str(out),
                "seconds": round(time.perf_counter() - start, 1),
            }
        )
    )
    return 0
