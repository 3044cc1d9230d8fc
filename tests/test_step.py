"""The train step: gradient accumulation equals a bigger batch, purity, dropout, no-NSP,
mixed precision, rematerialisation, and the eval step's exact sums."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from bertjax import model as model_lib
from bertjax.data.synthetic import synthetic_batch
from bertjax.train import losses, optim, sharding
from bertjax.train import step as step_lib
from helpers import optim_config

RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("vocab", "tensor"),
)
VOCAB, LENGTH = 96, 16
OPTIM_CFG = optim_config(warmup_steps=0)


def model_cfg(dropout=0.0, **overrides):
    return model_lib.preset_config(
        "tiny",
        vocab_size=VOCAB,
        max_position_embeddings=LENGTH,
        num_hidden_layers=1,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        **overrides,
    )


def make_batch(seed=0, batch=16, predictions=4):
    # Uneven numbers of real predictions per row: micro-batches get different weight sums.
    return synthetic_batch(
        seed, batch=batch, length=LENGTH, predictions=predictions, vocab=VOCAB, weight_prob=0.6
    )


def fresh_state(cfg, tx, seed=0):
    return nn.meta.unbox(step_lib.init_state(jax.random.key(seed), model_cfg=cfg, tx=tx))


def step_fn(cfg, **kwargs):
    tx, schedule = optim.make_optimizer(OPTIM_CFG, 10)
    fn = functools.partial(
        step_lib.train_step,
        model=model_lib.BertForPreTraining(cfg),
        tx=tx,
        schedule=schedule,
        **kwargs,
    )
    return tx, fn


def assert_trees_close(a, b, atol):
    jax.tree.map(
        lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=atol),
        a,
        b,
    )


@pytest.mark.slow
def test_accumulating_4_micro_batches_equals_one_4x_batch():
    """(c) On a data=4 mesh: K=4 micro-batches of 4 == one batch of 16, metrics and the
    updated parameters, within 1e-5."""
    cfg = model_cfg()
    mesh = sharding.make_mesh(dict(data=4, fsdp=1, tensor=1), jax.devices()[:4])
    tx, schedule = optim.make_optimizer(OPTIM_CFG, 10)
    _, shardings = step_lib.state_shardings(cfg, tx, mesh, RULES)
    results = []
    for accum in (1, 4):
        train_step = step_lib.jit_train_step(
            mesh,
            RULES,
            shardings,
            model=model_lib.BertForPreTraining(cfg),
            tx=tx,
            schedule=schedule,
            accum_steps=accum,
        )
        state = step_lib.create_sharded_state(
            jax.random.key(0), model_cfg=cfg, tx=tx, shardings=shardings
        )
        for s in range(2):  # the second step sees the moments the first one left
            state, metrics = train_step(
                state, sharding.global_batch(make_batch(s), mesh), jax.random.key(1)
            )
        results.append(jax.device_get((state, metrics)))
    (state1, metrics1), (state4, metrics4) = results
    assert set(metrics1) == set(metrics4)
    for k in metrics1:
        np.testing.assert_allclose(metrics4[k], metrics1[k], rtol=0, atol=1e-5, err_msg=k)
    assert_trees_close(state4.params, state1.params, atol=1e-5)
    # Not vacuous: the parameters moved by much more than the tolerance.
    moved = jax.tree.map(
        lambda a, b: float(np.abs(a - b).max()),
        state1.params,
        jax.device_get(fresh_state(cfg, tx).params),
    )
    assert max(jax.tree.leaves(moved)) > 1e-3


@pytest.fixture(scope="module")
def tiny():
    """One model with dropout, its fresh state, and its train step jitted (compiled once for
    the tests below): with dropout ("train") and without ("deterministic")."""
    cfg = model_cfg(dropout=0.1)
    tx, fn = step_fn(cfg)
    return dict(
        cfg=cfg,
        tx=tx,
        state=fresh_state(cfg, tx),
        train=jax.jit(fn),
        deterministic=jax.jit(functools.partial(fn, deterministic=True)),
    )


def test_the_step_is_a_pure_function_of_state_batch_and_rng(tiny):
    state, batch, train = tiny["state"], make_batch(), tiny["train"]
    a = train(state, batch, jax.random.key(3))
    b = train(state, batch, jax.random.key(3))
    assert_trees_close(a, b, atol=0)
    assert int(a[0].step) == 1
    # Dropout is on in training and its mask follows the rng, folded with the step.
    c = train(state, batch, jax.random.key(4))
    later = train(state.replace(step=state.step + 1), batch, jax.random.key(3))
    off = tiny["deterministic"](state, batch, jax.random.key(3))
    assert len({float(x[1]["loss"]) for x in (a, c, later, off)}) == 4


def test_metrics_and_learning_rate(tiny):
    state = tiny["state"].replace(step=jnp.asarray(4, jnp.int32))
    _, metrics = tiny["train"](state, make_batch(), jax.random.key(0))
    assert set(metrics) == {
        "loss",
        "mlm_loss",
        "mlm_accuracy",
        "nsp_loss",
        "nsp_accuracy",
        "grad_norm",
        "learning_rate",
        "real_tokens",
        "sequences",
    }
    assert all(m.shape == () and m.dtype == jnp.float32 for m in metrics.values())
    batch = make_batch()
    assert metrics["real_tokens"] == batch["input_mask"].sum()  # non-pad tokens of the step
    assert metrics["sequences"] == batch["input_ids"].shape[0]  # one per row when unpacked
    np.testing.assert_allclose(metrics["learning_rate"], 1e-3 * (1 - 4 / 10), rtol=1e-6)
    np.testing.assert_allclose(
        metrics["loss"], metrics["mlm_loss"] + metrics["nsp_loss"], rtol=1e-6
    )
    assert np.log(VOCAB) - 1 < metrics["mlm_loss"] < np.log(VOCAB) + 1  # near uniform at init
    assert metrics["grad_norm"] > 0


def test_without_nsp_only_the_mlm_loss_trains(tiny):
    _, fn = step_fn(tiny["cfg"], nsp=False)
    state = tiny["state"]
    new_state, metrics = jax.jit(fn)(state, make_batch(), jax.random.key(0))
    assert "nsp_loss" not in metrics and metrics["loss"] == metrics["mlm_loss"]
    # The NSP head gets no gradient: its bias (no weight decay) stays put.
    np.testing.assert_array_equal(new_state.params["nsp"]["bias"], state.params["nsp"]["bias"])
    assert not np.array_equal(new_state.params["mlm_bias"], state.params["mlm_bias"])


def test_bfloat16_compute_keeps_float32_parameters_and_close_losses(tiny):
    _, fn16 = step_fn(model_cfg(dropout=0.1, compute_dtype="bfloat16"), deterministic=True)
    state, batch = tiny["state"], make_batch()
    _, m32 = tiny["deterministic"](state, batch, jax.random.key(0))
    state16, m16 = jax.jit(fn16)(state, batch, jax.random.key(0))
    assert {x.dtype for x in jax.tree.leaves(state16.params)} == {jnp.dtype(jnp.float32)}
    assert {x.dtype for x in jax.tree.leaves(state16.opt_state)} <= {
        jnp.dtype(jnp.float32),
        jnp.dtype(jnp.int32),
    }
    np.testing.assert_allclose(m16["loss"], m32["loss"], rtol=2e-2)
    assert float(m16["loss"]) != float(m32["loss"])  # it did compute in bfloat16


def test_remat_gives_the_same_step(tiny):
    _, fn_remat = step_fn(model_cfg(dropout=0.1, remat_policy="full"), deterministic=True)
    state, batch = tiny["state"], make_batch()
    a = tiny["deterministic"](state, batch, jax.random.key(0))
    b = jax.jit(fn_remat)(state, batch, jax.random.key(0))
    assert_trees_close(b, a, atol=1e-6)


def test_eval_step_sums_add_up_over_a_split():
    cfg = model_cfg()
    tx, _ = step_fn(cfg)
    params = fresh_state(cfg, tx).params
    model = model_lib.BertForPreTraining(cfg)
    whole = make_batch(batch=12)
    eval_fn = jax.jit(functools.partial(step_lib.eval_step, model=model))
    want = losses.metrics_from_sums(jax.device_get(eval_fn(params, whole)))
    # The same 12 examples as batches of 8: the last one padded with 4 zero-weight rows.
    totals = {}
    for rows in (np.arange(8), np.r_[np.arange(8, 12), np.zeros(4, int)]):
        batch = {k: v[rows] for k, v in whole.items()}
        real = np.arange(8) < (8 if rows[0] == 0 else 4)
        batch["masked_lm_weights"] = batch["masked_lm_weights"] * real[:, None]
        batch["next_sentence_weights"] = real.astype(np.float32)
        for k, v in jax.device_get(eval_fn(params, batch)).items():
            totals[k] = totals.get(k, 0.0) + float(v)
    got = losses.metrics_from_sums(totals)
    for k in want:
        np.testing.assert_allclose(got[k], float(want[k]), rtol=1e-5, err_msg=k)


def test_given_params_replace_their_subtree_and_leave_the_rest_as_initialised():
    """create_sharded_state(given_params={"bert": ...}): the state holds the given encoder as
    given, every other parameter as a plain initialisation makes it, and zero moments."""
    cfg = model_cfg()
    tx, _ = optim.make_optimizer(OPTIM_CFG, 10)
    mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
    _, shardings = step_lib.state_shardings(cfg, tx, mesh, RULES)
    make = functools.partial(
        step_lib.create_sharded_state, jax.random.key(0), model_cfg=cfg, tx=tx, shardings=shardings
    )
    plain = make()
    given = jax.tree.map(lambda x: x + 1.0, plain.params["bert"])  # any encoder but the fresh one
    state = make(given_params={"bert": given})
    assert_trees_close(state.params["bert"], given, atol=0)
    rest = lambda params: {k: v for k, v in params.items() if k != "bert"}
    assert rest(state.params) and rest(state.params).keys() == rest(plain.params).keys()
    assert_trees_close(rest(state.params), rest(plain.params), atol=0)
    assert all(
        float(jnp.abs(x).max()) == 0
        for x in jax.tree.leaves(state.opt_state)
        if jnp.issubdtype(x.dtype, jnp.floating)
    )
