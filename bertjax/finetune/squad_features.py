"""SQuAD examples -> fixed-length windows ("features"), as google-research/bert's run_squad.py.

Each question becomes one or more rows `[CLS] question [SEP] context window [SEP]`: the
question cut to `max_query_length` tokens, the context cut into windows of the room left in
`max_seq_len`, each starting `doc_stride` tokens after the previous one. Answer positions come
from the tokenizer's character offsets (as HF's QA preprocessing), not from run_squad.py's
whitespace words; an answer that is not wholly inside a window, and a v2.0 unanswerable
question, point at [CLS] (position 0). For decoding every row keeps the example it came from,
each context token's character span in the context, and whether this window gives the token
its most context (run_squad.py's `_check_is_max_context`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from bertjax.errors import UserError
from bertjax.finetune.squad_data import SquadExample

MAX_SEQ_LEN = 384
DOC_STRIDE = 128
MAX_QUERY_LENGTH = 64


@dataclasses.dataclass(frozen=True)
class SquadFeatures:
    """Model inputs and decoding maps of n windows of length L."""

    input_ids: np.ndarray  # int32 [n, L]
    input_mask: np.ndarray  # int32 [n, L]
    segment_ids: np.ndarray  # int32 [n, L]
    start_positions: np.ndarray  # int32 [n]: answer's first token, 0 ([CLS]) when none here
    end_positions: np.ndarray  # int32 [n]: answer's last token, 0 ([CLS]) when none here
    example_index: np.ndarray  # int32 [n]: which example (question) the window belongs to
    token_offsets: np.ndarray  # int32 [n, L, 2]: [start, end) chars in the context; -1 if none
    token_is_max_context: np.ndarray  # bool [n, L]: this window is the token's best context

    def __len__(self) -> int:
        return len(self.input_ids)

    def model_inputs(self) -> dict[str, np.ndarray]:
        """The arrays a span head trains on (batch keys as the original BERT names them)."""
        keys = ("input_ids", "input_mask", "segment_ids", "start_positions", "end_positions")
        return {k: getattr(self, k) for k in keys}


# --- character offsets ---------------------------------------------------------------------


def context_offsets(tokenizer, context: str) -> tuple[list[int], np.ndarray]:
    """Token ids of `context` and each token's [start, end) span in it (int32 [T, 2]).

    Spans are made comparable across tokenizers: whitespace at their edges is cut away
    (sentencepiece's `▁` pieces carry the space before a word; a bare `▁` becomes an empty
    span where the next word starts), and characters no token covers that are not
    whitespace (combining accents and control characters the normaliser dropped) are given
    to the token before them, so that a span of tokens covers every character of its text.
    """
    ids, spans = tokenizer.encode_with_offsets(context)
    n = len(context)
    covered_to = 0
    out = np.zeros((len(spans), 2), np.int32)
    for i, (start, end) in enumerate(spans):
        while start < end and context[start].isspace():
            start += 1
        while end > start and context[end - 1].isspace():
            end -= 1
        start = max(start, covered_to) if start == end else start
        out[i] = start, max(end, start)
        covered_to = max(covered_to, out[i, 1])
    # Extend each non-empty span over the uncovered, non-space characters that follow it.
    next_start = n
    for i in range(len(out) - 1, -1, -1):
        start, end = out[i]
        if end > start:
            while end < next_start and end < n and not context[end].isspace():
                end += 1
            out[i, 1] = end
            next_start = start
    return ids, out


def answer_token_span(offsets_Tx2: np.ndarray, start_char: int, end_char: int):
    """(first, last) token overlapping the characters [start_char, end_char), or None."""
    overlap = (offsets_Tx2[:, 0] < end_char) & (offsets_Tx2[:, 1] > start_char)
    hits = np.flatnonzero(overlap)
    return (int(hits[0]), int(hits[-1])) if len(hits) else None


# --- windows -------------------------------------------------------------------------------


def check_window_sizes(max_seq_len: int, doc_stride: int, max_query_length: int) -> int:
    """The fewest context tokens a window holds; raises a UserError naming the flag at fault."""
    if max_query_length < 1:
        raise UserError(f"--max-query-length must be at least 1, got {max_query_length}")
    room = max_seq_len - max_query_length - 3  # [CLS] question [SEP] context [SEP]
    if room < 1:
        raise UserError(
            f"--max-seq-len {max_seq_len} leaves no room for context after a "
            f"question of --max-query-length {max_query_length} and 3 special "
            "tokens; raise --max-seq-len or lower --max-query-length"
        )
    if not 1 <= doc_stride < room:
        raise UserError(
            f"--doc-stride {doc_stride} must be at least 1 and smaller than the "
            f"{room} context tokens a window holds (--max-seq-len {max_seq_len} - "
            f"--max-query-length {max_query_length} - 3), or windows would skip "
            "or not overlap context"
        )
    return room


def window_starts(num_tokens: int, room: int, doc_stride: int) -> list[tuple[int, int]]:
    """(start, length) of each window over `num_tokens` context tokens, as run_squad.py."""
    spans, start = [], 0
    while start < num_tokens:
        length = min(num_tokens - start, room)
        spans.append((start, length))
        if start + length == num_tokens:
            break
        start += min(length, doc_stride)
    return spans


def max_context_window(spans: list[tuple[int, int]], num_tokens: int) -> np.ndarray:
    """int [num_tokens]: for each token, the window where min(left, right context) + 0.01 *
    window length is largest (the first on a tie), as run_squad.py's _check_is_max_context."""
    best_score = np.full(num_tokens, -np.inf)
    best_window = np.zeros(num_tokens, np.int64)
    for w, (start, length) in enumerate(spans):
        pos = np.arange(start, start + length)
        score = np.minimum(pos - start, start + length - 1 - pos) + 0.01 * length
        better = score > best_score[pos]
        best_score[pos[better]] = score[better]
        best_window[pos[better]] = w
    return best_window


def build_features(
    examples: list[SquadExample],
    tokenizer,
    max_seq_len: int = MAX_SEQ_LEN,
    doc_stride: int = DOC_STRIDE,
    max_query_length: int = MAX_QUERY_LENGTH,
) -> SquadFeatures:
    """The windows of every example (in order), their answer positions and decoding maps."""
    check_window_sizes(max_seq_len, doc_stride, max_query_length)
    cls_id, sep_id, pad_id = tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id
    rows: list[tuple] = []
    context_cache: dict[str, tuple[list[int], np.ndarray]] = {}
    for example_index, ex in enumerate(examples):
        if ex.context not in context_cache:  # the questions of one paragraph share it
            context_cache = {ex.context: context_offsets(tokenizer, ex.context)}
        doc_ids, doc_offsets = context_cache[ex.context]
        if not doc_ids:
            raise UserError(f"question {ex.qid!r}: its context has no tokens")
        query_ids = tokenizer.encode(ex.question)[:max_query_length]
        answer_tokens = None
        if ex.answers and not ex.is_impossible:
            answer = ex.answers[0]
            answer_tokens = answer_token_span(doc_offsets, answer.start, answer.end)
            if answer_tokens is None:
                raise UserError(
                    f"question {ex.qid!r}: its answer {answer.text!r} covers no "
                    "token of the context"
                )
        room = max_seq_len - len(query_ids) - 3
        spans = window_starts(len(doc_ids), room, doc_stride)
        best_window = max_context_window(spans, len(doc_ids))
        doc_offset = len(query_ids) + 2  # [CLS] question [SEP]
        for w, (start, length) in enumerate(spans):
            ids = [cls_id, *query_ids, sep_id, *doc_ids[start : start + length], sep_id]
            start_pos = end_pos = 0
            if answer_tokens and start <= answer_tokens[0] and answer_tokens[1] < start + length:
                start_pos = answer_tokens[0] - start + doc_offset
                end_pos = answer_tokens[1] - start + doc_offset
            rows.append(
                (
                    example_index,
                    ids,
                    doc_offset,
                    doc_offsets[start : start + length],
                    best_window[start : start + length] == w,
                    start_pos,
                    end_pos,
                )
            )
    return _stack(rows, max_seq_len, pad_id)


def _stack(rows: list[tuple], max_seq_len: int, pad_id: int) -> SquadFeatures:
    n, length = len(rows), max_seq_len
    input_ids = np.full((n, length), pad_id, np.int32)
    input_mask = np.zeros((n, length), np.int32)
    segment_ids = np.zeros((n, length), np.int32)
    offsets = np.full((n, length, 2), -1, np.int32)
    max_context = np.zeros((n, length), bool)
    for i, (_, ids, doc_offset, span_offsets, span_max, _, _) in enumerate(rows):
        input_ids[i, : len(ids)] = ids
        input_mask[i, : len(ids)] = 1
        segment_ids[i, doc_offset : len(ids)] = 1  # the context and its closing [SEP]
        offsets[i, doc_offset : doc_offset + len(span_offsets)] = span_offsets
        max_context[i, doc_offset : doc_offset + len(span_max)] = span_max
    column = lambda k: np.array([r[k] for r in rows], np.int32).reshape(n)
    return SquadFeatures(
        input_ids, input_mask, segment_ids, column(5), column(6), column(0), offsets, max_context
    )
