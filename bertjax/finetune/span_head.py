"""BERT with a span head (start/end logits per token), named as HF's BertForQuestionAnswering.

The parameter tree is `{"bert": <BertModel>, "qa_outputs": {kernel [H, 2], bias [2]}}`; the
HF <-> ours conversion reuses hf.py's weight table and converters for the encoder. HF's
BertForQuestionAnswering has no pooler (add_pooling_layer=False) while our BertModel always
builds one: exporting leaves it out, importing fills it with zeros (it never reaches the span
logits) unless the tensors carry one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from bertjax import encoder, hf
from bertjax import model as model_lib
from bertjax.finetune import heads
from bertjax.train import step as step_lib

ARCHITECTURE = "BertForQuestionAnswering"
_POOLER_PREFIX = "bert.pooler."


class BertForQuestionAnswering(nn.Module):
    """BertModel (`bert`, shared with pretraining) and `qa_outputs`, a dense layer giving two
    logits per token from the last hidden state: where the answer starts and ends."""

    cfg: model_lib.BertConfig

    @nn.compact
    def __call__(self, input_ids, segment_ids, input_mask, deterministic: bool = True):
        """Inputs [B, L] int; returns float32 (start_logits [B, L], end_logits [B, L])."""
        cfg = self.cfg
        hidden_BxLxE, _ = model_lib.BertModel(cfg, name="bert")(
            input_ids, segment_ids, input_mask, deterministic
        )
        # No dropout before the head, as run_squad.py and HF.
        logits_BxLx2 = qa_outputs(cfg, name="qa_outputs")(hidden_BxLxE).astype(jnp.float32)
        return logits_BxLx2[..., 0], logits_BxLx2[..., 1]


def qa_outputs(cfg: model_lib.BertConfig, name: str | None = None) -> nn.Dense:
    """The head: hidden [.., H] -> [.., 2], initialised as run_squad.py's
    cls/squad/output_weights (normal(initializer_range), zero bias)."""
    return nn.Dense(
        2,
        dtype=cfg.dtype,
        kernel_init=nn.with_logical_partitioning(
            nn.initializers.normal(cfg.initializer_range), ("embed", None)
        ),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (None,)),
        name=name,
    )


def init_params(cfg: model_lib.BertConfig, rng: jax.Array, seq_len: int = 8):
    """The boxed parameter tree (logical axis names kept) of BertForQuestionAnswering."""
    ids_BxL = jnp.zeros((1, seq_len), jnp.int32)
    model = BertForQuestionAnswering(cfg)
    return model.init({"params": rng}, ids_BxL, ids_BxL, ids_BxL + 1)["params"]


def span_loss(start_logits_BxL, end_logits_BxL, start_positions_B, end_positions_B,
              weights_B=None):
    """(cross-entropy of the start + of the end position) / 2, averaged over the rows whose
    weight is 1 (run_squad.py's and HF's loss; weights drop rows that only pad a batch)."""
    start_B = optax.softmax_cross_entropy_with_integer_labels(start_logits_BxL, start_positions_B)
    end_B = optax.softmax_cross_entropy_with_integer_labels(end_logits_BxL, end_positions_B)
    if weights_B is None:
        weights_B = jnp.ones_like(start_B)
    weights_B = weights_B.astype(jnp.float32)
    return jnp.sum((start_B + end_B) / 2 * weights_B) / jnp.maximum(jnp.sum(weights_B), 1.0)


def span_sums(start_logits_BxL, end_logits_BxL, batch: dict) -> dict:
    """Sums over the rows, weighted by `weights` (0 on rows that only pad a batch): `loss_sum`
    (span_loss's per-row (start + end cross-entropy) / 2), `exact_sum` (rows whose argmax start
    and end are both right) and `weight_sum`."""
    weights_B = batch["weights"].astype(jnp.float32)
    start_B, end_B = batch["start_positions"], batch["end_positions"]
    loss_B = (optax.softmax_cross_entropy_with_integer_labels(start_logits_BxL, start_B)
              + optax.softmax_cross_entropy_with_integer_labels(end_logits_BxL, end_B)) / 2
    exact_B = ((jnp.argmax(start_logits_BxL, -1) == start_B)
               & (jnp.argmax(end_logits_BxL, -1) == end_B)).astype(jnp.float32)
    return {"loss_sum": jnp.sum(loss_B * weights_B), "exact_sum": jnp.sum(exact_B * weights_B),
            "weight_sum": jnp.sum(weights_B)}


def _metrics_from_sums(sums: dict) -> dict:
    denominator = jnp.maximum(sums["weight_sum"], 1.0)
    metrics = {"loss": sums["loss_sum"] / denominator,
               "span_accuracy": sums["exact_sum"] / denominator}
    if "real_tokens" in sums:  # a train step's count, for StepMetrics' real tokens/s
        metrics["real_tokens"] = sums["real_tokens"]
    return metrics


def predict_step(params, batch: dict, *, model: nn.Module):
    """(start_logits [B, L], end_logits [B, L]) of one batch, dropout off."""
    return model.apply({"params": params}, batch["input_ids"], batch["segment_ids"],
                       batch["input_mask"], deterministic=True)


def objective() -> step_lib.Objective:
    """span_loss for `step.train_step`, over the rows of the global batch whose `weights`
    are 1 (the denominator is taken over the whole batch, so micro-batches add up)."""

    def sums(model, params, batch, dropout_rng, deterministic):
        start_BxL, end_BxL = model.apply(
            {"params": params}, batch["input_ids"], batch["segment_ids"], batch["input_mask"],
            deterministic=deterministic, rngs=None if deterministic else {"dropout": dropout_rng})
        return span_sums(start_BxL, end_BxL, batch) | {"real_tokens": heads.real_tokens(batch)}

    def denominators(batch):
        return jnp.maximum(jnp.sum(batch["weights"].astype(jnp.float32)), 1.0)

    def loss(sums, denominator):
        return sums["loss_sum"] / denominator

    return step_lib.Objective(sums, denominators, loss, _metrics_from_sums)


def head(cfg: model_lib.BertConfig) -> heads.Head:
    """BertForQuestionAnswering with its span objective, for the shared fine-tuning step."""
    return heads.Head(BertForQuestionAnswering(cfg), init_params, objective(), predict_step)


# --- HuggingFace names ---------------------------------------------------------------------


def weight_table(cfg: model_lib.BertConfig) -> list:
    """Every tensor of HF's BertForQuestionAnswering and where it lives in our tree: the
    encoder rows of hf.weight_table (no pooler, no pretraining heads) and qa_outputs."""
    encoder = [w for w in hf.weight_table(cfg)
               if not w.head and not w.hf_name.startswith(_POOLER_PREFIX)]
    return encoder + hf._dense("qa_outputs", ("qa_outputs",), head="qa")


def _pooler_table(cfg: model_lib.BertConfig) -> list:
    return [w for w in hf.weight_table(cfg) if w.hf_name.startswith(_POOLER_PREFIX)]


def params_to_hf(params, cfg: model_lib.BertConfig) -> dict[str, np.ndarray]:
    """HF BertForQuestionAnswering tensors of our (boxed or unboxed) parameters, either layout."""
    params = encoder.unstack_layers(jax.device_get(nn.meta.unbox(params)))
    return {w.hf_name: hf._to_hf(np.asarray(hf._get(params, w.path), np.float32), w)
            for w in weight_table(cfg)}  # fmt: skip


def params_from_hf(tensors: dict[str, np.ndarray], cfg: model_lib.BertConfig,
                   source: str = "checkpoint"):
    """Our unboxed parameters from HF BertForQuestionAnswering tensors, in `cfg`'s layout; every
    weight must be present with the shape `cfg` implies and none may be left over
    (hf.CheckpointError)."""
    layout_cfg, cfg = cfg, dataclasses.replace(cfg, scan_layers=False)  # HF's: layer by layer
    tensors = hf._normalise_names(tensors)
    table = weight_table(cfg)
    missing = [w.hf_name for w in table if w.hf_name not in tensors]
    if missing:
        raise hf.CheckpointError(f"{source} is missing {len(missing)} weight(s) of "
                                 f"{ARCHITECTURE}, e.g. {missing[:5]}")
    pooler = _pooler_table(cfg)
    known = {w.hf_name for w in table + pooler}
    unexpected = sorted(n for n in tensors if n not in known and not n.endswith(hf.BUFFER_SUFFIXES))
    if unexpected:
        raise hf.CheckpointError(f"{source} has {len(unexpected)} weight(s) that are not part "
                                 f"of {ARCHITECTURE} (or of this config), e.g. {unexpected[:5]}")
    shapes = nn.meta.unbox(jax.eval_shape(lambda: init_params(cfg, jax.random.key(0))))
    params: dict = {}
    for w in table + pooler:
        shape = hf._get(shapes, w.path).shape
        if w.hf_name not in tensors:  # the pooler: unused by the span logits
            hf._set(params, w.path, np.zeros(shape, np.float32))
            continue
        tensor = np.asarray(tensors[w.hf_name], np.float32)
        if tensor.shape != hf._hf_shape(shape, w):
            raise hf.CheckpointError(f"weight {w.hf_name!r} has shape {tuple(tensor.shape)}; "
                                     f"the config implies {hf._hf_shape(shape, w)}")
        hf._set(params, w.path, hf._to_ours(tensor, w, shape))
    return encoder.to_layout(params, layout_cfg.scan_layers)


def params_from_encoder(bert_params, cfg: model_lib.BertConfig, rng: jax.Array):
    """Unboxed span-model parameters: the given BertModel parameters (e.g. `params["bert"]` of
    a pretraining checkpoint or of hf.load_pretrained) and a freshly initialised qa_outputs."""
    shapes = nn.meta.unbox(jax.eval_shape(lambda: init_params(cfg, jax.random.key(0))))
    bert_params = encoder.to_layout(nn.meta.unbox(bert_params), cfg.scan_layers)
    want = jax.tree_util.tree_map(lambda x: x.shape, shapes["bert"])
    got = jax.tree_util.tree_map(lambda x: tuple(np.shape(x)), bert_params)
    if want != got:
        raise hf.CheckpointError("the encoder parameters do not match the model config "
                                 "(different layers, sizes or names)")
    # Only the head is initialised: a whole-model init would compile the encoder's init too.
    head = qa_outputs(cfg).init(rng, jnp.zeros((1, cfg.hidden_size), cfg.dtype))["params"]
    return {"bert": bert_params, "qa_outputs": nn.meta.unbox(head)}


def config_to_hf(cfg: model_lib.BertConfig) -> dict:
    """config.json of a BertForQuestionAnswering (hf.config_to_hf with its architecture)."""
    return {**hf.config_to_hf(cfg), "architectures": [ARCHITECTURE]}


def write_folder(params, cfg: model_lib.BertConfig, out_dir, tokenizer_files=()) -> Path:
    """config.json + model.safetensors (+ tokenizer files) that transformers'
    BertForQuestionAnswering.from_pretrained loads with no missing or unexpected keys."""
    from safetensors.numpy import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (hf.WEIGHTS_NAME + ".tmp")  # a killed export leaves no truncated weights file
    save_file(params_to_hf(params, cfg), str(tmp), metadata={"format": "pt"})
    os.replace(tmp, out / hf.WEIGHTS_NAME)
    (out / hf.CONFIG_NAME).write_text(json.dumps(config_to_hf(cfg), indent=2) + "\n")
    for f in tokenizer_files:
        if Path(f).resolve().parent != out.resolve():
            shutil.copy2(f, out / Path(f).name)
    return out


def read_folder(path, **config_overrides):
    """(BertConfig, unboxed parameters) of a HF BertForQuestionAnswering folder."""
    folder = Path(path)
    if not (folder / hf.CONFIG_NAME).is_file():
        raise hf.CheckpointError(f"{folder} has no {hf.CONFIG_NAME}; expected a HuggingFace "
                                 "model folder")
    cfg = hf.config_from_hf(json.loads((folder / hf.CONFIG_NAME).read_text()))
    if config_overrides:
        cfg = dataclasses.replace(cfg, **config_overrides)
    return cfg, params_from_hf(hf._read_safetensors(folder), cfg, source=str(folder))
