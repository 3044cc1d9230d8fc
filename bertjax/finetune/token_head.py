"""BERT with a classifier on every token's hidden state, named as HuggingFace's
BertForTokenClassification: the NER head. HF's has no pooler (add_pooling_layer=False); as for
the span head, the export leaves ours out and the import fills it with zeros unless the
tensors hold it (it never reaches the token logits)."""

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp
import optax

from bertjax import hf
from bertjax import model as model_lib
from bertjax.finetune import heads
from bertjax.layers import dense
from bertjax.model_config import BertConfig
from bertjax.train.head import Head

ARCHITECTURE = "BertForTokenClassification"
MEANS = {"loss": "loss_sum", "token_accuracy": "correct_sum"}  # metric -> the sum it averages


class BertForTokenClassification(nn.Module):
    """BertModel (`bert`, shared with pretraining), dropout, then `classifier`: `num_labels`
    logits for every token from the last hidden state."""

    cfg: BertConfig
    num_labels: int

    @nn.compact
    def __call__(self, input_ids, segment_ids, input_mask, deterministic: bool = True):
        """Inputs [B, L] int; returns float32 logits [B, L, num_labels]."""
        cfg = self.cfg
        hidden_BxLxE, _ = model_lib.BertModel(cfg, name="bert")(
            input_ids, segment_ids, input_mask, deterministic
        )
        hidden_BxLxE = nn.Dropout(cfg.hidden_dropout_prob)(
            hidden_BxLxE, deterministic=deterministic
        )
        logits_BxLxK = dense(cfg, self.num_labels, ("embed", None), "classifier")(hidden_BxLxE)
        return logits_BxLxK.astype(jnp.float32)


def hf_spec(labels: Sequence[str]) -> hf.HeadSpec:
    """transformers' BertForTokenClassification over `labels` (a label's id is its position):
    config.json names them in id2label / label2id, as run_ner writes them."""
    labels = tuple(labels)
    return hf.HeadSpec(
        ARCHITECTURE,
        functools.partial(BertForTokenClassification, num_labels=len(labels)),
        weights=tuple(hf.dense_weights("classifier", ("classifier",))),
        pooler=False,
        config_json={
            "num_labels": len(labels),
            "id2label": {str(i): label for i, label in enumerate(labels)},
            "label2id": {label: i for i, label in enumerate(labels)},
        },
    )


def head(cfg: BertConfig, labels: Sequence[str]) -> Head:
    """BertForTokenClassification over `labels`, its loss the mean over the global batch's
    labelled tokens."""
    return heads.finetuning_head(
        BertForTokenClassification(cfg, len(labels)),
        hf_spec(labels),
        _example_sums,
        MEANS,
        labelled_tokens,
    )


def labelled_tokens(batch) -> jnp.ndarray:
    """The tokens the loss averages over: label_weights on the real rows (a word's first
    piece, in the window that scores it). Summed over the whole global batch, so that the
    micro-batches' `loss_sum`s over it add up to the batch's mean (HF's loss is the mean
    over one batch's labelled tokens: the same for a batch taken whole)."""
    weights_B = batch["weights"].astype(jnp.float32)
    return jnp.sum(batch["label_weights"].astype(jnp.float32) * weights_B[:, None])


def _example_sums(logits_BxLxK, batch) -> dict:
    return token_sums(logits_BxLxK, batch["label_ids"], batch["label_weights"], batch["weights"])


def token_sums(logits_BxLxK, label_ids_BxL, label_weights_BxL, weights_B) -> dict:
    """Sums over the labelled tokens (label_weights times the row's weight): `loss_sum`
    (cross-entropy), `correct_sum` (argmax right) and `weight_sum` (their number)."""
    w_BxL = label_weights_BxL.astype(jnp.float32) * weights_B.astype(jnp.float32)[:, None]
    loss_BxL = optax.softmax_cross_entropy_with_integer_labels(logits_BxLxK, label_ids_BxL)
    correct_BxL = (jnp.argmax(logits_BxLxK, axis=-1) == label_ids_BxL).astype(jnp.float32)
    return {
        "loss_sum": jnp.sum(loss_BxL * w_BxL),
        "correct_sum": jnp.sum(correct_BxL * w_BxL),
        "weight_sum": jnp.sum(w_BxL),
    }
