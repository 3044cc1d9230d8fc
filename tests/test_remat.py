"""Remat policies (`model.remat_policy`): every policy's loss and gradients equal no remat's,
unrolled and scanned; what each keeps for the backward pass; the start-up errors, and the
replaced `model.remat`."""

import contextlib
import dataclasses
import functools
import io
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bertjax import encoder, model_config
from bertjax import model as model_lib
from bertjax.errors import UserError
from bertjax.train import config as config_lib
from helpers import SMALL_VOCAB as VOCAB
from helpers import TINY_CONFIG, assert_trees_close, perturbed, unboxed_params
from helpers import TINY_NO_DROPOUT as TINY
from helpers import small_batch as make_batch


def loss_and_grads(cfg, params, batch):
    model = model_lib.BertForPreTraining(cfg)

    def loss_fn(params):
        out = model.apply(
            {"params": params},
            batch["input_ids"],
            batch["segment_ids"],
            batch["input_mask"],
            batch["masked_lm_positions"],
        )
        return jnp.sum(out.mlm_logits**2) * 1e-3 + jnp.sum(out.nsp_logits)

    return jax.value_and_grad(loss_fn)(params)


@pytest.mark.parametrize("scan", [False, True], ids=["unrolled", "scanned"])
def test_every_remat_policy_gives_the_loss_and_gradients_of_none(scan):
    """Each `model.remat_policy`, unrolled and scanned, gives the loss and gradients of "none"
    within 1e-5 (float32): recomputation changes memory, not numbers. (All policies in one
    program: one compile instead of eleven; unrolled with one layer, which the program's size
    grows with.)"""
    base_cfg = TINY if scan else dataclasses.replace(TINY, num_hidden_layers=1)
    batch = make_batch(0)
    params = perturbed(unboxed_params(base_cfg))
    ref_loss, ref_grads = jax.jit(functools.partial(loss_and_grads, base_cfg))(params, batch)
    policies = model_config.REMAT_POLICY_NAMES[1:]

    @jax.jit
    def every_policy(params, batch):
        return [
            loss_and_grads(
                dataclasses.replace(base_cfg, scan_layers=scan, remat_policy=policy), params, batch
            )
            for policy in policies
        ]

    results = every_policy(encoder.to_layout(params, scan), batch)
    for policy, (loss, grads) in zip(policies, jax.device_get(results)):
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-6, err_msg=policy)
        assert_trees_close(encoder.unstack_layers(grads), ref_grads, atol=1e-5)


def saved_residuals(cfg, params, batch) -> list[str]:
    """What the backward pass of `cfg`'s loss keeps from the forward pass, one line each
    (jax.ad_checkpoint.print_saved_residuals: "f32[...] named 'query_proj' from ...")."""
    model = model_lib.BertForPreTraining(cfg)

    def loss_fn(params):
        out = model.apply(
            {"params": params},
            batch["input_ids"],
            batch["segment_ids"],
            batch["input_mask"],
            batch["masked_lm_positions"],
        )
        return jnp.sum(out.mlm_logits)

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        jax.ad_checkpoint.print_saved_residuals(loss_fn, params)
    return printed.getvalue().splitlines()


def residual_bytes(line: str) -> int:
    """Bytes of one print_saved_residuals line's array ("f32[8,16,128] ...")."""
    dtype, dims = re.match(r"(\w+)\[([\d,]*)\]", line).groups()
    itemsize = {"bool": 1, "bf16": 2}.get(dtype, 4)
    return itemsize * math.prod(int(d) for d in dims.split(",") if d)


def test_remat_policies_keep_what_their_names_say():
    """What each policy keeps for the backward pass (bytes of saved activations, unrolled):
    MaxText's named policies, listed from most to least memory, keep strictly less each down
    to "full"; "minimal_with_context" keeps every tagged activation of every layer and "full"
    none; "dots_with_no_batch_dims_saveable" keeps BERT's projections, as "minimal" does, and
    "dots_saveable" the attention scores too; "none" keeps the most."""
    batch = make_batch(0)
    params = unboxed_params(TINY)
    kept = {}
    for policy in model_config.REMAT_POLICY_NAMES:
        residuals = saved_residuals(dataclasses.replace(TINY, remat_policy=policy), params, batch)
        activations = [line for line in residuals if "from the argument" not in line]
        kept[policy] = sum(residual_bytes(line) for line in activations)
        named = [line for line in activations if " named '" in line]
        if policy == "minimal_with_context":
            for tag in model_config.TAGGED_ACTIVATIONS:
                assert sum(f"'{tag}'" in line for line in named) == TINY.num_hidden_layers, tag
        if policy in ("full", "nothing_saveable"):
            assert named == []
    chain = [
        "none",
        "minimal_with_context",
        "minimal",
        "save_dot_with_context_except_mlp",
        "save_dot_except_mlp",
        "save_qkv_proj",
        "save_out_proj",
        "full",
    ]
    assert [kept[p] for p in chain] == sorted((kept[p] for p in chain), reverse=True)
    assert len({kept[p] for p in chain}) == len(chain)
    assert (
        kept["save_dot_with_context_except_mlp"]
        >= kept["save_dot_except_mlpwi"]
        > kept["save_dot_except_mlp"]
    )
    assert kept["none"] > kept["dots_saveable"] > kept["dots_with_no_batch_dims_saveable"]
    assert kept["dots_with_no_batch_dims_saveable"] == kept["minimal"]
    assert kept["nothing_saveable"] == kept["full"]


def test_remat_policy_and_the_old_remat_key_fail_clearly_at_start_up(tmp_path):
    """An unknown policy is one UserError naming model.remat_policy and the valid names; the
    replaced boolean model.remat, on the command line or in a config file, says what to set
    instead; a checkpoint written with remat=true loads as remat_policy "full"."""
    config = config_lib.load_config(TINY_CONFIG, ["model.remat_policy=dots"])
    with pytest.raises(
        UserError,
        match=r"model.remat_policy='dots': expected one of none, "
        r"minimal_with_context, .*dots_saveable.*, full",
    ):
        config_lib.validate(config, num_devices=8)
    with pytest.raises(
        UserError,
        match="model.remat was replaced by model.remat_policy: "
        "remat=true is --config.model.remat_policy=full",
    ):
        config_lib.load_config(TINY_CONFIG, ["--config.model.remat=true"])
    path = tmp_path / "old_style.py"
    path.write_text(
        "from bertjax.configs import bert_tiny\n\n\ndef get_config():\n"
        "    config = bert_tiny.get_config()\n    config.model.remat = True\n"
        "    return config\n"
    )
    config = config_lib.load_config(str(path))
    with pytest.raises(UserError, match="model.remat was replaced by model.remat_policy"):
        config_lib.validate(config, num_devices=8)
    with pytest.raises(UserError, match="model.remat was replaced by model.remat_policy"):
        config_lib.model_config(config.model, dataset_vocab_size=VOCAB)
    config = config_lib.load_config(
        TINY_CONFIG, ["--config.model.remat_policy=minimal", "--config.model.scan_layers=true"]
    )
    config_lib.validate(config, num_devices=8)
    model_cfg = config_lib.model_config(config.model, dataset_vocab_size=VOCAB)
    assert (model_cfg.remat_policy, model_cfg.scan_layers) == ("minimal", True)
    old = dataclasses.asdict(TINY)
    del old["remat_policy"], old["scan_layers"]
    assert model_config.config_from_dict({**old, "remat": True}) == dataclasses.replace(
        TINY, remat_policy="full"
    )
    assert model_config.config_from_dict({**old, "remat": False}) == TINY
