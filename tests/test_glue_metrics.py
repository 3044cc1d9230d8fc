"""GLUE metrics against scikit-learn and scipy on many random inputs, ties and edge cases."""

import warnings

import numpy as np
import pytest
import scipy.stats
import sklearn.metrics

from bertjax.finetune import metrics
from bertjax.finetune.tasks import TASKS


def _random_classes(rng, n_cases=200):
    for case in range(n_cases):
        n = int(rng.integers(1, 60))
        k = int(rng.integers(2, 5))
        y = rng.integers(0, k, n)
        # Every 5th case: predictions mostly right, so the scores are far from 0 too.
        if case % 5 == 0:
            p = np.where(rng.random(n) < 0.8, y, rng.integers(0, k, n))
        else:
            p = rng.integers(0, k, n)
        yield p, y


def test_accuracy_f1_mcc_match_sklearn_on_random_inputs():
    rng = np.random.default_rng(0)
    for p, y in _random_classes(rng):
        assert metrics.accuracy(p, y) == pytest.approx(sklearn.metrics.accuracy_score(y, p))
        assert metrics.matthews_corrcoef(p, y) == pytest.approx(
            sklearn.metrics.matthews_corrcoef(y, p), abs=1e-12
        )
        pb, yb = p % 2, y % 2
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sklearn warns on zero division, returns 0
            expected_f1 = sklearn.metrics.f1_score(yb, pb, pos_label=1, average="binary")
            expected_mcc = sklearn.metrics.matthews_corrcoef(yb, pb)
        assert metrics.f1_binary(pb, yb) == pytest.approx(expected_f1, abs=1e-12)
        assert metrics.matthews_corrcoef(pb, yb) == pytest.approx(expected_mcc, abs=1e-12)


def test_constant_predictions_give_zero_not_nan():
    y = np.array([0, 1, 1, 0, 1])
    for const in (0, 1):
        p = np.full(5, const)
        assert metrics.matthews_corrcoef(p, y) == 0.0 == sklearn.metrics.matthews_corrcoef(y, p)
    # Constant labels too, and F1 with no positive anywhere (sklearn: 0 with a warning).
    assert metrics.matthews_corrcoef(y, np.zeros(5, int)) == 0.0
    assert metrics.f1_binary(np.zeros(4, int), np.zeros(4, int)) == 0.0
    assert metrics.f1_binary(np.ones(4, int), np.ones(4, int)) == 1.0
    scores = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert metrics.pearson(np.full(5, 2.5), scores) == 0.0
    assert metrics.spearman(scores, np.full(5, 2.5)) == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert np.isnan(scipy.stats.pearsonr(np.full(5, 2.5), scores)[0])  # what we replace


def test_pearson_spearman_match_scipy_on_random_inputs_with_ties():
    rng = np.random.default_rng(1)
    for case in range(200):
        n = int(rng.integers(3, 80))
        if case % 2:  # many ties: scores on a coarse grid, as STS-B's labels are
            y = rng.integers(0, 6, n) / 1.0
            p = y + rng.integers(-2, 3, n)
        else:
            y = rng.normal(size=n)
            p = 0.5 * y + rng.normal(size=n)
        if np.ptp(y) == 0 or np.ptp(p) == 0:
            continue
        assert metrics.pearson(p, y) == pytest.approx(scipy.stats.pearsonr(p, y)[0], abs=1e-10)
        assert metrics.spearman(p, y) == pytest.approx(scipy.stats.spearmanr(p, y)[0], abs=1e-10)


def test_rank_average_matches_scipy_rankdata():
    rng = np.random.default_rng(2)
    for _ in range(100):
        x = rng.integers(0, 8, int(rng.integers(1, 40)))
        np.testing.assert_allclose(metrics.rank_average(x), scipy.stats.rankdata(x))
    np.testing.assert_array_equal(metrics.rank_average([3, 1, 3, 2]), [3.5, 1, 3.5, 2])


def test_glue_metrics_keys_and_values_per_task():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 50)
    p = np.where(rng.random(50) < 0.7, y, 1 - y)
    for name, task in TASKS.items():
        if task.is_regression:
            ys = rng.uniform(0, 5, 50)
            ps = ys + rng.normal(size=50)
            out = metrics.glue_metrics(name, ps, ys)
            assert out["pearson"] == pytest.approx(scipy.stats.pearsonr(ps, ys)[0])
            assert out["spearmanr"] == pytest.approx(scipy.stats.spearmanr(ps, ys)[0])
            assert out["combined_score"] == pytest.approx((out["pearson"] + out["spearmanr"]) / 2)
        else:
            out = metrics.glue_metrics(name, p, y)
        assert tuple(out) == task.metrics
        assert task.main_metric in out
    assert metrics.glue_metrics("cola", p, y) == {
        "mcc": pytest.approx(sklearn.metrics.matthews_corrcoef(y, p))
    }
    mrpc = metrics.glue_metrics("mrpc", p, y)
    assert mrpc["f1"] == pytest.approx(sklearn.metrics.f1_score(y, p))
    assert mrpc["accuracy"] == pytest.approx(sklearn.metrics.accuracy_score(y, p))
    assert mrpc["combined_score"] == pytest.approx((mrpc["f1"] + mrpc["accuracy"]) / 2)
    assert metrics.glue_metrics("MNLI", p, y) == {"accuracy": pytest.approx(np.mean(p == y))}


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="1-D arrays of one length"):
        metrics.accuracy([0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="empty"):
        metrics.glue_metrics("sst2", [], [])
    with pytest.raises(ValueError, match="1-D"):
        metrics.glue_metrics("sst2", np.zeros((4, 2)), np.zeros(4))
