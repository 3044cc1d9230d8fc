"""Multi-head attention over per-token segment ids: one entry point, three kernels.

`dot_product_attention` runs `xla`, `cudnn` or `splash` (`model.attention_impl`; `auto` is
resolved by `resolve_impl`); docs/TRAINING.md "Attention" says which runs where.
"""

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from bertjax.errors import UserError
from bertjax.layers import take_positions
from bertjax.model_config import ATTENTION_IMPLS

# Splash tiles the sequence in blocks of 128 lanes at least (its segment-id path requires
# block_q and block_kv to be multiples of 128); larger blocks amortise the per-block overhead.
# Head sizes need no check: the kernel pads them to 128 lanes itself (every preset has 64).
SPLASH_BLOCKS = (512, 256, 128)
# JAX's cuDNN flash attention takes head dims that are multiples of 8, up to 128 (256 on
# Hopper and later; JAX checks that when it traces on a GPU).
CUDNN_MAX_HEAD_DIM = 256
# Logical axis names (model.py) of q/k/v and of the segment ids, for the per-shard kernels.
_QKV_AXES_BxLxNxD = ("batch", "length", "heads", "kv")
_IDS_AXES_BxL = ("batch", "length")


def query_segment_ids(attn_segment_ids_BxL):
    """The ids the queries attend with: padding (0) takes the row's highest id.

    Keys keep `attn_segment_ids_BxL`, so no query ever sees a padding key unless its whole row
    is padding (then every position attends to every other, and nothing is NaN).
    """
    row_max_Bx1 = jnp.max(attn_segment_ids_BxL, axis=1, keepdims=True)
    return jnp.where(attn_segment_ids_BxL == 0, row_max_Bx1, attn_segment_ids_BxL)


def current_platform() -> str:
    """cpu, tpu, cuda or rocm: what this process runs on (JAX names both GPU kinds "gpu")."""
    backend = jax.default_backend()
    if backend != "gpu":
        return backend
    version = jax.devices()[0].client.platform_version.lower()
    return "rocm" if "rocm" in version else "cuda"


def splash_block_size(seq_len: int) -> int:
    """The largest of SPLASH_BLOCKS that divides `seq_len`; ValueError if none does."""
    for block in SPLASH_BLOCKS:
        if seq_len % block == 0:
            return block
    raise ValueError(
        f"model.attention_impl=splash needs a sequence length that is a multiple of "
        f"{SPLASH_BLOCKS[-1]}, got {seq_len}; use model.attention_impl=xla"
    )


def resolve_impl(
    requested: str,
    *,
    platform: str,
    dropout_rate: float,
    compute_dtype: str,
    head_dim: int,
    seq_len: int | None = None,
) -> tuple[str, str]:
    """The kernel to run for `model.attention_impl=requested` on `platform`, and why.

    `auto` picks the fastest valid one: `splash` on TPU, `cudnn` on a CUDA GPU, `xla`
    wherever a fused kernel cannot run (CPU, attention dropout, float32 on GPU, a sequence
    length splash cannot tile). An explicit choice that cannot run is a UserError naming the
    config keys at fault and the valid values.
    """
    if requested not in ATTENTION_IMPLS:
        raise UserError(
            f"model.attention_impl={requested!r}: expected one of {', '.join(ATTENTION_IMPLS)}"
        )
    problems = {  # kernel -> (why it cannot run here, what to do), or None
        "splash": _splash_problem(platform, dropout_rate, seq_len),
        "cudnn": _cudnn_problem(platform, dropout_rate, compute_dtype, head_dim),
    }
    if requested == "xla":
        return "xla", "requested"
    if requested != "auto":
        if problems[requested]:
            raise _refusal(requested, problems[requested])
        return requested, "requested"
    for impl, problem in problems.items():
        if problem is None:
            return impl, f"auto: the fused kernel on {platform}"
    native = {"tpu": "splash", "cuda": "cudnn"}.get(platform)
    if native is None:
        return "xla", f"auto: no fused kernel on {platform}"
    return "xla", f"auto: {native} {problems[native][0]}"


def resolve_for_model(model_cfg, seq_len: int | None = None, platform: str | None = None):
    """`resolve_impl` for a BertConfig's attention at `seq_len` on `platform` (default: this
    process's). One answer per run, whether a step trains (dropout on) or evaluates: the
    choice the training log reports."""
    return resolve_impl(
        model_cfg.attention_impl,
        platform=platform or current_platform(),
        dropout_rate=model_cfg.attention_probs_dropout_prob,
        compute_dtype=model_cfg.compute_dtype,
        head_dim=model_cfg.head_dim,
        seq_len=seq_len,
    )


def resolved_config(model_cfg, seq_len: int, platform: str | None = None):
    """(model_cfg whose attention_impl is the kernel `resolve_for_model` picks at `seq_len` on
    `platform`, one log line saying which and why): a run resolves its attention once, so
    that training, evaluation and prediction run the same kernel. UserError when an explicit
    kernel cannot run there."""
    impl, why = resolve_for_model(model_cfg, seq_len=seq_len, platform=platform)
    line = f"attention {impl} (model.attention_impl={model_cfg.attention_impl}; {why})"
    return dataclasses.replace(model_cfg, attention_impl=impl), line


def _splash_problem(platform, dropout_rate, seq_len):
    if dropout_rate > 0:
        return _dropout_problem(dropout_rate)
    if platform != "tpu":
        return f"runs on TPU only, not on {platform}", "use model.attention_impl=xla or auto"
    if seq_len is not None and seq_len % SPLASH_BLOCKS[-1]:
        return (
            f"needs a sequence length that is a multiple of {SPLASH_BLOCKS[-1]}, not {seq_len}",
            "use model.attention_impl=xla or auto",
        )
    return None


def _cudnn_problem(platform, dropout_rate, compute_dtype, head_dim):
    if dropout_rate > 0:
        return _dropout_problem(dropout_rate)
    if platform != "cuda":
        return (
            f"runs on NVIDIA GPUs only, not on {platform}",
            "use model.attention_impl=xla or auto",
        )
    if compute_dtype != "bfloat16":
        return (
            f"takes no {compute_dtype} (model.compute_dtype)",
            "set model.compute_dtype=bfloat16 or use model.attention_impl=xla",
        )
    if head_dim % 8 or head_dim > CUDNN_MAX_HEAD_DIM:
        why = (
            f"needs a head size that is a multiple of 8 up to {CUDNN_MAX_HEAD_DIM}, not {head_dim}"
        )
        return why, "change hidden_size / num_attention_heads or use model.attention_impl=xla"
    return None


def _refusal(impl: str, problem: tuple[str, str]) -> UserError:
    why, remedy = problem
    return UserError(f"model.attention_impl={impl} {why}: {remedy}")


def _dropout_problem(dropout_rate):
    return (
        f"cannot apply attention dropout (model.attention_probs_dropout_prob={dropout_rate})",
        "set model.attention_probs_dropout_prob=0 or use model.attention_impl=xla",
    )


def dot_product_attention(
    q_BxLxNxD,
    k_BxLxNxD,
    v_BxLxNxD,
    attn_segment_ids_BxL,
    *,
    impl: str = "xla",
    one_segment_per_row: bool = False,
    dropout_rate: float = 0.0,
    dropout_rng=None,
    interpret: bool = False,
):
    """Scaled dot-product attention of every head, tokens seeing only their own segment.

    Args:
      q_BxLxNxD, k_BxLxNxD, v_BxLxNxD: queries, keys, values (float32 or bfloat16).
      attn_segment_ids_BxL: which tokens may see each other (not BERT's token-type
        `segment_ids`): 0 is padding, and a token attends only to the tokens that carry its
        own non-zero id. A padded, unpacked batch is one segment per row (the ids are the
        `input_mask`); packed rows carry ids 1, 2, 3, ... A padding position's output feeds
        no loss; it attends like the row's highest segment (`query_segment_ids`), which for
        one segment per row is BERT's own key-only mask, so HF parity holds at every position.
      impl: xla, cudnn, splash, or auto (resolved for this process's platform). The kernel
        is run as named, whatever the platform: lowering for TPU or CUDA from a CPU host is
        how the fused kernels are tested. Start-up validation (`resolve_impl`) keeps a run
        from asking for a kernel its devices lack.
      one_segment_per_row: the caller's promise that every row is one segment followed by
        padding (ids 1..1 0..0, as built from BERT's `input_mask`); cuDNN then takes the
        cheaper sequence-length form of the mask.
      dropout_rate, dropout_rng: attention dropout, applied when `dropout_rng` is given and
        the rate is positive; `xla` only.
      interpret: run the splash kernel in Pallas interpret mode (on CPU, for tests).
    Returns:
      [B, L, N, D], the dtype of `v_BxLxNxD`.
    """
    length, depth = q_BxLxNxD.shape[1], q_BxLxNxD.shape[3]
    with_dropout = dropout_rng is not None and dropout_rate > 0
    if impl == "auto":
        impl, _ = resolve_impl(
            "auto",
            platform=current_platform(),
            dropout_rate=dropout_rate if with_dropout else 0.0,
            compute_dtype=jnp.dtype(q_BxLxNxD.dtype).name,
            head_dim=depth,
            seq_len=length,
        )
    if with_dropout and impl != "xla":
        raise _refusal(impl, _dropout_problem(dropout_rate))
    if impl == "xla":
        return _xla(
            q_BxLxNxD,
            k_BxLxNxD,
            v_BxLxNxD,
            attn_segment_ids_BxL,
            dropout_rate=dropout_rate if with_dropout else 0.0,
            dropout_rng=dropout_rng,
        )
    if impl == "cudnn":
        kernel = functools.partial(_cudnn_per_shard, one_segment_per_row=one_segment_per_row)
    elif impl == "splash":
        kernel = functools.partial(
            _splash_per_shard, block=splash_block_size(length), interpret=interpret
        )
    else:
        raise ValueError(
            f"model.attention_impl={impl!r}: expected one of {', '.join(ATTENTION_IMPLS)}"
        )
    return _on_shards(impl, kernel, q_BxLxNxD, k_BxLxNxD, v_BxLxNxD, attn_segment_ids_BxL)


def attention_at_positions(
    q_BxQxNxD,
    k_BxLxNxD,
    v_BxLxNxD,
    attn_segment_ids_BxL,
    query_positions_BxQ,
    *,
    dropout_rate: float = 0.0,
    dropout_rng=None,
):
    """`dot_product_attention` for the queries of Q positions of each row only (keys and
    values at every position): the outputs [B, Q, N, D] are the full attention's rows at
    `query_positions_BxQ`, each query seeing what it would see there.

    Always the explicit `xla` form: a layer whose outputs are read at a few positions (the
    last one, under a head that reads only [CLS]) has Q x L scores, too few for a fused
    kernel to matter, and splash's and cuDNN's tiles assume Q = L.
    """
    q_ids_BxL = query_segment_ids(attn_segment_ids_BxL)
    q_ids_BxQ = take_positions(q_ids_BxL, query_positions_BxQ)
    with_dropout = dropout_rng is not None and dropout_rate > 0
    return _xla(
        q_BxQxNxD,
        k_BxLxNxD,
        v_BxLxNxD,
        attn_segment_ids_BxL,
        dropout_rate=dropout_rate if with_dropout else 0.0,
        dropout_rng=dropout_rng,
        q_ids_BxQ=q_ids_BxQ,
    )


def _xla(
    q_BxQxNxD,
    k_BxLxNxD,
    v_BxLxNxD,
    attn_segment_ids_BxL,
    *,
    dropout_rate,
    dropout_rng,
    q_ids_BxQ=None,
):
    """The explicit form: [B, N, Q, L] float32 probabilities, optionally dropped out. The
    queries are every position's (Q = L) unless `q_ids_BxQ` gives the segment ids of a subset.

    The logits come out of the matmul in the compute dtype: asking bfloat16 inputs for
    float32 logits would make the backward matmuls float32 too (jax-ml/jax#24047).
    """
    depth = q_BxQxNxD.shape[-1]
    logits_BxNxQxL = jnp.einsum("bqnd,bknd->bnqk", q_BxQxNxD, k_BxLxNxD) / jnp.sqrt(depth)
    if q_ids_BxQ is None:
        q_ids_BxQ = query_segment_ids(attn_segment_ids_BxL)
    allowed_Bx1xQxL = q_ids_BxQ[:, None, :, None] == attn_segment_ids_BxL[:, None, None, :]
    # The most negative float, as BERT's additive mask: masked keys get probability exactly 0.
    logits_BxNxQxL = jnp.where(
        allowed_Bx1xQxL, logits_BxNxQxL.astype(jnp.float32), jnp.finfo(jnp.float32).min
    )
    probs_BxNxQxL = jax.nn.softmax(logits_BxNxQxL, axis=-1)
    if dropout_rate > 0:
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs_BxNxQxL.shape)
        probs_BxNxQxL = jnp.where(keep, probs_BxNxQxL / (1.0 - dropout_rate), 0.0)
    return jnp.einsum("bnqk,bknd->bqnd", probs_BxNxQxL.astype(v_BxLxNxD.dtype), v_BxLxNxD)


def _on_shards(impl, kernel, q_BxLxNxD, k_BxLxNxD, v_BxLxNxD, attn_segment_ids_BxL):
    """`kernel(q, k, v, ids)` on each shard, under `shard_map` when a mesh is in scope.

    A fused kernel is a custom call that the SPMD partitioner cannot split by itself (JAX
    wraps cuDNN's in a Python partitioning callback, Pallas calls have none), so, as MaxText
    does, it runs per shard: the batch split as the logical rules place "batch" (data,
    fsdp), the heads as they place "heads" (tensor); the sequence and head dimension stay
    whole. The mesh is the abstract one the train step traces under
    (`jax.sharding.use_abstract_mesh`, step.py); without one the kernel runs on whole arrays.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return kernel(q_BxLxNxD, k_BxLxNxD, v_BxLxNxD, attn_segment_ids_BxL)
    qkv_spec = nn.logical_to_mesh_axes(_QKV_AXES_BxLxNxD)
    if qkv_spec[1] is not None or qkv_spec[3] is not None:
        raise ValueError(
            f"model.attention_impl={impl} cannot split the sequence or the head dimension, but "
            f"the logical_axis_rules place them on mesh axes {qkv_spec[1]} and {qkv_spec[3]}"
        )
    ids_spec = nn.logical_to_mesh_axes(_IDS_AXES_BxL)
    return jax.shard_map(
        kernel,
        mesh=mesh,
        in_specs=(qkv_spec, qkv_spec, qkv_spec, ids_spec),
        out_specs=qkv_spec,
        check_vma=False,  # custom calls carry no varying-axes types
    )(q_BxLxNxD, k_BxLxNxD, v_BxLxNxD, attn_segment_ids_BxL)


def cudnn_mask_arguments(attn_segment_ids_BxL, one_segment_per_row: bool) -> dict:
    """The mask in the form `jax.nn.dot_product_attention(implementation="cudnn")` accepts.

    cuDNN rejects a [B, 1, 1, L] bias. One segment per row goes in as key lengths: queries
    keep the full length, so padding queries attend to the real keys as BERT's do (cuDNN
    zeroes the outputs of query rows beyond a query length). Several segments per row go in
    as a [B, 1, L, L] boolean mask (a bias to cuDNN): that is what JAX's public cuDNN path
    supports today; its packed (THD) layout with segment offsets is private API and needs
    Hopper. JAX tests a head-broadcast bias's backward on Hopper only, so on older GPUs
    packed rows are safer with `xla`.

    The same arguments run on JAX's `xla` implementation, which is how tests check them.
    """
    if one_segment_per_row:
        lengths_B = jnp.sum(attn_segment_ids_BxL != 0, axis=1, dtype=jnp.int32)
        # A row of padding only would have no key at all: it attends to all of itself, as in
        # `query_segment_ids`.
        full_B = jnp.full_like(lengths_B, attn_segment_ids_BxL.shape[1])
        return {"key_value_seq_lengths": jnp.where(lengths_B == 0, full_B, lengths_B)}
    q_ids_BxL = query_segment_ids(attn_segment_ids_BxL)
    return {"mask": q_ids_BxL[:, None, :, None] == attn_segment_ids_BxL[:, None, None, :]}


def _cudnn_per_shard(q_BxLxNxD, k_BxLxNxD, v_BxLxNxD, attn_segment_ids_BxL, *, one_segment_per_row):
    """One shard's cuDNN flash attention (JAX's lowering checks shapes and dtypes)."""
    mask_args = cudnn_mask_arguments(attn_segment_ids_BxL, one_segment_per_row)
    return jax.nn.dot_product_attention(
        q_BxLxNxD, k_BxLxNxD, v_BxLxNxD, implementation="cudnn", **mask_args
    )


def _splash_per_shard(q_BxLxNxD, k_BxLxNxD, v_BxLxNxD, attn_segment_ids_BxL, *, block, interpret):
    """One shard's splash attention: the kernel built for its heads, mapped over its examples."""
    from jax.experimental.pallas.ops.tpu import splash_attention as splash  # Pallas: on use only

    heads, depth = q_BxLxNxD.shape[2], q_BxLxNxD.shape[3]
    length = q_BxLxNxD.shape[1]
    # Segment ids do all the masking; the static mask is full. Its block metadata is tiny
    # ((L / block)^2 entries), so each shard builds its own rather than receive it sharded.
    mask = splash.MultiHeadMask([splash.FullMask((length, length))] * heads)
    # One block size everywhere (MaxText's defaults are one size too, 512); the separate
    # dq and dkv backward kernels, as MaxText's default (use_fused_bwd_kernel=False).
    sizes = splash.BlockSizes(
        block_q=block, block_kv=block, block_kv_compute=block,
        block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
        block_q_dq=block, block_kv_dq=block,
    )  # fmt: skip
    kernel = splash.make_splash_mha_single_device(mask, block_sizes=sizes, interpret=interpret)
    # Splash does not scale the logits: fold 1/sqrt(D) into q (a power of two for D = 64).
    scaled_q_BxLxNxD = (q_BxLxNxD * (1.0 / math.sqrt(depth))).astype(q_BxLxNxD.dtype)
    ids = splash.SegmentIds(query_segment_ids(attn_segment_ids_BxL), attn_segment_ids_BxL)
    out_BxNxLxD = jax.vmap(kernel)(
        *(jnp.swapaxes(x, 1, 2) for x in (scaled_q_BxLxNxD, k_BxLxNxD, v_BxLxNxD)), ids
    )
    return jnp.swapaxes(out_BxNxLxD, 1, 2)
