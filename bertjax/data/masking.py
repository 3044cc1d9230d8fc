"""Dynamic masked-LM masking, vectorised numpy over a batch, with the original BERT's counts.

Follows google-research/bert `create_masked_lm_predictions`:
  num_to_predict = min(max_predictions_per_seq, max(1, round(n_real * masked_lm_prob)))
where n_real counts the real tokens including [CLS]/[SEP]; the positions are drawn
uniformly among the other tokens; each selected token independently becomes [MASK] with
probability 0.8, else stays itself with probability 0.5, else becomes a random token (here
from the non-special vocabulary, so [MASK]/[PAD]/[CLS]/[SEP]/[UNK] are never inserted).
Python 3's `round` (half to even) is `np.rint`. Whole-word masking takes whole words in random
order and skips a word that would overflow num_to_predict, as the original does; unlike the
original, a word never continues across [SEP].

Randomness is counter based: every uniform number is a hash of (seed, epoch, example index,
position, stream), so an example's mask depends on nothing else: not on the batch it lands
in, the worker that builds it, or the host that reads it.
"""

import dataclasses
import math

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_STREAMS = 4  # per position: 0 selection, 1 mask-or-not, 2 keep-or-random, 3 random token


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijective, well-mixing hash of uint64 values (elementwise)."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
        return x ^ (x >> np.uint64(31))


def _u64(value) -> np.ndarray:
    """Non-negative integers (python or numpy, scalar or array) as a uint64 array."""
    a = np.atleast_1d(np.asarray(value))
    if a.dtype.kind not in "iu" or (a.dtype.kind == "i" and (a < 0).any()):
        raise ValueError(f"expected non-negative integers, got {value!r}")
    return a.astype(np.uint64)


def row_keys(seed: int, epoch: int, example_index) -> np.ndarray:
    """One 64-bit key per example: a hash of (seed, epoch, example index); [n] uint64.

    Each step is a bijection, so distinct (epoch, index) under one seed get distinct keys.
    """
    with np.errstate(over="ignore"):
        k = mix64(_u64(seed) + _GOLDEN)
        k = mix64(k + _u64(epoch) * _GOLDEN)
        return mix64(k + _u64(example_index) * _M1)


def uniform(keys_B: np.ndarray, positions, stream: int) -> np.ndarray:
    """Uniform [0, 1) float64 numbers, one per (row key, position) pair, for one stream.

    `positions` broadcasts against `keys_B[:, None]` ([B, L] or [B, P] integer positions).
    """
    counter = np.asarray(positions, dtype=np.uint64) * np.uint64(_STREAMS) + np.uint64(stream + 1)
    with np.errstate(over="ignore"):
        h = mix64(keys_B[:, None] + counter * _GOLDEN)
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def default_max_predictions(max_seq_len: int, masked_lm_prob: float = 0.15) -> int:
    """The original BERT's cap: 20 at <=128 tokens, 80 at 512, ceil(0.15 * L) otherwise.

    Never below ceil(masked_lm_prob * L), so a higher masking rate (MosaicBERT, cramming use
    0.25-0.30) is not silently clipped by a cap chosen for 0.15.
    """
    table = (
        20 if max_seq_len <= 128 else 80 if max_seq_len == 512 else math.ceil(0.15 * max_seq_len)
    )
    return max(table, math.ceil(masked_lm_prob * max_seq_len))


@dataclasses.dataclass(frozen=True)
class MaskingConfig:
    """How to mask: rate, fixed number of prediction slots, whole-word or per-token."""

    max_predictions_per_seq: int  # slots P of masked_lm_positions/ids/weights
    masked_lm_prob: float = 0.15  # fraction of real tokens (incl. [CLS]/[SEP]) to predict
    whole_word: bool = False  # select whole words (never split one) instead of tokens

    def __post_init__(self):
        if not 0.0 < self.masked_lm_prob < 1.0:
            raise ValueError(f"masked_lm_prob must be in (0, 1), got {self.masked_lm_prob}")
        if self.max_predictions_per_seq < 1:
            raise ValueError(
                f"max_predictions_per_seq must be >= 1, got {self.max_predictions_per_seq}"
            )


@dataclasses.dataclass(frozen=True, eq=False)
class Vocab:
    """What masking needs to know about the vocabulary."""

    cls_id: int
    sep_id: int
    pad_id: int
    mask_id: int
    replacement_ids: np.ndarray  # [R] int32: the non-special ids a random replacement draws from
    continuation_V: np.ndarray | None = None  # [V] bool: token continues the previous word

    @classmethod
    def build(cls, special_ids: dict, vocab_size: int, continuation_V=None) -> "Vocab":
        """From the dataset's special ids ({"cls_id": .., "sep_id": .., ...}) and vocab size."""
        missing = [k for k in ("cls_id", "sep_id", "pad_id", "mask_id") if k not in special_ids]
        if missing:
            raise ValueError(f"special_ids lacks {missing}: got {sorted(special_ids)}")
        specials = sorted({int(v) for v in special_ids.values() if v is not None})
        replacement = np.setdiff1d(np.arange(vocab_size, dtype=np.int32), specials)
        if continuation_V is not None:
            continuation_V = np.asarray(continuation_V, dtype=bool)
            if continuation_V.shape != (vocab_size,):
                raise ValueError(
                    f"continuation mask has shape {continuation_V.shape}, expected ({vocab_size},)"
                )
        return cls(
            cls_id=int(special_ids["cls_id"]),
            sep_id=int(special_ids["sep_id"]),
            pad_id=int(special_ids["pad_id"]),
            mask_id=int(special_ids["mask_id"]),
            replacement_ids=replacement.astype(np.int32),
            continuation_V=continuation_V,
        )


def _select_tokens(u_BxL, cand_BxL, num_B, P):
    """Per row, the num_B candidates with the smallest keys: a uniform random subset."""
    keys = np.where(cand_BxL, u_BxL, 2.0)
    first_BxP = np.argsort(keys, axis=1, kind="stable")[:, :P]
    take_BxP = np.arange(first_BxP.shape[1])[None, :] < num_B[:, None]
    selected = np.zeros(cand_BxL.shape, dtype=bool)
    np.put_along_axis(selected, first_BxP, take_BxP, axis=1)
    return selected & cand_BxL


def _select_words(u_BxL, cand_BxL, cont_BxL, num_B):
    """Whole words in random order, skipping any that would overflow num_B (the original)."""
    B, L = cand_BxL.shape
    prev_cand = np.zeros_like(cand_BxL)
    prev_cand[:, 1:] = cand_BxL[:, :-1]
    # A word starts at a candidate that is not a continuation or that follows a special token.
    start_BxL = cand_BxL & (~cont_BxL | ~prev_cand)
    word_BxL = np.cumsum(start_BxL, axis=1) - 1  # word number of each candidate position
    rows_BxL = np.broadcast_to(np.arange(B)[:, None], (B, L))
    flat = (rows_BxL * L + word_BxL)[cand_BxL]
    wlen_BxW = np.bincount(flat, minlength=B * L).reshape(B, L)
    wkey_BxW = np.full((B, L), 2.0)
    wkey_BxW[rows_BxL[start_BxL], word_BxL[start_BxL]] = u_BxL[start_BxL]
    order_BxW = np.argsort(wkey_BxW, axis=1, kind="stable")
    len_sorted = np.take_along_axis(wlen_BxW, order_BxW, axis=1)
    accept_sorted = np.zeros((B, L), dtype=bool)
    count_B = np.zeros(B, dtype=np.int64)
    for r in range(int(start_BxL.sum(axis=1).max(initial=0))):  # words, in random order
        n = len_sorted[:, r]
        ok = (n > 0) & (count_B + n <= num_B)
        accept_sorted[:, r] = ok
        count_B += np.where(ok, n, 0)
    accept_BxW = np.zeros((B, L), dtype=bool)
    np.put_along_axis(accept_BxW, order_BxW, accept_sorted, axis=1)
    return cand_BxL & np.take_along_axis(accept_BxW, np.maximum(word_BxL, 0), axis=1)


def mask_batch(
    input_ids_BxL: np.ndarray,
    input_mask_BxL: np.ndarray,
    example_index_B: np.ndarray,
    *,
    seed: int,
    epoch: int,
    cfg: MaskingConfig,
    vocab: Vocab,
) -> dict[str, np.ndarray]:
    """Masks a batch; each row's result is a pure function of (seed, epoch, example index).

    Returns `input_ids` [B, L] int32 (masked), `masked_lm_positions` and `masked_lm_ids`
    [B, P] int32 (ascending positions; 0 in unused slots), `masked_lm_weights` [B, P] float32
    (1 on used slots, 0 on padding), P = cfg.max_predictions_per_seq.
    """
    ids = np.asarray(input_ids_BxL).astype(np.int32)
    real = np.asarray(input_mask_BxL).astype(bool)
    B, L = ids.shape
    P = cfg.max_predictions_per_seq
    cand = real & (ids != vocab.cls_id) & (ids != vocab.sep_id)
    cand &= (ids != vocab.pad_id) & (ids != vocab.mask_id)
    n_real = real.sum(axis=1)
    num_B = np.minimum(P, np.maximum(1, np.rint(n_real * cfg.masked_lm_prob).astype(np.int64)))
    num_B = np.minimum(num_B, cand.sum(axis=1))  # a row with fewer candidates predicts them all

    keys_B = row_keys(seed, epoch, example_index_B)
    pos_L = np.arange(L)
    u_sel = uniform(keys_B, pos_L[None, :], stream=0)
    if cfg.whole_word:
        if vocab.continuation_V is None:
            raise ValueError("whole-word masking needs the tokenizer's continuation mask")
        cont = vocab.continuation_V[ids]
        selected = _select_words(u_sel, cand, cont, num_B)
    else:
        selected = _select_tokens(u_sel, cand, num_B, P)

    # Selected positions in ascending order (the original sorts them), padded with L.
    positions = np.sort(np.where(selected, pos_L[None, :], L), axis=1)[:, :P]
    if positions.shape[1] < P:  # L < P: more slots than positions
        positions = np.pad(positions, ((0, 0), (0, P - positions.shape[1])), constant_values=L)
    valid = positions < L
    positions = np.where(valid, positions, 0).astype(np.int32)
    labels = np.where(valid, np.take_along_axis(ids, positions, axis=1), 0).astype(np.int32)

    # Per selected token, as the original: 80% [MASK]; of the rest half keep, half random.
    to_mask = uniform(keys_B, positions, stream=1) < 0.8
    keep = uniform(keys_B, positions, stream=2) < 0.5
    r = vocab.replacement_ids
    pick = (uniform(keys_B, positions, stream=3) * len(r)).astype(np.int64)
    random_tok = r[np.minimum(pick, len(r) - 1)]
    new = np.where(to_mask, vocab.mask_id, np.where(keep, labels, random_tok)).astype(np.int32)

    out = ids.copy()
    rows = np.broadcast_to(np.arange(B)[:, None], positions.shape)
    out[rows[valid], positions[valid]] = new[valid]
    return {
        "input_ids": out,
        "masked_lm_positions": positions,
        "masked_lm_ids": labels,
        "masked_lm_weights": valid.astype(np.float32),
    }


def packed_prediction_slots(
    max_sequences_per_row: int, max_seq_len: int, cfg: MaskingConfig
) -> int:
    """Masked-LM slots of a packed row: enough for any K sequences sharing L positions.

    A sequence of n tokens predicts min(P, max(1, round(p x n))) <= p x n + 1 positions, so a
    row predicts at most p x L + K in all (and at most K x P). At L=128, K=3, p=0.15, P=20
    that is 22 slots, not the 60 of K rows of their own: the MLM decoder's cost per row stays
    that of an unpacked row (for a small model it is ~half the step)."""
    K, P = max_sequences_per_row, cfg.max_predictions_per_seq
    bound = math.floor(cfg.masked_lm_prob * max_seq_len + 1e-9) + K  # 1e-9: p x L's rounding
    return min(K * P, bound)


def mask_packed_batch(
    input_ids_BxL: np.ndarray,
    attn_segment_ids_BxL: np.ndarray,
    example_index_B: np.ndarray,
    *,
    seed: int,
    epoch: int,
    cfg: MaskingConfig,
    vocab: Vocab,
    max_sequences_per_row: int,
) -> dict[str, np.ndarray]:
    """Masks packed rows (packing.py): each sequence k of row i as `mask_batch` masks a row of
    its own, keyed by (seed, epoch, i x K + k): its own count from its own length, positions
    drawn within it, words never crossing into a neighbour.

    Returns what `mask_batch` returns, the row's predictions in `packed_prediction_slots`
    slots: sequence 1's, then sequence 2's, ..., then zero-weight slots.
    """
    ids = np.asarray(input_ids_BxL).astype(np.int32)
    seg_BxL = np.asarray(attn_segment_ids_BxL)
    B, L = ids.shape
    K, P = max_sequences_per_row, cfg.max_predictions_per_seq
    own_BKxL = (seg_BxL[:, None, :] == np.arange(1, K + 1)[None, :, None]).reshape(B * K, L)
    index_BK = (np.asarray(example_index_B, np.int64)[:, None] * K + np.arange(K)).reshape(-1)
    m = mask_batch(
        np.repeat(ids, K, axis=0), own_BKxL, index_BK, seed=seed, epoch=epoch, cfg=cfg, vocab=vocab
    )
    masked_BxKxL = m["input_ids"].reshape(B, K, L)
    out = ids.copy()
    for k in range(K):  # each sequence's tokens from its own masking
        out = np.where(seg_BxL == k + 1, masked_BxKxL[:, k], out)
    # The K sequences' P slots side by side, then the used ones moved to the front (stable).
    used_BxKP = m["masked_lm_weights"].reshape(B, K * P) > 0
    width = packed_prediction_slots(K, L, cfg)
    if used_BxKP.sum(axis=1).max(initial=0) > width:  # the bound above is a theorem: never
        raise AssertionError(f"a packed row predicts more than {width} positions")
    order_BxW = np.argsort(~used_BxKP, axis=1, kind="stable")[:, :width]
    take = lambda a: np.take_along_axis(a.reshape(B, K * P), order_BxW, axis=1)
    return {
        "input_ids": out,
        "masked_lm_positions": take(m["masked_lm_positions"]),
        "masked_lm_ids": take(m["masked_lm_ids"]),
        "masked_lm_weights": take(m["masked_lm_weights"]),
    }
