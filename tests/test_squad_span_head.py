"""Span head parity with transformers' BertForQuestionAnswering (PyTorch): logits and loss on
random non-default weights, HF state dict <-> ours both ways, export that transformers loads
with no missing or unexpected keys, init from an encoder, and bad checkpoints."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from bertjax import hf
from bertjax import model as bert_model
from bertjax.finetune import span_head

# Odd sizes, exact or tanh GELU, three segment types: a wrong reshape or epsilon shows.
HF_CONFIGS = {
    "exact_gelu": {"vocab_size": 101, "hidden_size": 48, "num_hidden_layers": 2,
                   "num_attention_heads": 4, "intermediate_size": 72, "hidden_act": "gelu",
                   "max_position_embeddings": 64, "type_vocab_size": 2},
    "tanh_gelu": {"vocab_size": 67, "hidden_size": 36, "num_hidden_layers": 3,
                  "num_attention_heads": 3, "intermediate_size": 50, "hidden_act": "gelu_new",
                  "max_position_embeddings": 40, "type_vocab_size": 3},
}  # fmt: skip
TOL = 2e-5


@pytest.fixture(params=sorted(HF_CONFIGS))
def hf_kwargs(request):
    return HF_CONFIGS[request.param]


def randomize(name, value, rng):
    """A non-default value: LayerNorm scales near 1, biases and weights clearly non-zero."""
    if name.endswith(("LayerNorm.weight", "scale")):
        return 1.0 + 0.3 * rng.standard_normal(value.shape)
    if name.endswith("bias"):
        return 0.2 * rng.standard_normal(value.shape)
    return 0.15 * rng.standard_normal(value.shape)


def random_tree(shapes, seed=0):
    """Random non-default values for an (abstract) parameter tree, without compiling an init."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.asarray(
            randomize(jax.tree_util.keystr(path).strip("']"), x, rng), jnp.float32
        ),
        nn.meta.unbox(shapes),
    )


def our_random_params(cfg, seed=0):
    """Our span-model parameters with every leaf random (init leaves biases 0, scales 1)."""
    init = span_head.head(cfg).init_params
    return random_tree(jax.eval_shape(lambda: init(cfg, jax.random.key(0))), seed)


def batch(kwargs, size=3, length=13, seed=1):
    """Random ids, two segments and padding of different lengths in two rows."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, kwargs["vocab_size"], (size, length))
    segments = np.zeros((size, length), np.int64)
    segments[:, length // 2 :] = rng.integers(0, kwargs["type_vocab_size"], (size, 1))
    mask = np.ones((size, length), np.int64)
    mask[1, 9:], mask[2, 5:] = 0, 0
    return ids, segments, mask


def ours(cfg, params, ids, segments, mask):
    apply = jax.jit(span_head.BertForQuestionAnswering(cfg).apply)  # one compile, not op by op
    start, end = apply(
        {"params": params}, jnp.asarray(ids), jnp.asarray(segments), jnp.asarray(mask)
    )
    return np.asarray(start), np.asarray(end)


def theirs(model, ids, segments, mask, **labels):
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(ids),
            token_type_ids=torch.tensor(segments),
            attention_mask=torch.tensor(mask),
            **{k: torch.tensor(v) for k, v in labels.items()},
        )
    return out.start_logits.numpy(), out.end_logits.numpy(), out.loss


def max_diff(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def test_logits_and_loss_equal_transformers(hf_kwargs):
    """Our random weights, converted to HF names and loaded strictly into transformers'
    BertForQuestionAnswering, give the same start/end logits (within 2e-5) and loss."""
    cfg = bert_model.BertConfig(**hf_kwargs)
    params = our_random_params(cfg)
    torch_model = transformers.BertForQuestionAnswering(transformers.BertConfig(**hf_kwargs))
    state = {k: torch.tensor(v) for k, v in hf.params_to_hf(params, cfg, span_head.HF_SPEC).items()}
    torch_model.load_state_dict(state, strict=True)  # no missing, no unexpected key
    ids, segments, mask = batch(hf_kwargs)
    starts, ends = np.array([3, 0, 4]), np.array([5, 0, 4])
    ref_start, ref_end, ref_loss = theirs(
        torch_model.eval(), ids, segments, mask, start_positions=starts, end_positions=ends
    )
    start, end = ours(cfg, params, ids, segments, mask)
    assert start.shape == end.shape == ids.shape
    diffs = {"start": max_diff(start, ref_start), "end": max_diff(end, ref_end)}
    print(f"span logits max-abs-diff vs transformers: {diffs}")
    assert max(diffs.values()) <= TOL, diffs
    assert np.abs(ref_start).max() > 1.0  # outputs are not trivially small
    span_loss = jax.jit(_span_loss)
    # Over every position (a mask of ones): transformers' loss, which softmaxes the padding too.
    everywhere = np.ones_like(mask)
    loss = span_loss(start, end, starts, ends, everywhere)
    print(f"span loss: ours {float(loss):.7f} transformers {float(ref_loss):.7f}")
    assert abs(float(loss) - float(ref_loss)) <= 1e-5
    # Padding rows (weight 0) do not count.
    padded = span_loss(
        np.concatenate([start, start[:1]]),
        np.concatenate([end, end[:1] * 5]),
        np.append(starts, 1),
        np.append(ends, 2),
        np.concatenate([everywhere, everywhere[:1]]),
        np.array([1, 1, 1, 0]),
    )
    assert abs(float(padded) - float(ref_loss)) <= 1e-5

    # Over each row's real tokens (what training uses): the same cross-entropies with the
    # padding positions left out of the softmax, so rows 1 and 2 (padded) score lower.
    def real_ce(logits, positions):
        logits = np.where(mask.astype(bool), np.asarray(logits, np.float64), -np.inf)
        log_probs = (
            logits
            - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True))
            - logits.max(1, keepdims=True)
        )
        return -log_probs[np.arange(len(positions)), positions]

    reference = np.mean((real_ce(start, starts) + real_ce(end, ends)) / 2)
    assert abs(float(span_loss(start, end, starts, ends, mask)) - reference) <= 1e-5
    assert reference < float(ref_loss)


def test_export_loads_in_transformers_and_import_reads_hf(hf_kwargs, tmp_path):
    """write_folder -> transformers loads it with no missing, unexpected or mismatched keys
    and the same logits; a folder transformers saved -> read_folder -> its logits."""
    cfg = bert_model.BertConfig(**hf_kwargs)
    params = our_random_params(cfg, seed=3)
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    hf.write_folder(params, cfg, tmp_path / "out", [tmp_path / "vocab.txt"], span_head.HF_SPEC)
    loaded, info = transformers.BertForQuestionAnswering.from_pretrained(
        tmp_path / "out", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert not info["mismatched_keys"], info
    assert (tmp_path / "out" / "vocab.txt").exists()
    ids, segments, mask = batch(hf_kwargs, seed=5)
    ref_start, ref_end, _ = theirs(loaded.eval(), ids, segments, mask)
    start, end = ours(cfg, params, ids, segments, mask)
    assert max(max_diff(start, ref_start), max_diff(end, ref_end)) <= TOL

    torch.manual_seed(0)
    hf_model = transformers.BertForQuestionAnswering(transformers.BertConfig(**hf_kwargs))
    rng = np.random.default_rng(1)
    with torch.no_grad():
        for name, p in hf_model.named_parameters():
            p.copy_(torch.tensor(randomize(name, p.numpy(), rng), dtype=torch.float32))
    hf_model.save_pretrained(tmp_path / "hf", safe_serialization=True)
    read_cfg, read_params, _ = hf.read_folder(tmp_path / "hf", span_head.HF_SPEC)
    assert read_cfg == cfg
    ref_start, ref_end, _ = theirs(hf_model.eval(), ids, segments, mask)
    start, end = ours(read_cfg, read_params, ids, segments, mask)
    assert max(max_diff(start, ref_start), max_diff(end, ref_end)) <= TOL
    # Round trip HF -> ours -> HF is lossless (the pooler HF lacks stays out).
    again = hf.params_to_hf(read_params, read_cfg, span_head.HF_SPEC)
    want = {k: v.numpy() for k, v in hf_model.state_dict().items()}
    assert again.keys() == want.keys()
    for k in again:
        np.testing.assert_array_equal(again[k], want[k])


def test_bad_state_dicts_are_errors():
    """A missing qa_outputs, a pretraining head, a wrong shape are errors naming the weight;
    PyTorch buffers and a pooler are accepted."""
    cfg = bert_model.preset_config("tiny", vocab_size=50, num_hidden_layers=1)
    tensors = hf.params_to_hf(our_random_params(cfg), cfg, span_head.HF_SPEC)
    extra = {
        "bert.embeddings.position_ids": np.arange(512)[None],
        "bert.pooler.dense.weight": np.ones((128, 128), np.float32),
        "bert.pooler.dense.bias": np.ones(128, np.float32),
    }
    read = functools.partial(hf.params_from_hf, cfg=cfg, spec=span_head.HF_SPEC)
    params = read({**tensors, **extra})
    assert (params["bert"]["pooler"]["bias"] == 1).all()
    assert (read(tensors)["bert"]["pooler"]["kernel"] == 0).all()
    with pytest.raises(hf.CheckpointError, match=r"missing 1 weight.*qa_outputs.bias"):
        read({k: v for k, v in tensors.items() if k != "qa_outputs.bias"})
    with pytest.raises(hf.CheckpointError, match=r"not part of BertForQuestionAnswering.*cls\."):
        read({**tensors, "cls.seq_relationship.bias": np.zeros(2)})
    with pytest.raises(hf.CheckpointError, match=r"'qa_outputs.weight' has shape \(3, 128\)"):
        read({**tensors, "qa_outputs.weight": np.zeros((3, 128))})


def test_every_parameter_has_logical_axis_names():
    """Sharding rules can place every span-model parameter (the head included)."""
    cfg = bert_model.preset_config("tiny", vocab_size=50, num_hidden_layers=1)
    boxed = jax.eval_shape(lambda: span_head.head(cfg).init_params(cfg, jax.random.key(0)))
    leaves = jax.tree_util.tree_leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert leaves and all(isinstance(x, nn.Partitioned) for x in leaves)
    assert boxed["qa_outputs"]["kernel"].names == ("embed", None)


def _span_loss(start_BxL, end_BxL, starts_B, ends_B, mask_BxL, weights_B=None):
    """The span head's training loss (span_sums over the real rows' weight)."""
    weights_B = np.ones(len(starts_B), np.float32) if weights_B is None else weights_B
    sums = span_head.span_sums(
        start_BxL,
        end_BxL,
        {
            "start_positions": starts_B,
            "end_positions": ends_B,
            "input_mask": mask_BxL,
            "weights": weights_B,
        },
    )
    return sums["loss_sum"] / sums["weight_sum"]
