"""Merging the parts of a `bertjax prepare --num-shards n` run into one dataset, block by block
in global block order: byte-identical to a one-shot run (prepare_engine.py)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from bertjax import outputs
from bertjax.data import shards
from bertjax.errors import UserError

# Settings that must agree between parts for a merge to mean anything.
_MERGE_KEYS = (
    "max_seq_len",
    "short_seq_prob",
    "dupe_factor",
    "seed",
    "nsp",
    "block_docs",
    "shard_size",
    "held_out",
    "pack",
    "max_sequences_per_row",
)


def merge_parts(part_dirs, out_dir, overwrite: bool = False) -> dict:
    """Merges the parts of a `--num-shards n` run into one dataset; returns its manifest.

    Checks that the parts come from the same settings and tokenizer, and are exactly parts
    0..n-1 once each; verifies their checksums; writes blocks in global block order.
    """
    parts = [shards.open_dataset(d, verify_checksums=True) for d in part_dirs]
    first = parts[0].manifest
    for ds in parts:
        m = ds.manifest
        if not m.get("part"):
            raise UserError(
                f"{ds.path} is not a part of a --num-shards run (no 'part' in its manifest)"
            )
        for key in _MERGE_KEYS:
            if m["settings"].get(key) != first["settings"].get(key):
                raise UserError(
                    f"{ds.path} was prepared with {key}={m['settings'].get(key)!r}"
                    f" but {parts[0].path} with {first['settings'].get(key)!r}"
                )
        if m["tokenizer"]["identity"] != first["tokenizer"]["identity"]:
            raise UserError(f"{ds.path} and {parts[0].path} use different tokenizers")
    n = first["part"]["count"]
    indices = sorted(ds.manifest["part"]["index"] for ds in parts)
    if indices != list(range(n)) or any(ds.manifest["part"]["count"] != n for ds in parts):
        raise UserError(
            f"merge needs parts 0..{n - 1} of one {n}-part run exactly once; got indices {indices}"
        )
    out_dir = Path(out_dir)
    outputs.check_folder(
        out_dir, outputs.DATASET, overwrite=overwrite, inputs=[ds.path for ds in parts]
    )
    with outputs.replacing_folder(out_dir) as staging:  # out_dir changes only when complete
        return _merge(parts, staging)


def _merge(parts, out_dir: Path) -> dict:
    first = parts[0].manifest
    tok = parts[0].load_tokenizer()
    shards.copy_tokenizer(tok, out_dir)
    spans = []  # (global block index, part, first row, rows)
    for ds in parts:
        row = 0
        for b, count in ds.manifest["blocks"]:
            spans.append((b, ds, row, count))
            row += count
    spans.sort(key=lambda s: s[0])
    writer = shards.ShardWriter(
        out_dir,
        first["max_seq_len"],
        first["tokenizer"]["vocab_size"],
        first["settings"]["shard_size"],
        parts[0].max_sequences_per_row,
    )
    for _, ds, start, count in spans:
        writer.add(ds.get_raw(range(start, start + count)))
    part0 = next(ds for ds in parts if ds.manifest["part"]["index"] == 0)
    if part0.manifest.get("eval"):
        shards.open_dataset(part0.path / "eval", verify_checksums=True)
        shutil.copytree(part0.path / "eval", out_dir / "eval")
    stats = {
        k: sum(ds.manifest["stats"][k] for ds in parts) for k in ("tokens", "utf8_replacements")
    }
    stats["documents"] = first["stats"]["documents"]  # every part reads all documents
    fields = {
        k: first[k]
        for k in ("tokenizer", "nsp", "seed", "settings", "eval_blocks", "split", "source")
        if k in first
    }
    return writer.close(
        fields
        | {
            "command": list(sys.argv),
            "part": None,
            "stats": stats,
            "eval": part0.manifest.get("eval"),
            "blocks": [[b, count] for b, _, _, count in spans],
            "merged_from": [str(ds.path) for ds in parts],
        }
    )
