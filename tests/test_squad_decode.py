"""SQuAD decoding: hand-built logits pick the spans run_squad.py's rules allow; on random logits
the result equals run_squad.py's write_predictions (transcribed here); the output files."""

import collections
import json
import math

import numpy as np
import pytest

from bertjax.data.tokenizer import train_wordpiece
from bertjax.finetune import squad_decode, squad_features
from bertjax.finetune.squad_data import Answer, SquadExample

CONTEXT = "alpha beta gamma delta epsilon zeta"
WORD_SPANS = [(0, 5), (6, 10), (11, 16), (17, 22), (23, 30), (31, 35)]
# Rows of length 10: [CLS] q q [SEP] then context tokens from column 4, then [SEP].
# Window 0 holds words 0-4, window 1 words 2-5 (room 5, stride 2); word 4 ("epsilon") has its
# max context in window 1, words 2 and 3 in window 0.
WINDOWS = [(0, 5), (2, 4)]


def hand_features(num_examples=1):
    """SquadFeatures of the two windows above, for `num_examples` copies of the question."""
    rows = len(WINDOWS) * num_examples
    offsets = np.full((rows, 10, 2), -1, np.int32)
    max_context = np.zeros((rows, 10), bool)
    best = squad_features.max_context_window(WINDOWS, len(WORD_SPANS))
    for r in range(rows):
        w = r % len(WINDOWS)
        start, length = WINDOWS[w]
        offsets[r, 4 : 4 + length] = WORD_SPANS[start : start + length]
        max_context[r, 4 : 4 + length] = best[start : start + length] == w
    zeros = np.zeros((rows, 10), np.int32)
    return squad_features.SquadFeatures(
        zeros,
        zeros,
        zeros,
        zeros[:, 0],
        zeros[:, 0],
        np.repeat(np.arange(num_examples), len(WINDOWS)).astype(np.int32),
        offsets,
        max_context,
    )


def hand_logits():
    """Row 0 is window 0, row 1 window 1; -10 except where set."""
    start, end = np.full((2, 10), -10.0, np.float32), np.full((2, 10), -10.0, np.float32)
    start[0, 1] = end[0, 1] = 9.0  # the question (18): never an answer
    start[0, 8] = end[0, 8] = 6.0  # "epsilon" (12) starting in window 0, not its max context
    start[0, 5], end[0, 6] = 1.0, 1.0  # "beta gamma" (2); "beta ... epsilon" = 1 + 6 = 7
    start[1, 6] = end[1, 6] = 4.0  # "epsilon" (8) in window 1, its max context: the best
    end[1, 4] = 9.0  # "gamma" as an end: before every start allowed in window 1
    start[0, 0], end[0, 0] = 1.0, 1.0  # null scores: 2 in window 0 ...
    start[1, 0], end[1, 0] = 0.5, 0.25  # ... and 0.75 in window 1: the null score is the min
    return start, end


def test_hand_built_logits_v1():
    """The best valid span wins: question positions, a start outside its max-context window,
    an end before the start and spans over max_answer_length are never candidates; the text
    comes from the context through the offsets; n-best probabilities sum to 1."""
    ex = [SquadExample("q", "?", CONTEXT, (Answer("epsilon", 23),))]
    start, end = hand_logits()
    got = squad_decode.decode_predictions(ex, hand_features(), start, end, version_2=False)
    assert got.answers == {"q": "epsilon"} and got.null_odds is None
    texts = [e["text"] for e in got.nbest["q"]]
    assert texts[:3] == ["epsilon", "beta gamma delta epsilon", "beta gamma"]
    # Each valid span once: 4+3+2+1... from words 0-3 in window 0 (14), from words 4-5 in
    # window 1 (3); spans of window 1 starting at words 2-3 repeat window 0's text or are
    # not max context, and are left out.
    assert len(texts) == len(set(texts)) == 14 + 3
    assert got.nbest["q"][0]["start_logit"] == 4.0 and got.nbest["q"][0]["end_logit"] == 4.0
    assert math.isclose(sum(e["probability"] for e in got.nbest["q"]), 1.0)
    short = squad_decode.decode_predictions(
        ex, hand_features(), start, end, version_2=False, max_answer_length=1
    )
    assert [e["text"] for e in short.nbest["q"]][:2] == ["epsilon", "beta"]
    start[1, 6] = 2.0  # "epsilon" (6) now loses to "beta gamma delta epsilon" (7)
    assert (
        squad_decode.decode_predictions(ex, hand_features(), start, end, version_2=False).answers[
            "q"
        ]
        == "beta gamma delta epsilon"
    )


def test_hand_built_logits_v2_null_threshold():
    """v2.0: the null score is the smallest [CLS] start+end over the windows (0.75), the null
    odds are it minus the best non-null score, and the answer is "" iff they exceed the
    threshold; "" is always among the n-best."""
    ex = [SquadExample("q", "?", CONTEXT, (Answer("epsilon", 23),))]
    start, end = hand_logits()
    got = squad_decode.decode_predictions(ex, hand_features(), start, end, version_2=True)
    assert got.null_odds == {"q": pytest.approx(0.75 - 8.0)} and got.answers == {"q": "epsilon"}
    assert "" in [e["text"] for e in got.nbest["q"]]
    for thresh, want in ((-7.0, "epsilon"), (-7.25, "epsilon"), (-7.5, "")):
        got = squad_decode.decode_predictions(
            ex, hand_features(), start, end, version_2=True, null_score_diff_threshold=thresh
        )
        assert got.answers == {"q": want}


# --- against run_squad.py's write_predictions, transcribed -------------------------------------


def original_write_predictions(
    examples,
    features,
    start_logits,
    end_logits,
    n_best_size,
    max_answer_length,
    version_2,
    null_score_diff_threshold,
):
    """run_squad.py's write_predictions with token_to_orig_map/get_final_text replaced by the
    character offsets (the only change: how a token span becomes text)."""
    all_predictions, all_nbest, scores_diff = {}, {}, {}
    features_of = collections.defaultdict(list)
    for row, e in enumerate(features.example_index):
        features_of[int(e)].append(row)
    for example_index, example in enumerate(examples):
        prelim, score_null, min_null_feature, null_start, null_end = [], 1e6, 0, 0, 0
        for row in features_of[example_index]:
            sl, el = start_logits[row].tolist(), end_logits[row].tolist()
            starts = [i for i, _ in sorted(enumerate(sl), key=lambda x: x[1], reverse=True)]
            ends = [i for i, _ in sorted(enumerate(el), key=lambda x: x[1], reverse=True)]
            if version_2 and sl[0] + el[0] < score_null:
                score_null, min_null_feature = sl[0] + el[0], row
                null_start, null_end = sl[0], el[0]
            in_doc = features.token_offsets[row, :, 0] >= 0
            for s in starts[:n_best_size]:
                for e in ends[:n_best_size]:
                    if not in_doc[s] or not in_doc[e]:
                        continue
                    if not features.token_is_max_context[row, s] or e < s:
                        continue
                    if e - s + 1 > max_answer_length:
                        continue
                    prelim.append((row, s, e, sl[s], el[e]))
        if version_2:
            prelim.append((min_null_feature, 0, 0, null_start, null_end))
        prelim = sorted(prelim, key=lambda x: x[3] + x[4], reverse=True)
        seen, nbest = {}, []
        for row, s, e, s_logit, e_logit in prelim:
            if len(nbest) >= n_best_size:
                break
            if s > 0:
                off = features.token_offsets[row]
                final_text = example.context[off[s, 0] : off[e, 1]]
                if final_text in seen:
                    continue
            else:
                final_text = ""
            seen[final_text] = True
            nbest.append((final_text, s_logit, e_logit))
        if version_2 and "" not in seen:
            nbest.append(("", null_start, null_end))
        if not nbest:
            nbest.append(("empty", 0.0, 0.0))
        scores = [s + e for _, s, e in nbest]
        top = max(scores)
        exps = [math.exp(x - top) for x in scores]
        probs = [x / sum(exps) for x in exps]
        all_nbest[example.qid] = [
            {"text": t, "probability": p, "start_logit": s, "end_logit": e}
            for (t, s, e), p in zip(nbest, probs)
        ]
        if not version_2:
            all_predictions[example.qid] = nbest[0][0]
        else:
            best = next(entry for entry in nbest if entry[0])
            diff = score_null - best[1] - best[2]
            scores_diff[example.qid] = diff
            all_predictions[example.qid] = "" if diff > null_score_diff_threshold else best[0]
    return all_predictions, all_nbest, scores_diff


@pytest.fixture(scope="module")
def real_features(tmp_path_factory):
    """Features of a few questions over two contexts, many windows each, from a tiny WordPiece."""
    contexts = [
        (
            "Zürich and Genève are cities in Switzerland; Besançon and Paris are in France "
            "and São Paulo is in Brazil, far from the naïve café on the Place."
        ),
        (
            "東京 is the capital of Japan and 北京 is the capital of China, two large "
            "cities with internationalization plans."
        ),
    ]
    tok = train_wordpiece(
        (contexts + ["where is the city"]) * 20, 120, tmp_path_factory.mktemp("wp"), min_frequency=1
    )
    examples = [
        SquadExample(f"q{i}", "where is the city", contexts[i % 2], (), True) for i in range(6)
    ]
    return examples, squad_features.build_features(examples, tok, 24, 4, 6)


@pytest.mark.parametrize("version_2", [False, True])
@pytest.mark.parametrize("n_best_size, max_answer_length", [(20, 30), (4, 3), (6, 2)])
def test_random_logits_equal_run_squad(real_features, version_2, n_best_size, max_answer_length):
    """On random logits over real windows (with ties), predictions, n-best lists and null
    odds equal run_squad.py's write_predictions for several n-best and length limits."""
    examples, feats = real_features
    rng = np.random.default_rng(n_best_size + version_2)
    start = rng.normal(size=feats.input_ids.shape).round(1).astype(np.float32)  # ties
    end = rng.normal(size=feats.input_ids.shape).round(1).astype(np.float32)
    # A threshold between the null odds, so that some questions get "" and some do not.
    _, _, diffs = original_write_predictions(
        examples, feats, start, end, n_best_size, max_answer_length, version_2, 0.0
    )
    thresh = float(np.median(list(diffs.values()))) if version_2 else 0.0
    got = squad_decode.decode_predictions(
        examples,
        feats,
        start,
        end,
        version_2=version_2,
        n_best_size=n_best_size,
        max_answer_length=max_answer_length,
        null_score_diff_threshold=thresh,
    )
    answers, nbest, diffs = original_write_predictions(
        examples, feats, start, end, n_best_size, max_answer_length, version_2, thresh
    )
    assert got.answers == answers and got.nbest == nbest
    assert got.null_odds == (pytest.approx(diffs) if version_2 else None)
    assert len(feats) > 3 * len(examples) and len(set(answers.values())) > 2
    if version_2:
        assert "" in answers.values() and set(answers.values()) != {""}


def test_no_valid_span():
    """With every candidate invalid, v1.1 answers run_squad.py's nonce "empty"; v2.0 (where
    run_squad.py crashes) answers "" with the null score as its null odds."""
    ex = [SquadExample("q", "?", CONTEXT, (Answer("epsilon", 23),))]
    start, end = hand_logits()
    start[:, 2:] = -100.0  # every context start is outside the n best
    v1 = squad_decode.decode_predictions(
        ex, hand_features(), start, end, version_2=False, n_best_size=2
    )
    assert v1.answers == {"q": "empty"} and v1.nbest["q"][0]["probability"] == 1.0
    v2 = squad_decode.decode_predictions(
        ex, hand_features(), start, end, version_2=True, n_best_size=2
    )
    assert v2.answers == {"q": ""} and v2.null_odds == {"q": 0.75}
    assert [e["text"] for e in v2.nbest["q"]] == [""]


def test_writers_use_the_official_formats(tmp_path):
    """predictions.json maps id -> text, null_odds.json id -> score (v2.0 only), both JSON
    with indent 4 as run_squad.py writes them; no temporary file is left behind."""
    ex = [SquadExample("q/1", "?", CONTEXT, (Answer("epsilon", 23),))]
    start, end = hand_logits()
    v1 = squad_decode.decode_predictions(ex, hand_features(), start, end, version_2=False)
    written = squad_decode.write_predictions(v1, tmp_path / "v1")
    assert sorted(p.name for p in (tmp_path / "v1").iterdir()) == [
        "nbest_predictions.json",
        "predictions.json",
    ]
    text = written["predictions"].read_text()
    assert text == json.dumps({"q/1": "epsilon"}, indent=4) + "\n"
    v2 = squad_decode.decode_predictions(ex, hand_features(), start, end, version_2=True)
    written = squad_decode.write_predictions(v2, tmp_path / "v2")
    assert json.loads(written["null_odds"].read_text()) == {"q/1": pytest.approx(-7.25)}
    assert json.loads(written["nbest"].read_text())["q/1"][0]["text"] == "epsilon"
    assert not list(tmp_path.rglob("*.tmp"))


def test_bad_shapes():
    """Logits that do not match the features, or an example without a row, are errors."""
    ex = [SquadExample("q", "?", CONTEXT, (Answer("epsilon", 23),))]
    start, end = hand_logits()
    with pytest.raises(ValueError, match="do not match the features"):
        squad_decode.decode_predictions(ex, hand_features(), start[:1], end, version_2=False)
    with pytest.raises(ValueError, match="question 'r' has no feature row"):
        squad_decode.decode_predictions(
            ex + [SquadExample("r", "?", CONTEXT, ())], hand_features(), start, end, version_2=False
        )
