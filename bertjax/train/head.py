"""What a train step optimises and a model is: `Objective` (a loss built from sums, so that
micro-batches and evaluation batches add up exactly), `Head` (a model with its objective,
predict step and HuggingFace declaration), and BERT's pretraining head (MLM + NSP)."""

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bertjax import hf
from bertjax import model as model_lib
from bertjax.train import losses


@dataclasses.dataclass(frozen=True)
class Objective:
    """What a step optimises, built from sums over a batch's examples (see losses.py), so
    that micro-batches, and evaluation batches, add up exactly to the figures of the whole.

    sums(model, params, batch, dropout_rng, deterministic) -> dict of float32 scalar sums
      (dropout_rng is None when deterministic);
    denominators(batch) -> what the loss divides by, taken over the whole global batch;
    loss(sums, denominators) -> the scalar loss (of one micro-batch's sums);
    metrics(sums) -> dict of metrics (jax arrays or host floats).
    """

    sums: Callable[..., dict]
    denominators: Callable[[dict], Any]
    loss: Callable[[dict, Any], jax.Array]
    metrics: Callable[[dict], dict]


def pretraining_objective(nsp: bool = True) -> Objective:
    """BERT's loss: MLM cross-entropy weighted by `masked_lm_weights` over their sum, plus
    the mean NSP cross-entropy when `nsp`."""

    def sums(model, params, batch, dropout_rng, deterministic):
        return _forward_sums(
            params, batch, dropout_rng, model=model, nsp=nsp, deterministic=deterministic
        )

    def denominators(batch):
        mlm = jnp.sum(batch["masked_lm_weights"]) + losses.MLM_DENOMINATOR_EPS
        return mlm, _sequences(batch)  # NSP: a mean over real sequences (packed rows: [B, K])

    def loss(sums, denominators):
        return losses.loss_from_sums(sums, *denominators)

    def metrics(sums):  # and what the step read: real (non-pad) tokens and sequences
        return losses.metrics_from_sums(sums) | {k: sums[k] for k in ("real_tokens", "sequences")}

    return Objective(sums, denominators, loss, metrics)


def _sequences(batch):
    """The batch's real sequences: the sum of `next_sentence_weights` (packed rows, eval),
    else one per row."""
    weights = batch.get("next_sentence_weights")
    return batch["input_ids"].shape[0] if weights is None else jnp.sum(weights)


def _forward_sums(params, batch, dropout_rng, *, model, nsp: bool, deterministic: bool):
    out = model.apply(
        {"params": params},
        batch["input_ids"],
        batch["segment_ids"],
        batch["input_mask"],
        batch["masked_lm_positions"],
        deterministic=deterministic,
        attn_segment_ids=batch.get("attn_segment_ids"),  # packed rows; else one per row
        position_ids=batch.get("position_ids"),  # packed rows: 0 at each sequence's start
        nsp_positions=batch.get("next_sentence_positions"),  # packed rows: each [CLS]
        rngs=None if deterministic else {"dropout": dropout_rng},
    )
    sums = losses.pretraining_sums(out.mlm_logits, out.nsp_logits, batch, nsp)
    sums["real_tokens"] = jnp.sum(batch["input_mask"], dtype=jnp.float32)
    sums["sequences"] = jnp.asarray(_sequences(batch), jnp.float32)
    return sums


@dataclasses.dataclass(frozen=True)
class Head:
    """A model (BertModel `bert` + a head) and what the shared train step, prediction and the
    HuggingFace edge need of it. Pretraining's is `pretraining_head`; fine-tuning task kinds
    build theirs (finetune/classifier_head.py, span_head.py)."""

    model: nn.Module  # apply({"params": p}, input_ids, segment_ids, input_mask, ...)
    objective: Objective  # the loss of step.train_step
    predict_step: Callable  # (params, batch, *, model) -> outputs, each [B, ...]
    spec: hf.HeadSpec  # transformers' class and the parameters' HF names

    def init_params(self, model_cfg, rng: jax.Array):
        """The boxed parameters (logical axis names kept) of this head's model built with
        `model_cfg` (another layer layout, say, than the model's own)."""
        return model_lib.init_params(
            model_cfg, rng, model=self.model.clone(cfg=model_cfg), input_shape=self.spec.input_shape
        )


def pretraining_head(model_cfg, nsp: bool = True) -> Head:
    """BertForPreTraining with BERT's loss (MLM, plus NSP when `nsp`)."""
    return Head(
        model_lib.BertForPreTraining(model_cfg),
        pretraining_objective(nsp),
        _pretraining_outputs,
        hf.PRETRAINING,
    )


def _pretraining_outputs(params, batch: dict, *, model: nn.Module):
    return model.apply(
        {"params": params},
        batch["input_ids"],
        batch["segment_ids"],
        batch["input_mask"],
        batch.get("masked_lm_positions"),
        deterministic=True,
    )
