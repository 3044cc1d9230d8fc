"""Reproducible tokenizer training: the same corpus and flags give byte-identical files.

WordPiece (`learn_vocab`): HF `tokenizers`' WordPieceTrainer algorithm with every id fixed
before the first merge; sentencepiece (`sentencepiece_model`): its trainer, thread count pinned.
"""

from __future__ import annotations

import collections
import heapq
import io
import itertools
from collections.abc import Iterable
from pathlib import Path

from bertjax.errors import UserError

PREFIX = "##"  # continuation pieces, as BERT's vocab.txt writes them
SENTENCEPIECE_THREADS = 16  # sentencepiece's default; its result depends on it, so pinned
_LINES_PER_CHUNK = 1000  # lines normalized per call into `tokenizers` (Rust)


def count_words(lines: Iterable[str], lowercase: bool) -> collections.Counter:
    """How often each word occurs, words as BERT's normalizer and pre-tokenizer split them.

    The pipeline is the one `WordPieceTokenizer` encodes with (clean text, split CJK
    characters, lower-case and strip accents when `lowercase`, split on whitespace and
    punctuation), so the vocabulary is learned on the words it will see.
    """
    from tokenizers import normalizers, pre_tokenizers

    normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
    )
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    # Normalizing maps every whitespace character to " ", and the pre-tokenizer splits each
    # space-separated piece on its own; so count the pieces (fast, in C) and split each
    # distinct piece once. Normalizing is per character: a chunk of lines joined by
    # newlines normalizes as its lines one by one, in one call instead of a thousand.
    pieces = collections.Counter()
    lines = iter(lines)
    while chunk := list(itertools.islice(lines, _LINES_PER_CHUNK)):
        pieces.update(normalizer.normalize_str("\n".join(chunk)).split(" "))
    counts = collections.Counter()
    for piece, n in pieces.items():
        for word, _ in pre_tokenizer.pre_tokenize_str(piece):
            counts[word] += n
    return counts


def learn_vocab(
    word_counts: dict[str, int],
    vocab_size: int,
    special_tokens: Iterable[str],
    min_frequency: int = 2,
) -> list[str]:
    """The WordPiece vocabulary learned from `{word: count}`, in id order.

    The algorithm of HF `tokenizers`' WordPieceTrainer (a BPE trainer whose continuation
    pieces carry the `##` prefix): every character of the corpus is a piece, and so is `##x`
    for every character x that occurs inside a word; then the most frequent adjacent pair of
    pieces is merged, again and again. HF's trainer gives a different vocabulary on every run:
    it numbers the `##x` pieces in the iteration order of a randomly seeded hash map, breaks
    ties between pairs of equal count by those numbers (so on text with many ties *which*
    pairs get merged changes), and returns the vocabulary as a hash map. Here every id is
    fixed before the first merge, and the list is in id order:

      1. `special_tokens` (BERT's five, [PAD] [UNK] [CLS] [SEP] [MASK]: ids 0-4);
      2. every character of the (normalized) corpus, by code point;
      3. `##x` for every character x that occurs inside a word, by code point of x;
      4. the merged pieces, in the order they were learned: the pair with the highest count
         first; among equal counts, the pair with the smaller (left id, right id) -- HF's own
         tie rule, applied to these fixed ids.

    So the vocabulary is a pure function of the word counts; pinned to the same ids, HF's
    trainer learns the same merges (tests/test_tokenizer_repro.py checks both).

    Every character gets its pieces even when that makes the vocabulary larger than
    `vocab_size` (as in HF's trainer); merges stop at `vocab_size` tokens or when the most
    frequent pair occurs fewer than `min_frequency` times.
    """
    tokens = list(dict.fromkeys(special_tokens))
    chars = {c for w in word_counts for c in w}
    inner = {c for w in word_counts for c in w[1:]}
    tokens += sorted(chars - set(tokens))
    tokens += [PREFIX + c for c in sorted(inner)]
    token_id = {t: i for i, t in enumerate(tokens)}

    # Single characters never merge: only words of two or more take part.
    words, counts = [], []
    for w in sorted(word_counts):  # sorted: nothing below depends on the dict's order
        if len(w) > 1:
            words.append([token_id[w[0]]] + [token_id[PREFIX + c] for c in w[1:]])
            counts.append(word_counts[w])
    pair_count = collections.defaultdict(int)
    where = collections.defaultdict(set)  # pair -> the words that hold (or held) it
    for i, w in enumerate(words):
        for pair in itertools.pairwise(w):
            pair_count[pair] += counts[i]
            where[pair].add(i)
    # A heap of (-count, left id, right id): the highest count first, then the smaller ids.
    # Counts only fall, except for pairs with the newest piece, which are pushed anew; so an
    # entry whose count is stale when popped is pushed back with the current count.
    heap = [(-n, a, b) for (a, b), n in pair_count.items()]
    heapq.heapify(heap)
    min_count = max(1, min_frequency)
    while len(tokens) < vocab_size and heap:
        neg, a, b = heapq.heappop(heap)
        n = pair_count.get((a, b), 0)
        if n != -neg:
            if n > 0:
                heapq.heappush(heap, (-n, a, b))
            continue
        if n < min_count:
            break
        new = tokens[a] + tokens[b].removeprefix(PREFIX)
        if new not in token_id:  # two pairs can make one piece: "ab" "##c" and "a" "##bc"
            token_id[new] = len(tokens)
            tokens.append(new)
        new_id = token_id[new]
        del pair_count[(a, b)]
        grown = set()
        for i in where.pop((a, b)):
            old = words[i]
            merged = _merge(old, a, b, new_id)
            if len(merged) == len(old):
                continue  # the pair left this word with an earlier merge
            words[i] = merged
            delta = collections.Counter(itertools.pairwise(merged))
            delta.subtract(itertools.pairwise(old))
            for pair, d in delta.items():
                if d and pair != (a, b):
                    pair_count[pair] += d * counts[i]
                    if d > 0:
                        where[pair].add(i)
                        grown.add(pair)
        for pair in grown:
            heapq.heappush(heap, (-pair_count[pair], *pair))
    return tokens


def _merge(word: list[int], a: int, b: int, new_id: int) -> list[int]:
    """`word` with each non-overlapping (a, b), from left to right, replaced by `new_id`."""
    out, i, n = [], 0, len(word)
    while i < n:
        if i + 1 < n and word[i] == a and word[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def sentencepiece_model(
    lines: Iterable[str], vocab_size: int, model_type: str = "unigram"
) -> bytes:
    """A serialized sentencepiece model trained on `lines`, reproducibly.

    Sentencepiece is deterministic for a fixed thread count (its sorts break ties by key, its
    sampling uses a fixed seed); the model records its own training options, so `num_threads`
    is pinned and the model is taken from memory rather than through `model_prefix`, a path
    that would otherwise be stored inside it.

    [PAD]=0 and [UNK]=1 are the model's pad/unk pieces; [CLS] [SEP] [MASK] are user-defined
    symbols (ids 2, 3, 4), so they have ids and are never split.
    """
    import sentencepiece as spm

    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines),
            model_writer=model,
            vocab_size=vocab_size,
            model_type=model_type,
            pad_id=0,
            unk_id=1,
            bos_id=-1,
            eos_id=-1,
            pad_piece="[PAD]",
            unk_piece="[UNK]",
            user_defined_symbols=["[CLS]", "[SEP]", "[MASK]"],
            num_threads=SENTENCEPIECE_THREADS,
            input_sentence_size=0,  # every sentence, no sampling
            minloglevel=1,
        )
    except RuntimeError as e:  # e.g. "Vocabulary size too high" on a small corpus
        raise UserError(f"sentencepiece training failed: {str(e).strip()}") from None
    return model.getvalue()


def write_sentencepiece_vocab(model_file: Path) -> Path:
    """Writes `spm.vocab` beside the model: one `piece<TAB>score` line per id."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    path = model_file.with_suffix(".vocab")
    rows = (f"{sp.id_to_piece(i)}\t{sp.get_score(i):g}\n" for i in range(sp.get_piece_size()))
    path.write_text("".join(rows), encoding="utf-8")
    return path
