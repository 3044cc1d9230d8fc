"""The model and loss on packed rows: the same logits, loss and gradients as the same real
sequences one per row, and no sequence sees another ("without cross-contamination")."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bertjax import model as model_lib
from bertjax.data import open_dataset
from bertjax.data.loader import BATCH_KEYS, default_masking, make_batch, masking_vocab
from bertjax.train import step as step_lib
from tests.test_prepare import prepare, setup  # noqa: F401 (the module-scoped fixture)

L, B = 128, 6


@pytest.fixture(scope="module")
def packed(setup, tmp_path_factory):  # noqa: F811
    """Real instances (prepare's test corpus), packed 3 per row; a tiny float32 model."""
    out = tmp_path_factory.mktemp("packed_model") / "p"
    assert prepare(setup, out, "--pack", "--max-seq-len", L, "--short-seq-prob", 0.5) == 0
    ds = open_dataset(out)
    n_seq = (ds.get_raw(np.arange(len(ds)))["length"] > 0).sum(1)
    rows = np.concatenate(
        [
            np.nonzero(n_seq == 3)[0][:3],
            np.nonzero(n_seq == 2)[0][:2],
            np.nonzero(n_seq == 1)[0][:1],
        ]
    )
    masking = default_masking(ds)
    batch = make_batch(ds, masking_vocab(ds, masking), rows, seed=1, epoch=0, masking=masking)
    cfg = model_lib.preset_config(
        "tiny",
        vocab_size=ds.vocab_size,
        max_position_embeddings=L,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    params = jax.tree.map(
        jnp.asarray, model_lib.nn.meta.unbox(model_lib.init_params(cfg, jax.random.key(0)))
    )
    return batch, model_lib.BertForPreTraining(cfg), params


def unpack(batch, P=20):
    """The same sequences, masked the same way, one per row of P prediction slots; and (row,
    sequence, its packed prediction slots) of each."""
    rows, where = {k: [] for k in BATCH_KEYS}, []  # an unpacked batch's arrays
    for r, k in zip(*np.nonzero(batch["next_sentence_weights"])):
        own = batch["attn_segment_ids"][r] == k + 1
        start, n = int(np.argmax(own)), int(own.sum())
        for key in ("input_ids", "segment_ids"):
            rows[key].append(np.pad(batch[key][r, start : start + n], (0, L - n)))
        rows["input_mask"].append((np.arange(L) < n).astype(np.int32))
        used = batch["masked_lm_weights"][r] > 0
        slots = np.nonzero(used & own[batch["masked_lm_positions"][r]])[0]  # this sequence's
        fill = lambda a: np.pad(a, (0, P - len(slots)))
        rows["masked_lm_positions"].append(fill(batch["masked_lm_positions"][r, slots] - start))
        rows["masked_lm_ids"].append(fill(batch["masked_lm_ids"][r, slots]))
        rows["masked_lm_weights"].append(fill(batch["masked_lm_weights"][r, slots]))
        rows["next_sentence_labels"].append(batch["next_sentence_labels"][r, k])
        where.append((r, k, slots))
    return {k: np.stack(v).astype(batch[k].dtype) for k, v in rows.items()}, where


def forward(model, params, batch):
    return _forward(model, params, {k: jnp.asarray(v) for k, v in batch.items()})


@functools.partial(jax.jit, static_argnums=0)
def _forward(model, params, batch):
    return model.apply(
        {"params": params},
        batch["input_ids"],
        batch["segment_ids"],
        batch["input_mask"],
        batch["masked_lm_positions"],
        deterministic=True,
        attn_segment_ids=batch.get("attn_segment_ids"),
        position_ids=batch.get("position_ids"),
        nsp_positions=batch.get("next_sentence_positions"),
    )


@functools.partial(jax.jit, static_argnums=0)
def loss_and_grads(model, params, batch):
    objective = step_lib.pretraining_objective(nsp=True)

    def loss_fn(p):
        sums = objective.sums(model, p, batch, None, True)
        return objective.loss(sums, objective.denominators(batch)), sums

    return jax.value_and_grad(loss_fn, has_aux=True)(params)


def test_packed_rows_equal_the_same_sequences_unpacked(packed):
    """Per-sequence MLM logits (masked slots) and NSP logits within 1e-5, and the total loss and
    every gradient within 1e-5, packed vs the same real instances one per row (float32)."""
    batch, model, params = packed
    assert (batch["next_sentence_weights"].sum(1) >= 2).any()  # rows really hold several
    flat, where = unpack(batch)
    out_p, out_u = forward(model, params, batch), forward(model, params, flat)
    for i, (r, k, slots) in enumerate(where):
        w = flat["masked_lm_weights"][i] > 0
        assert w.sum() == len(slots) > 0
        np.testing.assert_allclose(
            out_p.mlm_logits[r, slots], out_u.mlm_logits[i][w], atol=1e-5, rtol=0
        )
        np.testing.assert_allclose(out_p.nsp_logits[r, k], out_u.nsp_logits[i], atol=1e-5, rtol=0)
    (loss_p, sums_p), grads_p = loss_and_grads(model, params, batch)
    (loss_u, sums_u), grads_u = loss_and_grads(model, params, flat)
    np.testing.assert_allclose(loss_p, loss_u, atol=1e-5, rtol=0)
    assert float(sums_p["sequences"]) == float(sums_u["sequences"]) == len(where)
    assert float(sums_p["real_tokens"]) == float(sums_u["real_tokens"]) == batch["input_mask"].sum()
    for gp, gu in zip(jax.tree.leaves(grads_p), jax.tree.leaves(grads_u)):
        np.testing.assert_allclose(gp, gu, atol=1e-5, rtol=0)


def test_changing_one_packed_sequence_leaves_the_others_bit_identical(packed):
    """Every token of one sequence replaced: the other sequences' hidden states, MLM and NSP
    logits are bit-identical (attention never crosses sequences)."""
    batch, model, params = packed
    r = int(np.argmax(batch["next_sentence_weights"].sum(1)))
    own = batch["attn_segment_ids"][r] == 1  # change sequence 0 of row r
    changed = dict(batch, input_ids=batch["input_ids"].copy())
    changed["input_ids"][r, own] = (batch["input_ids"][r, own] + 7) % model.cfg.vocab_size
    before, after = forward(model, params, batch), forward(model, params, changed)
    others = batch["attn_segment_ids"] != 1
    others[np.arange(B) != r] = True
    h0, h1 = np.asarray(before.last_hidden_state), np.asarray(after.last_hidden_state)
    np.testing.assert_array_equal(h0[others], h1[others])
    assert not np.array_equal(h0[r, own], h1[r, own])
    np.testing.assert_array_equal(
        np.asarray(before.nsp_logits)[r, 1:], np.asarray(after.nsp_logits)[r, 1:]
    )
    pos = batch["masked_lm_positions"][r]
    theirs = (batch["masked_lm_weights"][r] > 0) & ~own[pos]  # the other sequences' slots
    assert theirs.any()
    np.testing.assert_array_equal(
        np.asarray(before.mlm_logits)[r, theirs], np.asarray(after.mlm_logits)[r, theirs]
    )
