"""MLM/NSP losses and metrics: the original BERT's formulas, and sums that add up exactly."""

import numpy as np
import pytest

from bertjax.train import losses

B, P, V = 6, 5, 11


def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.fixture
def case():
    rng = np.random.default_rng(0)
    return {
        "mlm_logits": rng.normal(size=(B, P, V)).astype(np.float32) * 3,
        "nsp_logits": rng.normal(size=(B, 2)).astype(np.float32),
        "masked_lm_ids": rng.integers(0, V, (B, P)).astype(np.int32),
        # Padded prediction slots have weight 0 (and arbitrary ids), as the loader makes them.
        "masked_lm_weights": (rng.random((B, P)) < 0.7).astype(np.float32),
        "next_sentence_labels": rng.integers(0, 2, B).astype(np.int32),
    }


def reference(case):
    """google-research/bert run_pretraining.py, in numpy."""
    lp = log_softmax(case["mlm_logits"].astype(np.float64))
    w = case["masked_lm_weights"]
    nll = -np.take_along_axis(lp, case["masked_lm_ids"][..., None], -1)[..., 0]
    mlm = (nll * w).sum() / (w.sum() + 1e-5)
    mlm_acc = ((lp.argmax(-1) == case["masked_lm_ids"]) * w).sum() / (w.sum() + 1e-5)
    lpn = log_softmax(case["nsp_logits"].astype(np.float64))
    labels = case["next_sentence_labels"]
    nsp = -lpn[np.arange(B), labels].mean()
    nsp_acc = (lpn.argmax(-1) == labels).mean()
    return {
        "loss": mlm + nsp,
        "mlm_loss": mlm,
        "mlm_accuracy": mlm_acc,
        "nsp_loss": nsp,
        "nsp_accuracy": nsp_acc,
    }


def test_metrics_match_the_original_formulas(case):
    sums = losses.pretraining_sums(case["mlm_logits"], case["nsp_logits"], case)
    got = losses.metrics_from_sums(sums)
    want = reference(case)
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_allclose(float(got[k]), want[k], rtol=1e-5, err_msg=k)
    # The training loss (same denominators) agrees with the reported loss.
    loss = losses.loss_from_sums(
        sums, sums["mlm_weight_sum"] + losses.MLM_DENOMINATOR_EPS, sums["nsp_weight_sum"]
    )
    np.testing.assert_allclose(float(loss), want["loss"], rtol=1e-5)


def test_zero_weight_slots_do_not_count(case):
    base = losses.metrics_from_sums(
        losses.pretraining_sums(case["mlm_logits"], case["nsp_logits"], case)
    )
    changed = dict(
        case, masked_lm_ids=np.where(case["masked_lm_weights"] > 0, case["masked_lm_ids"], 0)
    )
    changed["mlm_logits"] = np.where(
        case["masked_lm_weights"][..., None] > 0, case["mlm_logits"], 100.0
    ).astype(np.float32)
    after = losses.metrics_from_sums(
        losses.pretraining_sums(changed["mlm_logits"], case["nsp_logits"], changed)
    )
    for k in base:
        np.testing.assert_allclose(float(after[k]), float(base[k]), rtol=1e-6, err_msg=k)


def test_sums_over_parts_equal_the_whole(case):
    """Micro-batches (and eval batches) add up to the figures of the whole batch."""
    whole = losses.metrics_from_sums(
        losses.pretraining_sums(case["mlm_logits"], case["nsp_logits"], case)
    )
    totals = {}
    for rows in (slice(0, 2), slice(2, 3), slice(3, 6)):
        part = {k: v[rows] for k, v in case.items()}
        for k, v in losses.pretraining_sums(part["mlm_logits"], part["nsp_logits"], part).items():
            totals[k] = totals.get(k, 0.0) + float(v)
    parts = losses.metrics_from_sums(totals)
    for k in whole:
        np.testing.assert_allclose(parts[k], float(whole[k]), rtol=1e-5, err_msg=k)


def test_padding_rows_of_an_eval_batch_are_ignored(case):
    whole = losses.metrics_from_sums(
        losses.pretraining_sums(case["mlm_logits"], case["nsp_logits"], case)
    )
    # Two copies of row 0 appended as padding: weight 0 for both MLM and NSP.
    padded = {k: np.concatenate([v, v[:2]]) for k, v in case.items()}
    padded["masked_lm_weights"][B:] = 0
    padded["next_sentence_weights"] = np.r_[np.ones(B), np.zeros(2)].astype(np.float32)
    padded["next_sentence_labels"][B:] = 1 - padded["next_sentence_labels"][B:]
    got = losses.metrics_from_sums(
        losses.pretraining_sums(padded["mlm_logits"], padded["nsp_logits"], padded)
    )
    for k in whole:
        np.testing.assert_allclose(float(got[k]), float(whole[k]), rtol=1e-6, err_msg=k)


def test_without_nsp_the_loss_is_mlm_alone(case):
    sums = losses.pretraining_sums(case["mlm_logits"], case["nsp_logits"], case, nsp=False)
    got = losses.metrics_from_sums(sums)
    assert set(got) == {"loss", "mlm_loss", "mlm_accuracy"}
    assert float(got["loss"]) == float(got["mlm_loss"])
    np.testing.assert_allclose(float(got["mlm_loss"]), reference(case)["mlm_loss"], rtol=1e-5)


def test_a_batch_without_masked_tokens_gives_zero_not_nan(case):
    empty = dict(case, masked_lm_weights=np.zeros((B, P), np.float32))
    got = losses.metrics_from_sums(
        losses.pretraining_sums(case["mlm_logits"], case["nsp_logits"], empty)
    )
    assert float(got["mlm_loss"]) == 0.0 and float(got["mlm_accuracy"]) == 0.0
