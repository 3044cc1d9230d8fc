"""Is a dataset what its manifest says and what the run needs? Checksums, token ids, tokenizers.

A shard file is hashed (and its token ids range-checked) once per process: the result is
remembered under the file's path, size, modification time and inode, so opening the same
files again in one process is free, while a file replaced or rewritten since is checked
again. Hashing runs on several threads (hashlib releases the GIL); sha256 is ~0.9 GB/s
per core here, so expect ~1 s per GB and core when the files are cached, disk speed if not.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
from pathlib import Path

import numpy as np

from bertjax.errors import UserError

_VERIFIED: set[tuple] = set()  # (path, size, mtime_ns, inode, expected sha256, vocab size)


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    """The sha256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_files(files: list[tuple], vocab_size: int) -> None:
    """`verify_file` for each (path, expected sha256, ids or None) of a dataset.

    Several files at a time (hashlib releases the GIL while hashing); a damaged file is
    reported as the first damaged one in `files`' order would be.
    """
    workers = min(len(files), os.cpu_count() or 1, 8)
    pool = concurrent.futures.ThreadPoolExecutor(max(workers, 1), "bertjax-verify")
    try:
        for _ in pool.map(lambda file: verify_file(*file, vocab_size), files):
            pass
    finally:
        pool.shutdown(cancel_futures=True)


def verify_file(path: Path, expected_sha256: str, ids, vocab_size: int) -> None:
    """Raises UserError unless the file's sha256 is `expected_sha256` and every token id in
    `ids` (the file's memory-mapped input_ids; None for other arrays) is in [0, vocab_size).

    Done once per process for unchanged files (see the module docstring).
    """
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns, st.st_ino, expected_sha256)
    key += (vocab_size if ids is not None else None,)
    if key in _VERIFIED:
        return
    digest = file_sha256(path)
    if digest != expected_sha256:
        raise UserError(
            f"shard file {path} is corrupted: sha256 {digest} does not match the manifest's "
            f"{expected_sha256}; copy the file again or rerun `bertjax prepare`"
        )
    if ids is not None:
        check_token_ids(ids, vocab_size, path)
    _VERIFIED.add(key)


def check_token_ids(ids: np.ndarray, vocab_size: int, path, row_numbers=None) -> None:
    """Raises UserError naming `path` if an id of `ids` [n, L] is outside [0, vocab_size).

    `row_numbers` [n]: where the rows of `ids` sit in that file (default: 0..n-1), for the
    message.
    """
    if ids.size == 0:
        return
    low = int(ids.min()) if ids.dtype.kind == "i" else 0  # uint16 ids cannot be negative
    if low >= 0 and int(ids.max()) < vocab_size:
        return
    rows = np.asarray(ids).reshape(len(ids), -1)
    bad = (rows < 0) | (rows >= vocab_size)
    row = int(np.argmax(bad.any(axis=1)))
    value = int(rows[row][bad[row]][0])
    if row_numbers is not None:
        row = int(row_numbers[row])
    raise UserError(
        f"shard file {path} holds token id {value} (row {row}), outside the "
        f"vocabulary of {vocab_size} ids its manifest records: the file is corrupt or was "
        f"written with another tokenizer; rerun `bertjax prepare`"
    )


def check_same_tokenizer(expected: dict | None, found: dict | None, what: str) -> None:
    """Raises UserError if tokenizer identity `found` (of `what`) is not `expected`.

    Identities are `tokenizer.identity` dicts, as every dataset manifest records them
    (`Dataset.tokenizer_identity`): kind, lower-casing and the vocabulary file's sha256.
    `what` names the side that differs, e.g. "--data=/d/eval" or "data.eval_dir=/d/eval".
    """
    if expected == found:
        return
    if expected is None or found is None:
        missing = "the run" if expected is None else what
        raise UserError(
            f"{what}: cannot tell whether it uses the run's tokenizer ({missing} records no "
            "tokenizer identity)"
        )
    diffs = [
        f"{key} {_short(found.get(key))} instead of {_short(expected.get(key))}"
        for key in sorted(set(expected) | set(found))
        if expected.get(key) != found.get(key)
    ]
    raise UserError(
        f"{what} was made with another tokenizer ({'; '.join(diffs)}): its token ids mean "
        "other words; use data prepared with the run's tokenizer"
    )


def _short(value) -> str:
    """A sha256 hex digest as its first 12 digits; anything else as it is."""
    if isinstance(value, str) and len(value) == 64:
        return value[:12]
    return str(value)
