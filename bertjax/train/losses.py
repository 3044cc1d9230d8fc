"""MLM and NSP losses and metrics, as the original BERT computes them.

The losses are built from sums (loss x weight, correct x weight, weight) so that a batch
split into micro-batches, or an evaluation split into batches, adds up to exactly the
figures of the whole: divide once at the end, never average averages.
"""

import jax
import jax.numpy as jnp
import optax

# google-research/bert adds 1e-5 to the weight sum so that a batch without masked tokens
# gives a zero loss instead of 0/0.
MLM_DENOMINATOR_EPS = 1e-5


def weighted_ce_sums(
    logits_xC: jax.Array, labels_x: jax.Array, weights_x: jax.Array
) -> dict[str, jax.Array]:
    """Cross-entropy and argmax hits of `logits_xC` ([..., C], computed in float32) against
    integer `labels_x` ([...]), weighted by `weights_x` and summed: `loss_sum`,
    `correct_sum`, `weight_sum`."""
    logits = logits_xC.astype(jnp.float32)
    weights = weights_x.astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels_x)
    correct = (jnp.argmax(logits, axis=-1) == labels_x).astype(jnp.float32)
    return {
        "loss_sum": jnp.sum(ce * weights),
        "correct_sum": jnp.sum(correct * weights),
        "weight_sum": jnp.sum(weights),
    }


def mlm_sums(
    mlm_logits_BxPxV: jax.Array, masked_lm_ids_BxP: jax.Array, masked_lm_weights_BxP: jax.Array
) -> dict[str, jax.Array]:
    """Weighted sums over the masked positions: `mlm_loss_sum`, `mlm_correct_sum`,
    `mlm_weight_sum`."""
    sums = weighted_ce_sums(mlm_logits_BxPxV, masked_lm_ids_BxP, masked_lm_weights_BxP)
    return {f"mlm_{k}": v for k, v in sums.items()}


def nsp_sums(
    nsp_logits_Bx2: jax.Array,
    next_sentence_labels_B: jax.Array,
    next_sentence_weights_B: jax.Array | None = None,
) -> dict[str, jax.Array]:
    """Sums over the examples: `nsp_loss_sum`, `nsp_correct_sum`, `nsp_weight_sum`.

    `next_sentence_weights_B` (evaluation) is 0 on rows that only pad the last batch.
    """
    if next_sentence_weights_B is None:
        next_sentence_weights_B = jnp.ones(nsp_logits_Bx2.shape[:1], jnp.float32)
    sums = weighted_ce_sums(nsp_logits_Bx2, next_sentence_labels_B, next_sentence_weights_B)
    return {f"nsp_{k}": v for k, v in sums.items()}


def pretraining_sums(mlm_logits_BxPxV, nsp_logits_Bx2, batch: dict, nsp: bool = True) -> dict:
    """MLM sums, plus NSP sums when `nsp`, for one batch with the original BERT keys."""
    sums = mlm_sums(mlm_logits_BxPxV, batch["masked_lm_ids"], batch["masked_lm_weights"])
    if nsp:
        sums |= nsp_sums(
            nsp_logits_Bx2, batch["next_sentence_labels"], batch.get("next_sentence_weights")
        )
    return sums


def loss_from_sums(sums: dict, mlm_denominator, nsp_denominator=None) -> jax.Array:
    """MLM loss (weighted mean over masked tokens) plus the mean NSP loss when present.

    The denominators are passed separately so that a micro-batch can be divided by the
    weight sum of the whole batch it belongs to.
    """
    loss = sums["mlm_loss_sum"] / mlm_denominator
    if "nsp_loss_sum" in sums:
        loss = loss + sums["nsp_loss_sum"] / nsp_denominator
    return loss


def metrics_from_sums(sums: dict) -> dict:
    """loss, mlm_loss, mlm_accuracy (and nsp_loss, nsp_accuracy) from accumulated sums.

    Works on jax arrays and on plain floats (host-side accumulation over an eval split).
    """
    mlm_denominator = sums["mlm_weight_sum"] + MLM_DENOMINATOR_EPS
    metrics = {
        "mlm_loss": sums["mlm_loss_sum"] / mlm_denominator,
        "mlm_accuracy": sums["mlm_correct_sum"] / mlm_denominator,
    }
    loss = metrics["mlm_loss"]
    if "nsp_loss_sum" in sums:
        nsp_denominator = sums["nsp_weight_sum"]
        metrics["nsp_loss"] = sums["nsp_loss_sum"] / nsp_denominator
        metrics["nsp_accuracy"] = sums["nsp_correct_sum"] / nsp_denominator
        loss = loss + metrics["nsp_loss"]
    return {"loss": loss, **metrics}


def weighted_means(sums: dict, means: dict[str, str]) -> dict:
    """Fine-tuning metrics from sums: metric -> sums[key] / weight_sum (at least 1) for each
    (metric, key) of `means` present in `sums`; a train step's `real_tokens` passes through
    (StepMetrics' real tokens/s)."""
    denominator = jnp.maximum(sums["weight_sum"], 1.0)
    metrics = {name: sums[key] / denominator for name, key in means.items() if key in sums}
    if "real_tokens" in sums:
        metrics["real_tokens"] = sums["real_tokens"]
    return metrics
