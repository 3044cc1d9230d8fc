"""BERT in Flax Linen: embeddings, pooler, MLM and NSP heads, BertForPreTraining, init_params.

The post-LN encoder layers (unrolled or scanned) are encoder.py's; BertConfig and the presets
are model_config.py's (re-exported here). The parameter tree mirrors HuggingFace's
`BertForPreTraining` module by module (`hf.py`), and every parameter carries logical axis
names so that sharding is chosen by config rules, never in the model.
"""

import functools

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from bertjax import encoder
from bertjax.layers import activation, dense, dense_init, layer_norm, take_positions, zeros_init

# The config is model_config.py's; these names are also the model's public API.
from bertjax.model_config import PRESETS, BertConfig, preset_config  # noqa: F401

# Logical axis names used by the parameters and activations of this module.
#   vocab, embed, heads, kv (per-head features), mlp, position, segment, layers (stacked
#   layers' leading axis); batch, length.


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
            cfg.vocab_size, embedding_init=dense_init(cfg, ("vocab", "embed"))
        )
        self.position_embeddings = embed(
            cfg.max_position_embeddings,
            embedding_init=dense_init(cfg, ("position", "embed")),
        )
        self.token_type_embeddings = embed(
            cfg.type_vocab_size, embedding_init=dense_init(cfg, ("segment", "embed"))
        )
        self.LayerNorm = layer_norm(cfg, "LayerNorm")
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


class BertModel(nn.Module):
    """Embeddings + encoder + pooler; the `bert` submodule of every head model."""

    cfg: BertConfig

    def setup(self):
        cfg = self.cfg
        self.embeddings = Embeddings(cfg)
        # layer_0 ... layer_{n-1}, or one scanned module "layers" (encoder.make_layers).
        self.layers = encoder.make_layers(cfg)
        self.pooler = dense(cfg, cfg.hidden_size, ("embed", "embed_out"), "pooler")

    def __call__(
        self,
        input_ids,
        segment_ids,
        input_mask,
        deterministic: bool = True,
        attn_segment_ids=None,
        position_ids=None,
        cls_positions=None,
        output_hidden_states: bool = False,
        cls_only: bool = False,
    ):
        """Returns (last_hidden_state [B, L, H], pooled_output [B, H]) for [B, L] int inputs.
        Packed rows give `attn_segment_ids` (0 = padding; else a row is one segment),
        `position_ids` [B, L] and `cls_positions` [B, K] (then pooled_output is [B, K, H]).
        `output_hidden_states`: a third element, every encoder layer's output [layers, B, L,
        H] (HuggingFace's hidden_states[1:]; the original's get_all_encoder_layers), built
        only when asked for.

        `cls_only`, for heads that read only the pooled output (sequence classification,
        multiple choice): the last layer runs at [CLS] alone, its keys and values still
        every token's (its other matmuls at the other positions saved, forward and backward:
        6.8% of a BERT-base step's model FLOPs at 128, flops.cls_only_flops_saved), and
        last_hidden_state is [B, 1, H]. The pooled output is the same. With
        scanned layers the last layer is the scan's body like every other: it runs whole,
        and only then is [CLS] taken."""
        input_ids_BxL, segment_ids_BxL, input_mask_BxL = input_ids, segment_ids, input_mask
        x_BxLxE = self.embeddings(input_ids_BxL, segment_ids_BxL, deterministic, position_ids)
        x_BxLxE = nn.with_logical_constraint(x_BxLxE, ("batch", "length", "embed"))
        one_segment_per_row = attn_segment_ids is None
        ids_BxL = (input_mask_BxL != 0) if one_segment_per_row else attn_segment_ids
        attn_segment_ids_BxL = ids_BxL.astype(jnp.int32)
        if cls_only and (output_hidden_states or cls_positions is not None):
            raise ValueError(
                "cls_only reads row position 0 alone: it takes neither output_hidden_states "
                "nor packed rows' cls_positions"
            )
        collected = []
        for i, layer in enumerate(self.layers):
            last_unrolled = not self.cfg.scan_layers and i == len(self.layers) - 1
            positions = (
                [jnp.zeros((x_BxLxE.shape[0], 1), jnp.int32)] if cls_only and last_unrolled else []
            )
            x_BxLxE, outs = layer(
                x_BxLxE,
                attn_segment_ids_BxL,
                deterministic,
                one_segment_per_row,
                output_hidden_states,
                *positions,
            )
            if output_hidden_states:  # scanned: all layers' [N, B, L, E]; unrolled: one's
                collected.append(outs if self.cfg.scan_layers else outs[None])
        if cls_only:  # unrolled, the last layer already ran at [CLS] alone: [B, 1, E]
            x_BxLxE = x_BxLxE[:, :1]
        # [CLS] of each row [B, E], or of each packed sequence [B, K, E] (`cls_positions`):
        # the pooled output and the NSP logits keep that leading shape.
        cls_Bx_E = (
            x_BxLxE[:, 0] if cls_positions is None else take_positions(x_BxLxE, cls_positions)
        )
        pooled_Bx_E = jnp.tanh(self.pooler(cls_Bx_E))
        if output_hidden_states:
            return x_BxLxE, pooled_Bx_E, jnp.concatenate(collected)
        return x_BxLxE, pooled_Bx_E

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
        attn_segment_ids=None,
        position_ids=None,
        nsp_positions=None,
    ) -> PreTrainingOutput:
        """Inputs [B, L] int; `masked_lm_positions` [B, P] restricts the MLM head to P positions;
        packed rows: `attn_segment_ids`, `position_ids` [B, L], `nsp_positions` [B, K] of each
        sequence's [CLS] (see BertModel)."""
        cfg = self.cfg
        masked_lm_positions_BxP = masked_lm_positions
        bert = BertModel(cfg, name="bert")
        hidden_BxLxE, pooled_Bx_E = bert(
            input_ids,
            segment_ids,
            input_mask,
            deterministic,
            attn_segment_ids,
            position_ids,
            nsp_positions,
        )
        if masked_lm_positions_BxP is None:
            x_BxPxE = hidden_BxLxE
        else:
            # Gather the masked positions first, as the original does: training never
            # materialises B x L x V logits.
            x_BxPxE = take_positions(hidden_BxLxE, masked_lm_positions_BxP)
        mlm_transform = dense(cfg, cfg.hidden_size, ("embed", "embed_out"), "mlm_transform")
        x_BxPxE = mlm_transform(x_BxPxE)
        x_BxPxE = activation(cfg.hidden_act)(x_BxPxE)
        x_BxPxE = layer_norm(cfg, "mlm_LayerNorm")(x_BxPxE)
        mlm_BxPxV = bert.attend(x_BxPxE.astype(cfg.dtype))
        mlm_bias_V = self.param("mlm_bias", zeros_init(("vocab",)), (cfg.vocab_size,), jnp.float32)
        mlm_BxPxV = mlm_BxPxV.astype(jnp.float32) + mlm_bias_V
        nsp_Bx_2 = dense(cfg, 2, ("embed", None), "nsp")(pooled_Bx_E).astype(jnp.float32)
        return PreTrainingOutput(mlm_BxPxV, nsp_Bx_2, hidden_BxLxE, pooled_Bx_E)


def init_params(
    cfg: BertConfig,
    rng: jax.Array,
    *,
    model: nn.Module | None = None,
    input_shape: tuple[int, ...] = (1, 8),
):
    """The boxed parameter tree (logical metadata kept) of `model`, by default
    BertForPreTraining(cfg): any of our models taking (input_ids, segment_ids, input_mask),
    initialised on int inputs of `input_shape`."""
    model = BertForPreTraining(cfg) if model is None else model
    ids = jnp.zeros(input_shape, jnp.int32)
    return model.init({"params": rng}, ids, ids, ids + 1)["params"]


def abstract_params(
    cfg: BertConfig, *, model: nn.Module | None = None, input_shape: tuple[int, ...] = (1, 8)
):
    """Shapes, dtypes and logical metadata of `init_params`'s tree, with no allocation."""
    return jax.eval_shape(
        lambda: init_params(cfg, jax.random.key(0), model=model, input_shape=input_shape)
    )


def count_params(params) -> int:
    """Number of scalars in a (boxed, abstract or concrete) parameter tree."""
    return int(sum(x.size for x in jax.tree_util.tree_leaves(nn.meta.unbox(params))))
