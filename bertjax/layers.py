"""The building blocks of every BERT module (embeddings, encoder layers, heads): dense layers
and LayerNorm with BERT's initialisers and logical axis names, and the activation."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from bertjax.model_config import BertConfig


def dense_init(cfg: BertConfig, axes: tuple[str | None, ...]):
    """BERT's normal(initializer_range) initialiser, with logical axis names."""
    return nn.with_logical_partitioning(nn.initializers.normal(cfg.initializer_range), axes)


def zeros_init(axes: tuple[str | None, ...]):
    """Zeros, with logical axis names."""
    return nn.with_logical_partitioning(nn.initializers.zeros_init(), axes)


def layer_norm(cfg: BertConfig, name: str) -> nn.LayerNorm:
    """LayerNorm as BERT's: epsilon 1e-12 (flax: 1e-6), exact variance as PyTorch computes it."""
    return nn.LayerNorm(
        epsilon=cfg.layer_norm_eps,
        dtype=cfg.dtype,
        use_fast_variance=False,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)),
        bias_init=zeros_init(("embed",)),
        name=name,
    )


def dense(
    cfg: BertConfig, features: int, axes: tuple[str | None, str | None], name: str
) -> nn.Dense:
    """nn.Dense with BERT's initialisers, computing in the config's dtype."""
    return nn.Dense(
        features,
        dtype=cfg.dtype,
        kernel_init=dense_init(cfg, axes),
        bias_init=zeros_init(axes[1:]),
        name=name,
    )


def activation(name: str):
    """The feed-forward activation named as in HF configs (exact erf GELU for "gelu")."""
    if name == "gelu":
        return functools.partial(jax.nn.gelu, approximate=False)
    return functools.partial(jax.nn.gelu, approximate=True)


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
            dense_init(cfg, self.kernel_axes),
            (*x.shape[x.ndim - n_in :], *self.features),
            jnp.float32,
        )
        bias = self.param(
            "bias", zeros_init(self.kernel_axes[n_in:]), tuple(self.features), jnp.float32
        )
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=cfg.dtype)
        # Contracting dimensions in order, as DenseGeneral (jnp.einsum would reverse them
        # and add transposes to the backward pass).
        contract = (tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in)))
        return jax.lax.dot_general(x, kernel, (contract, ((), ()))) + bias


def take_positions(x_BxLx_, positions_BxQ):
    """The rows of `x_BxLx_` ([B, L, ...]) at `positions_BxQ` of each row: [B, Q, ...]."""
    idx = positions_BxQ.astype(jnp.int32).reshape(positions_BxQ.shape + (1,) * (x_BxLx_.ndim - 2))
    return jnp.take_along_axis(x_BxLx_, idx, axis=1)
