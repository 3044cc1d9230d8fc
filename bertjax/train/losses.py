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


def mlm_sums(
    mlm_logits_BxPxV: jax.Array, masked_lm_ids_BxP: jax.Array, masked_lm_weights_BxP: jax.Array
) -> dict[str, jax.Array]:
    """Weighted sums over the masked positions: `mlm_loss_sum`, `mlm_correct_sum`,
    `mlm_weight_sum`."""
    logits = mlm_logits_BxPxV.astype(jnp.float32)
    weights = masked_lm_weights_BxP.astype(jnp.float32)
    ce_BxP = optax.softmax_cross_entropy_with_integer_labels(logits, masked_lm_ids_BxP)
    correct_BxP = (jnp.argmax(logits, axis=-1) == masked_lm_ids_BxP).astype(jnp.float32)
    return {
        "mlm_loss_sum": jnp.sum(ce_BxP * weights),
        "mlm_correct_sum": jnp.sum(correct_BxP * weights),
        "mlm_weight_sum": jnp.sum(weights),
    }


def nsp_sums(
    nsp_logits_Bx2: jax.Array,
    next_sentence_labels_B: jax.Array,
    next_sentence_weights_B: jax.Array | None = None,
) -> dict[str, jax.Array]:
    """Sums over the examples: `nsp_loss_sum`, `nsp_correct_sum`, `nsp_weight_sum`.

    `next_sentence_weights_B` (evaluation) is 0 on rows that only pad the last batch.
    """
    logits = nsp_logits_Bx2.astype(jnp.float32)
    if next_sentence_weights_B is None:
        weights = jnp.ones(logits.shape[:1], jnp.float32)
    else:
        weights = next_sentence_weights_B.astype(jnp.float32)
    ce_B = optax.softmax_cross_entropy_with_integer_labels(logits, next_sentence_labels_B)
    correct_B = (jnp.argmax(logits, axis=-1) == next_sentence_labels_B).astype(jnp.float32)
    return {
        "nsp_loss_sum": jnp.sum(ce_B * weights),
        "nsp_correct_sum": jnp.sum(correct_B * weights),
        "nsp_weight_sum": jnp.sum(weights),
    }


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
