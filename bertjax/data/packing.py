"""Packed rows: several sentence-pair instances in one row of max_seq_len, without padding waste.

`bertjax prepare --pack` puts the instances of each seeded block into rows by best-fit
decreasing (Krell et al. 2021, "Efficient Sequence Packing without Cross-contamination"), at
most K = `--max-sequences-per-row` per row (Graphcore used 3). A packed dataset (manifest
schema version 2, `layout.kind == "packed"`) stores per row:
  input_ids [n, L]               the sequences one after the other, then pad ids
  length [n, K]                  each sequence's tokens incl. its [CLS]/[SEP]s; 0 = empty slot
  b_start [n, K]                 first position of segment B, counted from the sequence start
  next_sentence_label [n, K]     each sequence's own NSP label (0 in empty slots)
Every sequence keeps its own `[CLS] A [SEP] B [SEP]`; the batch fields that make the model see
each sequence alone (attention segment ids, restarting positions, [CLS] positions) are derived
here from the lengths when a batch is read.
"""

from __future__ import annotations

import bisect

import numpy as np

from bertjax.errors import UserError

LAYOUT_KIND = "packed"


def max_sequences_allowed(max_seq_len: int, nsp: bool) -> int:
    """The most sequences a row of max_seq_len can hold: each needs [CLS] A [SEP] (B [SEP])."""
    return max_seq_len // (5 if nsp else 3)


def validate_max_sequences(k: int, max_seq_len: int, nsp: bool) -> None:
    """Raises UserError unless 1 <= k <= what rows of max_seq_len tokens can hold."""
    limit = max_sequences_allowed(max_seq_len, nsp)
    if not 1 <= k <= limit:
        raise UserError(
            f"--max-sequences-per-row {k} must be between 1 and {limit} (the shortest "
            f"sequence takes {5 if nsp else 3} of --max-seq-len {max_seq_len} positions)"
        )


def best_fit_decreasing(lengths, capacity: int, max_per_row: int) -> list[list[int]]:
    """Groups item indices into rows of total length <= capacity, at most max_per_row each.

    Items go longest first (ties in index order) into the open row with the least room that
    still holds them, else into a new row: deterministic, a function of `lengths` alone.
    Rows come out in the order they were opened, their items in the order they were placed.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-int(lengths[i]), i))
    rows: list[list[int]] = []
    room: list[int] = []
    open_rows: list[tuple[int, int]] = []  # sorted (room left, row) of rows with a free slot
    for i in order:
        n = int(lengths[i])
        if n > capacity:
            raise ValueError(f"item {i} has {n} tokens > row capacity {capacity}")
        j = bisect.bisect_left(open_rows, (n, -1))
        if j < len(open_rows):
            _, r = open_rows.pop(j)
        else:
            r = len(rows)
            rows.append([])
            room.append(capacity)
        rows[r].append(i)
        room[r] -= n
        if len(rows[r]) < max_per_row:
            bisect.insort(open_rows, (room[r], r))
    return rows


def pack_rows(arrays: dict, max_per_row: int, pad_id: int) -> dict:
    """Unpacked shard arrays (one instance per row, see instances.pack_instances) -> packed.

    Returns `input_ids [m, L]` and `length`, `b_start`, `next_sentence_label` [m, K].
    """
    ids_NxL, length_N = arrays["input_ids"], np.asarray(arrays["length"])
    n, max_seq_len = ids_NxL.shape
    rows = best_fit_decreasing(length_N, max_seq_len, max_per_row)
    m, k = len(rows), max_per_row
    out = {
        "input_ids": np.full((m, max_seq_len), pad_id, dtype=ids_NxL.dtype),
        "length": np.zeros((m, k), length_N.dtype),
        "b_start": np.zeros((m, k), np.asarray(arrays["b_start"]).dtype),
        "next_sentence_label": np.zeros((m, k), np.uint8),
    }
    for r, members in enumerate(rows):
        start = 0
        for slot, i in enumerate(members):
            size = int(length_N[i])
            out["input_ids"][r, start : start + size] = ids_NxL[i, :size]
            out["length"][r, slot] = size
            out["b_start"][r, slot] = arrays["b_start"][i]
            out["next_sentence_label"][r, slot] = arrays["next_sentence_label"][i]
            start += size
    return out


def layout_counts(length_NxK: np.ndarray) -> dict[str, int]:
    """Real tokens and sequences of packed rows (added up shard by shard by the writer)."""
    length = np.asarray(length_NxK, np.int64)
    return {"real_tokens": int(length.sum()), "sequences": int((length > 0).sum())}


def layout_manifest(max_per_row: int, counts: dict, rows: int, max_seq_len: int) -> dict:
    """The manifest's `layout`: K, counts and the packing efficiency (real tokens / row
    capacity) of the same sequences one per row ("unpacked") and packed."""
    real, seqs = counts["real_tokens"], counts["sequences"]
    return {
        "kind": LAYOUT_KIND,
        "max_sequences_per_row": max_per_row,
        **counts,
        "rows": rows,
        "efficiency_unpacked": real / max(seqs * max_seq_len, 1),
        "efficiency_packed": real / max(rows * max_seq_len, 1),
    }


def sequences_per_row(manifest: dict) -> int | None:
    """K of a packed dataset's manifest; None for one instance per row."""
    layout = manifest.get("layout")
    if not layout:
        return None
    if layout.get("kind") != LAYOUT_KIND:
        raise UserError(
            f"manifest layout {layout.get('kind')!r} is unknown; this bertjax "
            f"reads {LAYOUT_KIND!r} or none"
        )
    return int(layout["max_sequences_per_row"])


def batch_fields(raw: dict, max_seq_len: int) -> dict[str, np.ndarray]:
    """The model's inputs for packed rows (raw arrays as stored, `length` etc. [n, K]).

    Returns int32 `input_ids, input_mask, segment_ids` (token types within each sequence),
    `attn_segment_ids` (k + 1 on sequence k's tokens, 0 on padding), `position_ids`
    (restarting at 0 for each sequence) [n, L]; `next_sentence_positions` (each sequence's
    [CLS]; 0 in empty slots), `next_sentence_labels` [n, K] int32 and
    `next_sentence_weights` [n, K] float32 (1 for a real sequence).
    """
    length_NxK = raw["length"].astype(np.int64)
    end_NxK = np.cumsum(length_NxK, axis=1)
    start_NxK = end_NxK - length_NxK
    pos_L = np.arange(max_seq_len)
    # Sequence number of each position: how many sequences end at or before it.
    seq_NxL = (pos_L[None, :, None] >= end_NxK[:, None, :]).sum(axis=2)
    real_NxL = pos_L[None, :] < end_NxK[:, -1:]
    slot_NxL = np.minimum(seq_NxL, length_NxK.shape[1] - 1)
    offset_NxL = pos_L[None, :] - np.take_along_axis(start_NxK, slot_NxL, axis=1)
    b_start_NxL = np.take_along_axis(raw["b_start"].astype(np.int64), slot_NxL, axis=1)
    real_seq_NxK = length_NxK > 0
    return {
        "input_ids": raw["input_ids"].astype(np.int32),
        "input_mask": real_NxL.astype(np.int32),
        "segment_ids": ((offset_NxL >= b_start_NxL) & real_NxL).astype(np.int32),
        "attn_segment_ids": np.where(real_NxL, seq_NxL + 1, 0).astype(np.int32),
        "position_ids": np.where(real_NxL, offset_NxL, 0).astype(np.int32),
        "next_sentence_positions": np.where(real_seq_NxK, start_NxK, 0).astype(np.int32),
        "next_sentence_labels": (raw["next_sentence_label"] * real_seq_NxK).astype(np.int32),
        "next_sentence_weights": real_seq_NxK.astype(np.float32),
    }
