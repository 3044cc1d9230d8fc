"""SQuAD windows: answers recovered exactly from their token positions in every window that
holds them (accents, CJK, Hangul, long words in many pieces, answers at window edges), the
run_squad.py window and max-context rules, the row layout, and the bad-input errors."""

import re

import numpy as np
import pytest

from bertjax.data.tokenizer import train_sentencepiece, train_wordpiece
from bertjax.errors import UserError
from bertjax.finetune import squad_features
from bertjax.finetune.squad_data import Answer, SquadExample

CONTEXTS = [
    (
        "Zürich, Genève and Besançon are cities; the café on the Place de l'Hôtel-de-Ville sells "
        "crème brûlée to naïve tourists from São Paulo."
    ),
    (
        "東京都 is the capital of 日本 and 北京 is the capital of 中国. "
        "Seoul 서울 lies in 한국 (Korea)."
    ),
    (
        "Antidisestablishmentarianism, internationalization and "
        "pneumonoultramicroscopicsilicovolcanoconiosis are long words split into many pieces."
    ),
    # İ lower-cases to two characters; é and e + combining accent; a zero-width space.
    "İstanbul, Ångström and cafe\u0301 au lait; the résumé of a naïve\u200b coöperative.",
]
FILLER = ["the cat sat on the mat", "a long question about cities and words"]
MAX_SEQ_LEN, DOC_STRIDE, MAX_QUERY = 32, 5, 8
EDGE_PUNCTUATION = ".,;:()"


@pytest.fixture(scope="module", params=["wordpiece-uncased", "wordpiece-cased", "sentencepiece"])
def tokenizer(request, tmp_path_factory):
    """A tiny tokenizer trained on the contexts: few pieces, so long words split many ways."""
    out = tmp_path_factory.mktemp(request.param)
    lines = (CONTEXTS + FILLER) * 20
    if request.param == "sentencepiece":
        return train_sentencepiece(lines, 100, out, lowercase=True)
    return train_wordpiece(
        lines, 150, out, lowercase=request.param.endswith("uncased"), min_frequency=1
    )


def word_span_examples():
    """A question per run of one or two whitespace words of each context (edge punctuation
    cut off), with questions of uneven length, one longer than MAX_QUERY tokens."""
    examples = []
    for c, context in enumerate(CONTEXTS):
        words = []
        for m in re.finditer(r"\S+", context):
            start, end = m.start(), m.end()
            while context[start] in EDGE_PUNCTUATION:
                start += 1
            while context[end - 1] in EDGE_PUNCTUATION:
                end -= 1
            words.append((start, end))
        for i in range(len(words)):
            for j in (i, i + 1):
                if j < len(words):
                    start, end = words[i][0], words[j][1]
                    question = " ".join(["where is the cat"] * (1 + (i + j) % 4))
                    examples.append(
                        SquadExample(
                            f"c{c}-{i}-{j}", question, context, (Answer(context[start:end], start),)
                        )
                    )
    return examples


def original_doc_spans(num_tokens, max_tokens_for_doc, doc_stride):
    """run_squad.py's sliding window, transcribed."""
    doc_spans, start_offset = [], 0
    while start_offset < num_tokens:
        length = min(num_tokens - start_offset, max_tokens_for_doc)
        doc_spans.append((start_offset, length))
        if start_offset + length == num_tokens:
            break
        start_offset += min(length, doc_stride)
    return doc_spans


def original_is_max_context(doc_spans, cur_span_index, position):
    """run_squad.py's _check_is_max_context, transcribed."""
    best_score, best_span_index = None, None
    for span_index, (start, length) in enumerate(doc_spans):
        end = start + length - 1
        if position < start or position > end:
            continue
        score = min(position - start, end - position) + 0.01 * length
        if best_score is None or score > best_score:
            best_score, best_span_index = score, span_index
    return cur_span_index == best_span_index


def test_answers_recovered_exactly_in_every_window(tokenizer):
    """For every answer and every window: the window holds the answer's characters iff its
    positions are not [CLS], and then the context characters of its first to last token are
    exactly the answer's; every answer is held somewhere, some at a window's first and some at
    its last context token (answers longer than any window's overlap may be held nowhere and
    then point at [CLS] everywhere); no window is longer than max_seq_len."""
    examples = word_span_examples()
    feats = squad_features.build_features(examples, tokenizer, MAX_SEQ_LEN, DOC_STRIDE, MAX_QUERY)
    assert feats.input_ids.shape == (len(feats), MAX_SEQ_LEN) and len(feats) > 3 * len(examples)
    held = np.zeros(len(examples), int)
    at_first = at_last = 0
    for row in range(len(feats)):
        ex = examples[feats.example_index[row]]
        answer, offsets = ex.answers[0], feats.token_offsets[row]
        in_context = np.flatnonzero(offsets[:, 0] >= 0)
        first, last = in_context[0], in_context[-1]
        holds = offsets[first, 0] <= answer.start and answer.end <= offsets[last, 1]
        start, end = feats.start_positions[row], feats.end_positions[row]
        assert (start != 0) == holds and (end != 0) == holds
        if holds:
            assert first <= start <= end <= last
            assert ex.context[offsets[start, 0] : offsets[end, 1]] == answer.text
            held[feats.example_index[row]] += 1
            at_first += start == first
            at_last += end == last
        else:
            assert start == end == 0
    # Windows overlap by at least 21 - 5 = 16 tokens: any shorter answer is wholly in one.
    short = np.array([len(tokenizer.encode(ex.answers[0].text)) <= 12 for ex in examples])
    assert held[short].min() >= 1 and at_first > 5 and at_last > 5
    # Not vacuous: accented, CJK, Hangul and many-piece answers are among those recovered.
    texts = {ex.answers[0].text for ex in examples}
    assert {"Besançon", "東京都", "서울", "İstanbul", "cafe\u0301", "naïve\u200b"} <= texts
    assert any(len(tokenizer.encode(t)) >= 8 for t in texts)


def test_windows_and_max_context_follow_run_squad(tokenizer):
    """Each example's windows are run_squad.py's doc spans over the tokenizer's own ids of the
    context (question cut to max_query_length), the row layout is [CLS] q [SEP] window [SEP]
    with segment 0/1 and padding, and the max-context flags equal _check_is_max_context."""
    examples = word_span_examples()[::7]
    feats = squad_features.build_features(examples, tokenizer, MAX_SEQ_LEN, DOC_STRIDE, MAX_QUERY)
    cls, sep, pad = tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id
    truncated = 0
    for e, ex in enumerate(examples):
        rows = np.flatnonzero(feats.example_index == e)
        query = tokenizer.encode(ex.question)[:MAX_QUERY]
        truncated += len(tokenizer.encode(ex.question)) > MAX_QUERY
        doc = tokenizer.encode(ex.context)
        spans = original_doc_spans(len(doc), MAX_SEQ_LEN - len(query) - 3, DOC_STRIDE)
        assert len(rows) == len(spans)
        for w, (row, (start, length)) in enumerate(zip(rows, spans)):
            n = len(query) + length + 3
            want = [cls, *query, sep, *doc[start : start + length], sep] + [pad] * (MAX_SEQ_LEN - n)
            assert feats.input_ids[row].tolist() == want
            assert feats.input_mask[row].tolist() == [1] * n + [0] * (MAX_SEQ_LEN - n)
            segments = [0] * (len(query) + 2) + [1] * (length + 1) + [0] * (MAX_SEQ_LEN - n)
            assert feats.segment_ids[row].tolist() == segments
            doc_cols = range(len(query) + 2, len(query) + 2 + length)
            want_max = [original_is_max_context(spans, w, start + i) for i in range(length)]
            assert feats.token_is_max_context[row, doc_cols].tolist() == want_max
            assert not feats.token_is_max_context[row, : len(query) + 2].any()
            assert (feats.token_offsets[row, : len(query) + 2] == -1).all()
            assert (feats.token_offsets[row, n - 1 :] == -1).all()
    assert truncated > 0


def test_unanswerable_questions_point_at_cls(tokenizer):
    """A v2.0 unanswerable question gets [CLS] (0) as start and end in each of its windows."""
    ex = SquadExample("none", "where is the dog", CONTEXTS[0], (), is_impossible=True)
    feats = squad_features.build_features([ex], tokenizer, MAX_SEQ_LEN, DOC_STRIDE, MAX_QUERY)
    assert len(feats) > 3
    assert not feats.start_positions.any() and not feats.end_positions.any()


def test_bad_window_sizes_and_untokenizable_input(tokenizer):
    """A doc stride not smaller than a window's room for context names --doc-stride; no room at
    all names --max-seq-len; a context or answer with no token names the question."""
    examples = word_span_examples()[:2]
    room = 32 - 8 - 3
    with pytest.raises(UserError, match=rf"--doc-stride {room} must be .* smaller than the {room}"):
        squad_features.build_features(examples, tokenizer, 32, room, 8)
    squad_features.build_features(examples, tokenizer, 32, room - 1, 8)  # the largest allowed
    with pytest.raises(UserError, match="--doc-stride 0 must be at least 1"):
        squad_features.build_features(examples, tokenizer, 32, 0, 8)
    with pytest.raises(UserError, match="--max-seq-len 11 leaves no room"):
        squad_features.build_features(examples, tokenizer, 11, 1, 8)
    blank = SquadExample("blank", "q", "\u200b\u200b", (), is_impossible=True)
    with pytest.raises(UserError, match="question 'blank': its context has no tokens"):
        squad_features.build_features([blank], tokenizer, 32, 4, 8)
    invisible = SquadExample("zw", "q", "cat \u200b sat", (Answer("\u200b", 4),))
    if tokenizer.kind == "sentencepiece":  # its "▁" piece covers the zero-width space
        assert len(squad_features.build_features([invisible], tokenizer, 32, 4, 8)) == 1
        return
    with pytest.raises(UserError, match=r"question 'zw': its answer '\\u200b' covers no token"):
        squad_features.build_features([invisible], tokenizer, 32, 4, 8)


def test_max_context_on_arbitrary_windows():
    """max_context_window equals _check_is_max_context also on windows run_squad.py never
    makes (a short window before a long one), where the 0.01 x length tie-break decides."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        starts = np.sort(rng.integers(0, 12, rng.integers(1, 5)))
        spans = [(int(s), int(rng.integers(1, 10))) for s in starts]
        num_tokens = max(s + n for s, n in spans)
        best = squad_features.max_context_window(spans, num_tokens)
        for w, (start, length) in enumerate(spans):
            for pos in range(start, start + length):
                assert (best[pos] == w) == original_is_max_context(spans, w, pos)
