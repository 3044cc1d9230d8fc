"""Optimizers (AdamW, LAMB), learning-rate schedules and BERT's weight-decay mask, with optax."""

import jax
import optax

from bertjax import encoder
from bertjax.errors import UserError

# Decay after the warm-up, by `optim.schedule`: (peak, end, decay_steps, optim_cfg) -> schedule.
SCHEDULES = {
    "linear": lambda peak, end, steps, _: optax.linear_schedule(peak, end, steps),  # BERT's
    "polynomial": lambda peak, end, steps, cfg: optax.polynomial_schedule(
        peak, end, float(cfg.power), steps
    ),
    "cosine": lambda peak, end, steps, _: optax.cosine_decay_schedule(
        peak, steps, alpha=end / peak if peak else 0.0
    ),
}


def learning_rate_schedule(optim_cfg, total_steps: int) -> optax.Schedule:
    """Linear warm-up from 0 to `peak_lr` over `warmup_steps`, then decay to `end_lr` at
    `total_steps` by one of SCHEDULES ("linear", BERT's default; "polynomial" with `power`;
    "cosine")."""
    peak, end = float(optim_cfg.peak_lr), float(optim_cfg.end_lr)
    warmup = int(optim_cfg.warmup_steps)
    if optim_cfg.schedule not in SCHEDULES:
        raise UserError(
            f"optim.schedule={optim_cfg.schedule!r}: expected one of {', '.join(SCHEDULES)}"
        )
    decay = SCHEDULES[optim_cfg.schedule](peak, end, max(total_steps - warmup, 1), optim_cfg)
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


# google-research/bert's `exclude_from_weight_decay`: a parameter whose path contains one of
# these strings is neither decayed nor (LAMB) layer-adapted. This matches LayerNorm scales
# and biases (`.../LayerNorm/scale`, `.../output_LayerNorm/bias`), every Dense bias and the
# MLM output bias (`mlm_bias`).
EXCLUDE_FROM_WEIGHT_DECAY = ("LayerNorm", "layer_norm", "bias")


def param_path_name(path) -> str:
    """`bert/layer_0/attention/query/kernel` for a jax key path."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def weight_decay_mask(params):
    """A pytree of bools like `params`: True where weight decay applies (False for LayerNorm
    parameters and biases, matched by name as in the original BERT)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: not any(s in param_path_name(path) for s in EXCLUDE_FROM_WEIGHT_DECAY),
        params,
    )


def _adamw(schedule, b1, b2, eps, weight_decay):
    # Decoupled weight decay, scaled by the learning rate as in BERT's AdamWeightDecay.
    return optax.adamw(
        schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=weight_decay_mask
    )


def scale_by_trust_ratio_per_layer() -> optax.GradientTransformation:
    """optax.scale_by_trust_ratio, with one ratio per layer for the stacked layers of a
    `model.scan_layers` model ([layers, ...] arrays hold one parameter of each layer), so
    that LAMB adapts exactly as it does for the same model unrolled."""
    per_leaf = optax.scale_by_trust_ratio()

    def scale(update, param):
        return per_leaf.update(update, None, param)[0]

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("the trust ratio needs the parameters: pass them to update")
        updates = jax.tree_util.tree_map_with_path(
            lambda path, u, p: (
                jax.vmap(scale)(u, p) if encoder.is_stacked_path(path) else scale(u, p)
            ),
            updates,
            params,
        )
        return updates, state

    return optax.GradientTransformation(optax.init_empty_state, update_fn)


def _lamb(schedule, b1, b2, eps, weight_decay):
    # optax.lamb applies the trust ratio to every parameter; BERT's LAMB (and NVIDIA's)
    # excludes LayerNorm parameters and biases from layer adaptation as from weight decay.
    return optax.chain(
        optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
        optax.add_decayed_weights(weight_decay, mask=weight_decay_mask),
        optax.masked(scale_by_trust_ratio_per_layer(), weight_decay_mask),
        optax.scale_by_learning_rate(schedule),
    )


# `optim.name` -> (schedule, b1, b2, eps, weight_decay) -> GradientTransformation.
OPTIMIZERS = {"adamw": _adamw, "lamb": _lamb}


def make_optimizer(
    optim_cfg, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optimizer of `optim_cfg` with global-norm clipping in front, and its schedule."""
    if optim_cfg.name not in OPTIMIZERS:
        raise UserError(f"optim.name={optim_cfg.name!r}: expected one of {', '.join(OPTIMIZERS)}")
    schedule = learning_rate_schedule(optim_cfg, total_steps)
    tx = OPTIMIZERS[optim_cfg.name](
        schedule,
        float(optim_cfg.b1),
        float(optim_cfg.b2),
        float(optim_cfg.eps),
        float(optim_cfg.weight_decay),
    )
    if optim_cfg.clip_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(float(optim_cfg.clip_norm)), tx)
    return tx, schedule
