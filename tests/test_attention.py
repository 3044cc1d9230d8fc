"""Attention over segment ids: the semantics, every kernel against the `xla` path (splash in
Pallas interpret mode, cuDNN's mask arguments on JAX's reference path), the whole train step
lowering for TPU (splash) and CUDA (cuDNN), the `auto` choice, and the start-up errors."""

import functools
import re
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src.cudnn import fused_attention_stablehlo as cudnn_attention
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from bertjax import attention
from bertjax import model as model_lib
from bertjax.data.synthetic import synthetic_batch
from bertjax.errors import UserError
from bertjax.train import config as config_lib
from bertjax.train import optim, sharding
from bertjax.train import step as step_lib
from helpers import TINY_CONFIG, optim_config

REPRODUCE_MD = Path(__file__).resolve().parents[1] / "docs" / "REPRODUCE.md"
B, L, N, D = 4, 256, 2, 64  # two splash blocks of 128 per row; 2 heads to split over tensor
RULES = sharding.DEFAULT_LOGICAL_AXIS_RULES


def ids_of(*rows):
    """[B, L] int32 segment ids from rows given as (id, length) runs, right-padded with 0."""
    out = np.zeros((len(rows), L), np.int32)
    for r, runs in enumerate(rows):
        start = 0
        for seg, length in runs:
            out[r, start : start + length] = seg
            start += length
    return jnp.asarray(out)


SEGMENT_IDS = {
    # Right-padded rows of one segment (one of them full), as BERT's input_mask gives them.
    "padded": ids_of([(1, 200)], [(1, 77)], [(1, L)], [(1, 130)]),
    # Both kinds: a right-padded row, a packed row (3 segments, then padding), a row packed
    # to the end across the block boundary, and a row of padding only.
    "mixed": ids_of([(1, 77)], [(1, 100), (2, 80), (3, 40)], [(1, 3), (2, 253)], []),
}


def qkv_and_cotangent(dtype, seed=0):
    keys = jax.random.split(jax.random.key(seed), 4)
    return [jax.random.normal(k, (B, L, N, D), jnp.float32).astype(dtype) for k in keys]


@functools.partial(jax.jit, static_argnums=(0, 2))
def outputs_and_grads(attend, ids, dtype):
    """attend(q, k, v, ids) and the gradients of <out, cotangent> w.r.t. q, k, v."""
    q, k, v, cotangent = qkv_and_cotangent(dtype)
    out, vjp = jax.vjp(lambda q, k, v: attend(q, k, v, ids), q, k, v)
    return [out, *vjp(cotangent)]


def xla(q, k, v, ids):
    return attention.dot_product_attention(q, k, v, ids, impl="xla")


@functools.cache
def reference(ids_name, dtype):
    """The xla path's outputs and gradients (computed once per segment layout and dtype)."""
    return outputs_and_grads(xla, SEGMENT_IDS[ids_name], dtype)


def assert_close(got, want, dtype):
    """Within 1e-5 in float32; in bfloat16, within 2^-6 of the largest magnitude (a few bf16
    ulps: both sides round their inputs, probabilities and outputs to 8 bits)."""
    for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
        g, w = np.asarray(g, np.float32), np.asarray(w, np.float32)
        tol = 1e-5 if dtype == jnp.float32 else 2**-6 * np.abs(w).max()
        assert np.abs(g - w).max() <= tol, (name, np.abs(g - w).max(), tol)
        assert np.abs(w).max() > 0.5, name  # the tolerance is small against the values


def test_xla_path_attends_within_segments_and_pads_like_bert():
    """Each segment's tokens get plain softmax attention over that segment alone; padding
    positions attend like the row's last segment (BERT's key-only mask when there is one
    segment); a row of padding only attends to all of itself, without NaN."""
    q, k, v, _ = (np.asarray(x, np.float64) for x in qkv_and_cotangent(jnp.float32))
    out = np.asarray(reference("mixed", jnp.float32)[0])

    def plain(row, start, stop):  # unmasked attention of every position over keys start:stop
        logits = np.einsum("qnd,knd->nqk", q[row], k[row, start:stop]) / np.sqrt(D)
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        return np.einsum("nqk,knd->qnd", probs, v[row, start:stop])

    segments = {0: [(0, 77)], 1: [(0, 100), (100, 180), (180, 220)], 2: [(0, 3), (3, L)]}
    for row, spans in segments.items():
        for start, stop in spans:
            np.testing.assert_allclose(
                out[row, start:stop], plain(row, start, stop)[start:stop], atol=1e-5
            )
        start, stop = spans[-1]  # padding attends like the last segment
        np.testing.assert_allclose(out[row, stop:], plain(row, start, stop)[stop:], atol=1e-5)
    np.testing.assert_allclose(out[3], plain(3, 0, L), atol=1e-5)
    assert np.isfinite(out).all()


def test_attention_at_positions_is_the_full_attention_read_at_those_rows():
    """attention_at_positions: the queries of a few positions per row (a packed segment's,
    a padding position's, a row of padding only) against every key give exactly the full
    attention's rows there, and the gradients w.r.t. k and v of a cotangent on those rows."""
    ids = SEGMENT_IDS["mixed"]
    q, k, v, cotangent = qkv_and_cotangent(jnp.float32)
    positions = jnp.asarray([[0, 76, 200], [5, 150, 230], [2, 3, 255], [0, 9, 100]], jnp.int32)
    pick = functools.partial(jnp.take_along_axis, indices=positions[:, :, None, None], axis=1)

    def full(q, k, v):
        return pick(xla(q, k, v, ids))

    def at_positions(q, k, v):
        return attention.attention_at_positions(pick(q), k, v, ids, positions)

    cot_BxQxNxD = pick(cotangent)
    want, want_vjp = jax.vjp(full, q, k, v)
    got, got_vjp = jax.vjp(at_positions, q, k, v)
    assert got.shape == (B, 3, N, D)
    assert_close([got, *got_vjp(cot_BxQxNxD)], [want, *want_vjp(cot_BxQxNxD)], jnp.float32)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["float32", "bfloat16"])
def test_splash_in_interpret_mode_matches_xla(dtype):
    """The TPU splash kernel (run by Pallas' interpreter) gives the xla path's outputs and
    gradients, on right-padded rows and on rows of several segments."""

    def splash(q, k, v, ids):
        return attention.dot_product_attention(q, k, v, ids, impl="splash", interpret=True)

    got = outputs_and_grads(splash, SEGMENT_IDS["mixed"], dtype)
    assert_close(got, reference("mixed", dtype), dtype)


def test_splash_under_shard_map_matches_xla_on_a_data_fsdp_tensor_mesh():
    """Inside the train step's scope (abstract mesh + logical rules), splash runs per shard:
    batch over (data, fsdp), heads over tensor, on 8 devices; outputs and gradients equal
    the unsharded xla path's."""
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})

    def splash_sharded(q, k, v, ids):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(RULES):
            return attention.dot_product_attention(q, k, v, ids, impl="splash", interpret=True)

    qkv_sharding = NamedSharding(mesh, P(("data", "fsdp"), None, "tensor"))
    ids_sharding = NamedSharding(mesh, P(("data", "fsdp")))

    @functools.partial(jax.jit, in_shardings=(qkv_sharding,) * 4 + (ids_sharding,))
    def run(q, k, v, cotangent, ids):
        out, vjp = jax.vjp(lambda q, k, v: splash_sharded(q, k, v, ids), q, k, v)
        return [out, *vjp(cotangent)]

    got = run(*qkv_and_cotangent(jnp.float32), SEGMENT_IDS["mixed"])
    assert_close(got, reference("mixed", jnp.float32), jnp.float32)


@pytest.mark.parametrize(
    "ids_name, one_segment_per_row", [("padded", True), ("mixed", False)], ids=["lengths", "mask"]
)
def test_cudnn_mask_arguments_give_xla_outputs_on_jax_reference_path(ids_name, one_segment_per_row):
    """The mask as cuDNN gets it (key lengths for right-padded rows, a [B, 1, L, L] mask for
    packed ones), run through `jax.nn.dot_product_attention`'s own xla implementation, gives
    our xla path's outputs and gradients in float32. (The kernel itself cannot run here, nor
    its bfloat16 numerics be checked: the lowering tests below prove that JAX's cuDNN path
    accepts these arguments.)"""

    def cudnn_reference(q, k, v, ids):
        mask = attention.cudnn_mask_arguments(ids, one_segment_per_row)
        return jax.nn.dot_product_attention(q, k, v, implementation="xla", **mask)

    got = outputs_and_grads(cudnn_reference, SEGMENT_IDS[ids_name], jnp.float32)
    assert_close(got, reference(ids_name, jnp.float32), jnp.float32)


def test_attention_dropout_with_a_fused_kernel_is_refused():
    """Asking a fused kernel for attention dropout raises; the xla path drops probabilities."""
    q, k, v, _ = qkv_and_cotangent(jnp.float32)
    rng, ids = jax.random.key(1), SEGMENT_IDS["padded"]
    with pytest.raises(UserError, match="model.attention_probs_dropout_prob=0"):
        attention.dot_product_attention(
            q, k, v, ids, impl="splash", interpret=True, dropout_rate=0.1, dropout_rng=rng
        )
    dropped = attention.dot_product_attention(q, k, v, ids, dropout_rate=0.1, dropout_rng=rng)
    assert not np.allclose(dropped, xla(q, k, v, ids), atol=1e-3)


# --- the whole train step, lowered from this CPU for TPU and CUDA -------------------------

FUSED = {  # kernel -> (platform to lower for, custom calls the lowered step must hold)
    "splash": (
        "tpu",
        ("splash_mha_fwd_segmented", "splash_mha_dq_segmented", "splash_mha_dkv_segmented"),
    ),
    "cudnn": ("cuda", ("__cudnn$fmhaSoftmax", "__cudnn$fmhaSoftmaxBackward")),
}
STEP_BATCH, STEP_LEN, PREDICTIONS = 32, 128, 20


@functools.cache
def abstract_state(preset, mesh_shape):
    """The optimizer, the mesh, the state's shardings and the state as ShapeDtypeStructs with
    those shardings (nothing allocated); the kernel does not change them."""
    cfg = model_lib.preset_config(preset)
    mesh = sharding.make_mesh(dict(zip(("data", "fsdp", "tensor"), mesh_shape)))
    tx, schedule = optim.make_optimizer(optim_config(), 100)
    abstract, shardings = step_lib.state_shardings(cfg, tx, mesh, RULES)
    state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        nn.meta.unbox(abstract),
        shardings,
    )
    return tx, schedule, mesh, shardings, state


def abstract_train_step(preset, impl, mesh_shape, packed=False):
    """The jitted train step of `preset` with `impl` (bfloat16, no attention dropout) and
    abstract arguments; `packed` batches carry per-token `attn_segment_ids`."""
    tx, schedule, mesh, shardings, state = abstract_state(preset, mesh_shape)
    cfg = model_lib.preset_config(
        preset, attention_impl=impl, compute_dtype="bfloat16", attention_probs_dropout_prob=0.0
    )
    example = synthetic_batch(
        0, batch=STEP_BATCH, length=STEP_LEN, predictions=PREDICTIONS, vocab=cfg.vocab_size
    )
    if packed:
        example["attn_segment_ids"] = example["input_mask"]
    batch_sharding = sharding.batch_sharding(mesh)
    batch = {
        key: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=batch_sharding)
        for key, x in example.items()
    }
    rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=sharding.replicated(mesh))
    fn = step_lib.jit_train_step(
        mesh, RULES, shardings, model=model_lib.BertForPreTraining(cfg), tx=tx, schedule=schedule
    )
    return fn, state, batch, rng


@pytest.fixture
def fake_cudnn(monkeypatch):
    """JAX's cuDNN probes answer as cuDNN 9.10 on a Hopper GPU would (there is none here);
    its shape, dtype and layout checks still run."""
    monkeypatch.setattr(cudnn_attention, "check_cudnn_version", lambda: 91000)
    monkeypatch.setattr(cudnn_attention, "check_compute_capability", lambda capability: True)


@pytest.mark.parametrize("mesh_shape", [(8, 1, 1), (4, 2, 1)], ids=["data", "data_fsdp"])
@pytest.mark.parametrize("impl", sorted(FUSED))
@pytest.mark.parametrize("preset", ["base", "large"])
def test_train_step_lowers_with_the_fused_kernel(preset, impl, mesh_shape, fake_cudnn):
    """The jitted train step of base and large lowers for TPU with splash and for CUDA with
    cuDNN, on a data and a data x fsdp mesh of 8 devices; the lowered program holds the
    kernels' custom calls (forward and backward), on per-device shards of the batch."""
    fn, state, batch, rng = abstract_train_step(preset, impl, mesh_shape)
    platform, calls = FUSED[impl]
    text = fn.trace(state, batch, rng).lower(lowering_platforms=(platform,)).as_text()
    for call in calls:
        assert call in text, call
    # q/k/v enter the kernel as this device's shard: 32 / 8 examples, every head, whole rows
    # ([b, L, N, D] for cuDNN; [b, N, L, D] for splash, which runs per head).
    cfg = model_lib.preset_config(preset)
    heads, depth, rows = cfg.num_attention_heads, cfg.head_dim, STEP_BATCH // 8
    local = {
        "cudnn": f"{rows}x{STEP_LEN}x{heads}x{depth}",
        "splash": f"{rows}x{heads}x{STEP_LEN}x{depth}",
    }
    call = {"cudnn": r"@__cudnn\$fmhaSoftmax", "splash": "@tpu_custom_call"}
    assert re.search(rf"custom_call {call[impl]}\(.*: \(.*tensor<{local[impl]}xbf16>", text)
    assert "sdy.manual_computation" in text  # inside shard_map


def test_packed_batch_lowers_to_cudnn_with_a_segment_mask(fake_cudnn):
    """A batch with per-token `attn_segment_ids` (packed rows) reaches cuDNN as a mask: the
    bias form of the kernel."""
    fn, state, batch, rng = abstract_train_step("base", "cudnn", (4, 2, 1), packed=True)
    text = fn.trace(state, batch, rng).lower(lowering_platforms=("cuda",)).as_text()
    assert "__cudnn$fmhaScaleBiasSoftmax" in text
    assert "__cudnn$fmhaScaleBiasSoftmaxBackward" in text


# --- choosing the kernel, and the start-up errors ----------------------------------------


@pytest.mark.parametrize(
    "platform, dropout, dtype, seq_len, expected",
    [
        ("cpu", 0.0, "bfloat16", 128, "xla"),
        ("tpu", 0.0, "float32", 512, "splash"),
        ("tpu", 0.1, "bfloat16", 128, "xla"),  # attention dropout: the explicit form
        ("tpu", 0.0, "bfloat16", 100, "xla"),  # splash cannot tile 100 tokens
        ("cuda", 0.0, "bfloat16", 128, "cudnn"),
        ("cuda", 0.0, "float32", 128, "xla"),  # cuDNN attention takes bf16/fp16 only
        ("cuda", 0.1, "bfloat16", 128, "xla"),
        ("rocm", 0.0, "bfloat16", 128, "xla"),
    ],
)
def test_auto_picks_the_fastest_kernel_that_can_run(platform, dropout, dtype, seq_len, expected):
    """`auto` resolves to splash on TPU, cuDNN on a CUDA GPU, xla wherever they cannot run,
    and says why."""
    impl, why = attention.resolve_impl(
        "auto",
        platform=platform,
        dropout_rate=dropout,
        compute_dtype=dtype,
        head_dim=64,
        seq_len=seq_len,
    )
    assert impl == expected
    assert why.startswith("auto: ")


@pytest.mark.parametrize(
    "impl, platform, dropout, dtype, message",
    [
        ("splash", "cpu", 0.0, "bfloat16", r"splash runs on TPU only, not on cpu: use model.att"),
        ("splash", "cuda", 0.0, "bfloat16", r"splash runs on TPU only, not on cuda"),
        ("cudnn", "cpu", 0.0, "bfloat16", r"cudnn runs on NVIDIA GPUs only, not on cpu"),
        ("cudnn", "tpu", 0.0, "bfloat16", r"cudnn runs on NVIDIA GPUs only, not on tpu"),
        (
            "cudnn",
            "cuda",
            0.1,
            "bfloat16",
            (
                r"cudnn cannot apply attention dropout \(model.attention_probs_dropout_prob=0.1\): "
                r"set model.attention_probs_dropout_prob=0 or use model.attention_impl=xla"
            ),
        ),
        ("splash", "tpu", 0.1, "bfloat16", r"splash cannot apply attention dropout"),
        ("cudnn", "cuda", 0.0, "float32", r"cudnn takes no float32 \(model.compute_dtype\)"),
        (
            "flash",
            "tpu",
            0.0,
            "bfloat16",
            r"'flash': expected one of xla, cudnn, splash, auto",
        ),
    ],
)
def test_a_kernel_that_cannot_run_is_one_clear_error(impl, platform, dropout, dtype, message):
    """Each impossible choice is one UserError naming the config keys and the way out."""
    with pytest.raises(UserError, match=f"^model.attention_impl={message}"):
        attention.resolve_impl(
            impl,
            platform=platform,
            dropout_rate=dropout,
            compute_dtype=dtype,
            head_dim=64,
            seq_len=128,
        )


def test_start_up_validation_names_the_attention_keys():
    """`bertjax train` checks model.attention_impl before reading data (its name) and once
    the dataset's sequence length is known (the kernel on this CPU)."""
    config = config_lib.load_config(TINY_CONFIG, ["model.attention_impl=flash"])
    with pytest.raises(UserError, match="model.attention_impl='flash': expected one of"):
        config_lib.validate(config, num_devices=8)
    config = config_lib.load_config(TINY_CONFIG, ["model.attention_impl=splash"])
    config_lib.validate(config, num_devices=8)
    model_cfg = config_lib.model_config(config.model, dataset_vocab_size=100)
    with pytest.raises(UserError, match="splash cannot apply attention dropout"):
        config_lib.validate_against_data(config, model_cfg, 128, 100, "data")
    config = config_lib.load_config(
        TINY_CONFIG, ["model.attention_impl=splash", "model.attention_probs_dropout_prob=0"]
    )
    model_cfg = config_lib.model_config(config.model, dataset_vocab_size=100)
    with pytest.raises(UserError, match="splash runs on TPU only, not on cpu"):
        config_lib.validate_against_data(config, model_cfg, 128, 100, "data")
    config_lib.validate_against_data(config, model_cfg, 128, 100, "data", platform="tpu")
    with pytest.raises(UserError, match="multiple of 128, not 96"):
        config_lib.validate_against_data(config, model_cfg, 96, 100, "data", platform="tpu")


RECIPES = [
    "bert_base_phase1",
    "bert_base_phase2",
    "bert_large_phase1",
    "bert_large_phase2",
    "bert_base_lamb_phase1",
    "bert_base_lamb_phase2",
    "bert_large_lamb_phase1",
    "bert_large_lamb_phase2",
]


@pytest.mark.parametrize("name", RECIPES)
def test_paper_recipes_keep_attention_dropout_and_the_explicit_form(name):
    """The paper and LAMB recipes train with attention dropout 0.1, hence `xla`, anywhere."""
    config = config_lib.load_config(name)
    assert config.model.attention_probs_dropout_prob == 0.1
    assert config.model.attention_impl == "xla"
    model_cfg = config_lib.model_config(config.model, dataset_vocab_size=30522)
    for platform in ("cpu", "cuda", "tpu"):
        assert attention.resolve_for_model(model_cfg, 128, platform) == ("xla", "requested")


def test_budget_recipe_takes_the_fused_kernel_on_a_gpu_and_as_reproduce_md_runs_it():
    """The one-GPU budget recipe has no attention dropout: `auto` picks cuDNN on a CUDA GPU
    (splash on TPU, xla here), and docs/REPRODUCE.md's --config.model.attention_impl=cudnn
    passes start-up validation on a GPU."""
    config = config_lib.load_config("bert_budget")
    assert config.model.attention_probs_dropout_prob == 0.0
    model_cfg = config_lib.model_config(config.model, dataset_vocab_size=30522)
    picks = {p: attention.resolve_for_model(model_cfg, 128, p)[0] for p in ("cpu", "cuda", "tpu")}
    assert picks == {"cpu": "xla", "cuda": "cudnn", "tpu": "splash"}
    resolved, line = attention.resolved_config(model_cfg, 128)  # the training log's line
    assert line == "attention xla (model.attention_impl=auto; auto: no fused kernel on cpu)"
    assert resolved.attention_impl == "xla"
    reproduce = REPRODUCE_MD.read_text()
    assert (
        "launch/local.sh bert_budget runs/budget" in reproduce
        and "--config.model.attention_impl=cudnn" in reproduce
    )
    config = config_lib.load_config("bert_budget", ["model.attention_impl=cudnn"])
    model_cfg = config_lib.model_config(config.model, dataset_vocab_size=30522)
    config_lib.validate_against_data(config, model_cfg, 128, 30522, "data", platform="cuda")


def test_model_keeps_packed_segments_apart_and_defaults_to_one_segment_per_row():
    """In BertForPreTraining, tokens of one packed segment are blind to another's; without
    `attn_segment_ids` each row is the one segment `input_mask` marks (and `auto` runs on
    this CPU, as xla)."""
    cfg = model_lib.preset_config(
        "tiny", vocab_size=50, max_position_embeddings=16, attention_impl="auto"
    )
    params = jax.jit(model_lib.init_params, static_argnums=0)(cfg, jax.random.key(0))
    model = model_lib.BertForPreTraining(cfg)
    ids = jnp.arange(32).reshape(2, 16) % 50
    zeros, mask = jnp.zeros_like(ids), jnp.ones_like(ids).at[1, 12:].set(0)
    packed = jnp.asarray([[1] * 10 + [2] * 6, [1] * 5 + [2] * 7 + [0] * 4])

    @jax.jit
    def hidden(ids, attn_segment_ids=None):
        out = model.apply({"params": params}, ids, zeros, mask, attn_segment_ids=attn_segment_ids)
        return out.last_hidden_state

    base = hidden(ids, attn_segment_ids=packed)
    other = hidden(ids.at[0, 12].set(7).at[1, 8].set(7), attn_segment_ids=packed)
    np.testing.assert_array_equal(base[0, :10], other[0, :10])  # segment 1 of row 0
    np.testing.assert_array_equal(base[1, :5], other[1, :5])  # segment 1 of row 1
    assert not np.allclose(base[0, 10:], other[0, 10:])
    np.testing.assert_allclose(hidden(ids), hidden(ids, attn_segment_ids=mask), atol=1e-6)
