"""What every fine-tuning head shares: the forward pass on a batch's inputs, the predict step,
and an objective averaging per-example sums over the rows of the global batch that are real
(`weights` 1; rows of weight 0 only pad a batch)."""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from bertjax import hf
from bertjax.train import losses
from bertjax.train.head import Head, Objective


def forward(model, params, batch: dict, dropout_rng=None, deterministic: bool = True):
    """The head model's outputs on the batch's input_ids, segment_ids and input_mask."""
    return model.apply(
        {"params": params},
        batch["input_ids"],
        batch["segment_ids"],
        batch["input_mask"],
        deterministic=deterministic,
        rngs=None if deterministic else {"dropout": dropout_rng},
    )


def predict_step(params, batch: dict, *, model):
    """The head model's outputs on one batch, dropout off."""
    return forward(model, params, batch)


def real_tokens(batch) -> jax.Array:
    """The non-pad tokens of the batch's real rows (rows of weight 0 only pad the batch)."""
    mask_BxL = batch["input_mask"].astype(jnp.float32)
    weights = batch["weights"].astype(jnp.float32)
    return jnp.sum(mask_BxL * weights.reshape(weights.shape + (1,) * (mask_BxL.ndim - 1)))


def real_rows(batch) -> jax.Array:
    """The batch's real rows (the sum of `weights`; rows of weight 0 only pad the batch)."""
    return jnp.sum(batch["weights"].astype(jnp.float32))


def example_objective(
    example_sums: Callable[[object, dict], dict],
    means: dict[str, str],
    count: Callable[[dict], jax.Array] = real_rows,
) -> Objective:
    """A fine-tuning loss for `step.train_step`: `example_sums(outputs, batch)` gives weighted
    sums (`loss_sum`, `weight_sum`, ...) over what the loss averages, `count(batch)` how many
    of those the global batch holds (by default its real rows); the loss is `loss_sum` over
    `count` of the whole global batch (so micro-batches add up exactly); the metrics are
    `means` (metric -> sum key) over `weight_sum`, and the real tokens the step read."""

    def sums(model, params, batch, dropout_rng, deterministic):
        outputs = forward(model, params, batch, dropout_rng, deterministic)
        return example_sums(outputs, batch) | {"real_tokens": real_tokens(batch)}

    def denominators(batch):
        # At least 1: a batch of padding alone (never built, but cheap to allow) gives 0, not NaN.
        return jnp.maximum(count(batch), 1.0)

    def loss(sums, denominator):
        return sums["loss_sum"] / denominator

    return Objective(sums, denominators, loss, lambda s: losses.weighted_means(s, means))


def finetuning_head(
    model,
    spec: hf.HeadSpec,
    example_sums,
    means: dict[str, str],
    count: Callable[[dict], jax.Array] = real_rows,
) -> Head:
    """A Head of `model` with `example_objective(example_sums, means, count)` and
    `predict_step`."""
    return Head(model, example_objective(example_sums, means, count), predict_step, spec)


def export_folder(out, params, model_cfg, tokenizer, spec: hf.HeadSpec) -> None:
    """`out`: a folder transformers' `spec.architecture` (and, for WordPiece, BertTokenizer)
    loads, built beside it and moved into place when complete (outputs.replacing_folder); `out`
    is the run's own WORKDIR/hf_model."""
    from bertjax import outputs

    with outputs.replacing_folder(out) as staging:
        hf.write_folder(params, model_cfg, staging, spec=spec)
        tokenizer.save(staging)
