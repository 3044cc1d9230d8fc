"""The array-shard dataset format: writer, reader (`open_dataset`), manifest and checksums.

A dataset directory holds fixed-shape `.npy` arrays per shard (see docs/ARCHITECTURE.md):
`input_ids [n, L]` (uint16, or int32 for vocabularies above 65,536 ids) padded with the pad
id, `length [n]` (int16: real tokens incl. [CLS]/[SEP]), `b_start [n]` (int16: first
position of segment B, == length when there is no B) and `next_sentence_label [n]` (uint8,
1 = B is a random next sentence). Every file is written under a temporary name and renamed;
`manifest.json` is written last (temp file + `os.replace`), so a directory without a manifest
is never mistaken for a complete dataset.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from bertjax import outputs
from bertjax.data import packing
from bertjax.data.dataset_dir import MANIFEST, write_json_atomic
from bertjax.data.instances import pack_instances
from bertjax.data.integrity import check_token_ids, file_sha256, verify_files
from bertjax.errors import UserError

SCHEMA_VERSION = 1  # one instance per row; 2: packed rows (a `layout` in the manifest)
SCHEMA_VERSIONS = (1, 2)
ARRAYS = ("input_ids", "length", "b_start", "next_sentence_label")
DEFAULT_SHARD_SIZE = 65_536  # instances per shard: 16 MB of input_ids at L=128 (uint16)
_SMALL_DTYPES = {"length": np.int16, "b_start": np.int16, "next_sentence_label": np.uint8}


def ids_dtype(vocab_size: int) -> np.dtype:
    """The smallest dtype that holds every token id of a vocabulary of this size."""
    return np.dtype(np.uint16 if vocab_size <= 65_536 else np.int32)


def shard_file(shard_name: str, array: str) -> str:
    """File name of one array of one shard, e.g. `shard-00000.input_ids.npy`."""
    return f"{shard_name}.{array}.npy"


def _write_npy_atomic(path: Path, array: np.ndarray) -> str:
    """Writes `array` to `path` via a temporary name; returns the file's sha256."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    digest = file_sha256(tmp)
    os.replace(tmp, path)
    return digest


class ShardWriter:
    """Buffers instance arrays and writes them as fixed-size shards, then the manifest.

    Use `add(arrays)` with dicts of `ARRAYS` (one row per instance, or packed rows of up to
    `max_sequences_per_row` sequences: packing.py), then `close(extra)`. Shard boundaries
    depend only on the order and number of rows added, so the same rows give byte-identical
    shards whatever produced them.
    """

    def __init__(
        self,
        out_dir,
        max_seq_len: int,
        vocab_size: int,
        shard_size: int = DEFAULT_SHARD_SIZE,
        max_sequences_per_row: int | None = None,
    ):
        self.out_dir = Path(out_dir)
        self.max_seq_len = max_seq_len
        self.dtype = ids_dtype(vocab_size)
        self.shard_size = shard_size
        self.shards: list[dict] = []
        self.num_instances = 0
        self._buf: list[dict[str, np.ndarray]] = []
        self._buffered = 0
        self.packed_k, self._counts = max_sequences_per_row, {"real_tokens": 0, "sequences": 0}

    @property
    def rows(self) -> int:
        """Rows added so far (written or still buffered)."""
        return self.num_instances + self._buffered

    def add(self, arrays: dict[str, np.ndarray]) -> None:
        """Appends rows; writes every shard that becomes full."""
        n = len(arrays["length"])
        if arrays["input_ids"].shape != (n, self.max_seq_len):
            raise ValueError(
                f"input_ids shape {arrays['input_ids'].shape} != ({n}, {self.max_seq_len})"
            )
        if n == 0:
            return
        self._buf.append(arrays)
        self._buffered += n
        while self._buffered >= self.shard_size:
            self._flush(self.shard_size)

    def _flush(self, n: int) -> None:
        merged = {k: np.concatenate([b[k] for b in self._buf]) for k in ARRAYS}
        head = {k: v[:n] for k, v in merged.items()}
        rest = {k: v[n:] for k, v in merged.items()}
        self._buf = [rest] if len(rest["length"]) else []
        self._buffered -= n
        name = f"shard-{len(self.shards):05d}"
        digests = {}
        for k in ARRAYS:
            dtype = self.dtype if k == "input_ids" else _SMALL_DTYPES[k]
            arr = np.ascontiguousarray(head[k], dtype=dtype)
            digests[k] = _write_npy_atomic(self.out_dir / shard_file(name, k), arr)
        self.shards.append({"name": name, "count": n, "sha256": digests})
        self.num_instances += n
        for k, v in packing.layout_counts(head["length"]).items():
            self._counts[k] += v

    def close(self, manifest_fields: dict) -> dict:
        """Writes the last partial shard, then the manifest (last, atomically). Returns it."""
        if self._buffered:
            self._flush(self._buffered)
        layout = self.packed_k and packing.layout_manifest(
            self.packed_k, self._counts, self.num_instances, self.max_seq_len
        )
        manifest = {
            "schema_version": 2 if layout else SCHEMA_VERSION,
            **({"layout": layout} if layout else {}),
            "format": "bertjax-instances",
            "max_seq_len": self.max_seq_len,
            "input_ids_dtype": self.dtype.name,
            "num_instances": self.num_instances,
            "shards": self.shards,
            **manifest_fields,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        write_json_atomic(self.out_dir / MANIFEST, manifest)
        return manifest


def tokenizer_manifest(tokenizer) -> dict:
    """The manifest's `tokenizer` entry: identity, special ids and vocab size."""
    return {
        "identity": tokenizer.identity,
        "special_ids": tokenizer.special_ids,
        "vocab_size": tokenizer.vocab_size,
    }


def copy_tokenizer(tokenizer, out_dir: Path) -> None:
    """Saves the tokenizer's files into `out_dir/tokenizer` (via a temporary directory)."""
    tmp = Path(out_dir) / ".tokenizer.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer.save(tmp)
    os.replace(tmp, Path(out_dir) / "tokenizer")


def write_dataset(
    out_dir,
    instances,
    tokenizer,
    max_seq_len: int,
    *,
    nsp: bool = True,
    seed: int | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    overwrite: bool = False,
    extra: dict | None = None,
    max_sequences_per_row: int | None = None,
) -> Path:
    """Writes a complete dataset directory (e.g. a tiny one for a test).

    Args:
      instances: an iterable of `(tokens_a, tokens_b, is_random_next)` (id lists without
        specials; an empty B makes a single-segment instance), or a dict of `ARRAYS`.
      max_sequences_per_row: K of packed `instances` arrays (packing.py), else None.
      tokenizer: a tokenizer object (see `bertjax.data.tokenizer`) or a path to load one.
    Returns:
      the directory, readable with `open_dataset`.
    """
    if not hasattr(tokenizer, "identity"):
        from bertjax.data.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(tokenizer)
    out_dir = Path(out_dir)
    outputs.check_folder(out_dir, outputs.DATASET, overwrite=overwrite, inputs=tokenizer.files)
    if not isinstance(instances, dict):
        instances = pack_instances(
            instances, max_seq_len, tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id
        )
    with outputs.replacing_folder(out_dir) as staging:
        copy_tokenizer(tokenizer, staging)
        writer = ShardWriter(
            staging, max_seq_len, tokenizer.vocab_size, shard_size, max_sequences_per_row
        )
        writer.add(instances)
        writer.close(
            {
                "tokenizer": tokenizer_manifest(tokenizer),
                "nsp": nsp,
                "seed": seed,
                "command": list(sys.argv),
                **(extra or {}),
            }
        )
    return out_dir


class Dataset:
    """Random access to a dataset directory's instances (memory-mapped shards)."""

    def __init__(self, path, verify_checksums: bool = True):
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        self.max_seq_len = int(self.manifest["max_seq_len"])
        tok = self.manifest["tokenizer"]
        self.vocab_size = int(tok["vocab_size"])
        self.special_ids = dict(tok["special_ids"])
        self.tokenizer_dir = self.path / "tokenizer"
        self.max_sequences_per_row = packing.sequences_per_row(self.manifest)  # None: unpacked
        self._arrays = [self._open_shard(s) for s in self.manifest["shards"]]
        if verify_checksums:
            files = []
            for s, arrays in zip(self.manifest["shards"], self._arrays):
                for k in ARRAYS:  # input_ids are also range-checked against the vocabulary
                    ids = arrays[k] if k == "input_ids" else None
                    files.append((self.path / shard_file(s["name"], k), s["sha256"][k], ids))
            verify_files(files, self.vocab_size)
        counts = np.array([s["count"] for s in self.manifest["shards"]], np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(counts)])
        self._len = int(self._offsets[-1])
        if self._len != self.manifest["num_instances"]:
            raise UserError(
                f"{self.path / MANIFEST}: shard counts add up to {self._len}, "
                f"not num_instances={self.manifest['num_instances']}"
            )
        self._positions = np.arange(self.max_seq_len, dtype=np.int32)

    def _open_shard(self, shard: dict) -> dict[str, np.ndarray]:
        arrays = {}
        ids_dtype_ = np.dtype(self.manifest["input_ids_dtype"])
        for k in ARRAYS:
            f = self.path / shard_file(shard["name"], k)
            if not f.exists():
                raise UserError(f"shard file {f} is missing (listed in {MANIFEST})")
            try:
                arr = np.load(f, mmap_mode="r", allow_pickle=False)
            except ValueError as e:  # numpy raises ValueError on truncated data or header
                raise UserError(f"shard file {f} is truncated or unreadable ({e})") from None
            per_row = self.max_seq_len if k == "input_ids" else self.max_sequences_per_row
            want_shape = (shard["count"], per_row) if per_row else (shard["count"],)
            want_dtype = ids_dtype_ if k == "input_ids" else np.dtype(_SMALL_DTYPES[k])
            if arr.shape != want_shape or arr.dtype != want_dtype:
                raise UserError(
                    f"shard file {f} holds {arr.dtype}{list(arr.shape)}, the "
                    f"manifest expects {want_dtype}{list(want_shape)}"
                )
            arrays[k] = arr
        return arrays

    @property
    def packed(self) -> bool:
        """True for packed rows (several sequences per row: packing.py)."""
        return self.max_sequences_per_row is not None

    @property
    def tokenizer_identity(self) -> dict | None:
        """The identity of the tokenizer that made this data (`integrity.check_same_tokenizer`)."""
        return self.manifest["tokenizer"].get("identity")

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        i = int(i)
        if not -self._len <= i < self._len:
            raise IndexError(f"index {i} out of range for a dataset of {self._len}")
        batch = self.get_batch(np.array([i % self._len]))
        return {k: v[0] for k, v in batch.items()}

    def get_raw(self, indices) -> dict[str, np.ndarray]:
        """The stored arrays (`ARRAYS`) of these instances, gathered across shards."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self._len):
            raise IndexError(f"indices outside [0, {self._len})")
        shard = np.searchsorted(self._offsets, idx, side="right") - 1
        out = {"input_ids": np.empty((idx.size, self.max_seq_len), np.int32)}
        shape = (idx.size, self.max_sequences_per_row) if self.packed else (idx.size,)
        for k in ARRAYS[1:]:  # [n, K] for packed rows
            out[k] = np.empty(shape, np.int32)
        for s in np.unique(shard):
            rows = np.nonzero(shard == s)[0]
            local = idx[rows] - self._offsets[s]
            for k in ARRAYS:
                out[k][rows] = self._arrays[s][k][local]
            name = shard_file(self.manifest["shards"][s]["name"], "input_ids")
            check_token_ids(out["input_ids"][rows], self.vocab_size, self.path / name, local)
        return out

    def get_batch(self, indices) -> dict[str, np.ndarray]:
        """`input_ids, input_mask, segment_ids` [n, L] and `next_sentence_labels` [n] (all
        int32; the original BERT's names, as in every batch up to the loss) for these indices,
        which may span shards."""
        raw = self.get_raw(indices)
        if self.packed:  # and attn_segment_ids, position_ids, next_sentence_* [n, K]
            return packing.batch_fields(raw, self.max_seq_len)
        pos = self._positions[None, :]
        attention = pos < raw["length"][:, None]
        token_type = (pos >= raw["b_start"][:, None]) & attention
        return {
            "input_ids": raw["input_ids"],
            "input_mask": attention.astype(np.int32),
            "segment_ids": token_type.astype(np.int32),
            "next_sentence_labels": raw["next_sentence_label"],
        }

    def load_tokenizer(self):
        """The tokenizer this dataset was made with (from its `tokenizer/` copy)."""
        from bertjax.data.tokenizer import load_tokenizer

        tok = load_tokenizer(self.tokenizer_dir)
        if tok.identity != self.manifest["tokenizer"]["identity"]:
            raise UserError(
                f"{self.tokenizer_dir} does not match the tokenizer identity in "
                f"{self.path / MANIFEST}"
            )
        return tok

    def __repr__(self) -> str:
        return f"Dataset({str(self.path)!r}, n={self._len}, max_seq_len={self.max_seq_len})"


def read_manifest(path) -> dict:
    """Reads and validates `path/manifest.json` (a complete dataset directory)."""
    path = Path(path)
    f = path / MANIFEST
    if not f.exists():
        hint = " (an interrupted prepare?)" if path.is_dir() else ""
        raise UserError(f"{path} is not a complete dataset: {f} is missing{hint}")
    try:
        manifest = json.loads(f.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{f} is not valid JSON ({e})") from None
    if manifest.get("schema_version") not in SCHEMA_VERSIONS:
        raise UserError(
            f"{f} has schema_version {manifest.get('schema_version')!r}; this "
            f"bertjax reads versions {SCHEMA_VERSIONS}"
        )
    for key in ("max_seq_len", "num_instances", "shards", "tokenizer", "input_ids_dtype"):
        if key not in manifest:
            raise UserError(f"{f} lacks the key {key!r}")
    return manifest


def open_dataset(path, verify_checksums: bool = True) -> Dataset:
    """Opens a dataset directory written by `bertjax prepare` (or `write_dataset`).

    Shapes, dtypes and file sizes are always checked, and so are the token ids of every
    batch read. `verify_checksums` also checks every file's sha256 against the manifest and
    every token id against the vocabulary size, once per file per process (reads all bytes:
    ~1 s per GB when cached, else disk speed; pass False for datasets too large for that).
    """
    return Dataset(path, verify_checksums=verify_checksums)
