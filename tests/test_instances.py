"""Instance creation: the original BERT's sentence-pair statistics, put-back, truncation, no-NSP."""

import random
from collections import Counter

import numpy as np

from bertjax.data.instances import (
    create_contiguous_instances,
    create_instances_from_document,
    create_nsp_instances,
    pack_instances,
    truncate_seq_pair,
)


def generated_corpus(n_docs=300, seed=0, sent_len=(3, 30), doc_sents=(1, 40)):
    """Documents of sentences of token ids; every token id is unique across the corpus."""
    rng = random.Random(seed)
    docs, next_id = [], 10
    for _ in range(n_docs):
        doc = []
        for _ in range(rng.randint(*doc_sents)):
            n = rng.randint(*sent_len)
            doc.append(list(range(next_id, next_id + n)))
            next_id += n
        docs.append(doc)
    return docs


def test_statistics_on_generated_corpus():
    L = 128
    docs = generated_corpus()
    rows = create_nsp_instances(docs, L, 0.1, 1, random.Random(1))
    arr = pack_instances(rows, L, cls_id=2, sep_id=3, pad_id=0)
    fill = np.array([len(a) + len(b) for a, b, _ in rows]) / (L - 3)
    assert all(len(a) >= 1 and len(b) >= 1 for a, b, _ in rows)
    assert fill.max() <= 1.0 and arr["length"].max() <= L
    # Most instances fill up the target; short targets (10%) and document ends pull it down.
    assert 0.75 < fill.mean() < 0.95, fill.mean()
    assert np.median(fill) >= 0.95
    # The original: random B when the chunk has one segment, else with prob 0.5 -> a little
    # above one half.
    frac = np.mean([r for _, _, r in rows])
    assert 0.5 < frac < 0.62, frac
    # [CLS] A [SEP] B [SEP] and segment boundaries.
    ids, length, b_start = arr["input_ids"], arr["length"], arr["b_start"]
    n = len(rows)
    assert (ids[:, 0] == 2).all()
    assert (ids[np.arange(n), length - 1] == 3).all()
    assert (ids[np.arange(n), b_start - 1] == 3).all()
    assert ((ids == 3).sum(1) == 2).all() and ((ids == 2).sum(1) == 1).all()
    assert (ids[np.arange(L)[None] >= length[:, None]] == 0).all()
    a_len = np.array([len(a) for a, _, _ in rows])
    assert (b_start == a_len + 2).all()


def _original_create_instances_from_document(
    all_documents, document_index, max_seq_length, short_seq_prob, rng
):
    """Oracle: google-research/bert create_pretraining_data.py (Apache-2.0), as published,
    with create_masked_lm_predictions removed (it would consume random numbers; we mask
    later) and the result returned as (tokens, segment_ids, is_random_next)."""
    document = all_documents[document_index]
    max_num_tokens = max_seq_length - 3
    target_seq_length = max_num_tokens
    if rng.random() < short_seq_prob:
        target_seq_length = rng.randint(2, max_num_tokens)
    instances = []
    current_chunk = []
    current_length = 0
    i = 0
    while i < len(document):
        segment = document[i]
        current_chunk.append(segment)
        current_length += len(segment)
        if i == len(document) - 1 or current_length >= target_seq_length:
            if current_chunk:
                a_end = 1
                if len(current_chunk) >= 2:
                    a_end = rng.randint(1, len(current_chunk) - 1)
                tokens_a = []
                for j in range(a_end):
                    tokens_a.extend(current_chunk[j])
                tokens_b = []
                is_random_next = False
                if len(current_chunk) == 1 or rng.random() < 0.5:
                    is_random_next = True
                    target_b_length = target_seq_length - len(tokens_a)
                    for _ in range(10):
                        random_document_index = rng.randint(0, len(all_documents) - 1)
                        if random_document_index != document_index:
                            break
                    random_document = all_documents[random_document_index]
                    random_start = rng.randint(0, len(random_document) - 1)
                    for j in range(random_start, len(random_document)):
                        tokens_b.extend(random_document[j])
                        if len(tokens_b) >= target_b_length:
                            break
                    num_unused_segments = len(current_chunk) - a_end
                    i -= num_unused_segments
                else:
                    is_random_next = False
                    for j in range(a_end, len(current_chunk)):
                        tokens_b.extend(current_chunk[j])
                while True:  # truncate_seq_pair
                    total_length = len(tokens_a) + len(tokens_b)
                    if total_length <= max_num_tokens:
                        break
                    trunc_tokens = tokens_a if len(tokens_a) > len(tokens_b) else tokens_b
                    if rng.random() < 0.5:
                        del trunc_tokens[0]
                    else:
                        trunc_tokens.pop()
                tokens = ["[CLS]"] + tokens_a + ["[SEP]"] + tokens_b + ["[SEP]"]
                segment_ids = [0] * (len(tokens_a) + 2) + [1] * (len(tokens_b) + 1)
                instances.append((tokens, segment_ids, is_random_next))
            current_chunk = []
            current_length = 0
        i += 1
    return instances


def test_same_random_draws_as_the_original():
    docs = generated_corpus(n_docs=120, seed=9)
    ours, theirs = [], []
    rng_ours, rng_theirs = random.Random(4), random.Random(4)
    for di in range(len(docs)):
        ours += create_instances_from_document(docs, di, 64, 0.2, rng_ours)
        theirs += _original_create_instances_from_document(docs, di, 64, 0.2, rng_theirs)
    assert len(ours) == len(theirs) > 100
    for (a, b, r), (tokens, segs, r0) in zip(ours, theirs):
        assert ["[CLS]", *a, "[SEP]", *b, "[SEP]"] == tokens
        assert [0] * (len(a) + 2) + [1] * (len(b) + 1) == segs and r == r0


def test_short_seq_prob_lowers_fill():
    docs = generated_corpus(n_docs=200, seed=3)
    fills = {}
    for p in (0.0, 1.0):
        rows = create_nsp_instances(docs, 128, p, 1, random.Random(0))
        fills[p] = np.mean([len(a) + len(b) for a, b, _ in rows]) / 125
    # target uniform in [2, 125] for every document -> far lower mean fill
    assert fills[0.0] > 0.85 and fills[1.0] < 0.7, fills


def test_one_sentence_chunks_are_always_random_next():
    # Every sentence is longer than the target: chunks hold one segment, so B must be random.
    docs = generated_corpus(n_docs=50, sent_len=(130, 140), doc_sents=(2, 5))
    rows = create_nsp_instances(docs, 64, 0.0, 1, random.Random(0))
    assert rows and all(r for _, _, r in rows)
    assert all(len(a) + len(b) == 61 for a, b, _ in rows)  # truncated to max_num_tokens


def test_unused_segments_are_put_back():
    # One-token sentences and no short targets: chunks stop exactly at the target, so nothing
    # is truncated from A or from an actual-next B. Every sentence of every document must then
    # appear exactly once in an A or in an actual-next B, as the original puts unused
    # segments back after drawing a random B.
    docs = generated_corpus(n_docs=40, seed=5, sent_len=(1, 1), doc_sents=(20, 200))
    all_docs = [d for d in docs if d]
    rng = random.Random(7)
    seen = Counter()
    for di in range(len(all_docs)):
        for a, b, is_random in create_instances_from_document(all_docs, di, 32, 0.0, rng):
            seen.update(a)
            if not is_random:
                seen.update(b)
    every = [t for d in all_docs for s in d for t in s]
    assert sorted(seen) == sorted(every) and set(seen.values()) == {1}


def test_truncate_seq_pair_longer_side_both_ends():
    rng = random.Random(0)
    a, b = list(range(10)), list(range(100, 103))
    truncate_seq_pair(a, b, 8, rng)
    assert b == [100, 101, 102] and len(a) == 5
    assert a == list(range(a[0], a[0] + 5)) and a[0] > 0 and a[-1] < 9  # front and back
    a, b = [1, 2], [3, 4]
    truncate_seq_pair(a, b, 3, random.Random(0))
    assert a == [1, 2] and len(b) == 1  # a tie trims B, as the original


def test_deterministic_for_a_seed():
    docs = generated_corpus(n_docs=60)
    r1 = create_nsp_instances(docs, 64, 0.1, 2, random.Random(11))
    r2 = create_nsp_instances(docs, 64, 0.1, 2, random.Random(11))
    r3 = create_nsp_instances(docs, 64, 0.1, 2, random.Random(12))
    assert r1 == r2 and r1 != r3
    assert len(r1) > len(create_nsp_instances(docs, 64, 0.1, 1, random.Random(11)))


def test_contiguous_instances_without_nsp():
    docs = generated_corpus(n_docs=30)
    L, sep = 64, 3
    rows = create_contiguous_instances(docs, L, 1, sep, random.Random(0))
    assert all(b == [] and not r for _, b, r in rows)
    lengths = sorted(len(a) for a, _, _ in rows)
    assert lengths[0] >= 1 and all(n == L - 2 for n in lengths[1:])  # only one short piece
    assert all(a[0] != sep for a, _, _ in rows)
    tokens = Counter(t for a, _, _ in rows for t in a)
    assert {t: c for t, c in tokens.items() if t != sep} == Counter(
        t for d in docs for s in d for t in s
    )
    assert tokens[sep] <= len(docs) - 1  # one separator between consecutive documents
