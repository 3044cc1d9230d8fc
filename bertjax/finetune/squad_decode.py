"""Span logits of SQuAD windows -> answer texts, as run_squad.py's write_predictions.

For each question: the `n_best_size` highest start and end logits of each of its windows give
candidate spans; a candidate must lie in the context, start at a token for which that window
is the max-context one, end no earlier than it starts and be at most `max_answer_length`
tokens long. Candidates are ranked by start + end logit and mapped back to the context's own
text through the token character offsets. For v2.0 the null score is the smallest [CLS]
start + end logit over the windows; a question is answered "" when null score minus the
best non-null score exceeds `null_score_diff_threshold`, and that difference is written to
null_odds.json (the official v2.0 evaluator's --na-prob-file).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

N_BEST_SIZE = 20
MAX_ANSWER_LENGTH = 30


@dataclasses.dataclass(frozen=True)
class SquadPredictions:
    """What decoding gives, keyed by question id in the examples' order."""

    answers: dict[str, str]  # predictions.json
    nbest: dict[str, list[dict]]  # nbest_predictions.json: text, probability, logits
    null_odds: dict[str, float] | None  # null_odds.json (v2.0 only): null minus best non-null


def best_indexes(logits_L: np.ndarray, n_best_size: int) -> np.ndarray:
    """Indices of the `n_best_size` largest logits, largest first, lower index on a tie."""
    return np.argsort(-np.asarray(logits_L, np.float64), kind="stable")[:n_best_size]


def _softmax(scores: list[float]) -> list[float]:
    if not scores:
        return []
    top = max(scores)
    exps = [math.exp(s - top) for s in scores]
    return [e / sum(exps) for e in exps]


def _candidates(start_L, end_L, offsets_Lx2, max_context_L, n_best_size, max_answer_length):
    """(start, end, start_logit, end_logit) of the valid spans of one window."""
    in_context = offsets_Lx2[:, 0] >= 0
    out = []
    for start in best_indexes(start_L, n_best_size):
        if not (in_context[start] and max_context_L[start]):
            continue
        for end in best_indexes(end_L, n_best_size):
            if in_context[end] and start <= end < start + max_answer_length:
                out.append((int(start), int(end), float(start_L[start]), float(end_L[end])))
    return out


def decode_example(
    context,
    windows,
    start_logits,
    end_logits,
    features,
    *,
    version_2: bool,
    n_best_size: int,
    max_answer_length: int,
):
    """(n-best list, null score or None) of one question from the rows `windows` it owns."""
    prelim = []  # (score, window, start, end, start_logit, end_logit)
    null = None  # (score, start_logit, end_logit) of the window with the smallest null score
    for w in windows:
        start_L, end_L = start_logits[w], end_logits[w]
        if version_2:
            score = float(start_L[0]) + float(end_L[0])
            if null is None or score < null[0]:
                null = (score, float(start_L[0]), float(end_L[0]))
        for start, end, s_logit, e_logit in _candidates(
            start_L,
            end_L,
            features.token_offsets[w],
            features.token_is_max_context[w],
            n_best_size,
            max_answer_length,
        ):
            prelim.append((s_logit + e_logit, w, start, end, s_logit, e_logit))
    if version_2:
        prelim.append((null[0], None, 0, 0, null[1], null[2]))
    # A stable sort on the score alone, as the original's sorted(..., reverse=True).
    prelim.sort(key=lambda p: p[0], reverse=True)
    nbest, seen = [], set()
    for _, w, start, end, s_logit, e_logit in prelim:
        if len(nbest) >= n_best_size:
            break
        if w is None:
            text = ""
        else:
            char_start = features.token_offsets[w, start, 0]
            char_end = features.token_offsets[w, end, 1]
            text = context[char_start:char_end]
            if not text or text in seen:  # empty: a span of bare sentencepiece "▁" pieces
                continue
        seen.add(text)
        nbest.append({"text": text, "start_logit": s_logit, "end_logit": e_logit})
    if version_2 and "" not in seen:
        nbest.append({"text": "", "start_logit": null[1], "end_logit": null[2]})
    if not nbest:  # no valid span at all (v1.1): the original's nonce answer
        nbest.append({"text": "empty", "start_logit": 0.0, "end_logit": 0.0})
    probs = _softmax([e["start_logit"] + e["end_logit"] for e in nbest])
    nbest = [{"text": e["text"], "probability": p, "start_logit": e["start_logit"],
              "end_logit": e["end_logit"]} for e, p in zip(nbest, probs)]  # fmt: skip
    return nbest, (null[0] if version_2 else None)


def decode_predictions(
    examples,
    features,
    start_logits,
    end_logits,
    *,
    version_2: bool,
    n_best_size: int = N_BEST_SIZE,
    max_answer_length: int = MAX_ANSWER_LENGTH,
    null_score_diff_threshold: float = 0.0,
) -> SquadPredictions:
    """Answers of every example from the [n, L] start/end logits of `features`' n rows.

    `examples` are the SquadExamples the features were built from (in the same order);
    v2.0 (`version_2`) adds the null answer and its score difference.
    """
    start_logits, end_logits = np.asarray(start_logits), np.asarray(end_logits)
    if start_logits.shape != features.input_ids.shape or end_logits.shape != start_logits.shape:
        raise ValueError(
            f"logits of shapes {start_logits.shape} and {end_logits.shape} do not "
            f"match the features' {features.input_ids.shape}"
        )
    windows_of = defaultdict(list)
    for row, example_index in enumerate(features.example_index):
        windows_of[int(example_index)].append(row)
    answers, all_nbest, null_odds = {}, {}, {} if version_2 else None
    for example_index, ex in enumerate(examples):
        if not windows_of[example_index]:
            raise ValueError(f"question {ex.qid!r} has no feature row")
        nbest, score_null = decode_example(
            ex.context,
            windows_of[example_index],
            start_logits,
            end_logits,
            features,
            version_2=version_2,
            n_best_size=n_best_size,
            max_answer_length=max_answer_length,
        )
        all_nbest[ex.qid] = nbest
        if not version_2:
            answers[ex.qid] = nbest[0]["text"]
            continue
        best = next((e for e in nbest if e["text"]), None)
        if best is None:  # no valid span in any window: the null answer is the only one
            null_odds[ex.qid], answers[ex.qid] = score_null, ""
            continue
        diff = score_null - best["start_logit"] - best["end_logit"]
        null_odds[ex.qid] = diff
        answers[ex.qid] = "" if diff > null_score_diff_threshold else best["text"]
    return SquadPredictions(answers, all_nbest, null_odds)


def _write_json(path, obj) -> Path:
    """Writes `obj` as the original does (indent 4, final newline), via a temporary name so
    that an interrupted run never leaves a file that looks complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=4, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_predictions(predictions: SquadPredictions, out_dir) -> dict[str, Path]:
    """Writes predictions.json ({id: answer}), nbest_predictions.json and, for v2.0,
    null_odds.json ({id: null minus best non-null score}) in the official formats."""
    out_dir = Path(out_dir)
    written = {
        "predictions": _write_json(out_dir / "predictions.json", predictions.answers),
        "nbest": _write_json(out_dir / "nbest_predictions.json", predictions.nbest),
    }
    if predictions.null_odds is not None:
        written["null_odds"] = _write_json(out_dir / "null_odds.json", predictions.null_odds)
    return written
