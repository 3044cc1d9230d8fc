"""The encoder: post-LN transformer layers, unrolled or scanned, rematerialised by policy.

`scan_layers` runs the layers with `nn.scan`: one traced and compiled layer whatever the depth,
its parameters stacked along a leading axis named "layers". Unrolled, each layer has a subtree
of its own (`layer_0`, `layer_1`, ...: HuggingFace's layout). `stack_layers` /
`unstack_layers` convert any tree between the two layouts at the edges.
"""

import functools
import re
from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from bertjax import attention
from bertjax.layers import HeadsDense, activation, dense, layer_norm, take_positions
from bertjax.model_config import REMAT_POLICIES, BertConfig

LAYERS_AXIS = "layers"  # logical name of the stacked parameters' leading axis (no mesh axis)
STACKED_KEY = "layers"  # the scanned layers' subtree in BertModel (unrolled: layer_0, ...)
_LAYER_KEY = re.compile(r"layer_(\d+)$")


def checkpoint_policy(name: str):
    """The `jax.checkpoint` policy of `remat_policy` `name` (model_config.REMAT_POLICIES)."""
    saved = REMAT_POLICIES[name]
    if saved is None:  # jax.checkpoint's default: recompute the whole layer
        return None
    if isinstance(saved, str):
        return getattr(jax.checkpoint_policies, saved)
    return jax.checkpoint_policies.save_only_these_names(*saved)


# --- one layer --------------------------------------------------------------------------------


class SelfAttention(nn.Module):
    """Multi-head self-attention within segments (attention.py), output projection, LayerNorm.

    With `query_positions_BxQ`, only those positions query (keys and values are every
    position's) and the output is theirs, [B, Q, E]: the layer's output read at those rows.
    """

    cfg: BertConfig

    @nn.compact
    def __call__(
        self,
        x_BxLxE,
        attn_segment_ids_BxL,
        deterministic: bool,
        one_segment_per_row: bool,
        query_positions_BxQ=None,
    ):
        cfg = self.cfg
        qkv = functools.partial(
            HeadsDense,
            cfg,
            (cfg.num_attention_heads, cfg.head_dim),
            in_axes=1,
            kernel_axes=("embed", "heads", "kv"),
        )
        # Queries at every position, or at `query_positions_BxQ` alone (then the output
        # projection, the residual and the LayerNorm run there alone too).
        x_BxQxE = x_BxLxE
        if query_positions_BxQ is not None:
            x_BxQxE = take_positions(x_BxLxE, query_positions_BxQ)
        q_BxQxNxD = checkpoint_name(qkv(name="query")(x_BxQxE), "query_proj")
        k_BxLxNxD = checkpoint_name(qkv(name="key")(x_BxLxE), "key_proj")
        v_BxLxNxD = checkpoint_name(qkv(name="value")(x_BxLxE), "value_proj")
        use_dropout = not deterministic and cfg.attention_probs_dropout_prob > 0
        dropout = {
            "dropout_rate": cfg.attention_probs_dropout_prob,
            "dropout_rng": self.make_rng("dropout") if use_dropout else None,
        }
        if query_positions_BxQ is not None:
            ctx_BxQxNxD = attention.attention_at_positions(
                q_BxQxNxD,
                k_BxLxNxD,
                v_BxLxNxD,
                attn_segment_ids_BxL,
                query_positions_BxQ,
                **dropout,
            )
        else:
            impl = cfg.attention_impl
            # No kernel has parameters; init runs at lengths splash can't.
            if self.is_initializing():
                impl = "xla"
            elif impl == "auto":  # resolved from the config, so training and evaluation agree
                impl, _ = attention.resolve_for_model(cfg, seq_len=x_BxLxE.shape[1])
            ctx_BxQxNxD = attention.dot_product_attention(
                q_BxQxNxD,
                k_BxLxNxD,
                v_BxLxNxD,
                attn_segment_ids_BxL,
                impl=impl,
                one_segment_per_row=one_segment_per_row,
                **dropout,
            )
        ctx_BxQxNxD = nn.with_logical_constraint(ctx_BxQxNxD, ("batch", "length", "heads", "kv"))
        ctx_BxQxNxD = checkpoint_name(ctx_BxQxNxD, "context")
        out_BxQxE = HeadsDense(
            cfg, (cfg.hidden_size,), in_axes=2, kernel_axes=("heads", "kv", "embed"), name="output"
        )(ctx_BxQxNxD)
        out_BxQxE = checkpoint_name(out_BxQxE, "out_proj")
        out_BxQxE = nn.Dropout(cfg.hidden_dropout_prob)(out_BxQxE, deterministic=deterministic)
        return layer_norm(cfg, "output_LayerNorm")(out_BxQxE + x_BxQxE)


class EncoderLayer(nn.Module):
    """One post-LN transformer layer: attention, then the GELU feed-forward block.

    Returns (output, output if `collect` else None): the (carry, per-step output) pair
    `nn.scan` expects of its body, so that the same class runs unrolled and scanned; scanned
    with `collect`, the per-step outputs stack into every layer's output [layers, B, L, E],
    and without it the scan stacks nothing. With `query_positions_BxQ` (unrolled only), the
    output is the layer's at those positions, [B, Q, E], computed there alone
    (`SelfAttention`; the feed-forward block runs at Q positions).
    """

    cfg: BertConfig

    @nn.compact
    def __call__(
        self,
        x_BxLxE,
        attn_segment_ids_BxL,
        deterministic: bool,
        one_segment_per_row: bool,
        collect: bool = False,
        query_positions_BxQ=None,
    ):
        cfg = self.cfg
        x_BxLxE = SelfAttention(cfg, name="attention")(
            x_BxLxE, attn_segment_ids_BxL, deterministic, one_segment_per_row, query_positions_BxQ
        )
        h_BxLxF = dense(cfg, cfg.intermediate_size, ("embed", "mlp"), "intermediate")(x_BxLxE)
        h_BxLxF = checkpoint_name(h_BxLxF, "mlpwi")
        h_BxLxF = activation(cfg.hidden_act)(h_BxLxF)
        h_BxLxF = nn.with_logical_constraint(h_BxLxF, ("batch", "length", "mlp"))
        out_BxLxE = dense(cfg, cfg.hidden_size, ("mlp", "embed"), "output")(h_BxLxF)
        out_BxLxE = checkpoint_name(out_BxLxE, "mlpwo")
        out_BxLxE = nn.Dropout(cfg.hidden_dropout_prob)(out_BxLxE, deterministic=deterministic)
        out_BxLxE = layer_norm(cfg, "output_LayerNorm")(out_BxLxE + x_BxLxE)
        out_BxLxE = nn.with_logical_constraint(out_BxLxE, ("batch", "length", "embed"))
        return out_BxLxE, (out_BxLxE if collect else None)


# --- the stack of layers ----------------------------------------------------------------------


def make_layers(cfg) -> list[nn.Module]:
    """The encoder's layers, made inside a parent's `setup`: one scanned module named
    STACKED_KEY (`cfg.scan_layers`), else `layer_0 ... layer_{n-1}`. Each is called as
    `x, outs = layer(x_BxLxE, attn_segment_ids_BxL, deterministic, one_segment_per_row,
    collect)`: `outs` is None, or with `collect` the layer's output [B, L, E] (unrolled) or
    every layer's [layers, B, L, E] (scanned). An unrolled layer also takes
    `query_positions_BxQ` last (EncoderLayer)."""
    layer_cls = EncoderLayer
    if cfg.remat_policy != "none":
        layer_cls = nn.remat(
            layer_cls,
            policy=checkpoint_policy(cfg.remat_policy),
            # `self` counts: deterministic, one_segment_per_row and collect are Python bools.
            static_argnums=(3, 4, 5),
            # Inside scan the loop already keeps XLA from merging the recomputation into the
            # forward pass; the extra barriers would only cost (jax.checkpoint's docs).
            prevent_cse=not cfg.scan_layers,
        )
    if not cfg.scan_layers:
        return [layer_cls(cfg, name=f"layer_{i}") for i in range(cfg.num_hidden_layers)]
    scanned_cls = nn.scan(
        layer_cls,
        variable_axes={"params": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
        length=cfg.num_hidden_layers,
        metadata_params={nn.PARTITION_NAME: LAYERS_AXIS},
    )
    return [scanned_cls(cfg, name=STACKED_KEY)]


# --- the two parameter layouts ----------------------------------------------------------------


def _layer_keys(node: Mapping) -> list[str]:
    return [k for k in node if isinstance(k, str) and _LAYER_KEY.match(k)]


def _holds_layers(node) -> bool:
    return isinstance(node, Mapping) and "layer_0" in node


def _holds_stack(node) -> bool:
    return isinstance(node, Mapping) and STACKED_KEY in node


def _stack(arrays):
    if all(isinstance(a, np.ndarray) for a in arrays):  # host arrays stay on the host
        return np.stack(arrays)
    return jnp.stack(arrays)


def stack_layers(tree):
    """Per-layer -> stacked layout: in every dict holding `layer_0 ... layer_{n-1}` (the
    `bert` subtree), those entries become one STACKED_KEY entry whose arrays have a leading
    layer axis, as `model.scan_layers` builds them. Works on plain (unboxed) arrays of any
    tree that mirrors the parameters: params, gradients, a whole TrainState with its Adam
    moments; a tree already stacked comes back as it is."""

    def stack(node):
        keys = _layer_keys(node)
        expected = [f"layer_{i}" for i in range(len(keys))]
        if sorted(keys, key=lambda k: int(k[6:])) != expected:
            raise ValueError(f"layer keys {sorted(keys)} are not layer_0 ... layer_{len(keys) - 1}")
        layers = [node[k] for k in expected]
        out = {k: v for k, v in node.items() if k not in expected}
        out[STACKED_KEY] = jax.tree.map(lambda *xs: _stack(xs), *layers)
        return out

    return jax.tree.map(lambda x: stack(x) if _holds_layers(x) else x, tree, is_leaf=_holds_layers)


def unstack_layers(tree):
    """Stacked -> per-layer layout, the inverse of `stack_layers` (a tree already per-layer
    comes back as it is): what HuggingFace folders hold, layer i being index i."""

    def unstack(node):
        stacked = node[STACKED_KEY]
        num_layers = jax.tree.leaves(stacked)[0].shape[0]
        out = {k: v for k, v in node.items() if k != STACKED_KEY}
        for i in range(num_layers):
            out[f"layer_{i}"] = jax.tree.map(lambda x, i=i: x[i], stacked)
        return out

    return jax.tree.map(lambda x: unstack(x) if _holds_stack(x) else x, tree, is_leaf=_holds_stack)


def to_layout(tree, scan_layers: bool):
    """`tree` in the layout of a model with `scan_layers` (whichever layout it is in now)."""
    return stack_layers(tree) if scan_layers else unstack_layers(tree)


def is_stacked_path(path) -> bool:
    """True for the jax key path of a leaf inside the stacked layers (one slice per layer)."""
    return any(getattr(k, "key", None) == STACKED_KEY for k in path)
