"""A dataset directory's manifest: the atomic JSON write that makes `manifest.json` the mark of a
complete dataset (where a dataset may be written is bertjax/outputs.py's rule)."""

from __future__ import annotations

import json
import os
from pathlib import Path

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
