"""Model parity with HuggingFace's PyTorch BertForPreTraining, HF folder I/O and bad input."""

import dataclasses
import json
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from bertjax import encoder, hf
from bertjax import model as bert_model
from bertjax.train import flops

# Two deliberately different shapes: odd sizes, exact and tanh GELU, three segment types.
HF_CONFIGS = {
    "exact_gelu": dict(
        vocab_size=101,
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=72,
        hidden_act="gelu",
        max_position_embeddings=64,
        type_vocab_size=2,
    ),
    "tanh_gelu": dict(
        vocab_size=67,
        hidden_size=36,
        num_hidden_layers=3,
        num_attention_heads=3,
        intermediate_size=50,
        hidden_act="gelu_new",
        max_position_embeddings=40,
        type_vocab_size=3,
        layer_norm_eps=1e-12,
    ),
}
TOL = 2e-5


def random_hf_model(config_kwargs, seed=0):
    """A BertForPreTraining whose every weight is random, incl. biases and LayerNorm params
    (HF's own init leaves them at 0/1, which would hide a wrong epsilon or a missing bias)."""
    torch.manual_seed(seed)
    model = transformers.BertForPreTraining(transformers.BertConfig(**config_kwargs))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm.weight" in name:
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            elif "LayerNorm.bias" in name or name.endswith(".bias"):
                p.copy_(0.2 * torch.randn_like(p))
            else:
                p.copy_(0.15 * torch.randn_like(p))
    return model.eval()


def random_batch(cfg_kwargs, batch=3, length=13, seed=1):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, cfg_kwargs["vocab_size"], (batch, length))
    segments = np.zeros((batch, length), np.int64)
    segments[:, length // 2 :] = rng.integers(0, cfg_kwargs["type_vocab_size"], (batch, 1))
    mask = np.ones((batch, length), np.int64)
    mask[1, 9:] = 0  # padding in two rows, of different lengths
    mask[2, 5:] = 0
    return ids, segments, mask


def hf_outputs(model, ids, segments, mask):
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(ids),
            token_type_ids=torch.tensor(segments),
            attention_mask=torch.tensor(mask),
            output_hidden_states=True,
        )
    return (
        out.prediction_logits.numpy(),
        out.seq_relationship_logits.numpy(),
        out.hidden_states[-1].numpy(),
    )


@pytest.fixture(scope="module", params=sorted(HF_CONFIGS))
def hf_folder(request, tmp_path_factory):
    kwargs = HF_CONFIGS[request.param]
    model = random_hf_model(kwargs)
    folder = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(folder, safe_serialization=True)
    (folder / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    return kwargs, model, folder


def max_diff(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def test_forward_parity_with_transformers(hf_folder):
    kwargs, torch_model, folder = hf_folder
    ids, segments, mask = random_batch(kwargs)
    ref_mlm, ref_nsp, ref_hidden = hf_outputs(torch_model, ids, segments, mask)
    ours = hf.load_pretrained(folder)(ids, token_type_ids=segments, attention_mask=mask)
    diffs = {
        "mlm": max_diff(ours.mlm_logits, ref_mlm),
        "nsp": max_diff(ours.nsp_logits, ref_nsp),
        "hidden": max_diff(ours.last_hidden_state, ref_hidden),
    }
    print(f"parity max-abs-diff {folder.name}: {diffs}")
    assert max(diffs.values()) <= TOL, diffs
    # The outputs are not trivially small: the tolerance means something.
    assert np.abs(ref_mlm).max() > 1.0


def test_masked_positions_gather_equals_full_logits(hf_folder):
    kwargs, _, folder = hf_folder
    loaded = hf.load_pretrained(folder)
    ids, segments, mask = random_batch(kwargs)
    positions = np.array([[1, 4, 0], [2, 3, 8], [0, 1, 4]])
    full = loaded(ids, token_type_ids=segments, attention_mask=mask).mlm_logits
    gathered = (
        bert_model.BertForPreTraining(loaded.config)
        .apply(
            {"params": loaded.params},
            jnp.asarray(ids),
            jnp.asarray(segments),
            jnp.asarray(mask),
            masked_lm_positions=jnp.asarray(positions),
        )
        .mlm_logits
    )
    assert gathered.shape == (3, 3, kwargs["vocab_size"])
    np.testing.assert_allclose(
        gathered, np.take_along_axis(np.asarray(full), positions[..., None], axis=1), atol=1e-5
    )


def test_save_then_transformers_load_gives_same_logits(hf_folder, tmp_path):
    kwargs, _, folder = hf_folder
    ours = hf.load_pretrained(folder)
    hf.save_pretrained(ours, tmp_path / "out")
    assert (tmp_path / "out" / "vocab.txt").exists()  # tokenizer files travel with the weights
    reloaded, info = transformers.BertForPreTraining.from_pretrained(
        tmp_path / "out", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert not info["mismatched_keys"], info
    ids, segments, mask = random_batch(kwargs, seed=7)
    ref_mlm, ref_nsp, _ = hf_outputs(reloaded.eval(), ids, segments, mask)
    out = ours(ids, token_type_ids=segments, attention_mask=mask)
    assert max_diff(out.mlm_logits, ref_mlm) <= TOL
    assert max_diff(out.nsp_logits, ref_nsp) <= TOL


def test_load_save_load_is_lossless(hf_folder, tmp_path):
    _, _, folder = hf_folder
    first = hf.load_pretrained(folder)
    hf.save_pretrained(first, tmp_path / "a")
    second = hf.load_pretrained(tmp_path / "a")
    assert second.config == first.config
    jax.tree_util.tree_map(np.testing.assert_array_equal, first.params, second.params)


def _pooled_and_grads(cfg, params, ids, segments, mask, cls_only):
    """BertModel's pooled output [B, H] and the gradients of its sum w.r.t. the parameters."""

    def pooled_sum(params):
        _, pooled = bert_model.BertModel(cfg).apply(
            {"params": params}, ids, segments, mask, cls_only=cls_only
        )
        return jnp.sum(pooled * jnp.arange(1.0, 1.0 + pooled.shape[-1])), pooled

    return jax.jit(jax.grad(pooled_sum, has_aux=True))(params)


@pytest.mark.parametrize(
    "scan_layers, remat_policy",
    [(False, "none"), (True, "none"), (False, "full")],
    ids=["unrolled", "scanned", "unrolled-remat"],
)
def test_cls_only_gives_the_same_pooled_output_and_gradients(hf_folder, scan_layers, remat_policy):
    """cls_only (the last layer at [CLS] alone, for the heads that read only the pooled
    output) changes nothing those heads see: the pooled output and every parameter's
    gradient of it equal the full model's, on rows with padding, whatever the layers' layout
    and recomputation; last_hidden_state is the [CLS] row alone."""
    kwargs, _, folder = hf_folder
    loaded = hf.load_pretrained(folder)
    cfg = dataclasses.replace(loaded.config, scan_layers=scan_layers, remat_policy=remat_policy)
    params = encoder.to_layout(loaded.params["bert"], scan_layers)
    ids, segments, mask = (jnp.asarray(x) for x in random_batch(kwargs))
    full_grads, full_pooled = _pooled_and_grads(cfg, params, ids, segments, mask, False)
    grads, pooled = _pooled_and_grads(cfg, params, ids, segments, mask, True)
    assert max_diff(pooled, full_pooled) <= 1e-6
    # The last layer's query, output and feed-forward weights get their gradient from [CLS]
    # alone either way; an error in the subset path would show here first.
    # Each parameter's gradient within 1e-5 of its largest entry (float32 sums reordered), or
    # of 1 where it is ~0 (the key biases': softmax ignores what adds to every logit of a row).
    relative = jax.tree.map(
        lambda g, w: max_diff(g, w) / max(float(jnp.abs(w).max()), 1.0), grads, full_grads
    )
    assert max(jax.tree.leaves(relative)) <= 1e-5, relative
    hidden, _ = bert_model.BertModel(cfg).apply(
        {"params": params}, ids, segments, mask, cls_only=True
    )
    full_hidden, _ = bert_model.BertModel(cfg).apply({"params": params}, ids, segments, mask)
    assert hidden.shape == (3, 1, kwargs["hidden_size"])
    assert max_diff(hidden, full_hidden[:, :1]) <= 1e-6


def test_cls_only_runs_the_last_layer_at_cls_alone():
    """The saving is in the program: a BERT-mini classifier step (forward and backward, 8 x
    128) compiles to fewer FLOPs with cls_only, by what flops.cls_only_flops_saved counts (the
    last layer's query, output-projection and feed-forward matmuls and attention at the 127
    other positions of each row; XLA's count adds a few elementwise FLOPs)."""
    cfg = bert_model.preset_config("mini", vocab_size=1000)
    batch, length = 8, 128
    params = jax.eval_shape(
        lambda: bert_model.BertModel(cfg).init(
            jax.random.key(0), *(jnp.zeros((1, 8), jnp.int32),) * 3
        )["params"]
    )
    ids = jax.ShapeDtypeStruct((batch, length), jnp.int32)

    def compiled_flops(cls_only):
        def loss(params, ids):
            _, pooled = bert_model.BertModel(cfg).apply(
                {"params": params}, ids, ids, ids, cls_only=cls_only
            )
            return jnp.sum(pooled)

        compiled = jax.jit(jax.grad(loss)).lower(params, ids).compile()
        return compiled.cost_analysis()["flops"]

    saved = compiled_flops(False) - compiled_flops(True)
    counted = flops.cls_only_flops_saved(cfg, batch, length)
    print(f"compiled FLOPs saved {saved:.4g}, counted {counted:.4g}")
    assert 0.95 * counted <= saved <= 1.15 * counted, (saved, counted)


def test_cls_only_refuses_what_it_cannot_give():
    cfg = bert_model.preset_config("tiny", vocab_size=50)
    ids = jnp.ones((2, 8), jnp.int32)
    model = bert_model.BertModel(cfg)
    params = model.init(jax.random.key(0), ids, ids, ids)["params"]
    with pytest.raises(ValueError, match="cls_only"):
        model.apply({"params": params}, ids, ids, ids, output_hidden_states=True, cls_only=True)


def test_bfloat16_compute_stays_within_bf16_tolerance(hf_folder):
    kwargs, _, folder = hf_folder
    ids, segments, mask = random_batch(kwargs)
    f32 = hf.load_pretrained(folder)(ids, token_type_ids=segments, attention_mask=mask)
    bf16_model = hf.load_pretrained(folder, compute_dtype="bfloat16")
    assert jax.tree_util.tree_leaves(bf16_model.params)[0].dtype == jnp.float32  # params stay f32
    bf16 = bf16_model(ids, token_type_ids=segments, attention_mask=mask)
    assert bf16.mlm_logits.dtype == jnp.float32
    scale = float(np.abs(f32.mlm_logits).max())
    # bf16 keeps 8 mantissa bits (~0.4% relative); a few layers compound that.
    assert max_diff(bf16.mlm_logits, f32.mlm_logits) <= 0.05 * scale
    assert max_diff(bf16.last_hidden_state, f32.last_hidden_state) <= 0.1
    assert max_diff(f32.mlm_logits, bf16.mlm_logits) > 0  # it really computed in bf16


@pytest.mark.parametrize("preset", sorted(bert_model.PRESETS))
def test_preset_parameter_count_equals_hf(preset):
    cfg = bert_model.preset_config(preset)
    with torch.device("meta"):
        ref = transformers.BertForPreTraining(
            transformers.BertConfig(
                vocab_size=cfg.vocab_size,
                hidden_size=cfg.hidden_size,
                num_hidden_layers=cfg.num_hidden_layers,
                num_attention_heads=cfg.num_attention_heads,
                intermediate_size=cfg.intermediate_size,
            )
        )
    ours = bert_model.count_params(bert_model.abstract_params(cfg))
    assert ours == sum(p.numel() for p in ref.parameters())
    if preset == "base":
        assert ours == 110_106_428  # BertForPreTraining for bert-base-uncased


def test_every_parameter_has_logical_axis_names():
    params = bert_model.abstract_params(bert_model.preset_config("tiny", vocab_size=50))
    leaves = jax.tree_util.tree_leaves(params, is_leaf=lambda x: hasattr(x, "names"))
    assert leaves and all(len(leaf.names) == leaf.value.ndim for leaf in leaves)
    names = {n for leaf in leaves for n in leaf.names}
    assert {"vocab", "embed", "heads", "kv", "mlp"} <= names


# --- bad input -----------------------------------------------------------------------------


def _copy_folder(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _rewrite_weights(folder, edit):
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(folder / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


def test_config_sizes_disagreeing_with_weights_is_an_error(hf_folder, tmp_path):
    folder = _copy_folder(hf_folder[2], tmp_path / "f")
    config = json.loads((folder / "config.json").read_text())
    config["intermediate_size"] += 4
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(hf.CheckpointError, match=r"intermediate.dense.weight.*shape"):
        hf.load_pretrained(folder)


def test_missing_weight_is_an_error(hf_folder, tmp_path):
    folder = _copy_folder(hf_folder[2], tmp_path / "f")
    _rewrite_weights(folder, lambda t: t.pop("bert.encoder.layer.1.output.dense.bias"))
    with pytest.raises(hf.CheckpointError, match=r"missing.*layer.1.output.dense.bias"):
        hf.load_pretrained(folder)


def test_unexpected_weight_is_an_error_but_buffers_are_not(hf_folder, tmp_path):
    folder = _copy_folder(hf_folder[2], tmp_path / "f")
    _rewrite_weights(
        folder, lambda t: t.update({"bert.embeddings.position_ids": np.arange(8)[None]})
    )
    hf.load_pretrained(folder)  # a known buffer is fine
    _rewrite_weights(folder, lambda t: t.update({"bert.extra.weight": np.zeros(3, np.float32)}))
    with pytest.raises(hf.CheckpointError, match=r"not part of BERT.*bert.extra.weight"):
        hf.load_pretrained(folder)


def test_not_bert_is_an_error(hf_folder, tmp_path):
    folder = _copy_folder(hf_folder[2], tmp_path / "f")
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "gpt2"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(hf.CheckpointError, match="model_type 'gpt2'"):
        hf.load_pretrained(folder)
    with pytest.raises(hf.CheckpointError, match="no config.json"):
        hf.load_pretrained(tmp_path)


def test_plain_bert_model_folder_loads_with_fresh_heads_and_a_warning(hf_folder, tmp_path):
    kwargs, torch_model, _ = hf_folder
    torch_model.bert.save_pretrained(tmp_path / "plain", safe_serialization=True)
    with pytest.warns(UserWarning, match="initialised freshly"):
        loaded = hf.load_pretrained(tmp_path / "plain")
    ids, segments, mask = random_batch(kwargs)
    _, _, ref_hidden = hf_outputs(torch_model, ids, segments, mask)
    out = loaded(ids, token_type_ids=segments, attention_mask=mask)
    assert max_diff(out.last_hidden_state, ref_hidden) <= TOL


def test_full_folder_loads_without_warnings(hf_folder):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        hf.load_pretrained(hf_folder[2])


def test_unknown_config_keys_are_errors():
    with pytest.raises(ValueError, match="unknown BertConfig keys.*hiden_size"):
        bert_model.preset_config("tiny", hiden_size=3)
    with pytest.raises(ValueError, match="unknown model preset"):
        bert_model.preset_config("huge")
    with pytest.raises(ValueError, match="not divisible"):
        bert_model.preset_config("tiny", num_attention_heads=3)


def test_loss_parity_with_transformers(hf_folder):
    """Our MLM+NSP loss (gathered positions, weights) equals HF's with the same labels."""
    from bertjax.train import losses

    kwargs, torch_model, folder = hf_folder
    ids, segments, mask = random_batch(kwargs)
    positions = np.array([[1, 4, 6, 0], [2, 3, 8, 0], [1, 2, 4, 0]])  # last slot is padding
    weights = np.array([[1, 1, 1, 0]] * 3, np.float32)
    masked_ids = np.random.default_rng(3).integers(0, kwargs["vocab_size"], positions.shape)
    nsp_labels = np.array([0, 1, 1])
    hf_labels = np.full(ids.shape, -100)
    for b in range(ids.shape[0]):
        for p, w, t in zip(positions[b], weights[b], masked_ids[b]):
            if w:
                hf_labels[b, p] = t
    with torch.no_grad():
        ref = torch_model(
            input_ids=torch.tensor(ids),
            token_type_ids=torch.tensor(segments),
            attention_mask=torch.tensor(mask),
            labels=torch.tensor(hf_labels),
            next_sentence_label=torch.tensor(nsp_labels),
        ).loss.item()
    loaded = hf.load_pretrained(folder)
    out = bert_model.BertForPreTraining(loaded.config).apply(
        {"params": loaded.params},
        jnp.asarray(ids),
        jnp.asarray(segments),
        jnp.asarray(mask),
        masked_lm_positions=jnp.asarray(positions),
    )
    batch = {
        "masked_lm_ids": jnp.asarray(masked_ids),
        "masked_lm_weights": jnp.asarray(weights),
        "next_sentence_labels": jnp.asarray(nsp_labels),
    }
    ours = losses.metrics_from_sums(losses.pretraining_sums(out.mlm_logits, out.nsp_logits, batch))
    assert abs(float(ours["loss"]) - ref) <= 1e-5 * max(1.0, abs(ref)), (float(ours["loss"]), ref)
