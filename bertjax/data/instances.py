"""Sentence-pair instances exactly as google-research/bert `create_pretraining_data.py` builds them.

`create_instances_from_document` and `truncate_seq_pair` follow the original line for line
(same random calls in the same order with a `random.Random`), minus the masking, which we
do dynamically at training time. Documents are lists of sentences, each a list of token ids.

One deliberate difference, for corpora larger than memory: the original holds all documents
at once and draws the random next segment from any of them; we work per block of documents
(`--block-docs`, a few thousand), draw it from within the block, and seed each block by
(seed, block index). With thousands of documents per block the random document is still
almost never the current one (the original's 10-tries loop handles that), and the output
no longer depends on how many worker processes share the blocks.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

import numpy as np


def truncate_seq_pair(
    tokens_a: list, tokens_b: list, max_num_tokens: int, rng: random.Random
) -> None:
    """Truncates a pair of sequences in place to at most `max_num_tokens` tokens in total.

    Removes from the longer one (B on a tie), from the front or the back at random.
    """
    while len(tokens_a) + len(tokens_b) > max_num_tokens:
        trunc_tokens = tokens_a if len(tokens_a) > len(tokens_b) else tokens_b
        assert len(trunc_tokens) >= 1
        # Sometimes truncate from the front and sometimes from the back, to avoid biases.
        if rng.random() < 0.5:
            del trunc_tokens[0]
        else:
            trunc_tokens.pop()


def create_instances_from_document(
    all_documents: list,
    document_index: int,
    max_seq_length: int,
    short_seq_prob: float,
    rng: random.Random,
) -> list[tuple[list, list, bool]]:
    """(tokens_a, tokens_b, is_random_next) triples for one document, as the original."""
    document = all_documents[document_index]
    # Account for [CLS], [SEP], [SEP].
    max_num_tokens = max_seq_length - 3
    # Usually fill the whole sequence; with probability short_seq_prob aim shorter, to
    # lessen the mismatch with short fine-tuning inputs. The target is only a rough goal;
    # max_seq_length is the hard limit. As the original: one target per document.
    target_seq_length = max_num_tokens
    if rng.random() < short_seq_prob:
        target_seq_length = rng.randint(2, max_num_tokens)

    # Split at real sentence boundaries, not at an arbitrary token: a split inside a
    # sentence would make next-sentence prediction too easy.
    instances = []
    current_chunk: list[list[int]] = []
    current_length = 0
    i = 0
    while i < len(document):
        segment = document[i]
        current_chunk.append(segment)
        current_length += len(segment)
        if i == len(document) - 1 or current_length >= target_seq_length:
            if current_chunk:
                # a_end: how many segments of the chunk go into A.
                a_end = 1
                if len(current_chunk) >= 2:
                    a_end = rng.randint(1, len(current_chunk) - 1)
                tokens_a = []
                for j in range(a_end):
                    tokens_a.extend(current_chunk[j])

                tokens_b = []
                if len(current_chunk) == 1 or rng.random() < 0.5:
                    is_random_next = True
                    target_b_length = target_seq_length - len(tokens_a)
                    # Rarely more than one try on a big corpus; just make sure the random
                    # document is not this one.
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
                    # The chunk's segments after a_end were not used: put them back.
                    num_unused_segments = len(current_chunk) - a_end
                    i -= num_unused_segments
                else:
                    is_random_next = False
                    for j in range(a_end, len(current_chunk)):
                        tokens_b.extend(current_chunk[j])
                truncate_seq_pair(tokens_a, tokens_b, max_num_tokens, rng)
                assert len(tokens_a) >= 1
                assert len(tokens_b) >= 1
                instances.append((tokens_a, tokens_b, is_random_next))
            current_chunk = []
            current_length = 0
        i += 1
    return instances


def create_nsp_instances(
    documents: list,
    max_seq_length: int,
    short_seq_prob: float,
    dupe_factor: int,
    rng: random.Random,
) -> list[tuple[list, list, bool]]:
    """All sentence-pair instances of a block, as the original's create_training_instances.

    Drops empty sentences and documents, shuffles the documents, makes `dupe_factor` passes,
    shuffles the instances. A block of a single document can only pair it with itself (the
    original's behaviour on a one-document corpus).
    """
    all_documents = [[s for s in doc if s] for doc in documents]
    all_documents = [d for d in all_documents if d]
    rng.shuffle(all_documents)
    instances = []
    for _ in range(dupe_factor):
        for document_index in range(len(all_documents)):
            instances.extend(
                create_instances_from_document(
                    all_documents, document_index, max_seq_length, short_seq_prob, rng
                )
            )
    rng.shuffle(instances)
    return instances


def create_contiguous_instances(
    documents: list, max_seq_length: int, dupe_factor: int, doc_sep_id: int, rng: random.Random
) -> list[tuple[list, list, bool]]:
    """Single-segment instances without NSP (RoBERTa FULL-SENTENCES style), as (a, [], False).

    The block's documents (shuffled, once per dupe pass) are concatenated with `doc_sep_id`
    between them and cut into full-length pieces of max_seq_length - 2 tokens (room for
    [CLS] and [SEP]); only the block's last piece may be shorter. No piece starts with the
    separator.
    """
    docs = [[t for s in doc for t in s] for doc in documents]
    docs = [d for d in docs if d]
    size = max_seq_length - 2
    instances = []
    for _ in range(dupe_factor):
        rng.shuffle(docs)
        stream: list[int] = []
        for d in docs:
            if stream:
                stream.append(doc_sep_id)
            stream.extend(d)
        pos = 0
        while pos < len(stream):
            if stream[pos] == doc_sep_id and pos > 0:
                pos += 1  # a piece never starts with the document separator
                continue
            instances.append((stream[pos : pos + size], [], False))
            pos += size
    rng.shuffle(instances)
    return instances


def pack_instances(
    instances: Iterable[tuple[Sequence[int], Sequence[int], bool]],
    max_seq_len: int,
    cls_id: int,
    sep_id: int,
    pad_id: int,
) -> dict:
    """Packs (tokens_a, tokens_b, is_random_next) triples into the shard arrays.

    Rows are `[CLS] A [SEP] B [SEP]`, or `[CLS] A [SEP]` when B is empty, padded with pad_id.
    """
    rows = list(instances)
    n = len(rows)
    input_ids = np.full((n, max_seq_len), pad_id, dtype=np.int32)
    length = np.zeros(n, np.int32)
    b_start = np.zeros(n, np.int32)
    label = np.zeros(n, np.uint8)
    for i, (a, b, is_random_next) in enumerate(rows):
        seq = [cls_id, *a, sep_id, *b, sep_id] if len(b) else [cls_id, *a, sep_id]
        if len(seq) > max_seq_len:
            raise ValueError(f"instance {i} has {len(seq)} tokens > max_seq_len {max_seq_len}")
        input_ids[i, : len(seq)] = seq
        length[i] = len(seq)
        b_start[i] = len(a) + 2 if len(b) else len(seq)
        label[i] = bool(is_random_next)
    return {
        "input_ids": input_ids,
        "length": length,
        "b_start": b_start,
        "next_sentence_label": label,
    }
