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
    assert (
        prepare(setup, tmp_path / "p", "--held-out", 20, "--pack", "--max-sequences-per-row", 4)
        == 0
    )
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
    ev, ev_unpacked = open_dataset(tmp_path / "p" / "eval"), open_dataset(tmp_path / "u" / "eval")
    # The held-out split is packed rows too, of the very same 20 sequences (--held-out counts
    # sequences, not rows).
    assert ev.packed and ev.manifest["layout"]["sequences"] == 20 and len(ev) <= 20
    assert sorted(sequences(ev)) == sorted(sequences(ev_unpacked))
    batch = packed.get_batch(np.arange(len(packed)))
    assert batch["attn_segment_ids"].max() <= 4


def test_masking_statistics_over_packed_rows(tmp_path):
    """Over >= 100k tokens of packed rows: every sequence gets exactly the original count
    min(P, max(1, round(0.15 x its length))) of positions, all inside itself and none a special
    token; 80/10/10 within 1.5%; whole-word masking selects whole words inside one sequence.
    The row's predictions sit in packed_prediction_slots slots, sequence by sequence."""
    from bertjax.data.loader import default_masking, masking_vocab
    from bertjax.data.masking import MaskingConfig, mask_packed_batch, packed_prediction_slots
    from bertjax.data.synthetic import synthetic_dataset

    K, L = 3, 128
    ds = open_dataset(
        synthetic_dataset(tmp_path / "d", 2200, L, vocab_size=2000, max_sequences_per_row=K)
    )
    raw = ds.get_batch(np.arange(len(ds)))
    assert raw["input_mask"].sum() >= 100_000
    masking = default_masking(ds)
    P = masking.max_predictions_per_seq
    vocab = masking_vocab(ds, masking)
    out = mask_packed_batch(
        raw["input_ids"],
        raw["attn_segment_ids"],
        np.arange(len(ds)),
        seed=3,
        epoch=0,
        cfg=masking,
        vocab=vocab,
        max_sequences_per_row=K,
    )
    W = packed_prediction_slots(K, L, masking)
    assert out["masked_lm_positions"].shape == (len(ds), W) and W == 0.15 * L // 1 + K < K * P
    pos, w = out["masked_lm_positions"], out["masked_lm_weights"] > 0
    assert (w[:, :-1] >= w[:, 1:]).all()  # the used slots first
    seg_at = np.take_along_axis(raw["attn_segment_ids"], pos, axis=1)  # whose each slot is
    counts = np.stack([((seg_at == k + 1) & w).sum(1) for k in range(K)], axis=1)
    lengths = ds.get_raw(np.arange(len(ds)))["length"]
    want = np.where(lengths > 0, np.minimum(P, np.maximum(1, np.rint(0.15 * lengths))), 0)
    np.testing.assert_array_equal(counts, want)  # inside its own sequence, the exact count
    assert (np.diff(np.where(w, seg_at, K + 1), axis=1) >= 0).all()  # sequence 1's, then 2's
    labels = out["masked_lm_ids"][w]
    assert not np.isin(labels, [0, 1, 2, 3, 4]).any()  # specials never selected
    new = np.take_along_axis(out["input_ids"], pos, axis=1)[w]
    n = labels.size
    assert abs(np.mean(new == vocab.mask_id) - 0.8) < 0.015
    assert abs(np.mean(new == labels) - 0.1) < 0.015
    assert abs(np.mean((new != labels) & (new != vocab.mask_id)) - 0.1) < 0.015 and n > 15_000
    unmasked = np.ones_like(raw["input_ids"], bool)
    np.put_along_axis(unmasked, out["masked_lm_positions"], ~(out["masked_lm_weights"] > 0), 1)
    np.testing.assert_array_equal(out["input_ids"][unmasked], raw["input_ids"][unmasked])

    ww = MaskingConfig(P, 0.15, whole_word=True)
    wvocab = masking_vocab(ds, ww)
    out = mask_packed_batch(
        raw["input_ids"],
        raw["attn_segment_ids"],
        np.arange(len(ds)),
        seed=3,
        epoch=0,
        cfg=ww,
        vocab=wvocab,
        max_sequences_per_row=K,
    )
    sel = np.zeros_like(raw["input_ids"], bool)
    rows = np.arange(len(ds))[:, None].repeat(W, 1)
    used = out["masked_lm_weights"] > 0
    sel[rows[used], out["masked_lm_positions"][used]] = True
    cont = wvocab.continuation_V[raw["input_ids"]]
    same_word = cont[:, 1:] & (raw["attn_segment_ids"][:, 1:] == raw["attn_segment_ids"][:, :-1])
    same_word &= ~np.isin(raw["input_ids"][:, :-1], [0, 1, 2, 3, 4])
    assert (sel[:, 1:][same_word] == sel[:, :-1][same_word]).all()  # never half a word
    seg_at = np.take_along_axis(raw["attn_segment_ids"], out["masked_lm_positions"], axis=1)
    counts = np.stack([((seg_at == k + 1) & used).sum(1) for k in range(K)], axis=1)
    assert (counts <= want).all() and counts.sum() > 0.9 * want.sum()


def test_step_metrics_report_real_tokens_per_second_beside_padded():
    """real_tokens_per_s counts every step's real tokens since the last fetch (logged or not),
    so its ratio to the padded tokens_per_s is the real-token fraction of those steps."""
    from bertjax.train.step_metrics import StepMetrics

    class Writer:
        def write(self, step, metrics):
            self.last = (step, metrics)

    writer = Writer()
    sm = StepMetrics(writer, tokens_per_step=100, start_step=0, remedy="")
    for step, real in ((1, 60.0), (2, 80.0), (3, 70.0)):
        sm.dispatched(step, {"loss": 1.0, "real_tokens": real}, log=step == 3)
    record = sm.flush()
    assert record["step"] == 3 and writer.last[0] == 3
    assert record["real_tokens_per_s"] / record["tokens_per_s"] == pytest.approx(210 / 300)
    sm.dispatched(4, {"loss": 1.0, "real_tokens": 50.0}, log=True)
    assert sm.flush()["real_tokens_per_s"] / writer.last[1]["tokens_per_s"] == pytest.approx(0.5)


def test_packed_data_without_nsp_labels_needs_a_config_without_nsp(
    setup,  # noqa: F811 (the fixture imported from test_prepare)
    tmp_path,
    capsys,
):
    """A `--pack --no-nsp` dataset (packed contiguous text, no NSP labels) given to a config
    that trains NSP: one error naming the flag, before anything is compiled; with
    train.nsp=false it trains."""
    from bertjax import cli

    assert prepare(setup, tmp_path / "d", "--pack", "--no-nsp") == 0
    args = [
        "train",
        "--config",
        "bert_tiny",
        "--workdir",
        str(tmp_path / "run"),
        f"--config.data.train_dir={tmp_path / 'd'}",
        "--config.train.global_batch_size=8",
        "--config.model.num_hidden_layers=1",
        "--config.train.eval_every=0",
        "--config.train.steps=2",
        "--config.optim.warmup_steps=1",
    ]
    capsys.readouterr()
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "was prepared with --no-nsp" in err and "--config.train.nsp=false" in err
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert cli.main([*args, "--config.train.nsp=false"]) == 0
