"""Fine-tuning heads: what a head model gives the shared step (`Head`), and BERT with a
classifier (or a regressor) on the pooled output, its loss and its objective."""

import functools
from collections.abc import Callable
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from bertjax import model as model_lib
from bertjax.train import step as step_lib


class Head(NamedTuple):
    """A fine-tuning model (BertModel `bert` + a head) and what the shared train step and
    prediction need of it; a task kind builds one (kind_glue.py, kind_squad.py)."""

    model: nn.Module  # apply(params, input_ids, segment_ids, input_mask, deterministic)
    init_params: Callable  # (model_cfg, rng) -> boxed parameters (logical axis names kept)
    objective: step_lib.Objective  # the loss of step.train_step
    predict_step: Callable  # (params, batch, *, model) -> outputs, each [B, ...]


def classifier_head(cfg: model_lib.BertConfig, num_labels: int, regression: bool) -> Head:
    """BertForSequenceClassification with `num_labels` outputs (1 for a regression)."""
    return Head(
        BertForSequenceClassification(cfg, num_labels),
        functools.partial(init_params, num_labels=num_labels),
        objective(regression),
        predict_step,
    )


class BertForSequenceClassification(nn.Module):
    """BertModel (`bert`, shared with pretraining), dropout, then `classifier` on the pooled
    output: `num_labels` logits, or one score when the task is a regression (STS-B)."""

    cfg: model_lib.BertConfig
    num_labels: int

    @nn.compact
    def __call__(self, input_ids, segment_ids, input_mask, deterministic: bool = True):
        """Inputs [B, L] int; returns float32 logits [B, num_labels]."""
        cfg = self.cfg
        _, pooled_BxE = model_lib.BertModel(cfg, name="bert")(
            input_ids, segment_ids, input_mask, deterministic
        )
        pooled_BxE = nn.Dropout(cfg.hidden_dropout_prob)(pooled_BxE, deterministic=deterministic)
        # Initialised as google-research/bert's output_weights: normal(0.02), zero bias.
        logits_BxC = nn.Dense(
            self.num_labels,
            dtype=cfg.dtype,
            kernel_init=nn.with_logical_partitioning(
                nn.initializers.normal(cfg.initializer_range), ("embed", None)
            ),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (None,)),
            name="classifier",
        )(pooled_BxE)
        return logits_BxC.astype(jnp.float32)


def init_params(cfg: model_lib.BertConfig, rng: jax.Array, *, num_labels: int, seq_len: int = 8):
    """The boxed parameter tree (logical axis names kept) of BertForSequenceClassification."""
    ids_BxL = jnp.zeros((1, seq_len), jnp.int32)
    model = BertForSequenceClassification(cfg, num_labels)
    return model.init({"params": rng}, ids_BxL, ids_BxL, ids_BxL + 1)["params"]


def classification_sums(logits_BxC, labels_B, weights_B, regression: bool) -> dict:
    """Sums over the examples, weighted by `weights_B` (0 on rows that only pad a batch):
    `loss_sum` (cross-entropy, or squared error for regression), `correct_sum`
    (classification only) and `weight_sum`."""
    weights_B = weights_B.astype(jnp.float32)
    if regression:
        # Padding rows may hold NaN labels (the test splits): zero them before they meet a 0.
        labels_B = jnp.where(weights_B > 0, labels_B, 0.0)
        loss_B = jnp.square(logits_BxC[:, 0] - labels_B)
        return {"loss_sum": jnp.sum(loss_B * weights_B), "weight_sum": jnp.sum(weights_B)}
    labels_B = jnp.maximum(labels_B, 0)  # -1 marks unlabelled rows; their weight is 0
    loss_B = optax.softmax_cross_entropy_with_integer_labels(logits_BxC, labels_B)
    correct_B = (jnp.argmax(logits_BxC, axis=-1) == labels_B).astype(jnp.float32)
    return {
        "loss_sum": jnp.sum(loss_B * weights_B),
        "correct_sum": jnp.sum(correct_B * weights_B),
        "weight_sum": jnp.sum(weights_B),
    }


def metrics_from_sums(sums: dict) -> dict:
    """loss (mean cross-entropy or squared error) and, for classification, accuracy."""
    denominator = jnp.maximum(sums["weight_sum"], 1.0)
    metrics = {"loss": sums["loss_sum"] / denominator}
    if "correct_sum" in sums:
        metrics["accuracy"] = sums["correct_sum"] / denominator
    if "real_tokens" in sums:  # a train step's count, for StepMetrics' real tokens/s
        metrics["real_tokens"] = sums["real_tokens"]
    return metrics


def real_tokens(batch) -> jax.Array:
    """The non-pad tokens of the batch's real rows (rows of weight 0 only pad the batch)."""
    mask_BxL = batch["input_mask"].astype(jnp.float32)
    return jnp.sum(mask_BxL * batch["weights"].astype(jnp.float32)[:, None])


def _forward(model, params, batch, dropout_rng, deterministic):
    return model.apply(
        {"params": params},
        batch["input_ids"],
        batch["segment_ids"],
        batch["input_mask"],
        deterministic=deterministic,
        rngs=None if deterministic else {"dropout": dropout_rng},
    )


def objective(regression: bool) -> step_lib.Objective:
    """The fine-tuning loss for `step.train_step`: mean cross-entropy (MSE for regression)
    over the rows of the global batch whose `weights` are 1."""

    def sums(model, params, batch, dropout_rng, deterministic):
        logits_BxC = _forward(model, params, batch, dropout_rng, deterministic)
        sums = classification_sums(logits_BxC, batch["labels"], batch["weights"], regression)
        return sums | {"real_tokens": real_tokens(batch)}

    def denominators(batch):
        # At least 1: a batch of padding alone (never built, but cheap to allow) gives 0, not NaN.
        return jnp.maximum(jnp.sum(batch["weights"].astype(jnp.float32)), 1.0)

    def loss(sums, denominator):
        return sums["loss_sum"] / denominator

    return step_lib.Objective(sums, denominators, loss, metrics_from_sums)


def predict_step(params, batch: dict, *, model: nn.Module) -> jax.Array:
    """Logits [B, num_labels] of one batch, dropout off."""
    return _forward(model, params, batch, None, True)
