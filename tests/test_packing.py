"""Packed pretraining data: best-fit packing, `prepare --pack`'s rows and manifest, the reader."""

import numpy as np
import pytest

from bertjax.data import open_dataset
from bertjax.data.packing import batch_fields, best_fit_decreasing
from tests.test_prepare import prepare, setup  # noqa: F401 (the module-scoped fixture)


def test_best_fit_decreasing_fills_rows_within_limits():
    """Every item is placed once, no row overflows or holds more than K items, and the packing
    is as tight as the lengths allow here (best fit of a known instance)."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 120, size=500)
    rows = best_fit_decreasing(lengths, 128, 3)
    placed = sorted(i for r in rows for i in r)
    assert placed == list(range(500))
    assert all(len(r) <= 3 and sum(lengths[i] for i in r) <= 128 for r in rows)
    assert len(rows) < 0.75 * 500  # far fewer rows than sequences
    assert best_fit_decreasing([60, 70, 50, 10, 8], 128, 2) == [[1, 2], [0, 3], [4]]
    assert best_fit_decreasing([60, 70, 50, 10, 8], 128, 3) == [[1, 2, 4], [0, 3]]
    with pytest.raises(ValueError, match="129 tokens > row capacity 128"):
        best_fit_decreasing([129], 128, 3)


def test_batch_fields_of_a_packed_row():
    """Attention segment ids, restarting positions, token types within each sequence and the
    [CLS] positions follow the stored lengths; empty slots get weight 0."""
    raw = {
        "input_ids": np.arange(12)[None],
        "length": np.array([[5, 4, 0]]),
        "b_start": np.array([[3, 2, 0]]),
        "next_sentence_label": np.array([[1, 1, 0]]),
    }
    f = batch_fields(raw, 12)
    assert f["attn_segment_ids"].tolist() == [[1, 1, 1, 1, 1, 2, 2, 2, 2, 0, 0, 0]]
    assert f["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0, 1, 2, 3, 0, 0, 0]]
    assert f["segment_ids"].tolist() == [[0, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 0]]
    assert f["input_mask"].tolist() == [[1] * 9 + [0] * 3]
    assert f["next_sentence_positions"].tolist() == [[0, 5, 0]]
    assert f["next_sentence_labels"].tolist() == [[1, 1, 0]]
    assert f["next_sentence_weights"].tolist() == [[1.0, 1.0, 0.0]]


def sequences(ds):
    """Every stored sequence as a tuple (ids, b_start, label), from packed or unpacked rows."""
    raw = ds.get_raw(np.arange(len(ds)))
    out = []
    for r in range(len(ds)):
        lengths = np.atleast_1d(raw["length"][r])
        b_starts = np.atleast_1d(raw["b_start"][r])
        labels = np.atleast_1d(raw["next_sentence_label"][r])
        start = 0
        for n, b, y in zip(lengths, b_starts, labels):
            if n:
                out.append((tuple(raw["input_ids"][r, start : start + n]), int(b), int(y)))
            start += n
    return out


def test_prepare_pack_keeps_every_instance_and_records_the_layout(setup, tmp_path):  # noqa: F811
    """`--pack` stores exactly the unpacked run's instances (same ids, B starts and NSP labels),
    fewer rows, each sequence [CLS] ... [SEP]; the manifest has schema 2, K and efficiencies."""
    assert prepare(setup, tmp_path / "u", "--held-out", 20) == 0
    assert prepare(setup, tmp_path / "p", "--held-out", 20, "--pack",
                   "--max-sequences-per-row", 4) == 0
    unpacked, packed = open_dataset(tmp_path / "u"), open_dataset(tmp_path / "p")
    assert unpacked.manifest["schema_version"] == 1 and "layout" not in unpacked.manifest
    assert packed.packed and packed.max_sequences_per_row == 4
    assert sorted(sequences(packed)) == sorted(sequences(unpacked))
    assert all(s[0][0] == 2 and s[0][-1] == 3 for s in sequences(packed))  # [CLS] .. [SEP]
    layout = packed.manifest["layout"]
    assert packed.manifest["schema_version"] == 2 and layout["max_sequences_per_row"] == 4
    n_seq = len(unpacked)
    real = sum(len(s[0]) for s in sequences(unpacked))
    assert layout["sequences"] == n_seq and layout["real_tokens"] == real
    assert layout["rows"] == len(packed) < n_seq
    assert layout["efficiency_unpacked"] == pytest.approx(real / (n_seq * 32))
    assert layout["efficiency_packed"] == pytest.approx(real / (len(packed) * 32))
    assert layout["efficiency_packed"] > layout["efficiency_unpacked"]
    ev = open_dataset(tmp_path / "p" / "eval")
    assert ev.packed and len(ev) == 20  # the held-out split is packed rows too
    batch = packed.get_batch(np.arange(len(packed)))
    assert batch["attn_segment_ids"].max() <= 4
