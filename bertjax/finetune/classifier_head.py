"""BERT with a classifier (or a regressor) on the pooled output, named as HuggingFace's
BertForSequenceClassification: the GLUE head."""

import functools

import flax.linen as nn
import jax.numpy as jnp

from bertjax import hf
from bertjax import model as model_lib
from bertjax.finetune import heads
from bertjax.layers import dense
from bertjax.model_config import BertConfig
from bertjax.train import losses
from bertjax.train.head import Head

MEANS = {"loss": "loss_sum", "accuracy": "correct_sum"}  # metric -> the sum it averages


class BertForSequenceClassification(nn.Module):
    """BertModel (`bert`, shared with pretraining), dropout, then `classifier` on the pooled
    output: `num_labels` logits, or one score when the task is a regression (STS-B)."""

    cfg: BertConfig
    num_labels: int
    # Only the pooled [CLS] is read: the last layer runs there alone (BertModel's cls_only).
    cls_only: bool = True

    @nn.compact
    def __call__(self, input_ids, segment_ids, input_mask, deterministic: bool = True):
        """Inputs [B, L] int; returns float32 logits [B, num_labels]."""
        cfg = self.cfg
        _, pooled_BxE = model_lib.BertModel(cfg, name="bert")(
            input_ids, segment_ids, input_mask, deterministic, cls_only=self.cls_only
        )
        pooled_BxE = nn.Dropout(cfg.hidden_dropout_prob)(pooled_BxE, deterministic=deterministic)
        # google-research/bert's output_weights: normal(initializer_range), zero bias.
        logits_BxC = dense(cfg, self.num_labels, ("embed", None), "classifier")(pooled_BxE)
        return logits_BxC.astype(jnp.float32)


def hf_spec(num_labels: int) -> hf.HeadSpec:
    """transformers' BertForSequenceClassification with `num_labels` outputs."""
    return hf.HeadSpec(
        "BertForSequenceClassification",
        functools.partial(BertForSequenceClassification, num_labels=num_labels),
        weights=tuple(hf.dense_weights("classifier", ("classifier",))),
        config_json={"num_labels": num_labels},
    )


def head(cfg: BertConfig, num_labels: int, regression: bool) -> Head:
    """BertForSequenceClassification with `num_labels` outputs (1 for a regression)."""
    return heads.finetuning_head(
        BertForSequenceClassification(cfg, num_labels),
        hf_spec(num_labels),
        functools.partial(_example_sums, regression=regression),
        MEANS,
    )


def _example_sums(logits_BxC, batch, *, regression: bool) -> dict:
    return classification_sums(logits_BxC, batch["labels"], batch["weights"], regression)


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
    return losses.weighted_ce_sums(logits_BxC, labels_B, weights_B)


def metrics_from_sums(sums: dict) -> dict:
    """loss (mean cross-entropy or squared error) and, for classification, accuracy."""
    return losses.weighted_means(sums, MEANS)
