"""Mesh and partitioning: axis sizes, parameter shardings by logical rules, and the same
losses on every mesh (data-parallel, FSDP, tensor-parallel, one device)."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from bertjax import model as model_lib
from bertjax.data.synthetic import synthetic_batch
from bertjax.errors import UserError
from bertjax.train import optim, sharding
from bertjax.train import step as step_lib
from helpers import optim_config

RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("vocab", "tensor"),
)
MODEL_CFG = model_lib.preset_config(
    "tiny",
    vocab_size=128,
    max_position_embeddings=32,
    num_hidden_layers=1,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)
OPTIM_CFG = optim_config(warmup_steps=3)


def mesh_of(data, fsdp=1, tensor=1):
    n = data * fsdp * tensor
    return sharding.make_mesh(dict(data=data, fsdp=fsdp, tensor=tensor), jax.devices()[:n])


def make_batch(step, batch=16, length=32, predictions=5, vocab=128):
    return synthetic_batch(
        step, batch=batch, length=length, predictions=predictions, vocab=vocab, weight_prob=0.8
    )


def test_mesh_shape_resolves_minus_one_and_rejects_bad_sizes():
    assert sharding.mesh_shape(dict(data=-1, fsdp=1, tensor=1), 8) == dict(data=8, fsdp=1, tensor=1)
    assert sharding.mesh_shape(dict(data=2, fsdp=-1, tensor=2), 8) == dict(data=2, fsdp=2, tensor=2)
    with pytest.raises(UserError, match="multiply to 6, but there are 8 devices"):
        sharding.mesh_shape(dict(data=3, fsdp=2, tensor=1), 8)
    with pytest.raises(UserError, match="not divisible"):
        sharding.mesh_shape(dict(data=-1, fsdp=3, tensor=1), 8)
    with pytest.raises(UserError, match="only one axis may be -1"):
        sharding.mesh_shape(dict(data=-1, fsdp=-1, tensor=1), 8)
    with pytest.raises(UserError, match="mesh.tensor=0"):
        sharding.mesh_shape(dict(data=-1, fsdp=1, tensor=0), 8)


def test_default_mesh_is_all_data_parallel_over_every_device():
    mesh = sharding.make_mesh(dict(data=-1, fsdp=1, tensor=1))
    assert dict(mesh.shape) == dict(data=8, fsdp=1, tensor=1)
    assert mesh.devices.size == jax.device_count() == 8


def test_parameters_and_optimizer_state_follow_the_logical_rules():
    tx, _ = optim.make_optimizer(OPTIM_CFG, 10)
    _, shardings = step_lib.state_shardings(MODEL_CFG, tx, mesh_of(2, 2, 2), RULES)
    params = shardings.params
    layer = params["bert"]["layer_0"]
    assert layer["intermediate"]["kernel"].spec == P("fsdp", "tensor")
    assert layer["output"]["kernel"].spec == P("tensor", "fsdp")
    assert layer["attention"]["query"]["kernel"].spec == P("fsdp", "tensor", None)
    assert layer["output_LayerNorm"]["scale"].spec == P("fsdp")
    assert params["bert"]["embeddings"]["word_embeddings"]["embedding"].spec == P("tensor", "fsdp")
    assert params["bert"]["embeddings"]["position_embeddings"]["embedding"].spec == P(None, "fsdp")
    # Adam's moments are split exactly like the parameters (ZeRO-3); counters replicated.
    adam = shardings.opt_state[1][0]
    assert jax.tree.map(lambda s: s.spec, adam.mu) == jax.tree.map(lambda s: s.spec, params)
    assert adam.count.spec == P() and shardings.step.spec == P()


def test_a_dimension_that_does_not_split_evenly_is_a_user_error():
    cfg = model_lib.preset_config("tiny", vocab_size=129, max_position_embeddings=32)
    tx, _ = optim.make_optimizer(OPTIM_CFG, 10)
    abstract, shardings = step_lib.state_shardings(cfg, tx, mesh_of(4, 1, 2), RULES)
    with pytest.raises(
        UserError,
        match=r"word_embeddings/embedding of shape \(129, 128\) "
        r"cannot be split 2 ways",
    ):
        sharding.check_divisible(abstract, shardings)


def test_global_batch_is_split_over_data_and_fsdp():
    mesh = mesh_of(2, 2, 2)
    batch = sharding.global_batch(make_batch(0, batch=8), mesh)
    ids = batch["input_ids"]
    assert ids.shape == (8, 32) and ids.sharding.spec == P(("data", "fsdp"))
    # 4 batch shards, each replicated over the 2 'tensor' devices.
    assert {s.data.shape for s in ids.addressable_shards} == {(2, 32)}
    np.testing.assert_array_equal(np.asarray(ids), make_batch(0, batch=8)["input_ids"])


def losses_on_mesh(mesh, steps=10):
    tx, schedule = optim.make_optimizer(OPTIM_CFG, steps)
    _, shardings = step_lib.state_shardings(MODEL_CFG, tx, mesh, RULES)
    state = step_lib.create_sharded_state(
        jax.random.key(0), model_cfg=MODEL_CFG, tx=tx, shardings=shardings
    )
    train_step = step_lib.jit_train_step(
        mesh,
        RULES,
        shardings,
        model=model_lib.BertForPreTraining(MODEL_CFG),
        tx=tx,
        schedule=schedule,
    )
    history = []
    for s in range(steps):
        state, metrics = train_step(
            state, sharding.global_batch(make_batch(s), mesh), jax.random.key(1)
        )
        history.append(metrics)
    jax.block_until_ready((state, history))
    return np.array(
        [[float(m[k]) for k in ("loss", "mlm_loss", "nsp_loss", "grad_norm")] for m in history]
    )


@pytest.mark.slow
def test_losses_agree_on_every_mesh():
    """(a) 10 float32 steps: data=8, data=2 x fsdp=4, data=4 x tensor=2, and one device."""
    reference = losses_on_mesh(mesh_of(1))
    assert reference[-1, 0] < reference[0, 0]  # it trains
    for shape in ((8, 1, 1), (2, 4, 1), (4, 1, 2)):
        np.testing.assert_allclose(
            losses_on_mesh(mesh_of(*shape)), reference, rtol=0, atol=1e-5, err_msg=str(shape)
        )
