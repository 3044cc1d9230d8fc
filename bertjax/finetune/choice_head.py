"""BERT scoring each of an example's choices, named as HuggingFace's BertForMultipleChoice: the
SWAG head. The [B, C, L] choices run as B x C rows; each row's pooled output, after dropout,
gives one score through `classifier`; the C scores of an example are its logits (a softmax
over the choices)."""

import flax.linen as nn
import jax.numpy as jnp

from bertjax import hf
from bertjax import model as model_lib
from bertjax.finetune import heads
from bertjax.finetune.classifier_head import classification_sums
from bertjax.layers import dense
from bertjax.model_config import BertConfig
from bertjax.train.head import Head

ARCHITECTURE = "BertForMultipleChoice"
MEANS = {"loss": "loss_sum", "accuracy": "correct_sum"}  # metric -> the sum it averages
INIT_CHOICES = 4  # choices of the batch that initialises the module (any count runs)


class BertForMultipleChoice(nn.Module):
    """BertModel (`bert`, shared with pretraining) over every choice, dropout on the pooled
    output, then `classifier`: one score per choice."""

    cfg: BertConfig
    # Only the pooled [CLS] is read: the last layer runs there alone (BertModel's cls_only).
    cls_only: bool = True

    @nn.compact
    def __call__(self, input_ids, segment_ids, input_mask, deterministic: bool = True):
        """Inputs [B, C, L] int; returns float32 logits [B, C]."""
        cfg = self.cfg
        batch, choices, length = input_ids.shape
        flat = [x.reshape(batch * choices, length) for x in (input_ids, segment_ids, input_mask)]
        _, pooled_RxE = model_lib.BertModel(cfg, name="bert")(
            *flat, deterministic, cls_only=self.cls_only
        )
        pooled_RxE = nn.Dropout(cfg.hidden_dropout_prob)(pooled_RxE, deterministic=deterministic)
        scores_Rx1 = dense(cfg, 1, ("embed", None), "classifier")(pooled_RxE)
        return scores_Rx1.astype(jnp.float32).reshape(batch, choices)


HF_SPEC = hf.HeadSpec(
    ARCHITECTURE,
    BertForMultipleChoice,
    weights=tuple(hf.dense_weights("classifier", ("classifier",))),
    input_shape=(1, INIT_CHOICES, 8),
)


def head(cfg: BertConfig) -> Head:
    """BertForMultipleChoice with the cross-entropy of the softmax over each example's
    choices (the mean over the global batch's real examples)."""
    return heads.finetuning_head(BertForMultipleChoice(cfg), HF_SPEC, _example_sums, MEANS)


def _example_sums(logits_BxC, batch) -> dict:
    return classification_sums(logits_BxC, batch["labels"], batch["weights"], regression=False)
