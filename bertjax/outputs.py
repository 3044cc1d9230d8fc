"""The one rule of every command that writes: what a folder holds (a dataset, a training run, a
tokenizer, a HuggingFace export, a demo), whether an output may go there (`check_folder`), and
writing it beside its target so that it replaces the target only when complete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from bertjax import interrupt
from bertjax.errors import UserError

DATASET, RUN, TOKENIZER, EXPORT, DEMO = "dataset", "run", "tokenizer", "export", "demo"
KIND_NAMES = {
    DATASET: "a bertjax dataset",
    RUN: "a training run",
    TOKENIZER: "a tokenizer",
    EXPORT: "a HuggingFace model folder",
    DEMO: "a bertjax demo folder",
}
# The files a trained tokenizer is saved as (data/tokenizer.py: vocab or model, and its config).
TOKENIZER_FILES = ("tokenizer_config.json", "spm.vocab", "vocab.txt", "spm.model")
# What bertjax writes into a run's folder: anything at these names belongs to the run.
RUN_ENTRIES = (
    "checkpoints",
    "checkpoints_damaged",
    "metrics.jsonl",
    "config.json",
    "tb",
    "profile",
    "jax_cache",
    "eval_results.json",
    "predictions",
    "hf_model",
)
DEMO_ENTRIES = ("corpus", "tokenizer", "data", "run", "hf_export", "downstream", "metrics.png")
_DATASET_NAMES = ("manifest.json", "tokenizer", "eval", ".tokenizer.tmp")
_STAGING = re.compile(r"\..+\.(partial|replaced)-\d+(\.\w+)?")  # _staging_name's, left by a kill


@dataclasses.dataclass(frozen=True)
class Holding:
    """What a path holds: `kind` (one of KIND_NAMES, or None for anything else) and words
    for a message; `complete` is False for what an interrupted write left (no manifest)."""

    kind: str | None
    words: str
    complete: bool = True


def _is_dataset_name(name: str) -> bool:
    return name.startswith(("shard-", ".shard-")) or name in _DATASET_NAMES


def _is_run(path: Path, names: list[str]) -> bool:
    checkpoints = path / "checkpoints"
    with contextlib.suppress(OSError):
        if checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir()):
            return True
    if "metrics.jsonl" in names or "checkpoints_damaged" in names:
        return True
    return "config.json" in names and "train" in _read_json(path / "config.json")


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _listed(names: list[str]) -> str:
    return ", ".join(names[:4]) + (" ..." if len(names) > 4 else "")


def holding(path) -> Holding | None:
    """What `path` holds; None when it does not exist or is an empty folder."""
    path = Path(path)
    if not path.exists():
        return None
    if not path.is_dir():
        return Holding(None, "a file")
    try:
        names = sorted(p.name for p in path.iterdir() if not _STAGING.fullmatch(p.name))
    except OSError as e:
        return Holding(None, f"a folder that cannot be read ({e.strerror})")
    if not names:
        return None
    if _is_run(path, names):
        run_files = [n for n in names if n in RUN_ENTRIES]
        return Holding(RUN, f"a training run ({_listed(run_files)})")
    if (path / "corpus" / "DONE.json").is_file() and set(names) <= set(DEMO_ENTRIES):
        return Holding(DEMO, f"a bertjax demo folder ({_listed(names)})")
    if all(_is_dataset_name(n) for n in names):
        shards = sum(n.startswith("shard-") for n in names)
        if "manifest.json" in names:
            return Holding(DATASET, f"a bertjax dataset (manifest.json, {shards} shard files)")
        if any(n.startswith(("shard-", ".shard-")) for n in names):
            return Holding(DATASET, "an incomplete bertjax dataset (no manifest.json)", False)
    if "config.json" in names and any(n.endswith((".safetensors", ".bin")) for n in names):
        return Holding(EXPORT, f"a HuggingFace model folder ({_listed(names)})")
    if set(names) <= set(TOKENIZER_FILES) and {"vocab.txt", "spm.model"} & set(names):
        return Holding(TOKENIZER, f"a tokenizer ({_listed(names)})")
    return Holding(None, f"files bertjax did not write ({_listed(names)})")


def enclosing(path) -> tuple[Path, Holding] | None:
    """The folder above `path` that `path` is part of, with what it holds: a dataset, an
    export or a tokenizer, or a run when `path` is one of the run's own entries (its
    checkpoints, metrics, ...); None when `path` is part of none. (A demo folder's parts are
    outputs of their own kinds, which the demo replaces.)"""
    child = Path(path).absolute()
    for parent in child.parents:
        found = holding(parent)
        if found is not None and (
            found.kind in (DATASET, EXPORT, TOKENIZER)
            or (found.kind == RUN and child.name in RUN_ENTRIES)
        ):
            return parent, found
        child = parent
    return None


def _check_place(out: Path, inputs: Iterable, flag: str, what: str) -> None:
    """Refuses an `out` that is or holds one of the command's inputs, or that is part of
    something else (`enclosing`)."""
    target = out.resolve()
    for given in inputs:
        source = Path(given).resolve()
        if source == target or target in source.parents:
            raise UserError(
                f"{flag} {out} holds this command's input {given}: write the "
                "output to another folder"
            )
    part_of = enclosing(out)
    if part_of is not None:
        raise UserError(
            f"{flag} {out} is inside {part_of[0]}, which holds {part_of[1].words}: "
            f"choose a {what} outside it"
        )


def check_folder(
    out, kind: str, *, overwrite: bool, inputs: Iterable = (), flag: str = "--out"
) -> None:
    """Raises UserError unless an output of `kind` may be written to the folder `out`:
    checked before any work, so a refusal changes nothing.

    An output goes to a folder that is new or empty, or, with `overwrite`, one that holds an
    output of the same kind. Never to one holding anything else, never inside a dataset, an
    export or a tokenizer, never over a run's own files, never over the command's input. No
    command deletes what it did not write.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{flag} {out} exists and is not a directory")
    _check_place(out, inputs, flag, "folder")
    found = holding(out)
    if found is None or (found.kind == kind and (overwrite or not found.complete)):
        return
    if found.kind == kind:
        raise UserError(
            f"{flag} {out} already holds {found.words}: pass --overwrite to "
            "replace it, or choose another folder"
        )
    raise UserError(
        f"{flag} {out} holds {found.words}, not {KIND_NAMES[kind]}; nothing "
        "replaces that: choose another folder"
    )


def check_new_folder(out, *, inputs: Iterable = (), flag: str = "--workdir") -> None:
    """Raises UserError unless `out` is a new or empty folder, outside anything bertjax wrote:
    for commands that fill a folder of their own and replace nothing (fine-tuning, the
    benchmarks)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{flag} {out} exists and is not a directory")
    _check_place(out, inputs, flag, "folder")
    found = holding(out)
    if found is not None:
        raise UserError(f"{flag} {out} already holds {found.words}: give a new or empty folder")


def check_file(out, *, overwrite: bool, inputs: Iterable = (), flag: str = "--out") -> None:
    """Raises UserError unless the file `out` may be written: not a folder, not part of a
    dataset, export or tokenizer, not one of a run's own files, and (without
    `overwrite`) not an existing file."""
    out = Path(out)
    if out.is_dir():
        raise UserError(f"{flag} {out} is a folder: name the file to write")
    _check_place(out, inputs, flag, "path")
    if out.exists() and not overwrite:
        raise UserError(
            f"{flag} {out} already exists: pass --overwrite to replace it, or choose another name"
        )


def _staging_name(out: Path, role: str) -> Path:
    # Hidden, beside the target (one file system: the final move is a rename), and unique to
    # this process: two commands never share one.
    return out.with_name(f".{out.name}.{role}-{os.getpid()}{out.suffix}")


@contextlib.contextmanager
def replacing_folder(out) -> Iterator[Path]:
    """Yields an empty folder beside `out` to build the output in. When the block ends
    without an error or a pending Ctrl-C, it takes `out`'s place (an old `out` is moved aside,
    the new one renamed in, the old one deleted); otherwise it is deleted and `out` stays as
    it was."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = _staging_name(out, "partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
        interrupt.check()
        _swap(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _swap(staging: Path, out: Path) -> None:
    old = _staging_name(out, "replaced")
    with interrupt.deferred():  # the two renames are not split by a Ctrl-C
        if out.exists():
            os.rename(out, old)
        try:
            os.rename(staging, out)
        except BaseException:
            if old.exists():
                os.rename(old, out)
            raise
    shutil.rmtree(old, ignore_errors=True)
    interrupt.check()


@contextlib.contextmanager
def replacing_file(out) -> Iterator[Path]:
    """Yields a path beside `out` (same suffix) to write the file to; it replaces `out` in one
    rename when the block ends without an error or a pending Ctrl-C, else it is deleted."""
    out = Path(out)
    staging = _staging_name(out, "partial")
    try:
        yield staging
        interrupt.check()
        os.replace(staging, out)
    finally:
        staging.unlink(missing_ok=True)


def write_file(out, data: bytes | str) -> None:
    """Writes `data` to `out` whole or not at all (a temporary file renamed over it)."""
    with replacing_file(out) as staging:
        if isinstance(data, str):
            staging.write_text(data, encoding="utf-8")
        else:
            staging.write_bytes(data)
