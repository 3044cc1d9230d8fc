"""Masking: the original BERT's counts and 80/10/10 split, whole words, determinism."""

import numpy as np
import pytest

from bertjax.data.masking import (
    MaskingConfig,
    Vocab,
    default_max_predictions,
    mask_batch,
    row_keys,
    uniform,
)

SPECIAL = {"pad_id": 0, "unk_id": 1, "cls_id": 2, "sep_id": 3, "mask_id": 4}


def wordpiece_vocab(size=2000):
    """A WordPiece-style vocabulary: every third ordinary token is a `##` continuation."""
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words += [f"##p{i}" if i % 3 == 0 else f"w{i}" for i in range(size - len(words))]
    return words, np.array([w.startswith("##") for w in words])


def sentencepiece_vocab(size=2000):
    """A sentencepiece-style vocabulary: word starts carry `▁`, continuations do not."""
    words = ["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"]
    words += [f"p{i}" if i % 2 == 0 else f"\u2581w{i}" for i in range(size - len(words))]
    return words, np.array([i >= 5 and not w.startswith("\u2581") for i, w in enumerate(words)])


def make_batch(n, L, V, seed=0, min_len=5):
    """[CLS] A [SEP] B [SEP] rows of random lengths, padded with [PAD]."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_len, L + 1, n)
    ids = rng.integers(5, V, (n, L)).astype(np.uint16)
    mask = np.arange(L)[None, :] < lengths[:, None]
    b_start = np.maximum(2, (lengths * rng.uniform(0.3, 0.7, n)).astype(int))
    ids[:, 0] = SPECIAL["cls_id"]
    ids[np.arange(n), b_start - 1] = SPECIAL["sep_id"]
    ids[np.arange(n), lengths - 1] = SPECIAL["sep_id"]
    ids[~mask] = SPECIAL["pad_id"]
    return ids, mask.astype(np.int8), lengths


def reference_row(tokens, key, cfg, vocab, is_cont):
    """google-research/bert's create_masked_lm_predictions, one row in plain Python, drawing
    its shuffle and its 80/10/10 decisions from the same counter-based uniforms."""
    u = uniform(np.array([key]), np.arange(len(tokens))[None, :], stream=0)[0]
    cand, cand_open = [], False
    for i, t in enumerate(tokens):
        if t in (vocab.cls_id, vocab.sep_id):
            cand_open = False
            continue
        if cfg.whole_word and cand and cand_open and is_cont[t]:
            cand[-1].append(i)
        else:
            cand.append([i])
        cand_open = True
    cand.sort(key=lambda word: u[word[0]])  # the original's rng.shuffle(cand_indexes)
    num = min(cfg.max_predictions_per_seq, max(1, round(len(tokens) * cfg.masked_lm_prob)))
    chosen = []
    for word in cand:
        if len(chosen) >= num:
            break
        if len(chosen) + len(word) > num:
            continue
        chosen.extend(word)
    out = list(tokens)
    for i in chosen:
        p = np.array([[i]])
        k = np.array([key])
        if uniform(k, p, 1)[0, 0] < 0.8:
            out[i] = vocab.mask_id
        elif uniform(k, p, 2)[0, 0] >= 0.5:
            r = vocab.replacement_ids
            out[i] = int(r[min(int(uniform(k, p, 3)[0, 0] * len(r)), len(r) - 1)])
    return out, sorted(chosen)


@pytest.mark.parametrize("style", ["none", "wordpiece", "sentencepiece"])
def test_matches_the_original_algorithm_row_by_row(style):
    words, cont = (wordpiece_vocab if style != "sentencepiece" else sentencepiece_vocab)()
    V = len(words)
    vocab = Vocab.build(SPECIAL, V, cont)
    cfg = MaskingConfig(max_predictions_per_seq=20, whole_word=style != "none")
    ids, mask, lengths = make_batch(300, 128, V, seed=1)
    index = np.arange(1000, 1300)
    out = mask_batch(ids, mask, index, seed=7, epoch=3, cfg=cfg, vocab=vocab)
    keys = row_keys(7, 3, index)
    for r in range(len(ids)):
        tokens = [int(t) for t in ids[r, : lengths[r]]]
        ref_tokens, ref_pos = reference_row(tokens, keys[r], cfg, vocab, cont)
        n = len(ref_pos)
        assert out["masked_lm_positions"][r, :n].tolist() == ref_pos
        assert out["masked_lm_weights"][r].tolist() == [1.0] * n + [0.0] * (20 - n)
        assert out["masked_lm_ids"][r, :n].tolist() == [tokens[i] for i in ref_pos]
        assert out["input_ids"][r, : lengths[r]].tolist() == ref_tokens
        assert (out["input_ids"][r, lengths[r] :] == 0).all()


def test_statistics_over_200k_tokens():
    words, _cont = wordpiece_vocab(5000)
    vocab = Vocab.build(SPECIAL, len(words))
    ids, mask, lengths = make_batch(2000, 128, len(words), seed=2, min_len=40)
    assert mask.sum() > 100_000
    cfg = MaskingConfig(max_predictions_per_seq=20)
    out = mask_batch(ids, mask, np.arange(2000), seed=0, epoch=0, cfg=cfg, vocab=vocab)
    w = out["masked_lm_weights"]
    count = w.sum(axis=1).astype(int)
    # Exactly the original's count per sequence (Python 3 round, as `int(round(...))`).
    assert count.tolist() == [min(20, max(1, round(n * 0.15))) for n in lengths.tolist()]
    assert abs(count.sum() / lengths.sum() - 0.15) < 0.005
    pos, valid = out["masked_lm_positions"], w > 0
    picked = np.take_along_axis(ids, pos, axis=1).astype(int)[valid]
    assert not np.isin(picked, [0, 2, 3, 4]).any()  # never [PAD]/[CLS]/[SEP]/[MASK]
    assert (pos[valid] < np.repeat(lengths, count)).all()
    assert (pos[~valid] == 0).all() and (out["masked_lm_ids"][~valid] == 0).all()
    assert (np.diff(pos, axis=1)[valid[:, 1:]] > 0).all()  # ascending, distinct
    new = np.take_along_axis(out["input_ids"], pos, axis=1)[valid]
    labels = out["masked_lm_ids"][valid]
    assert (labels == picked).all()
    frac_mask = np.mean(new == 4)
    frac_keep = np.mean(new == labels)
    frac_random = np.mean((new != 4) & (new != labels))
    assert abs(frac_mask - 0.8) < 0.015, frac_mask
    assert abs(frac_keep - 0.1) < 0.015, frac_keep
    assert abs(frac_random - 0.1) < 0.015, frac_random
    assert not np.isin(new[new != 4], [0, 1, 2, 3]).any()  # random tokens are non-special
    # Everything not selected is untouched.
    untouched = np.ones(ids.shape, dtype=bool)
    np.put_along_axis(untouched, pos, ~valid, axis=1)
    untouched[:, 0] = True
    assert (out["input_ids"][untouched] == ids[untouched]).all()


def test_selection_is_uniform_over_positions():
    V = 3000
    vocab = Vocab.build(SPECIAL, V)
    ids, mask, _ = make_batch(4000, 64, V, seed=3, min_len=64)
    cfg = MaskingConfig(max_predictions_per_seq=20)
    out = mask_batch(ids, mask, np.arange(4000), seed=1, epoch=0, cfg=cfg, vocab=vocab)
    hits = np.zeros(ids.shape, dtype=int)
    np.put_along_axis(hits, out["masked_lm_positions"], out["masked_lm_weights"] > 0, axis=1)
    cand = (ids != 2) & (ids != 3)
    rate = hits.sum(0)[1:-1] / cand.sum(0)[1:-1]  # per position, among its candidate rows
    expected = hits.sum() / cand.sum()
    assert np.all(np.abs(rate - expected) < 0.03), (rate.min(), rate.max(), expected)


def test_cap_respected_at_high_masking_rate():
    V = 3000
    vocab = Vocab.build(SPECIAL, V)
    ids, mask, lengths = make_batch(500, 128, V, seed=4)
    cfg = MaskingConfig(max_predictions_per_seq=20, masked_lm_prob=0.3)
    out = mask_batch(ids, mask, np.arange(500), seed=0, epoch=0, cfg=cfg, vocab=vocab)
    count = out["masked_lm_weights"].sum(1)
    assert count.max() == 20
    assert count.tolist() == [min(20, max(1, round(n * 0.3))) for n in lengths.tolist()]


@pytest.mark.parametrize("make_vocab", [wordpiece_vocab, sentencepiece_vocab])
def test_whole_word_never_splits_a_word(make_vocab):
    words, cont = make_vocab(3000)
    vocab = Vocab.build(SPECIAL, len(words), cont)
    ids, mask, lengths = make_batch(1000, 128, len(words), seed=5, min_len=60)
    cfg = MaskingConfig(max_predictions_per_seq=20, whole_word=True)
    out = mask_batch(ids, mask, np.arange(1000), seed=2, epoch=1, cfg=cfg, vocab=vocab)
    sel = np.zeros(ids.shape, dtype=bool)
    np.put_along_axis(sel, out["masked_lm_positions"], out["masked_lm_weights"] > 0, axis=1)
    multi_piece_words = 0
    for r in range(len(ids)):
        toks, s = ids[r, : lengths[r]], sel[r, : lengths[r]]
        start = 0
        for i in range(1, len(toks) + 1):  # split the row into words by the vocabulary strings
            ends = i == len(toks) or toks[i] in (2, 3) or toks[i - 1] in (2, 3) or not cont[toks[i]]
            if ends:
                assert s[start:i].all() or not s[start:i].any(), (r, start, i)
                multi_piece_words += (i - start > 1) and s[start:i].all()
                start = i
        num = min(20, max(1, round(lengths[r] * 0.15)))
        assert 0 < s.sum() <= num
    assert multi_piece_words > 100  # the test saw many selected multi-piece words


def test_deterministic_and_independent_of_batch_composition():
    V = 3000
    vocab = Vocab.build(SPECIAL, V)
    ids, mask, _ = make_batch(64, 128, V, seed=6)
    cfg = MaskingConfig(max_predictions_per_seq=20)
    index = np.arange(500, 564)
    a = mask_batch(ids, mask, index, seed=3, epoch=2, cfg=cfg, vocab=vocab)
    b = mask_batch(ids, mask, index, seed=3, epoch=2, cfg=cfg, vocab=vocab)
    perm = np.random.default_rng(0).permutation(64)[:10]  # other batch, other order, subset
    c = mask_batch(ids[perm], mask[perm], index[perm], seed=3, epoch=2, cfg=cfg, vocab=vocab)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
        np.testing.assert_array_equal(a[k][perm], c[k])
    d = mask_batch(ids, mask, index, seed=3, epoch=3, cfg=cfg, vocab=vocab)
    e = mask_batch(ids, mask, index, seed=4, epoch=2, cfg=cfg, vocab=vocab)
    assert (d["masked_lm_positions"] != a["masked_lm_positions"]).any(axis=1).mean() > 0.9
    assert (e["masked_lm_positions"] != a["masked_lm_positions"]).any(axis=1).mean() > 0.9


def test_defaults_and_bad_input():
    assert default_max_predictions(128) == 20
    assert default_max_predictions(64) == 20
    assert default_max_predictions(512) == 80
    assert default_max_predictions(256) == 39
    assert default_max_predictions(128, masked_lm_prob=0.3) == 39
    with pytest.raises(ValueError, match="masked_lm_prob"):
        MaskingConfig(max_predictions_per_seq=20, masked_lm_prob=1.5)
    with pytest.raises(ValueError, match="max_predictions_per_seq"):
        MaskingConfig(max_predictions_per_seq=0)
    ids, mask, _ = make_batch(4, 32, 100)
    with pytest.raises(ValueError, match="continuation mask"):
        mask_batch(
            ids,
            mask,
            np.arange(4),
            seed=0,
            epoch=0,
            cfg=MaskingConfig(20, whole_word=True),
            vocab=Vocab.build(SPECIAL, 100),
        )
    with pytest.raises(ValueError, match="non-negative"):
        row_keys(-1, 0, np.arange(3))
