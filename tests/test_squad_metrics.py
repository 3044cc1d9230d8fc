"""SQuAD EM/F1 equal the official evaluate-v1.1.py / evaluate-v2.0.py, whose logic is written
out again here (on the official JSON layout) rather than imported from the code under test."""

import collections
import re
import string

import pytest

from bertjax.errors import UserError
from bertjax.finetune import squad_metrics

# --- the official scripts' logic, transcribed ------------------------------------------------


def official_normalize(s):
    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    return white_space_fix(remove_articles(remove_punc(s.lower())))


def official_v1(dataset, predictions):
    def f1_score(prediction, ground_truth):
        prediction_tokens = official_normalize(prediction).split()
        ground_truth_tokens = official_normalize(ground_truth).split()
        common = collections.Counter(prediction_tokens) & collections.Counter(ground_truth_tokens)
        num_same = sum(common.values())
        if num_same == 0:
            return 0
        precision = 1.0 * num_same / len(prediction_tokens)
        recall = 1.0 * num_same / len(ground_truth_tokens)
        return (2 * precision * recall) / (precision + recall)

    def exact_match_score(prediction, ground_truth):
        return official_normalize(prediction) == official_normalize(ground_truth)

    f1 = exact_match = total = 0
    for article in dataset:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                total += 1
                if qa["id"] not in predictions:
                    continue
                ground_truths = [x["text"] for x in qa["answers"]]
                prediction = predictions[qa["id"]]
                exact_match += max(exact_match_score(prediction, g) for g in ground_truths)
                f1 += max(f1_score(prediction, g) for g in ground_truths)
    return {"exact_match": 100.0 * exact_match / total, "f1": 100.0 * f1 / total}


def official_v2(dataset, preds, na_probs=None, na_prob_thresh=1.0):
    def get_tokens(s):
        if not s:
            return []
        return official_normalize(s).split()

    def compute_exact(a_gold, a_pred):
        return int(official_normalize(a_gold) == official_normalize(a_pred))

    def compute_f1(a_gold, a_pred):
        gold_toks, pred_toks = get_tokens(a_gold), get_tokens(a_pred)
        common = collections.Counter(gold_toks) & collections.Counter(pred_toks)
        num_same = sum(common.values())
        if len(gold_toks) == 0 or len(pred_toks) == 0:
            return int(gold_toks == pred_toks)
        if num_same == 0:
            return 0
        precision = 1.0 * num_same / len(pred_toks)
        recall = 1.0 * num_same / len(gold_toks)
        return (2 * precision * recall) / (precision + recall)

    qid_to_has_ans, exact_raw, f1_raw = {}, {}, {}
    for article in dataset:
        for p in article["paragraphs"]:
            for qa in p["qas"]:
                qid_to_has_ans[qa["id"]] = bool(qa["answers"])
                gold_answers = [a["text"] for a in qa["answers"] if official_normalize(a["text"])]
                if not gold_answers:
                    gold_answers = [""]
                if qa["id"] not in preds:
                    continue
                exact_raw[qa["id"]] = max(compute_exact(a, preds[qa["id"]]) for a in gold_answers)
                f1_raw[qa["id"]] = max(compute_f1(a, preds[qa["id"]]) for a in gold_answers)
    has_probs = na_probs is not None
    if na_probs is None:
        na_probs = {k: 0.0 for k in preds}

    def apply_threshold(scores):
        return {
            qid: float(not qid_to_has_ans[qid]) if na_probs[qid] > na_prob_thresh else s
            for qid, s in scores.items()
        }

    def make_eval_dict(exact_scores, f1_scores, qid_list=None):
        if not qid_list:
            total = len(exact_scores)
            return {
                "exact": 100.0 * sum(exact_scores.values()) / total,
                "f1": 100.0 * sum(f1_scores.values()) / total,
                "total": total,
            }
        total = len(qid_list)
        return {
            "exact": 100.0 * sum(exact_scores[k] for k in qid_list) / total,
            "f1": 100.0 * sum(f1_scores[k] for k in qid_list) / total,
            "total": total,
        }

    def find_best_thresh(scores):
        num_no_ans = sum(1 for k in qid_to_has_ans if not qid_to_has_ans[k])
        cur_score = best_score = num_no_ans
        best_thresh = 0.0
        for qid in sorted(na_probs, key=lambda k: na_probs[k]):
            if qid not in scores:
                continue
            if qid_to_has_ans[qid]:
                diff = scores[qid]
            else:
                diff = -1 if preds[qid] else 0
            cur_score += diff
            if cur_score > best_score:
                best_score, best_thresh = cur_score, na_probs[qid]
        return 100.0 * best_score / len(scores), best_thresh

    exact_thresh, f1_thresh = apply_threshold(exact_raw), apply_threshold(f1_raw)
    out = make_eval_dict(exact_thresh, f1_thresh)
    for prefix, wanted in (("HasAns", True), ("NoAns", False)):
        qids = [k for k, v in qid_to_has_ans.items() if v == wanted]
        if qids:
            for k, v in make_eval_dict(exact_thresh, f1_thresh, qid_list=qids).items():
                out[f"{prefix}_{k}"] = v
    if has_probs:
        out["best_exact"], out["best_exact_thresh"] = find_best_thresh(exact_raw)
        out["best_f1"], out["best_f1_thresh"] = find_best_thresh(f1_raw)
    return out


# --- hand-written cases ------------------------------------------------------------------------


def dataset(questions):
    """Official layout from [(qid, [gold texts])], split over two articles."""
    qas = [
        {"id": q, "question": "?", "answers": [{"text": t, "answer_start": 0} for t in golds]}
        for q, golds in questions
    ]
    half = len(qas) // 2
    return [
        {"title": "a", "paragraphs": [{"context": "c", "qas": qas[:half]}]},
        {"title": "b", "paragraphs": [{"context": "c", "qas": qas[half:]}]},
    ]


def gold_of(data):
    return {
        qa["id"]: [a["text"] for a in qa["answers"]]
        for art in data
        for p in art["paragraphs"]
        for qa in p["qas"]
    }


V1_QUESTIONS = [
    ("punct", ["Denver Broncos"]),  # prediction differs only by punctuation and case
    ("article", ["the Eiffel Tower"]),  # prediction without the article
    ("several", ["Santa Clara, California", "Levi's Stadium", "Levi's Stadium in Santa Clara"]),
    ("partial", ["the 1990s and early 2000s"]),  # F1 from a partial overlap
    ("wrong", ["Paris"]),
    ("missing", ["Berlin"]),  # no prediction at all
    ("repeat", ["a cat a cat sat"]),  # repeated tokens: counted with multiplicity
    ("unicode", ["Zürich – Genève"]),  # non-ASCII punctuation is kept by the official scripts
]
V1_PREDICTIONS = {
    "punct": "denver broncos!!",
    "article": "Eiffel   Tower.",
    "several": "Levi's Stadium, California",
    "partial": "early 2000s",
    "wrong": "London",
    "repeat": "cat cat cat",
    "unicode": "zürich genève",
    "not-a-question": "ignored",
}


def test_normalization_by_hand():
    """normalize_answer lower-cases, drops ASCII punctuation and whole-word articles only,
    and collapses whitespace; F1 counts shared tokens with multiplicity."""
    norm = squad_metrics.normalize_answer
    assert norm("  The   Eiffel-Tower,  a  landmark!") == "eiffeltower landmark"
    assert norm("Theatre an Anthem") == "theatre anthem"  # "an" goes, "Theatre" stays
    assert norm("«Zürich» – Genève") == "«zürich» – genève"
    assert squad_metrics.f1_v1("cat cat cat", "a cat a cat sat") == pytest.approx(
        2 * (2 / 3) * (2 / 3) / (4 / 3)
    )
    assert squad_metrics.f1_v1("", "") == 0.0 and squad_metrics.f1_v2("", "the") == 1.0


def test_v1_equals_official():
    """On punctuation, articles, several gold answers, partial overlaps, a wrong and a missing
    prediction, our v1.1 EM/F1 equal the official script's numbers, which are not trivial."""
    data = dataset(V1_QUESTIONS)
    want = official_v1(data, V1_PREDICTIONS)
    got = squad_metrics.squad_v1_scores(gold_of(data), V1_PREDICTIONS)
    assert got == pytest.approx(want, abs=1e-12)
    assert 0 < want["exact_match"] < want["f1"] < 100
    # The missing prediction counts as 0 in the total: adding a right one raises both scores.
    better = squad_metrics.squad_v1_scores(gold_of(data), {**V1_PREDICTIONS, "missing": "berlin"})
    assert better["exact_match"] == pytest.approx(got["exact_match"] + 100 / len(V1_QUESTIONS))


V2_QUESTIONS = V1_QUESTIONS[:5] + [
    ("none-right", []),  # unanswerable, predicted ""
    ("none-wrong", []),  # unanswerable, predicted a span
    ("none-punct", []),  # unanswerable, predicted punctuation only (normalises to "")
    ("gold-article", ["The"]),  # a gold answer that normalises to "": only "" matches
    ("partial2", ["Normandy, a region in France"]),
]
V2_PREDICTIONS = {
    **{k: V1_PREDICTIONS[k] for k, _ in V1_QUESTIONS[:5]},
    "none-right": "",
    "none-wrong": "the Normans",
    "none-punct": "...",
    "gold-article": "",
    "partial2": "France",
}
# Distinct scores, plus a tie between an answerable and an unanswerable question.
NA_PROBS = {
    "punct": -3.0,
    "article": 0.5,
    "several": 2.0,
    "partial": -1.0,
    "wrong": 4.0,
    "none-right": 3.0,
    "none-wrong": 0.5,
    "none-punct": 1.5,
    "gold-article": -2.0,
    "partial2": 0.25,
}


@pytest.mark.parametrize("thresh", [1.0, 0.0, -10.0, 10.0])
def test_v2_equals_official(thresh):
    """v2.0: HasAns/NoAns breakdown, "" as the no-answer, the na_prob threshold and the best
    threshold search equal the official script's for thresholds that switch none, some and
    all questions to "no answer"."""
    data = dataset(V2_QUESTIONS)
    gold = gold_of(data)
    assert squad_metrics.squad_v2_scores(gold, V2_PREDICTIONS) == pytest.approx(
        official_v2(data, V2_PREDICTIONS)
    )
    want = official_v2(data, V2_PREDICTIONS, NA_PROBS, thresh)
    got = squad_metrics.squad_v2_scores(gold, V2_PREDICTIONS, NA_PROBS, thresh)
    assert got.keys() == want.keys() and got == pytest.approx(want, abs=1e-12)
    assert want["HasAns_total"] == 7 and want["NoAns_total"] == 3
    assert want["best_f1"] > want["f1"]  # the search finds a better threshold: not vacuous


def test_v2_best_threshold_follows_na_probs_order_on_ties():
    """On tied na_probs the official search walks them in the na_probs file's order, which can
    change the best score; ours walks the same order."""
    data = dataset([("has", ["x"]), ("none", [])])
    preds = {"has": "x", "none": "y"}
    for na_probs in ({"has": 1.0, "none": 1.0}, {"none": 1.0, "has": 1.0}):
        want = official_v2(data, preds, na_probs)
        assert squad_metrics.squad_v2_scores(gold_of(data), preds, na_probs) == want
    assert official_v2(data, preds, {"has": 1.0, "none": 1.0})["best_exact"] == 100.0
    assert official_v2(data, preds, {"none": 1.0, "has": 1.0})["best_exact"] == 50.0


def test_v2_missing_prediction_counts_as_wrong():
    """The official v2.0 script crashes on a missing prediction; ours scores the question 0
    whatever its gold: every total equals the official one on the data without that question,
    rescaled to the larger count."""
    data = dataset(V2_QUESTIONS)
    gold = gold_of(data)
    for missing in ("partial", "none-right"):
        preds = {k: v for k, v in V2_PREDICTIONS.items() if k != missing}
        probs = {k: v for k, v in NA_PROBS.items() if k != missing}
        without = dataset([q for q in V2_QUESTIONS if q[0] != missing])
        want = official_v2(without, preds, probs, 0.0)
        got = squad_metrics.squad_v2_scores(gold, preds, probs, 0.0)
        for prefix in ("", "HasAns_", "NoAns_"):
            n_want, n_got = want[prefix + "total"], got[prefix + "total"]
            holds_missing = prefix in ("", "HasAns_" if gold[missing] else "NoAns_")
            assert n_got - n_want == int(holds_missing)
            for k in ("exact", "f1"):
                assert got[prefix + k] * n_got == pytest.approx(want[prefix + k] * n_want)
        for k in ("best_exact", "best_f1"):
            assert got[k] * len(gold) == pytest.approx(want[k] * (len(gold) - 1))
            assert got[k + "_thresh"] == want[k + "_thresh"]


def test_bad_inputs():
    """No gold questions, a v1.1 question without a gold answer and na_probs lacking a
    predicted question are one clear error each."""
    with pytest.raises(UserError, match="at least one gold question"):
        squad_metrics.squad_v1_scores({}, {})
    with pytest.raises(UserError, match="'q' has no gold answer"):
        squad_metrics.squad_v1_scores({"q": []}, {"q": ""})
    with pytest.raises(UserError, match="lack 1 predicted question.*'b'"):
        squad_metrics.squad_v2_scores({"a": ["x"], "b": []}, {"a": "x", "b": ""}, {"a": 0.0})
