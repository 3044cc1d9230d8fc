"""SQuAD exact match and F1, computed as the official evaluate-v1.1.py and evaluate-v2.0.py.

Both take `gold`: `{question id: [gold answer texts]}` (an empty list: unanswerable) in the
dataset's order, and `predictions`: `{question id: answer text}` ("" = no answer).

- v1.1: answers are normalised (lower case, ASCII punctuation removed, articles a/an/the
  removed, whitespace collapsed); EM and F1 take the maximum over the gold answers; a question
  without a prediction scores 0. Returns `exact_match` and `f1` in percent.
- v2.0: as v1.1, except that a question whose gold answers all normalise to "" is answered
  only by "" and that F1 against "" is 1 iff both are empty. `na_probs` ({id: score that the
  question has no answer}, e.g. our null_odds.json) above `na_prob_thresh` turn a prediction
  into "no answer". Returns exact/f1/total, the same for HasAns_* and NoAns_*, and with
  `na_probs` the best threshold search: best_exact(_thresh), best_f1(_thresh).
  The official v2.0 script crashes (KeyError) when a prediction is missing; here such a
  question scores 0 on both metrics whatever its gold answer, is never turned into "no
  answer" by a threshold, and counts in every total.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Mapping, Sequence

from bertjax.errors import UserError

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower case, drop ASCII punctuation, drop the articles a/an/the, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> int:
    """1 when the normalised texts are equal, else 0."""
    return int(normalize_answer(prediction) == normalize_answer(gold))


def _token_f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision, recall = num_same / len(pred_tokens), num_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1_v1(prediction: str, gold: str) -> float:
    """Token-overlap F1 of the normalised texts (evaluate-v1.1.py: 0 when nothing is shared)."""
    return _token_f1(normalize_answer(prediction).split(), normalize_answer(gold).split())


def f1_v2(prediction: str, gold: str) -> float:
    """evaluate-v2.0.py's F1: as v1.1, but 1 when both normalise to no tokens."""
    pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    return _token_f1(pred_tokens, gold_tokens)


def squad_v1_scores(gold: Mapping[str, Sequence[str]], predictions: Mapping[str, str]) -> dict:
    """`{"exact_match": %, "f1": %}` over every question in `gold`, as evaluate-v1.1.py."""
    if not gold:
        raise UserError("SQuAD scoring needs at least one gold question")
    exact = f1 = 0.0
    for qid, answers in gold.items():
        if not answers:
            raise UserError(f"question {qid!r} has no gold answer; SQuAD v1.1 scoring needs one")
        if qid in predictions:
            exact += max(exact_match(predictions[qid], a) for a in answers)
            f1 += max(f1_v1(predictions[qid], a) for a in answers)
    return {"exact_match": 100.0 * exact / len(gold), "f1": 100.0 * f1 / len(gold)}


def _v2_raw_scores(gold, predictions):
    """Per question: (exact, f1) before any threshold; 0 for a missing prediction."""
    exact, f1 = {}, {}
    for qid, answers in gold.items():
        answers = [a for a in answers if normalize_answer(a)] or [""]
        if qid not in predictions:
            exact[qid], f1[qid] = 0, 0.0
            continue
        exact[qid] = max(exact_match(predictions[qid], a) for a in answers)
        f1[qid] = max(f1_v2(predictions[qid], a) for a in answers)
    return exact, f1


def _summary(exact: Mapping[str, float], f1: Mapping[str, float], qids: list[str]) -> dict:
    return {
        "exact": 100.0 * sum(exact[q] for q in qids) / len(qids),
        "f1": 100.0 * sum(f1[q] for q in qids) / len(qids),
        "total": len(qids),
    }


def best_threshold(predictions, raw: Mapping[str, float], na_probs, has_answer):
    """(best score in %, its threshold) over all na_prob thresholds, as evaluate-v2.0.py's
    find_best_thresh: start with every question answered "no answer", then, in increasing
    na_prob order, let each keep its prediction and keep the best running total."""
    score = sum(1 for q in raw if q in predictions and not has_answer[q])
    best, best_thresh = score, 0.0
    # Ties in na_prob keep na_probs' own order, as the official sorted(na_probs, key=...):
    # the running total may peak in the middle of a tie, so the order can change the result.
    ordered = sorted(na_probs, key=lambda q: na_probs[q])
    for qid in (q for q in ordered if q in raw and q in predictions):
        if has_answer[qid]:
            score += raw[qid]
        elif predictions[qid]:
            score -= 1
        if score > best:
            best, best_thresh = score, na_probs[qid]
    return 100.0 * best / len(raw), best_thresh


def squad_v2_scores(
    gold: Mapping[str, Sequence[str]],
    predictions: Mapping[str, str],
    na_probs: Mapping[str, float] | None = None,
    na_prob_thresh: float = 1.0,
) -> dict:
    """The dict evaluate-v2.0.py prints (see the module docstring for missing predictions)."""
    if not gold:
        raise UserError("SQuAD scoring needs at least one gold question")
    has_answer = {qid: bool(answers) for qid, answers in gold.items()}
    with_probs = na_probs is not None
    if na_probs is None:
        na_probs = {qid: 0.0 for qid in predictions}
    lacking = [q for q in gold if q in predictions and q not in na_probs]
    if lacking:
        raise UserError(
            f"the no-answer probabilities lack {len(lacking)} predicted question(s), "
            f"e.g. {lacking[0]!r}"
        )
    exact_raw, f1_raw = _v2_raw_scores(gold, predictions)

    def threshold(raw):
        return {q: float(not has_answer[q]) if q in predictions and na_probs[q] > na_prob_thresh
                else s for q, s in raw.items()}  # fmt: skip

    exact, f1 = threshold(exact_raw), threshold(f1_raw)
    out = _summary(exact, f1, list(gold))
    for prefix, wanted in (("HasAns", True), ("NoAns", False)):
        qids = [q for q in gold if has_answer[q] == wanted]
        if qids:
            out.update({f"{prefix}_{k}": v for k, v in _summary(exact, f1, qids).items()})
    if with_probs:
        out["best_exact"], out["best_exact_thresh"] = best_threshold(
            predictions, exact_raw, na_probs, has_answer
        )
        out["best_f1"], out["best_f1_thresh"] = best_threshold(
            predictions, f1_raw, na_probs, has_answer
        )
    return out
