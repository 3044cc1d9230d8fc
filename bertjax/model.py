"""BERT in Flax Linen: config and presets, embeddings, post-LN encoder, pooler, MLM and NSP heads.

The parameter tree mirrors HuggingFace's `BertForPreTraining` module by module (see `hf.py`),
and every parameter carries logical axis names so that sharding is chosen by config rules,
never in the model.
"""

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from bertjax import attention

# Logical axis names used by the parameters and activations of this module.
#   vocab, embed, heads, kv (per-head features), mlp, position, segment; batch, length.

PRESETS: dict[str, dict[str, int]] = {
    # name: (layers, hidden, heads), intermediate = 4 x hidden as in Turc et al. 2019 / BERT.
    "tiny": dict(num_hidden_layers=2, hidden_size=128, num_attention_heads=2),
    "mini": dict(num_hidden_layers=4, hidden_size=256, num_attention_heads=4),
    "small": dict(num_hidden_layers=4, hidden_size=512, num_attention_heads=8),
    "medium": dict(num_hidden_layers=8, hidden_size=512, num_attention_heads=8),
    "base": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12),
    "large": dict(num_hidden_layers=24, hidden_size=1024, num_attention_heads=16),
}

HIDDEN_ACTS = ("gelu", "gelu_new", "gelu_pytorch_tanh")
# BertConfig fields that decide the parameters' shapes and meaning (dropout and dtype do not).
ARCHITECTURE_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                       "intermediate_size", "hidden_act", "max_position_embeddings",
                       "type_vocab_size", "layer_norm_eps")
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}  # compute_dtype -> dtype
ATTENTION_IMPLS = attention.IMPLS


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """BERT hyperparameters; field names follow HuggingFace's `BertConfig` where they exist."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"  # "gelu" = exact erf GELU; "gelu_new"/"gelu_pytorch_tanh" = tanh form
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    # Not in HF's config: how we compute, not what the model is.
    compute_dtype: str = "float32"  # activations/matmuls; parameters always float32
    remat: bool = False  # recompute each layer's activations in the backward pass
    attention_impl: str = "xla"  # xla | cudnn | splash | auto: see attention.py

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}"
            )
        if self.hidden_act not in HIDDEN_ACTS:
            raise ValueError(f"hidden_act {self.hidden_act!r} is not one of {HIDDEN_ACTS}")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"compute_dtype {self.compute_dtype!r} is not one of {COMPUTE_DTYPES}")
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(
                f"attention_impl {self.attention_impl!r} is not one of {ATTENTION_IMPLS}"
            )
        for name in ("vocab_size", "max_position_embeddings", "type_vocab_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def dtype(self):
        return jnp.dtype(COMPUTE_DTYPES[self.compute_dtype])


def config_fields() -> tuple[str, ...]:
    """Names of every BertConfig field (used to reject unknown keys)."""
    return tuple(f.name for f in dataclasses.fields(BertConfig))


def preset_config(name: str, **overrides: Any) -> BertConfig:
    """Returns the BertConfig of preset `name` (tiny ... large) with `overrides` applied."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known presets: {', '.join(PRESETS)}")
    unknown = sorted(set(overrides) - set(config_fields()))
    if unknown:
        raise ValueError(f"unknown BertConfig keys {unknown}; known keys: {config_fields()}")
    fields = dict(PRESETS[name])
    fields["intermediate_size"] = 4 * fields["hidden_size"]
    fields.update(overrides)
    return BertConfig(**fields)


def _dense_init(cfg: BertConfig, axes: tuple[str | None, ...]):
    return nn.with_logical_partitioning(nn.initializers.normal(cfg.initializer_range), axes)


def _zeros(axes: tuple[str | None, ...]):
    return nn.with_logical_partitioning(nn.initializers.zeros_init(), axes)


def _layer_norm(cfg: BertConfig, name: str) -> nn.LayerNorm:
    # BERT's epsilon is 1e-12 (flax defaults to 1e-6); exact variance, as PyTorch computes it.
    return nn.LayerNorm(
        epsilon=cfg.layer_norm_eps,
        dtype=cfg.dtype,
        use_fast_variance=False,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)),
        bias_init=_zeros(("embed",)),
        name=name,
    )


def _dense(cfg: BertConfig, features: int, axes: tuple[str | None, str | None], name: str):
    return nn.Dense(
        features,
        dtype=cfg.dtype,
        kernel_init=_dense_init(cfg, axes),
        bias_init=_zeros(axes[1:]),
        name=name,
    )


def activation(name: str):
    """The feed-forward activation named as in HF configs (exact erf GELU for "gelu")."""
    if name == "gelu":
        return functools.partial(jax.nn.gelu, approximate=False)
    return functools.partial(jax.nn.gelu, approximate=True)


def _gathered_table(embed: nn.Embed, rows_axis: str):
    """`embed`'s table [rows, E], gathered whole along "embed" (FSDP splits it there).

    The rows looked up (and the MLM queries) are split by batch. Were the table still split
    along "embed", the backward scatter-add into its gradient would need the [B, L, E]
    cotangent split along E too, which XLA can only do by replicating the whole batch's
    cotangent on every device ("involuntary full rematerialization"): memory and traffic
    growing with the global batch. Gathered, it costs what FSDP pays for a weight: one
    gather (shared by the lookup and the tied decoder) and a reduction of the gradient.
    """
    return nn.with_logical_constraint(embed.embedding, (rows_axis, None))


def _lookup(embed: nn.Embed, ids, rows_axis: str):
    """`embed(ids)`, from the gathered table."""
    return jnp.take(_gathered_table(embed, rows_axis), ids, axis=0)


class Embeddings(nn.Module):
    """Word + position + segment embeddings, then LayerNorm and dropout."""

    cfg: BertConfig

    def setup(self):
        cfg = self.cfg
        embed = functools.partial(nn.Embed, features=cfg.hidden_size, param_dtype=jnp.float32)
        self.word_embeddings = embed(
            cfg.vocab_size, embedding_init=_dense_init(cfg, ("vocab", "embed"))
        )
        self.position_embeddings = embed(
            cfg.max_position_embeddings, embedding_init=_dense_init(cfg, ("position", "embed"))
        )
        self.token_type_embeddings = embed(
            cfg.type_vocab_size, embedding_init=_dense_init(cfg, ("segment", "embed"))
        )
        self.LayerNorm = _layer_norm(cfg, "LayerNorm")
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def __call__(self, input_ids_BxL, segment_ids_BxL, deterministic: bool, pos_BxL=None):
        """`pos_BxL`: packed rows' position ids (0 at each sequence's start); default 0..L-1."""
        pos_BxL = jnp.arange(input_ids_BxL.shape[1])[None] if pos_BxL is None else pos_BxL
        x_BxLxE = (
            _lookup(self.word_embeddings, input_ids_BxL, "vocab")
            + _lookup(self.position_embeddings, pos_BxL, "position")
            + _lookup(self.token_type_embeddings, segment_ids_BxL, "segment")
        )
        x_BxLxE = self.LayerNorm(x_BxLxE.astype(self.cfg.dtype))
        return self.dropout(x_BxLxE, deterministic=deterministic)

    def attend(self, x_BxPxE):
        """Logits against the (tied) word embeddings: the MLM decoder (`nn.Embed.attend`, on
        the same gathered table as the lookup, so that FSDP gathers it once)."""
        table_VxE = _gathered_table(self.word_embeddings, "vocab")
        x_BxPxE, table_VxE = nn.dtypes.promote_dtype(x_BxPxE, table_VxE, dtype=None)
        return jnp.dot(x_BxPxE, table_VxE.T)


class HeadsDense(nn.Module):
    """nn.DenseGeneral over the last `in_axes` input axes, its kernel made in its full shape.

    The parameters (kernel [*in, *features], bias [*features]) and the computation are
    DenseGeneral's. DenseGeneral initialises a flat 2-D kernel and reshapes it: with a mesh
    and logical rules in scope (activation constraints on), flax then applies the kernel's
    3-axis logical constraint to the 2-D array and tracing fails. The initial values are the
    same either way (a normal draw is laid out flat).
    """

    cfg: BertConfig
    features: tuple[int, ...]
    in_axes: int
    kernel_axes: tuple[str | None, ...]

    @nn.compact
    def __call__(self, x):
        cfg, n_in = self.cfg, self.in_axes
        kernel = self.param(
            "kernel",
            _dense_init(cfg, self.kernel_axes),
            (*x.shape[x.ndim - n_in :], *self.features),
            jnp.float32,
        )
        bias = self.param(
            "bias", _zeros(self.kernel_axes[n_in:]), tuple(self.features), jnp.float32
        )
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=cfg.dtype)
        # Contracting dimensions in order, as DenseGeneral (jnp.einsum would reverse them
        # and add transposes to the backward pass).
        contract = (tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in)))
        return jax.lax.dot_general(x, kernel, (contract, ((), ()))) + bias


class SelfAttention(nn.Module):
    """Multi-head self-attention within segments (attention.py), output projection, LayerNorm."""

    cfg: BertConfig

    @nn.compact
    def __call__(
        self, x_BxLxE, attn_segment_ids_BxL, deterministic: bool, one_segment_per_row: bool
    ):
        cfg = self.cfg
        qkv = functools.partial(
            HeadsDense,
            cfg,
            (cfg.num_attention_heads, cfg.head_dim),
            in_axes=1,
            kernel_axes=("embed", "heads", "kv"),
        )
        q_BxLxNxD = qkv(name="query")(x_BxLxE)
        k_BxLxNxD = qkv(name="key")(x_BxLxE)
        v_BxLxNxD = qkv(name="value")(x_BxLxE)
        use_dropout = not deterministic and cfg.attention_probs_dropout_prob > 0
        impl = cfg.attention_impl
        if self.is_initializing():  # no kernel has parameters; init runs at lengths splash can't
            impl = "xla"
        elif impl == "auto":  # resolved from the config, so training and evaluation agree
            impl, _ = attention.resolve_for_model(cfg, seq_len=x_BxLxE.shape[1])
        ctx_BxLxNxD = attention.dot_product_attention(
            q_BxLxNxD,
            k_BxLxNxD,
            v_BxLxNxD,
            attn_segment_ids_BxL,
            impl=impl,
            one_segment_per_row=one_segment_per_row,
            dropout_rate=cfg.attention_probs_dropout_prob,
            dropout_rng=self.make_rng("dropout") if use_dropout else None,
        )
        ctx_BxLxNxD = nn.with_logical_constraint(ctx_BxLxNxD, ("batch", "length", "heads", "kv"))
        out_BxLxE = HeadsDense(
            cfg, (cfg.hidden_size,), in_axes=2, kernel_axes=("heads", "kv", "embed"), name="output"
        )(ctx_BxLxNxD)
        out_BxLxE = nn.Dropout(cfg.hidden_dropout_prob)(out_BxLxE, deterministic=deterministic)
        return _layer_norm(cfg, "output_LayerNorm")(out_BxLxE + x_BxLxE)


class EncoderLayer(nn.Module):
    """One post-LN transformer layer: attention, then the GELU feed-forward block."""

    cfg: BertConfig

    @nn.compact
    def __call__(
        self, x_BxLxE, attn_segment_ids_BxL, deterministic: bool, one_segment_per_row: bool
    ):
        cfg = self.cfg
        x_BxLxE = SelfAttention(cfg, name="attention")(
            x_BxLxE, attn_segment_ids_BxL, deterministic, one_segment_per_row
        )
        h_BxLxF = _dense(cfg, cfg.intermediate_size, ("embed", "mlp"), "intermediate")(x_BxLxE)
        h_BxLxF = activation(cfg.hidden_act)(h_BxLxF)
        h_BxLxF = nn.with_logical_constraint(h_BxLxF, ("batch", "length", "mlp"))
        out_BxLxE = _dense(cfg, cfg.hidden_size, ("mlp", "embed"), "output")(h_BxLxF)
        out_BxLxE = nn.Dropout(cfg.hidden_dropout_prob)(out_BxLxE, deterministic=deterministic)
        out_BxLxE = _layer_norm(cfg, "output_LayerNorm")(out_BxLxE + x_BxLxE)
        return nn.with_logical_constraint(out_BxLxE, ("batch", "length", "embed"))


class BertModel(nn.Module):
    """Embeddings + encoder + pooler; the `bert` submodule of every head model."""

    cfg: BertConfig

    def setup(self):
        cfg = self.cfg
        self.embeddings = Embeddings(cfg)
        # static_argnums counts `self`: deterministic and one_segment_per_row are 3 and 4.
        layer_cls = nn.remat(EncoderLayer, static_argnums=(3, 4)) if cfg.remat else EncoderLayer
        self.layers = [layer_cls(cfg, name=f"layer_{i}") for i in range(cfg.num_hidden_layers)]
        self.pooler = _dense(cfg, cfg.hidden_size, ("embed", "embed_out"), "pooler")

    def __call__(self, input_ids, segment_ids, input_mask, deterministic: bool = True,
                 attn_segment_ids=None, position_ids=None, cls_positions=None):
        """Returns (last_hidden_state [B, L, H], pooled_output [B, H]) for [B, L] int inputs.
        Packed rows give `attn_segment_ids` (0 = padding; else a row is one segment),
        `position_ids` [B, L] and `cls_positions` [B, K] (then pooled_output is [B, K, H])."""
        input_ids_BxL, segment_ids_BxL, input_mask_BxL = input_ids, segment_ids, input_mask
        x_BxLxE = self.embeddings(input_ids_BxL, segment_ids_BxL, deterministic, position_ids)
        x_BxLxE = nn.with_logical_constraint(x_BxLxE, ("batch", "length", "embed"))
        one_segment_per_row = attn_segment_ids is None
        ids_BxL = (input_mask_BxL != 0) if one_segment_per_row else attn_segment_ids
        attn_segment_ids_BxL = ids_BxL.astype(jnp.int32)
        for layer in self.layers:
            x_BxLxE = layer(x_BxLxE, attn_segment_ids_BxL, deterministic, one_segment_per_row)
        cls_BxE = x_BxLxE[:, 0] if cls_positions is None else jnp.take_along_axis(
            x_BxLxE, cls_positions[..., None].astype(jnp.int32), axis=1)  # packed: [B, K, E]
        return x_BxLxE, jnp.tanh(self.pooler(cls_BxE))

    def attend(self, x_BxPxE):
        """MLM decoder logits against the tied word embeddings."""
        return self.embeddings.attend(x_BxPxE)


@flax.struct.dataclass
class PreTrainingOutput:
    mlm_logits: jax.Array  # [B, P, V] at masked_lm_positions, or [B, L, V] without them
    nsp_logits: jax.Array  # [B, 2], or [B, K, 2] for packed rows' sequences
    last_hidden_state: jax.Array  # [B, L, H]
    pooled_output: jax.Array  # [B, H]


class BertForPreTraining(nn.Module):
    """BERT with the masked-LM head (tied decoder) and the next-sentence head."""

    cfg: BertConfig

    @nn.compact
    def __call__(
        self,
        input_ids,
        segment_ids,
        input_mask,
        masked_lm_positions=None,
        deterministic: bool = True,
        attn_segment_ids=None, position_ids=None, nsp_positions=None,
    ) -> PreTrainingOutput:
        """Inputs [B, L] int; `masked_lm_positions` [B, P] restricts the MLM head to P positions;
        packed rows: `attn_segment_ids`, `position_ids` [B, L], `nsp_positions` [B, K] of each
        sequence's [CLS] (see BertModel)."""
        cfg = self.cfg
        masked_lm_positions_BxP = masked_lm_positions
        bert = BertModel(cfg, name="bert")
        hidden_BxLxE, pooled_BxE = bert(input_ids, segment_ids, input_mask, deterministic,
                                        attn_segment_ids, position_ids, nsp_positions)
        if masked_lm_positions_BxP is None:
            x_BxPxE = hidden_BxLxE
        else:
            # Gather the masked positions first, as the original does: training never
            # materialises B x L x V logits.
            x_BxPxE = jnp.take_along_axis(
                hidden_BxLxE, masked_lm_positions_BxP[..., None].astype(jnp.int32), axis=1
            )
        x_BxPxE = _dense(cfg, cfg.hidden_size, ("embed", "embed_out"), "mlm_transform")(x_BxPxE)
        x_BxPxE = activation(cfg.hidden_act)(x_BxPxE)
        x_BxPxE = _layer_norm(cfg, "mlm_LayerNorm")(x_BxPxE)
        mlm_BxPxV = bert.attend(x_BxPxE.astype(cfg.dtype))
        mlm_bias_V = self.param("mlm_bias", _zeros(("vocab",)), (cfg.vocab_size,), jnp.float32)
        mlm_BxPxV = mlm_BxPxV.astype(jnp.float32) + mlm_bias_V
        nsp_Bx2 = _dense(cfg, 2, ("embed", None), "nsp")(pooled_BxE).astype(jnp.float32)
        return PreTrainingOutput(mlm_BxPxV, nsp_Bx2, hidden_BxLxE, pooled_BxE)


def init_params(cfg: BertConfig, rng: jax.Array, seq_len: int = 8):
    """Initialises BertForPreTraining; returns the boxed parameter tree (logical metadata kept)."""
    ids_BxL = jnp.zeros((1, seq_len), jnp.int32)
    variables = BertForPreTraining(cfg).init({"params": rng}, ids_BxL, ids_BxL, ids_BxL + 1)
    return variables["params"]


def abstract_params(cfg: BertConfig, seq_len: int = 8):
    """Shapes, dtypes and logical metadata of the parameters, with no allocation."""
    return jax.eval_shape(lambda: init_params(cfg, jax.random.key(0), seq_len))


def count_params(params) -> int:
    """Number of scalars in a (boxed, abstract or concrete) parameter tree."""
    return int(sum(x.size for x in jax.tree_util.tree_leaves(nn.meta.unbox(params))))
