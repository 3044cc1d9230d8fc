"""BERT with a span head (start/end logits per token), named as HuggingFace's
BertForQuestionAnswering: the SQuAD head. HF's has no pooler (add_pooling_layer=False) while
our BertModel always builds one: the export leaves it out, the import fills it with zeros
unless the tensors hold it (it never reaches the span logits)."""

import flax.linen as nn
import jax.numpy as jnp
import optax

from bertjax import hf
from bertjax import model as model_lib
from bertjax.finetune import heads
from bertjax.layers import dense
from bertjax.model_config import BertConfig
from bertjax.train.head import Head

ARCHITECTURE = "BertForQuestionAnswering"
MEANS = {"loss": "loss_sum", "span_accuracy": "exact_sum"}  # metric -> the sum it averages


class BertForQuestionAnswering(nn.Module):
    """BertModel (`bert`, shared with pretraining) and `qa_outputs`, a dense layer giving two
    logits per token from the last hidden state: where the answer starts and ends."""

    cfg: BertConfig

    @nn.compact
    def __call__(self, input_ids, segment_ids, input_mask, deterministic: bool = True):
        """Inputs [B, L] int; returns float32 (start_logits [B, L], end_logits [B, L])."""
        cfg = self.cfg
        hidden_BxLxE, _ = model_lib.BertModel(cfg, name="bert")(
            input_ids, segment_ids, input_mask, deterministic
        )
        # No dropout before the head, as run_squad.py and HF; initialised as run_squad.py's
        # cls/squad/output_weights (normal(initializer_range), zero bias).
        logits_BxLx2 = dense(cfg, 2, ("embed", None), "qa_outputs")(hidden_BxLxE)
        logits_BxLx2 = logits_BxLx2.astype(jnp.float32)
        return logits_BxLx2[..., 0], logits_BxLx2[..., 1]


HF_SPEC = hf.HeadSpec(
    ARCHITECTURE,
    BertForQuestionAnswering,
    weights=tuple(hf.dense_weights("qa_outputs", ("qa_outputs",))),
    pooler=False,
)


def head(cfg: BertConfig) -> Head:
    """BertForQuestionAnswering with its span objective, for the shared fine-tuning step."""
    return heads.finetuning_head(BertForQuestionAnswering(cfg), HF_SPEC, _example_sums, MEANS)


def _example_sums(outputs, batch) -> dict:
    start_BxL, end_BxL = outputs
    return span_sums(start_BxL, end_BxL, batch)


# The logit padding positions take in the span softmax: exp() of it is 0 in float32.
PADDING_LOGIT = -1e9


def span_sums(start_logits_BxL, end_logits_BxL, batch: dict) -> dict:
    """Sums over the rows, weighted by `weights` (0 on rows that only pad a batch): `loss_sum`
    (per row, the start and end positions' cross-entropies over 2, as run_squad.py's and HF's
    loss, but with the softmax over the row's real tokens: padding is never an answer, and a
    row's loss and gradients are then the same whatever length its batch is padded to, its
    length bucket's or max_seq_len), `exact_sum` (rows whose argmax start and end are both
    right) and `weight_sum`."""
    weights_B = batch["weights"].astype(jnp.float32)
    real_BxL = batch["input_mask"].astype(bool)
    start_logits_BxL = jnp.where(real_BxL, start_logits_BxL, PADDING_LOGIT)
    end_logits_BxL = jnp.where(real_BxL, end_logits_BxL, PADDING_LOGIT)
    start_B, end_B = batch["start_positions"], batch["end_positions"]
    loss_B = (
        optax.softmax_cross_entropy_with_integer_labels(start_logits_BxL, start_B)
        + optax.softmax_cross_entropy_with_integer_labels(end_logits_BxL, end_B)
    ) / 2
    exact_B = (
        (jnp.argmax(start_logits_BxL, -1) == start_B) & (jnp.argmax(end_logits_BxL, -1) == end_B)
    ).astype(jnp.float32)
    return {
        "loss_sum": jnp.sum(loss_B * weights_B),
        "exact_sum": jnp.sum(exact_B * weights_B),
        "weight_sum": jnp.sum(weights_B),
    }
