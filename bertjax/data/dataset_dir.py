"""A dataset directory's housekeeping: refusing foreign files, removing what an interrupted run
left, and the atomic JSON write that makes `manifest.json` the mark of a complete dataset."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from bertjax.errors import UserError

MANIFEST = "manifest.json"


def write_json_atomic(path: Path, obj: dict) -> None:
    """Writes JSON to `path.tmp`, fsyncs, then renames: readers see all of it or nothing."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _is_ours(name: str) -> bool:
    """True for file names a dataset directory may hold (shards, temporaries, manifest...)."""
    ours = ("tokenizer", "eval", ".tokenizer.tmp")
    return name.startswith(("shard-", ".shard-", "manifest.json")) or name in ours


def prepare_output_dir(out_dir: Path, overwrite: bool) -> None:
    """Makes `out_dir` ready for a new dataset.

    Refuses a directory holding a complete dataset unless `overwrite`, and a directory with
    files that are not ours. Leftovers of an interrupted run (no manifest) are removed. The
    old manifest goes first so that a run killed while cleaning leaves nothing that reads
    as complete.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} exists and is not a directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    if (out_dir / MANIFEST).exists() and not overwrite:
        raise UserError(
            f"{out_dir} already holds a complete dataset ({MANIFEST}); "
            "pass --overwrite to replace it or choose another --out"
        )
    foreign = sorted(p.name for p in out_dir.iterdir() if not _is_ours(p.name))
    if foreign:
        raise UserError(
            f"{out_dir} holds files that are not part of a bertjax dataset "
            f"({', '.join(foreign[:3])}); choose an empty or new --out directory"
        )
    remove_partial(out_dir)


def remove_partial(out_dir: Path) -> None:
    """Deletes a dataset's files from `out_dir`, manifests first; leaves other files alone."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return
    for name in (MANIFEST, "eval/" + MANIFEST):
        (out_dir / name).unlink(missing_ok=True)
    for p in out_dir.iterdir():
        if not _is_ours(p.name):
            continue
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()
