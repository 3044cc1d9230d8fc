"""Optimizers (AdamW, LAMB), learning-rate schedules and BERT's weight-decay mask, with optax."""

import jax
import optax

from bertjax.errors import UserError


def learning_rate_schedule(optim_cfg, total_steps: int) -> optax.Schedule:
    """Linear warm-up from 0 to `peak_lr` over `warmup_steps`, then decay to `end_lr` at
    `total_steps`: "linear" (BERT's default), "polynomial" (with `power`) or "cosine"."""
    peak, end = float(optim_cfg.peak_lr), float(optim_cfg.end_lr)
    warmup = int(optim_cfg.warmup_steps)
    decay_steps = max(total_steps - warmup, 1)
    if optim_cfg.schedule == "linear":
        decay = optax.linear_schedule(peak, end, decay_steps)
    elif optim_cfg.schedule == "polynomial":
        decay = optax.polynomial_schedule(peak, end, float(optim_cfg.power), decay_steps)
    elif optim_cfg.schedule == "cosine":
        decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=end / peak if peak else 0.0)
    else:
        raise UserError(
            f"optim.schedule={optim_cfg.schedule!r}: expected linear, polynomial or cosine"
        )
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


def make_optimizer(
    optim_cfg, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optimizer of `optim_cfg` with global-norm clipping in front, and its schedule."""
    schedule = learning_rate_schedule(optim_cfg, total_steps)
    b1, b2, eps = float(optim_cfg.b1), float(optim_cfg.b2), float(optim_cfg.eps)
    weight_decay = float(optim_cfg.weight_decay)
    if optim_cfg.name == "adamw":
        # Decoupled weight decay, scaled by the learning rate as in BERT's AdamWeightDecay.
        tx = optax.adamw(
            schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=weight_decay_mask
        )
    elif optim_cfg.name == "lamb":
        # optax.lamb applies the trust ratio to every parameter; BERT's LAMB (and NVIDIA's)
        # excludes LayerNorm parameters and biases from layer adaptation as from weight decay.
        tx = optax.chain(
            optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
            optax.add_decayed_weights(weight_decay, mask=weight_decay_mask),
            optax.masked(optax.scale_by_trust_ratio(), weight_decay_mask),
            optax.scale_by_learning_rate(schedule),
        )
    else:
        raise UserError(f"optim.name={optim_cfg.name!r}: expected adamw or lamb")
    if optim_cfg.clip_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(float(optim_cfg.clip_norm)), tx)
    return tx, schedule
