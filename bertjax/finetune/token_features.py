"""Sentences of words -> BERT rows for token classification, and row predictions back to words.

Each sentence becomes a row `[CLS] word pieces [SEP]`, padded to max_seq_len; a sentence of
more than max_seq_len - 2 pieces becomes several windows of that many pieces, each starting
`doc_stride` pieces after the one before (run_squad.py's windows), so no piece is left out.
A word's label sits on its first piece; its other pieces, [CLS], [SEP] and padding have
weight 0 in the loss. A word whose first piece lies in several windows is labelled, and
predicted, only in the window where that piece has the most context (run_squad.py's
max-context rule), so every word is scored exactly once. A word the tokenizer turns into no
piece at all (a lone control or zero-width character) is given one [UNK] piece: every word
keeps a position, and a prediction.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from bertjax.errors import UserError
from bertjax.finetune.squad_features import max_context_window, window_starts

MAX_SEQ_LEN = 128
KEYS = ("input_ids", "input_mask", "segment_ids", "label_ids", "label_weights")


@dataclasses.dataclass(frozen=True)
class TokenFeatures:
    """Model inputs, labels and the word map of n rows of length L over S sentences."""

    input_ids: np.ndarray  # int32 [n, L]
    input_mask: np.ndarray  # int32 [n, L]
    segment_ids: np.ndarray  # int32 [n, L]: all 0, one segment
    label_ids: np.ndarray  # int32 [n, L]: a word's label at the first piece this row scores
    label_weights: np.ndarray  # float32 [n, L]: 1 there, 0 elsewhere (all 0 when unlabelled)
    sentence_index: np.ndarray  # int32 [n]: the sentence each row comes from
    word_index: np.ndarray  # int32 [n, L]: the scored word's number in its sentence, else -1
    words_per_sentence: np.ndarray  # int32 [S]

    def __len__(self) -> int:
        return len(self.input_ids)

    def model_inputs(self) -> dict[str, np.ndarray]:
        """The arrays a token-classification head trains on."""
        return {k: getattr(self, k) for k in KEYS}


def check_window(max_seq_len: int, doc_stride: int | None) -> tuple[int, int]:
    """(pieces a window holds, stride); doc_stride None: half a window. A UserError names the
    flag at fault."""
    room = max_seq_len - 2  # [CLS] pieces [SEP]
    if room < 1:
        raise UserError(
            f"--max-seq-len {max_seq_len} leaves no room for a word piece beside "
            "[CLS] and [SEP]; it must be at least 3"
        )
    stride = max(1, room // 2) if doc_stride is None else doc_stride
    if not 1 <= stride <= room:
        raise UserError(
            f"--doc-stride {stride} must be between 1 and the {room} pieces a window "
            f"holds (--max-seq-len {max_seq_len} - 2), or windows would skip pieces"
        )
    return room, stride


def word_pieces(tokenizer, words: Sequence[str]) -> list[list[int]]:
    """Each word's piece ids ([UNK] for a word that gives none), the words encoded one by one
    (as the word-split text: both tokenizer kinds split at whitespace first)."""
    unk = tokenizer.unk_id
    return [list(ids) or [unk] for ids in tokenizer.encode_batch(list(words))]


def build_features(
    sentences: Sequence[Sequence[str]],
    tokenizer,
    labels: Sequence[Sequence[int]] | None = None,
    max_seq_len: int = MAX_SEQ_LEN,
    doc_stride: int | None = None,
) -> TokenFeatures:
    """The rows of every sentence (lists of words), in order; `labels`: each word's label id
    (None: unlabelled sentences, all weights 0)."""
    room, stride = check_window(max_seq_len, doc_stride)
    if labels is not None:
        if len(labels) != len(sentences):
            raise ValueError(f"{len(labels)} label lists for {len(sentences)} sentences")
        for s, (words, ids) in enumerate(zip(sentences, labels)):
            if len(words) != len(ids):
                raise ValueError(f"sentence {s} has {len(words)} words but {len(ids)} labels")
    flat_words = [w for words in sentences for w in words]
    pieces_of_words = word_pieces(tokenizer, flat_words) if flat_words else []
    cls_id, sep_id = tokenizer.cls_id, tokenizer.sep_id
    rows = []  # (sentence, ids, scored positions, their words)
    w0 = 0
    for s, words in enumerate(sentences):
        pieces = pieces_of_words[w0 : w0 + len(words)]
        w0 += len(words)
        flat = [p for ids in pieces for p in ids]
        first = np.cumsum([0] + [len(ids) for ids in pieces[:-1]]).astype(np.int64)[: len(words)]
        spans = window_starts(len(flat), room, stride) or [(0, 0)]
        best_of_word = max_context_window(spans, len(flat))[first]
        for w, (start, length) in enumerate(spans):
            scored = np.flatnonzero(best_of_word == w) if len(words) else np.zeros(0, np.int64)
            rows.append(
                (
                    s,
                    [cls_id, *flat[start : start + length], sep_id],
                    first[scored] - start + 1,
                    scored,
                )
            )
    return _stack(rows, sentences, labels, max_seq_len, tokenizer.pad_id)


def _stack(rows, sentences, labels, max_seq_len: int, pad_id: int) -> TokenFeatures:
    n = len(rows)
    input_ids = np.full((n, max_seq_len), pad_id, np.int32)
    input_mask = np.zeros((n, max_seq_len), np.int32)
    label_ids = np.zeros((n, max_seq_len), np.int32)
    word_index = np.full((n, max_seq_len), -1, np.int32)
    for i, (s, ids, positions, words) in enumerate(rows):
        input_ids[i, : len(ids)] = ids
        input_mask[i, : len(ids)] = 1
        word_index[i, positions] = words
        if labels is not None:
            label_ids[i, positions] = np.asarray(labels[s], np.int32)[words]
    weights = (word_index >= 0) if labels is not None else np.zeros_like(word_index, bool)
    return TokenFeatures(
        input_ids, input_mask, np.zeros((n, max_seq_len), np.int32), label_ids,
        weights.astype(np.float32), np.array([r[0] for r in rows], np.int32).reshape(n),
        word_index, np.array([len(words) for words in sentences], np.int32))  # fmt: skip


def decode(features: TokenFeatures, predictions, label_names: Sequence[str] | None = None):
    """Each sentence's one prediction per word, from the rows' predictions: label ids [n, L],
    or logits [n, L, K] (their argmax). Returns a list of int arrays [words], or of tuples of
    names when `label_names` is given."""
    predictions = np.asarray(predictions)
    if predictions.ndim == 3:
        predictions = predictions.argmax(-1)
    if predictions.shape != features.word_index.shape:
        raise ValueError(
            f"predictions of shape {predictions.shape} do not match the features' "
            f"{features.word_index.shape}"
        )
    rows, cols = np.nonzero(features.word_index >= 0)
    offsets = np.concatenate([[0], np.cumsum(features.words_per_sentence, dtype=np.int64)])
    flat_index = offsets[features.sentence_index[rows]] + features.word_index[rows, cols]
    counts = np.bincount(flat_index, minlength=offsets[-1])
    if len(counts) != offsets[-1] or (counts != 1).any():
        raise ValueError("the features do not score every word exactly once")
    flat = np.empty(offsets[-1], np.int64)
    flat[flat_index] = predictions[rows, cols]
    per_sentence = np.split(flat, offsets[1:-1])
    if label_names is None:
        return per_sentence
    return [tuple(label_names[i] for i in ids) for ids in per_sentence]
