"""Loader: order a pure function of (seed, step), per-process slices, exact resumption."""

import json

import numpy as np
import pytest

from bertjax import cli
from bertjax.data.loader import (
    BATCH_KEYS,
    BatchPlan,
    Loader,
    default_masking,
    eval_batches,
    masking_vocab,
    permute,
    validate_dataset,
)
from bertjax.data.masking import MaskingConfig, Vocab, mask_batch
from bertjax.data.shards import open_dataset
from bertjax.data.synthetic import synthetic_dataset
from bertjax.errors import UserError

N, L, B = 1000, 32, 64  # 15 steps per epoch, 40 dropped examples per epoch


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    path = tmp_path_factory.mktemp("loader") / "data"
    return open_dataset(synthetic_dataset(path, N, L, vocab_size=1000, shard_size=300))


def assert_batches_equal(a, b):
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 17, 1000, 4097, 65_537])
def test_permute_is_a_bijection(n):
    perm = permute(np.arange(n), n, seed=3, epoch=2)
    np.testing.assert_array_equal(np.sort(perm), np.arange(n))
    if n > 100:  # actually shuffled, and differently per epoch and per seed
        assert np.mean(perm == np.arange(n)) < 0.05
        assert np.mean(perm != permute(np.arange(n), n, seed=3, epoch=3)) > 0.9
        assert np.mean(perm != permute(np.arange(n), n, seed=4, epoch=2)) > 0.9


def test_batches_have_the_contract_keys_and_dtypes(ds):
    with Loader(ds, B, seed=1) as loader:
        batch = next(loader)
    P = default_masking(ds).max_predictions_per_seq
    shapes = {
        "input_ids": (B, L),
        "input_mask": (B, L),
        "segment_ids": (B, L),
        "masked_lm_positions": (B, P),
        "masked_lm_ids": (B, P),
        "masked_lm_weights": (B, P),
        "next_sentence_labels": (B,),
    }
    assert set(batch) == set(BATCH_KEYS)
    for k, shape in shapes.items():
        assert batch[k].shape == shape, k
        assert batch[k].dtype == (np.float32 if k == "masked_lm_weights" else np.int32), k
    # Rows are the dataset's examples, masked where the weights say.
    _, idx = BatchPlan(N, B, 1, default_masking(ds)).indices(0)
    raw = ds.get_batch(idx)
    np.testing.assert_array_equal(batch["input_mask"], raw["input_mask"])
    np.testing.assert_array_equal(batch["segment_ids"], raw["segment_ids"])
    np.testing.assert_array_equal(batch["next_sentence_labels"], raw["next_sentence_labels"])
    labels = np.take_along_axis(raw["input_ids"], batch["masked_lm_positions"], axis=1)
    w = batch["masked_lm_weights"] > 0
    np.testing.assert_array_equal(batch["masked_lm_ids"][w], labels[w])


def test_iteration_equals_batch_for_step_in_every_mode(ds):
    with Loader(ds, B, seed=5, start_step=3, threads=0) as sync:
        expected = [next(sync) for _ in range(4)]
    for s, batch in zip(range(3, 7), expected):
        assert_batches_equal(batch, sync.batch_for_step(s))
    with Loader(ds, B, seed=5, start_step=3, threads=2, prefetch=3) as threaded:
        for batch in expected:
            assert_batches_equal(next(threaded), batch)
    with Loader(ds, B, seed=5, start_step=3, workers=2) as procs:
        for batch in expected:
            assert_batches_equal(next(procs), batch)


def test_restore_after_k_batches_equals_uninterrupted(ds):
    total = 35  # epochs end after steps 14 and 29
    with Loader(ds, B, seed=7) as loader:
        stream = [next(loader) for _ in range(total)]
    for k in (1, 6, 14, 15, 16, 29):
        with Loader(ds, B, seed=7, prefetch=4) as first:
            for _ in range(k):
                next(first)
            state = json.loads(json.dumps(first.state()))  # what a checkpoint stores
        assert state["step"] == k
        with Loader.from_state(ds, state) as resumed:
            for s in range(k, total):
                assert_batches_equal(next(resumed), stream[s])


def test_global_batches_do_not_depend_on_the_process_count(ds):
    masking = default_masking(ds)
    for step in (0, 9, 14, 15, 31):
        with Loader(ds, B, seed=2, threads=0) as one:
            whole = one.batch_for_step(step)
        for P in (2, 4):
            parts = []
            for p in range(P):
                with Loader(
                    ds, B, seed=2, masking=masking, process_index=p, process_count=P, threads=0
                ) as loader:
                    parts.append(loader.batch_for_step(step))
            joined = {k: np.concatenate([part[k] for part in parts]) for k in whole}
            assert_batches_equal(joined, whole)


def test_two_process_slices_are_disjoint_and_cover_the_epoch(ds):
    masking = default_masking(ds)
    plans = [BatchPlan(N, B, 11, masking, p, 2) for p in range(2)]
    spe = plans[0].steps_per_epoch
    assert spe == N // B
    for epoch in (0, 1):
        seen = []
        for step in range(epoch * spe, (epoch + 1) * spe):
            (e0, a), (e1, b) = plans[0].indices(step), plans[1].indices(step)
            assert e0 == e1 == epoch and len(a) == len(b) == B // 2
            assert not set(a) & set(b)
            seen += [*a, *b]
        assert len(seen) == len(set(seen)) == spe * B
        epoch_order = permute(np.arange(N), N, seed=11, epoch=epoch)
        assert set(seen) == set(epoch_order[: spe * B].tolist())


def test_masks_are_seeded_by_example_and_redone_each_epoch(ds):
    masking = default_masking(ds)
    plan = BatchPlan(N, B, 4, masking)
    vocab = masking_vocab(ds, masking)
    with Loader(ds, B, seed=4, masking=masking, threads=0) as loader:
        for step in (2, 17):  # epochs 0 and 1
            epoch, idx = plan.indices(step)
            batch = loader.batch_for_step(step)
            for r in (0, 5):  # each row masked on its own gives the same mask
                raw = ds.get_batch(idx[r : r + 1])
                alone = mask_batch(
                    raw["input_ids"],
                    raw["input_mask"],
                    idx[r : r + 1],
                    seed=4,
                    epoch=epoch,
                    cfg=masking,
                    vocab=vocab,
                )
                np.testing.assert_array_equal(alone["input_ids"][0], batch["input_ids"][r])
        raw = ds.get_batch(np.arange(200))
        m0 = mask_batch(
            raw["input_ids"],
            raw["input_mask"],
            np.arange(200),
            seed=4,
            epoch=0,
            cfg=masking,
            vocab=vocab,
        )
        m1 = mask_batch(
            raw["input_ids"],
            raw["input_mask"],
            np.arange(200),
            seed=4,
            epoch=1,
            cfg=masking,
            vocab=vocab,
        )
        assert (m0["masked_lm_positions"] != m1["masked_lm_positions"]).any(1).mean() > 0.9


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_batches_cover_every_example_once(ds, process_count):
    batch_size = 96  # 11 batches, the last with 40 real rows
    seen, count = [], 0
    for p in range(process_count):
        batches = list(
            eval_batches(ds, batch_size, seed=3, process_index=p, process_count=process_count)
        )
        again = list(
            eval_batches(ds, batch_size, seed=3, process_index=p, process_count=process_count)
        )
        assert len(batches) == 11
        for g, (batch, same) in enumerate(zip(batches, again)):
            assert_batches_equal(batch, same)  # fixed masks
            b = batch_size // process_count
            rows = g * batch_size + p * b + np.arange(b)
            real = batch["next_sentence_weights"] > 0
            assert batch["next_sentence_weights"].dtype == np.float32
            np.testing.assert_array_equal(real, rows < N)
            assert (batch["masked_lm_weights"][~real] == 0).all()
            assert (batch["masked_lm_weights"][real].sum(1) > 0).all()
            raw = ds.get_batch(rows[real])
            np.testing.assert_array_equal(batch["input_mask"][real], raw["input_mask"])
            seen += rows[real].tolist()
            count += batch["input_ids"].shape[0]
    assert sorted(seen) == list(range(N)) and count == 11 * batch_size


def test_whole_word_masking_uses_the_dataset_tokenizer(ds):
    masking = MaskingConfig(default_masking(ds).max_predictions_per_seq, whole_word=True)
    cont = ds.load_tokenizer().continuation_mask()
    assert cont.sum() > 100  # the synthetic vocabulary has `##` pieces
    with Loader(ds, B, seed=0, masking=masking, threads=0) as loader:
        batch = loader.batch_for_step(3)
    _, idx = BatchPlan(N, B, 0, masking).indices(3)
    raw = ds.get_batch(idx)
    expected = mask_batch(
        raw["input_ids"],
        raw["input_mask"],
        idx,
        seed=0,
        epoch=0,
        cfg=masking,
        vocab=Vocab.build(ds.special_ids, ds.vocab_size, cont),
    )
    np.testing.assert_array_equal(batch["input_ids"], expected["input_ids"])
    sel = np.zeros(raw["input_ids"].shape, bool)
    np.put_along_axis(sel, batch["masked_lm_positions"], batch["masked_lm_weights"] > 0, 1)
    ids = raw["input_ids"]
    after_word = ~np.isin(ids[:, :-1], [ds.special_ids["cls_id"], ds.special_ids["sep_id"]])
    piece = cont[ids[:, 1:]] & (raw["input_mask"][:, 1:] > 0) & after_word
    # A selected `##` piece's predecessor is selected too, and vice versa.
    assert (sel[:, 1:][piece] == sel[:, :-1][piece]).all()
    assert (sel[:, 1:] & piece).sum() > 10


def test_serves_512_token_datasets(tmp_path):
    ds512 = open_dataset(synthetic_dataset(tmp_path / "d512", 64, 512, vocab_size=500))
    with Loader(ds512, 16, threads=0) as loader:
        batch = next(loader)
    assert batch["input_ids"].shape == (16, 512)
    assert batch["masked_lm_positions"].shape == (16, 80)
    lengths = batch["input_mask"].sum(1)
    expected = np.minimum(80, np.maximum(1, np.rint(lengths * 0.15)))
    np.testing.assert_array_equal(batch["masked_lm_weights"].sum(1), expected)


def test_bad_input_is_a_clear_error(ds, tmp_path):
    with pytest.raises(UserError, match="not divisible by the process count 4"):
        Loader(ds, 66, process_count=4)
    with pytest.raises(UserError, match="fewer than one global batch"):
        Loader(ds, 1024)
    with pytest.raises(UserError, match="process index"):
        Loader(ds, 64, process_index=2, process_count=2)
    with pytest.raises(UserError, match="max_seq_len 32 but the config expects 128"):
        validate_dataset(ds, max_seq_len=128)
    with pytest.raises(UserError, match="vocabulary of 1000 tokens"):
        validate_dataset(ds, vocab_size=30522)
    identity = dict(ds.manifest["tokenizer"]["identity"], vocab_sha256="0" * 64)
    with pytest.raises(UserError, match="names tokenizer"):
        validate_dataset(ds, tokenizer_identity=identity)
    validate_dataset(
        ds, max_seq_len=L, vocab_size=1000, tokenizer_identity=ds.manifest["tokenizer"]["identity"]
    )
    other = open_dataset(synthetic_dataset(tmp_path / "other", 200, L, vocab_size=1000, seed=1))
    with Loader(ds, B) as loader:
        state = loader.state()
    with pytest.raises(UserError, match="saved loader state is for dataset"):
        Loader.from_state(other, state)


def test_batches_cli_writes_what_the_process_would_train_on(ds, tmp_path, capsys):
    out = tmp_path / "b.npz"
    argv = [
        "batches",
        "--data",
        str(ds.path),
        "--global-batch-size",
        "64",
        "--steps",
        "3",
        "--start-step",
        "14",
        "--seed",
        "9",
        "--process-index",
        "1",
        "--process-count",
        "2",
        "--out",
        str(out),
    ]
    assert cli.main(argv) == 0
    saved = np.load(out)
    assert sorted(saved.files) == sorted(BATCH_KEYS)
    assert saved["input_ids"].shape == (3, 32, L)
    assert saved["masked_lm_weights"].shape == (3, 32, 20)
    with Loader(ds, 64, seed=9, process_index=1, process_count=2, threads=0) as loader:
        for i, step in enumerate((14, 15, 16)):
            want = loader.batch_for_step(step)
            for k in BATCH_KEYS:
                np.testing.assert_array_equal(saved[k][i], want[k], err_msg=k)
    capsys.readouterr()
    bad = argv[:-2] + ["--out", str(tmp_path / "x.npz")]
    bad[bad.index("--global-batch-size") + 1] = "63"
    assert cli.main(bad) == 2
    assert "63 is not divisible by the process count 2" in capsys.readouterr().err
    assert not (tmp_path / "x.npz").exists()


@pytest.fixture(scope="module")
def packed_ds(tmp_path_factory):
    path = tmp_path_factory.mktemp("loader_packed") / "data"
    return open_dataset(
        synthetic_dataset(path, 1500, L, vocab_size=1000, shard_size=200, max_sequences_per_row=3)
    )


def test_packed_batches_order_resume_and_process_count(packed_ds):
    """Packed data keeps the loader's guarantees: every mode (sync, threads, worker processes)
    gives batch_for_step(step); a loader resumed from its state continues exactly; the global
    batch is the same for 1, 2 and 4 processes; rows carry K sequences and
    packed_prediction_slots mask slots (p x L + K, fewer than K x P)."""
    from bertjax.data.masking import packed_prediction_slots

    ds, K = packed_ds, 3
    assert ds.packed and len(ds) < 1000  # ~2 sequences per row
    masking = default_masking(ds)
    P = packed_prediction_slots(K, L, masking)
    assert P == min(K * masking.max_predictions_per_seq, int(0.15 * L) + K)
    with Loader(ds, 16, seed=5, threads=0) as sync:
        stream = [next(sync) for _ in range(6)]
    batch = stream[0]
    assert batch["masked_lm_positions"].shape == (16, P)
    assert batch["next_sentence_labels"].shape == batch["next_sentence_weights"].shape == (16, K)
    assert batch["attn_segment_ids"].shape == batch["position_ids"].shape == (16, L)
    assert (batch["next_sentence_weights"].sum(1) >= 1).all()
    for s, b in enumerate(stream):
        assert_batches_equal(b, sync.batch_for_step(s))
    with Loader(ds, 16, seed=5, workers=2) as procs:
        for b in stream:
            assert_batches_equal(next(procs), b)
    with Loader(ds, 16, seed=5, threads=2) as first:
        for _ in range(3):
            next(first)
        state = json.loads(json.dumps(first.state()))
    with Loader.from_state(ds, state) as resumed:
        for b in stream[3:]:
            assert_batches_equal(next(resumed), b)
    for step in (0, 5, 40):
        with Loader(ds, 16, seed=2, threads=0) as one:
            whole = one.batch_for_step(step)
        for n in (2, 4):
            parts = []
            for p in range(n):
                with Loader(ds, 16, seed=2, process_index=p, process_count=n, threads=0) as ld:
                    parts.append(ld.batch_for_step(step))
            assert_batches_equal({k: np.concatenate([x[k] for x in parts]) for k in whole}, whole)


def test_packed_eval_batches_weight_padding_rows_zero(packed_ds):
    """Evaluation over packed rows counts every real sequence once: the last batch's padding
    rows have weight 0 in every NSP slot and every MLM slot."""
    ds = packed_ds
    weights = [b["next_sentence_weights"] for b in eval_batches(ds, 64)]
    mlm = sum(b["masked_lm_weights"].sum() for b in eval_batches(ds, 64))
    assert sum(w.sum() for w in weights) == ds.manifest["layout"]["sequences"] == 1500
    assert all(w.shape == (64, 3) for w in weights) and mlm > 1500
