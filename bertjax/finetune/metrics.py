"""GLUE metrics in numpy: accuracy, F1, Matthews correlation, Pearson and Spearman; and the
dev cross-entropy every classifier-like head reports."""

import numpy as np

from bertjax.finetune.tasks import get_task


def _pair(predictions, labels) -> tuple[np.ndarray, np.ndarray]:
    p, y = np.asarray(predictions), np.asarray(labels)
    if p.ndim != 1 or p.shape != y.shape:
        raise ValueError(
            f"predictions and labels must be 1-D arrays of one length, got {p.shape} and {y.shape}"
        )
    if p.size == 0:
        raise ValueError("cannot score an empty set of predictions")
    return p, y


def accuracy(predictions, labels) -> float:
    """Fraction of predictions equal to their label."""
    p, y = _pair(predictions, labels)
    return float(np.mean(p == y))


def f1_binary(predictions, labels) -> float:
    """F1 of the positive class 1 (as GLUE scores MRPC and QQP).

    Returns 0 when there is no positive prediction nor label (scikit-learn's value for that
    case with zero_division="warn").
    """
    p, y = _pair(predictions, labels)
    p, y = p == 1, y == 1
    tp = np.sum(p & y)
    denominator = 2 * tp + np.sum(p & ~y) + np.sum(~p & y)
    return float(2 * tp / denominator) if denominator else 0.0


def matthews_corrcoef(predictions, labels) -> float:
    """Matthews correlation coefficient, for any number of classes (Gorodkin's R_K).

    Returns 0, not NaN, when the predictions or the labels are constant: the correlation is
    undefined there, and 0 is what scikit-learn's matthews_corrcoef returns.
    """
    p, y = _pair(predictions, labels)
    _, codes = np.unique(np.concatenate([y, p]), return_inverse=True)
    y_codes, p_codes = codes[: y.size], codes[y.size :]
    k = int(codes.max()) + 1
    confusion = np.zeros((k, k), np.float64)
    np.add.at(confusion, (y_codes, p_codes), 1.0)
    t_sum, p_sum = confusion.sum(axis=1), confusion.sum(axis=0)
    n, correct = float(y.size), float(np.trace(confusion))
    cov_yp = correct * n - t_sum @ p_sum
    cov_pp = n * n - p_sum @ p_sum
    cov_yy = n * n - t_sum @ t_sum
    if cov_pp * cov_yy == 0:
        return 0.0
    return float(cov_yp / np.sqrt(cov_yy * cov_pp))


def pearson(predictions, labels) -> float:
    """Pearson correlation coefficient.

    Returns 0 when either input is constant: the correlation is undefined there (scipy
    returns NaN), and a NaN would poison averages and the choice of the best run.
    """
    p, y = _pair(predictions, labels)
    p, y = p.astype(np.float64), y.astype(np.float64)
    p, y = p - p.mean(), y - y.mean()
    denominator = np.sqrt(np.sum(p * p) * np.sum(y * y))
    if denominator == 0:
        return 0.0
    # Clip: rounding can push |r| a hair above 1.
    return float(np.clip(np.sum(p * y) / denominator, -1.0, 1.0))


def rank_average(x) -> np.ndarray:
    """Ranks 1..n of `x`, ties sharing the average of their ranks (scipy's rankdata default)."""
    x = np.asarray(x)
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    # Start of each run of equal values in sorted order.
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], x.size]  # exclusive
    run_rank = (starts + 1 + ends) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(x.size, np.float64)
    ranks[order] = np.repeat(run_rank, ends - starts)
    return ranks


def spearman(predictions, labels) -> float:
    """Spearman rank correlation (Pearson of average ranks); 0 when either input is constant."""
    p, y = _pair(predictions, labels)
    return pearson(rank_average(p), rank_average(y))


def glue_metrics(task: str, predictions, labels) -> dict[str, float]:
    """Scores one dev set the way GLUE does; keys are `get_task(task).metrics`.

    cola: mcc; stsb: pearson, spearmanr and combined_score (their mean); mrpc and qqp: f1,
    accuracy and combined_score (their mean); the others: accuracy. Predictions are class ids
    (regression scores for stsb). MNLI's matched and mismatched sets are scored by two calls.
    """
    spec = get_task(task)
    p, y = _pair(predictions, labels)
    if spec.is_regression:
        r, rho = pearson(p, y), spearman(p, y)
        out = {"pearson": r, "spearmanr": rho, "combined_score": (r + rho) / 2}
    elif spec.name == "cola":
        out = {"mcc": matthews_corrcoef(p, y)}
    elif "f1" in spec.metrics:
        f1, acc = f1_binary(p, y), accuracy(p, y)
        out = {"f1": f1, "accuracy": acc, "combined_score": (f1 + acc) / 2}
    else:
        out = {"accuracy": accuracy(p, y)}
    assert tuple(out) == spec.metrics, (out, spec.metrics)
    return out


def mean_cross_entropy(logits_NxC: np.ndarray, labels_N: np.ndarray) -> float:
    """The mean softmax cross-entropy of integer labels, in float64 on the host (the dev loss
    of any classifier: GLUE's classes, SQuAD's start and end positions)."""
    logits_NxC = np.asarray(logits_NxC, np.float64)
    shifted = logits_NxC - logits_NxC.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    return float(-np.mean(log_probs[np.arange(len(labels_N)), labels_N]))
