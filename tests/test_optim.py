"""Optimizers: BERT's weight-decay mask by parameter name, schedules, AdamW and LAMB updates."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from bertjax import model as model_lib
from bertjax.train import optim
from helpers import optim_config


def optim_cfg(**overrides):
    return optim_config(**{"warmup_steps": 10} | overrides)


@pytest.fixture(scope="module")
def params():
    cfg = model_lib.preset_config("tiny", vocab_size=64, max_position_embeddings=16)
    return nn.meta.unbox(model_lib.init_params(cfg, jax.random.key(0)))


def names(tree):
    return {optim.param_path_name(p): v for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def test_weight_decay_mask_by_parameter_name(params):
    mask = names(optim.weight_decay_mask(params))
    excluded = {n for n, decay in mask.items() if not decay}
    decayed = {n for n, decay in mask.items() if decay}
    # Every LayerNorm parameter and every bias is excluded, including the MLM output bias ...
    for name in (
        "bert/embeddings/LayerNorm/scale",
        "bert/embeddings/LayerNorm/bias",
        "bert/layer_0/attention/output_LayerNorm/scale",
        "bert/layer_1/output_LayerNorm/bias",
        "mlm_LayerNorm/scale",
        "bert/layer_0/attention/query/bias",
        "bert/layer_1/intermediate/bias",
        "bert/pooler/bias",
        "nsp/bias",
        "mlm_bias",
    ):
        assert name in excluded, name
    # ... and every weight matrix and embedding table is decayed.
    for name in (
        "bert/embeddings/word_embeddings/embedding",
        "bert/embeddings/position_embeddings/embedding",
        "bert/embeddings/token_type_embeddings/embedding",
        "bert/layer_0/attention/query/kernel",
        "bert/layer_0/attention/output/kernel",
        "bert/layer_1/intermediate/kernel",
        "bert/layer_1/output/kernel",
        "bert/pooler/kernel",
        "mlm_transform/kernel",
        "nsp/kernel",
    ):
        assert name in decayed, name
    assert all(n.endswith(("kernel", "embedding")) for n in decayed)
    assert all("LayerNorm" in n or "bias" in n for n in excluded)


@pytest.mark.parametrize("name", ["adamw", "lamb"])
def test_decay_applies_only_where_the_mask_says(params, name):
    """With zero gradients, the only update is weight decay: masked parameters stay put."""
    cfg = optim_cfg(name=name, warmup_steps=0, weight_decay=0.1, clip_norm=0.0)
    tx, _ = optim.make_optimizer(cfg, total_steps=100)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    mask = names(optim.weight_decay_mask(params))
    for name_, u in names(updates).items():
        p = names(params)[name_]
        if not mask[name_]:
            assert float(jnp.abs(u).max()) == 0.0, name_
        elif name == "adamw":  # decoupled decay: -lr * wd * p
            np.testing.assert_allclose(u, -1e-3 * 0.1 * p, rtol=1e-5, atol=1e-12, err_msg=name_)
        elif float(jnp.linalg.norm(p)) > 0:  # LAMB: trust ratio scales the step to lr * ||p||
            np.testing.assert_allclose(
                float(jnp.linalg.norm(u)),
                1e-3 * float(jnp.linalg.norm(p)),
                rtol=1e-4,
                err_msg=name_,
            )


def test_lamb_skips_layer_adaptation_for_excluded_parameters(params):
    """A bias gets the plain Adam step (lr-sized), a kernel the trust-ratio-scaled one."""
    cfg = optim_cfg(name="lamb", warmup_steps=0, weight_decay=0.0, clip_norm=0.0)
    tx, _ = optim.make_optimizer(cfg, total_steps=100)
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
    updates = names(tx.update(grads, tx.init(params), params)[0])
    p = names(params)
    # First Adam step with a constant gradient is ~ -lr * sign(g) elementwise.
    np.testing.assert_allclose(updates["bert/pooler/bias"], -1e-3, rtol=1e-3)
    kernel = "bert/layer_0/intermediate/kernel"
    np.testing.assert_allclose(
        float(jnp.linalg.norm(updates[kernel])), 1e-3 * float(jnp.linalg.norm(p[kernel])), rtol=1e-4
    )


def test_linear_warmup_then_linear_decay_to_zero():
    schedule = optim.learning_rate_schedule(optim_cfg(peak_lr=1.0, warmup_steps=10), 110)
    for step, want in ((0, 0.0), (5, 0.5), (10, 1.0), (60, 0.5), (110, 0.0), (200, 0.0)):
        np.testing.assert_allclose(float(schedule(step)), want, atol=1e-6, err_msg=str(step))


def test_polynomial_and_cosine_decay():
    poly = optim.learning_rate_schedule(
        optim_cfg(peak_lr=1.0, warmup_steps=10, schedule="polynomial", power=2.0), 110
    )
    np.testing.assert_allclose(float(poly(60)), 0.25, atol=1e-6)
    cosine = optim.learning_rate_schedule(
        optim_cfg(peak_lr=1.0, warmup_steps=10, schedule="cosine", end_lr=0.1), 110
    )
    np.testing.assert_allclose(float(cosine(10)), 1.0, atol=1e-6)
    np.testing.assert_allclose(float(cosine(60)), 0.1 + 0.9 * 0.5, atol=1e-6)
    np.testing.assert_allclose(float(cosine(110)), 0.1, atol=1e-6)
    # No warm-up: the decay starts at the peak.
    flat = optim.learning_rate_schedule(optim_cfg(peak_lr=2.0, warmup_steps=0), 100)
    np.testing.assert_allclose(float(flat(0)), 2.0, atol=1e-6)


@pytest.mark.parametrize("name", ["adamw", "lamb"])
@pytest.mark.parametrize("clip_norm", [1.0, 0.0])
def test_gradients_are_clipped_to_the_global_norm_before_adam(name, clip_norm):
    params = {"w": jnp.ones((4, 4)), "bias": jnp.ones((4,))}
    grads = {"w": jnp.full((4, 4), 3.0), "bias": jnp.arange(4.0)}  # global norm ~12.6
    tx, _ = optim.make_optimizer(optim_cfg(name=name, clip_norm=clip_norm), 10)
    _, state = tx.update(grads, tx.init(params), params)
    # Adam's first moment after one step is (1 - b1) * the gradient it was given.
    mu = optax.tree.get(state, "mu")
    want = 1.0 if clip_norm else float(optax.tree.norm(grads))
    np.testing.assert_allclose(float(optax.tree.norm(mu)), 0.1 * want, rtol=1e-5)
