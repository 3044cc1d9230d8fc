"""Token-classification rows: `[CLS] pieces [SEP]` with each word's label on its first piece
only, windows over long sentences that leave no piece out and score every word exactly once
(in its max-context window, run_squad.py's rule, checked by brute force here), decoding back
to one prediction per word, for WordPiece (cased, uncased) and sentencepiece tokenizers."""

import numpy as np
import pytest

from bertjax.data.tokenizer import train_sentencepiece, train_wordpiece
from bertjax.errors import UserError
from bertjax.finetune import batches, token_features

TEXT = [
    "EU rejects German call to boycott British lamb .",
    "Peter Blackburn said Zürich and Besançon are cities in Europe .",
    "Antidisestablishmentarianism and internationalization are long words .",
    "東京 is the capital of 日本 ; the 1996-08-22 figures were 3.14 percent .",
]
SENTENCES = [line.split() for line in TEXT]


@pytest.fixture(scope="module", params=["wordpiece-uncased", "wordpiece-cased", "sentencepiece"])
def tokenizer(request, tmp_path_factory):
    """A tiny tokenizer trained on TEXT: long words split into many pieces."""
    out = tmp_path_factory.mktemp(request.param)
    lines = TEXT * 20
    if request.param == "sentencepiece":
        return train_sentencepiece(lines, 70, out, lowercase=True)
    return train_wordpiece(
        lines, 120, out, lowercase=request.param.endswith("uncased"), min_frequency=1
    )


def labels_of(sentences, num_labels=5):
    """Made-up label ids, different from word to word."""
    return [[(s + 3 * k) % num_labels for k in range(len(words))]
            for s, words in enumerate(sentences)]  # fmt: skip


def test_one_row_per_short_sentence(tokenizer):
    """Each row is [CLS], the words' pieces in order, [SEP], then padding; the label of each
    word sits on its first piece, weight 1 there and 0 on every other position; the pieces of
    the words one by one are those of the sentence's text."""
    labels = labels_of(SENTENCES)
    features = token_features.build_features(SENTENCES, tokenizer, labels, max_seq_len=64)
    assert len(features) == len(SENTENCES)
    assert features.sentence_index.tolist() == [0, 1, 2, 3]
    assert features.words_per_sentence.tolist() == [len(w) for w in SENTENCES]
    for s, words in enumerate(SENTENCES):
        pieces = token_features.word_pieces(tokenizer, words)
        flat = [p for ids in pieces for p in ids]
        assert flat == tokenizer.encode(" ".join(words))
        n = len(flat) + 2
        assert features.input_ids[s, :n].tolist() == [tokenizer.cls_id, *flat, tokenizer.sep_id]
        assert (features.input_ids[s, n:] == tokenizer.pad_id).all()
        assert features.input_mask[s].tolist() == [1] * n + [0] * (64 - n)
        first = 1 + np.cumsum([0] + [len(p) for p in pieces[:-1]])
        expected_ids = np.zeros(64, np.int32)
        expected_ids[first] = labels[s]
        assert features.label_ids[s].tolist() == expected_ids.tolist()
        assert np.flatnonzero(features.label_weights[s]).tolist() == first.tolist()
        assert np.flatnonzero(features.word_index[s] >= 0).tolist() == first.tolist()
        assert features.word_index[s, first].tolist() == list(range(len(words)))
    assert (features.segment_ids == 0).all()
    assert features.label_weights.dtype == np.float32 and features.label_ids.dtype == np.int32


def original_windows(num_tokens, room, stride):
    """run_squad.py's doc spans, transcribed."""
    spans, start = [], 0
    while start < num_tokens:
        length = min(num_tokens - start, room)
        spans.append((start, length))
        if start + length == num_tokens:
            break
        start += min(length, stride)
    return spans


def best_window(spans, position):
    """run_squad.py's _check_is_max_context by brute force: the window where the position's
    min(left, right) context + 0.01 * window length is largest, the first on a tie."""
    best, best_score = None, None
    for w, (start, length) in enumerate(spans):
        if start <= position < start + length:
            score = min(position - start, start + length - 1 - position) + 0.01 * length
            if best_score is None or score > best_score:
                best, best_score = w, score
    return best


@pytest.mark.parametrize("max_seq_len,stride", [(8, 1), (8, 3), (8, 6), (12, None), (5, 2)])
def test_long_sentences_become_windows_that_score_every_word_once(tokenizer, max_seq_len, stride):
    """Windows of max_seq_len - 2 pieces, each `stride` after the one before, cover every piece;
    each word is labelled in exactly one row: the window where its first piece has the most
    context; decoding the label ids gives every word its own label back."""
    sentences = SENTENCES + [SENTENCES[2] * 3]
    labels = labels_of(sentences)
    features = token_features.build_features(sentences, tokenizer, labels, max_seq_len, stride)
    room = max_seq_len - 2
    stride = stride or room // 2
    row = 0
    for s, words in enumerate(sentences):
        pieces = token_features.word_pieces(tokenizer, words)
        flat = [p for ids in pieces for p in ids]
        first = np.cumsum([0] + [len(p) for p in pieces[:-1]])
        spans = original_windows(len(flat), room, stride)
        covered = np.zeros(len(flat), int)
        scored_in = {}
        for w, (start, length) in enumerate(spans):
            assert features.sentence_index[row] == s
            ids = features.input_ids[row, : length + 2].tolist()
            assert ids == [tokenizer.cls_id, *flat[start : start + length], tokenizer.sep_id]
            assert features.input_mask[row].sum() == length + 2
            covered[start : start + length] += 1
            for position in np.flatnonzero(features.label_weights[row]):
                k = int(features.word_index[row, position])
                assert k not in scored_in and first[k] == start + position - 1
                assert features.label_ids[row, position] == labels[s][k]
                scored_in[k] = w
            row += 1
        assert (covered >= 1).all()
        assert scored_in == {k: best_window(spans, first[k]) for k in range(len(words))}
        assert len(spans) > 1 or len(flat) <= room
    assert row == len(features)
    decoded = token_features.decode(features, features.label_ids)
    assert [d.tolist() for d in decoded] == labels


def test_decoding_reads_the_scored_positions_only(tokenizer):
    """Logits [n, L, K] decode through their argmax; whatever a row predicts elsewhere (other
    pieces, specials, padding, a word's positions in the windows that do not score it) does
    not matter; label_names turn ids into tags."""
    sentences = [SENTENCES[2] * 3, SENTENCES[0]]
    labels = labels_of(sentences, num_labels=3)
    features = token_features.build_features(sentences, tokenizer, labels, 10, 3)
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(*features.input_ids.shape, 3))
    rows, cols = np.nonzero(features.label_weights)
    logits[rows, cols, features.label_ids[rows, cols]] = 10.0  # the gold label wins there
    names = ("O", "B-PER", "I-PER")
    assert token_features.decode(features, logits, names) == [
        tuple(names[i] for i in ids) for ids in labels
    ]
    with pytest.raises(ValueError, match="do not match the features"):
        token_features.decode(features, logits[:, :5])


def test_words_without_pieces_and_unlabelled_sentences(tokenizer, tmp_path):
    """A word the tokenizer drops entirely becomes one [UNK] piece, so it keeps a position;
    unlabelled sentences get weight 0 everywhere but still decode; an empty sentence is a
    [CLS] [SEP] row with no word."""
    sentences = [["a", "", "lamb"], [], ["British"]]
    features = token_features.build_features(sentences, tokenizer, None, 16)
    assert features.input_ids[0, 2] == tokenizer.unk_id
    assert not features.label_weights.any()
    assert features.input_ids[1, :2].tolist() == [tokenizer.cls_id, tokenizer.sep_id]
    decoded = token_features.decode(features, np.zeros_like(features.input_ids))
    assert [d.tolist() for d in decoded] == [[0, 0, 0], [], [0]]
    if tokenizer.kind == "wordpiece":  # a zero-width space is a control character it drops
        assert tokenizer.encode("\u200b") == []
        features = token_features.build_features([["\u200b", "lamb"]], tokenizer, [[1, 2]], 8)
        assert features.input_ids[0, 1] == tokenizer.unk_id and features.label_ids[0, 1] == 1


def test_a_split_carries_the_rows(tokenizer):
    """The arrays go into batches.Split as they are: a batch of rows (a padding row -1 with
    weight 0) and each process's slice hold the token arrays row by row."""
    features = token_features.build_features(SENTENCES, tokenizer, labels_of(SENTENCES), 16, 4)
    split = batches.Split(
        "validation", features.model_inputs(), features.sentence_index.astype(np.int64), features
    )
    batch = batches.take(split, np.array([2, 0, 1, -1]))
    assert set(batch) == {*token_features.KEYS, "weights"}
    assert batch["label_weights"].shape == (4, 16) and batch["weights"].tolist() == [1, 1, 1, 0]
    np.testing.assert_array_equal(batch["label_ids"][0], features.label_ids[2])
    half = batches.local_slice(batch, 1, 2)
    np.testing.assert_array_equal(half["input_ids"][0], features.input_ids[1])


def test_bad_settings_are_one_clear_error(tokenizer):
    with pytest.raises(UserError, match=r"--max-seq-len 2 leaves no room for a word piece"):
        token_features.build_features(SENTENCES, tokenizer, None, 2)
    with pytest.raises(UserError, match=r"--doc-stride 7 must be between 1 and the 6 pieces"):
        token_features.build_features(SENTENCES, tokenizer, None, 8, 7)
    with pytest.raises(UserError, match=r"--doc-stride 0 must be between 1"):
        token_features.build_features(SENTENCES, tokenizer, None, 8, 0)
    with pytest.raises(ValueError, match="sentence 1 has 11 words but 2 labels"):
        token_features.build_features(SENTENCES[:2], tokenizer, [[0] * 9, [0, 0]], 8)
