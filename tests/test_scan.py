"""Scanned layers (`model.scan_layers`): the layout conversion, the same training as unrolled,
HF export, resume and --init-from across layouts, LAMB per layer, and the scanned,
rematerialised step on TPU lowering and under FSDP."""

import argparse
import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import transformers
from jax.sharding import PartitionSpec as P

from bertjax import encoder, hf
from bertjax import model as model_lib
from bertjax.commands import export
from bertjax.data.synthetic import synthetic_batch
from bertjax.errors import UserError
from bertjax.train import checkpoint, optim, sharding, step_setup
from bertjax.train import step as step_lib
from bertjax.train.head import pretraining_head
from bertjax.train.resume import restore_state
from bertjax.train.warm_start import warm_start
from helpers import SMALL_LENGTH as LENGTH
from helpers import SMALL_VOCAB as VOCAB
from helpers import TINY_NO_DROPOUT as TINY
from helpers import assert_trees_close, optim_config, perturbed, unboxed_params
from helpers import small_batch as make_batch

RULES = sharding.DEFAULT_LOGICAL_AXIS_RULES
SCANNED = dataclasses.replace(TINY, scan_layers=True)


# --- the two layouts ------------------------------------------------------------------------


def test_stack_and_unstack_layers_convert_a_whole_train_state_both_ways():
    """stack_layers turns an unrolled TrainState (params and Adam moments) into exactly the
    tree a scanned model builds (same structure, shapes, layer i at index i); unstack_layers
    undoes it bit for bit; each leaves a tree already in its layout as it is."""
    tx, _ = optim.make_optimizer(optim_config(), 10)
    params = perturbed(unboxed_params(TINY))
    opt_state = jax.device_get(jax.jit(tx.init)(params))
    state = step_lib.TrainState(step=np.int32(0), params=params, opt_state=opt_state)
    stacked = encoder.stack_layers(state)
    scanned_shapes = nn.meta.unbox(
        jax.eval_shape(
            functools.partial(step_lib.init_state, model_cfg=SCANNED, tx=tx), jax.random.key(0)
        )
    )
    assert jax.tree.structure(stacked) == jax.tree.structure(scanned_shapes)
    jax.tree.map(lambda x, s: np.testing.assert_equal(x.shape, s.shape), stacked, scanned_shapes)
    kernel = "bert", "layers", "intermediate", "kernel"
    np.testing.assert_array_equal(
        functools.reduce(dict.get, kernel, stacked.params)[1],
        state.params["bert"]["layer_1"]["intermediate"]["kernel"],
    )
    assert set(stacked.opt_state[1][0].mu["bert"]) == {"embeddings", "layers", "pooler"}
    assert_trees_close(encoder.unstack_layers(stacked), state, atol=0)
    assert_trees_close(encoder.stack_layers(stacked), stacked, atol=0)
    assert_trees_close(encoder.unstack_layers(state), state, atol=0)
    with pytest.raises(ValueError, match="layer_0 ... layer_1"):
        encoder.stack_layers({"layer_0": {"w": np.ones(2)}, "layer_2": {"w": np.ones(2)}})


def test_scanned_params_carry_the_layers_axis_mapped_to_no_mesh_axis():
    """Stacked parameters get the logical name "layers" first, which the default rules map to
    no mesh axis: on a data x fsdp x tensor mesh only their other dimensions are split."""
    abstract = model_lib.abstract_params(SCANNED)
    specs = nn.get_partition_spec(abstract)
    assert specs["bert"]["layers"]["intermediate"]["kernel"] == P("layers", "embed", "mlp")
    mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))
    shardings = sharding.tree_shardings(abstract, mesh, RULES)
    assert shardings["bert"]["layers"]["intermediate"]["kernel"].spec == P(None, "fsdp", "tensor")
    assert shardings["bert"]["layers"]["attention"]["query"]["kernel"].spec == P(
        None, "fsdp", "tensor", None
    )


# --- training, export and checkpoints ---------------------------------------------------------


def train_losses(cfg, start_params, steps=10):
    """Per-step losses and the final params of `steps` float32 AdamW steps on a data x fsdp x
    tensor mesh of 8 devices, starting from `start_params` (unrolled layout)."""
    mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))
    tx, schedule = optim.make_optimizer(optim_config(warmup_steps=2, peak_lr=2e-3), steps)
    _, shardings = step_lib.state_shardings(cfg, tx, mesh, RULES)
    params = encoder.to_layout(start_params, cfg.scan_layers)
    state = jax.device_put(
        step_lib.TrainState(
            step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params)
        ),
        shardings,
    )
    train_step = step_lib.jit_train_step(
        mesh, RULES, shardings, model=model_lib.BertForPreTraining(cfg), tx=tx, schedule=schedule
    )
    losses = []
    for s in range(steps):
        state, metrics = train_step(
            state, sharding.global_batch(make_batch(s), mesh), jax.random.key(1)
        )
        losses.append(float(metrics["loss"]))
    return np.array(losses), encoder.unstack_layers(jax.device_get(state.params))


def test_scanned_model_trains_as_the_unrolled_one_over_10_steps():
    """From the same initial parameters (the unrolled init, stacked), 10 float32 train steps
    of the scanned model give the unrolled model's losses within 1e-5 and the same parameters,
    on a data x fsdp x tensor mesh; and the steps do move every parameter (it trains)."""
    start = unboxed_params(TINY)
    unrolled_losses, unrolled_params = train_losses(TINY, start)
    scanned_losses, scanned_params = train_losses(SCANNED, start)
    np.testing.assert_allclose(scanned_losses, unrolled_losses, atol=1e-5, rtol=0)
    assert_trees_close(scanned_params, unrolled_params, atol=1e-5)
    moved = jax.tree_util.tree_leaves_with_path(
        jax.tree.map(lambda a, b: np.max(np.abs(a - b)), unrolled_params, start)
    )
    # The key bias alone has no gradient: q.(k + b) shifts a query's scores all alike.
    assert all(m > 1e-3 for path, m in moved if "key" not in jax.tree_util.keystr(path))


def save_checkpoint(workdir, cfg, params, tx, step=3):
    """A training checkpoint of `params` (in `cfg`'s layout) with non-zero Adam moments."""
    opt_state = jax.tree.map(lambda x: x + 0.5 if x.dtype == jnp.float32 else x, tx.init(params))
    state = step_lib.TrainState(
        step=jnp.asarray(step, jnp.int32), params=params, opt_state=opt_state
    )
    ckpt = checkpoint.Checkpointer(workdir, async_save=False)
    meta = checkpoint.checkpoint_metadata(cfg, {"model": {"preset": "tiny"}}, "")
    ckpt.save(step, state, jax.random.key(7), {"step": step}, meta)
    ckpt.close()
    return state


def test_scanned_checkpoint_exports_to_hf_with_the_same_logits(tmp_path):
    """`bertjax export` of a checkpoint trained with scan_layers writes a per-layer HF folder
    that transformers.BertForPreTraining loads with no missing or unexpected weights and
    whose logits (MLM and NSP, padded rows) are ours; hf.load_pretrained reads it back into
    either layout."""
    from bertjax import hf

    params = perturbed(unboxed_params(SCANNED))
    tx, _ = optim.make_optimizer(optim_config(), 10)
    save_checkpoint(tmp_path / "run", SCANNED, params, tx)
    out = tmp_path / "hf"
    export.run(
        argparse.Namespace(workdir=str(tmp_path / "run"), step=None, out=str(out), overwrite=False)
    )
    torch_model, info = transformers.BertForPreTraining.from_pretrained(
        out, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ids = np.arange(3 * LENGTH).reshape(3, LENGTH) % VOCAB
    segments = (np.arange(LENGTH) >= 7).astype(np.int64)[None].repeat(3, 0)
    mask = np.ones_like(ids)
    mask[1, 9:], mask[2, 4:] = 0, 0
    with torch.no_grad():
        ref = torch_model.eval()(
            input_ids=torch.tensor(ids),
            token_type_ids=torch.tensor(segments),
            attention_mask=torch.tensor(mask),
        )
    ours = jax.jit(model_lib.BertForPreTraining(SCANNED).apply)(
        {"params": params}, jnp.asarray(ids), jnp.asarray(segments), jnp.asarray(mask)
    )
    np.testing.assert_allclose(ours.mlm_logits, ref.prediction_logits.numpy(), atol=2e-5, rtol=0)
    np.testing.assert_allclose(
        ours.nsp_logits, ref.seq_relationship_logits.numpy(), atol=2e-5, rtol=0
    )
    assert_trees_close(hf.load_pretrained(out, scan_layers=True).params, params, atol=0)
    assert_trees_close(hf.load_pretrained(out).params, encoder.unstack_layers(params), atol=0)


@pytest.mark.parametrize("saved_scan", [False, True], ids=["unrolled_ckpt", "scanned_ckpt"])
def test_resume_and_init_from_cross_layouts(tmp_path, saved_scan):
    """A checkpoint written with one layout resumes (restore_state) and warm-starts
    (--init-from with its Adam moments) a run with the other: params and moments are the
    checkpoint's, converted; restored as-is into the other layout it is a UserError naming
    model.scan_layers, never a damaged checkpoint set aside."""
    saved_cfg = dataclasses.replace(TINY, scan_layers=saved_scan)
    run_cfg = dataclasses.replace(TINY, scan_layers=not saved_scan)
    mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))
    tx, _ = optim.make_optimizer(optim_config(), 10)
    params = encoder.to_layout(perturbed(unboxed_params(TINY)), saved_scan)
    saved = save_checkpoint(tmp_path, saved_cfg, params, tx)
    setup = step_setup.build(
        _run_config(), pretraining_head(run_cfg), mesh, optim_cfg=optim_config(), total_steps=10
    )
    abstract, shardings = setup.abstract_state, setup.state_shardings
    ckpt = checkpoint.Checkpointer(tmp_path, read_only=True)
    state, _, loader_state, _ = restore_state(ckpt, setup)
    expected = encoder.to_layout(saved, run_cfg.scan_layers)
    assert_trees_close(jax.device_get(state), expected, atol=0)
    assert loader_state == {"step": 3}
    leaf = functools.reduce(
        dict.get, ("bert", "embeddings", "word_embeddings", "embedding"), state.params
    )
    assert leaf.sharding == shardings.params["bert"]["embeddings"]["word_embeddings"]["embedding"]

    # Any state of this run's layout will do as the one to warm-start (its params and moments
    # are replaced): the restored one, without compiling an init.
    started, _ = warm_start(state, str(tmp_path), setup, init_opt_state=True)
    assert_trees_close(jax.device_get(started.params), expected.params, atol=0)
    assert_trees_close(
        jax.device_get(started.opt_state[1][0].mu), expected.opt_state[1][0].mu, atol=0
    )
    assert int(started.opt_state[1][0].count) == 0  # the moments' step counter restarts

    with pytest.raises(UserError, match=f"model.scan_layers={saved_scan} and cannot restore"):
        ckpt.restore(nn.meta.unbox(abstract), shardings, model_cfg=run_cfg)
    assert ckpt.all_steps() == [3]  # nothing set aside


def _run_config():
    """A pretraining config whose logical rules and micro-batching are RULES' and 1."""
    from bertjax.train import config as config_lib

    return config_lib.load_config("base")


# --- LAMB -----------------------------------------------------------------------------------


def test_lamb_adapts_each_stacked_layer_as_its_own_parameter():
    """With stacked layers LAMB's trust ratio is taken per layer: two LAMB updates equal the
    unrolled model's, stacked (optax's own trust ratio over the whole stack would not)."""
    params = perturbed(unboxed_params(TINY))
    grads = perturbed(jax.tree.map(jnp.zeros_like, params), seed=2)
    cfg = optim_config(name="lamb", warmup_steps=0, peak_lr=1e-2)
    tx, _ = optim.make_optimizer(cfg, 10)

    def two_updates(params, grads):
        state, out = tx.init(params), []
        for _ in range(2):
            updates, state = tx.update(grads, state, params)
            out.append(updates)
        return out

    unrolled = jax.jit(two_updates)(params, grads)
    stacked = jax.jit(two_updates)(encoder.stack_layers(params), encoder.stack_layers(grads))
    for a, b in zip(stacked, unrolled):
        assert_trees_close(a, encoder.stack_layers(b), atol=1e-7)
    kernel = ("bert", "layers", "intermediate", "kernel")
    g, p = (functools.reduce(dict.get, kernel, encoder.stack_layers(t)) for t in (grads, params))
    whole = optax.scale_by_trust_ratio().update(g, None, p)[0]
    per_layer = optim.scale_by_trust_ratio_per_layer().update({"layers": g}, None, {"layers": p})[
        0
    ]["layers"]
    assert not np.allclose(whole, per_layer)


def test_scanned_rematerialised_step_lowers_for_tpu_with_splash():
    """The train step of a scanned, rematerialised ("minimal") bfloat16 model with the splash
    kernel lowers for TPU from this CPU on a data x fsdp mesh: loops over the layers (forward
    and backward) and the kernel's custom call."""
    cfg = model_lib.preset_config(
        "tiny",
        scan_layers=True,
        remat_policy="minimal",
        attention_impl="splash",
        compute_dtype="bfloat16",
        attention_probs_dropout_prob=0.0,
        vocab_size=128,
    )
    mesh = sharding.make_mesh(dict(data=4, fsdp=2, tensor=1))
    tx, schedule = optim.make_optimizer(optim_config(), 10)
    abstract, shardings = step_lib.state_shardings(cfg, tx, mesh, RULES)
    state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        nn.meta.unbox(abstract),
        shardings,
    )
    example = synthetic_batch(0, batch=8, length=128, predictions=20, vocab=cfg.vocab_size)
    batch = {
        k: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding.batch_sharding(mesh))
        for k, x in example.items()
    }
    rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=sharding.replicated(mesh))
    fn = step_lib.jit_train_step(
        mesh, RULES, shardings, model=model_lib.BertForPreTraining(cfg), tx=tx, schedule=schedule
    )
    text = fn.trace(state, batch, rng).lower(lowering_platforms=("tpu",)).as_text()
    assert text.count("stablehlo.while") >= 2 and "@tpu_custom_call" in text


def test_scanned_rematerialised_fsdp_step_compiles_without_involuntary_rematerialization():
    """Scanned layers with a remat policy on a data=2 x fsdp=4 mesh: the compiled step keeps
    the activation constraints and XLA never falls back to replicating whole tensors."""
    from test_activation_sharding import REMAT_WARNING, stderr_captured

    cfg = dataclasses.replace(SCANNED, remat_policy="minimal")
    mesh = sharding.make_mesh(dict(data=2, fsdp=4, tensor=1))
    tx, schedule = optim.make_optimizer(optim_config(), 10)
    abstract, shardings = step_lib.state_shardings(cfg, tx, mesh, RULES)
    state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        nn.meta.unbox(abstract),
        shardings,
    )
    fn = step_lib.jit_train_step(
        mesh, RULES, shardings, model=model_lib.BertForPreTraining(cfg), tx=tx, schedule=schedule
    )
    lowered = fn.lower(state, sharding.global_batch(make_batch(0), mesh), jax.random.key(1))
    assert "sdy.sharding_constraint" in lowered.as_text()
    with stderr_captured() as err:
        lowered.compile()
    assert REMAT_WARNING not in err[0]


def test_span_head_converts_scanned_encoders_at_its_hf_edges():
    """The SQuAD span head over a scanned encoder: the HF tensors of its stacked parameters
    are those of the same model unrolled, and they read back into either layout."""
    from bertjax.finetune import span_head

    cfg = dataclasses.replace(SCANNED, vocab_size=VOCAB)
    shapes = jax.eval_shape(lambda: span_head.head(TINY).init_params(TINY, jax.random.key(0)))
    unrolled = perturbed(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), nn.meta.unbox(shapes)))
    stacked = encoder.stack_layers(unrolled)
    tensors = hf.params_to_hf(stacked, cfg, span_head.HF_SPEC)
    expected = hf.params_to_hf(unrolled, TINY, span_head.HF_SPEC)
    assert tensors.keys() == expected.keys()
    assert_trees_close(tensors, expected, atol=0)
    read_back = hf.params_from_hf(tensors, cfg, span_head.HF_SPEC)
    no_pooler = {
        **stacked["bert"],
        "pooler": jax.tree.map(np.zeros_like, stacked["bert"]["pooler"]),
    }
    assert_trees_close(read_back, {**stacked, "bert": no_pooler}, atol=0)  # HF has no pooler
