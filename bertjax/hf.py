"""HuggingFace folders (config.json + model.safetensors) <-> bertjax parameters.

`load_pretrained` / `save_pretrained` (README.md "The model"); a `HeadSpec` declares a head's
weights and their HuggingFace names. Loading is strict (`params_from_hf`): a missing, unused
or mis-shaped weight is an error; a head absent as a whole gets fresh weights and a warning.
"""

import dataclasses
import functools
import json
import os
import shutil
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bertjax import encoder
from bertjax import model as bert_model
from bertjax.model_config import BertConfig

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
TOKENIZER_FILES = (
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "spiece.model",
    "sentencepiece.bpe.model",
)
# Buffers PyTorch may store beside the parameters; they carry no learned values.
BUFFER_SUFFIXES = ("embeddings.position_ids", "embeddings.token_type_ids")
# HF config fields that change the architecture away from BERT as we build it.
_REQUIRED_HF_VALUES = {
    "position_embedding_type": "absolute",
    "is_decoder": False,
    "add_cross_attention": False,
}


class CheckpointError(ValueError):
    """The folder is not a BERT checkpoint we can load exactly; the message says why."""


@dataclasses.dataclass(frozen=True)
class Weight:
    """One HF tensor and where it lives in our tree. `kernel_in_dims`: ndims of a kernel's input
    side in our layout (HF stores a Linear's weight as [out, in]); 0 for a non-kernel."""

    hf_name: str
    path: tuple[str, ...]
    kernel_in_dims: int = 0
    group: str = ""  # "" = always present; else a group of HeadSpec.optional
    flat: bool = False  # HF stores it 1-D; ours is [heads, kv]


def dense_weights(
    hf: str, path: tuple[str, ...], in_dims: int = 1, group: str = "", flat_bias: bool = False
) -> list[Weight]:
    """The kernel and bias of HF Linear `hf` at our `path` (an nn.Dense or layers.dense)."""
    return [
        Weight(f"{hf}.weight", path + ("kernel",), in_dims, group),
        Weight(f"{hf}.bias", path + ("bias",), 0, group, flat_bias),
    ]


def _layer_norm(hf: str, path: tuple[str, ...], group: str = "") -> list[Weight]:
    return [
        Weight(f"{hf}.weight", path + ("scale",), 0, group),
        Weight(f"{hf}.bias", path + ("bias",), 0, group),
    ]


@dataclasses.dataclass(frozen=True)
class HeadSpec:
    """What a model is at the HuggingFace edge: transformers' class, our Flax module of it, and
    the parameters beyond the encoder with their HF names. Adding a head is declaring one;
    every conversion, check and folder write below works from it."""

    architecture: str  # transformers' class: config.json's "architectures"
    module: Callable[[BertConfig], nn.Module]  # our model of it for a config
    weights: tuple[Weight, ...] = ()  # beyond the encoder and the pooler
    pooler: bool = True  # HF builds BertModel's pooler (False: add_pooling_layer=False)
    # Weight groups that may be absent as a whole from a folder: initialised freshly, with
    # a warning (a BertModel folder read as BertForPreTraining has no heads).
    optional: dict[str, str] = dataclasses.field(default_factory=dict)  # group -> description
    config_json: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # extra keys
    input_shape: tuple[int, ...] = (1, 8)  # a batch shape that initialises the module
    label: str = ""  # how messages name it; default the architecture

    @property
    def name(self) -> str:
        return self.label or self.architecture


PRETRAINING = HeadSpec(
    "BertForPreTraining",
    bert_model.BertForPreTraining,
    weights=(
        *dense_weights("cls.predictions.transform.dense", ("mlm_transform",), group="mlm"),
        *_layer_norm("cls.predictions.transform.LayerNorm", ("mlm_LayerNorm",), group="mlm"),
        Weight("cls.predictions.bias", ("mlm_bias",), 0, "mlm"),
        *dense_weights("cls.seq_relationship", ("nsp",), group="nsp"),
    ),
    optional={"mlm": "masked-LM head (cls.predictions)", "nsp": "NSP head (cls.seq_relationship)"},
    label="BERT",
)
_POOLER = tuple(dense_weights("bert.pooler.dense", ("bert", "pooler")))


class _Encoder(nn.Module):
    """BertModel as the `bert` submodule: the parameters every BERT head model shares."""

    cfg: BertConfig

    @nn.compact
    def __call__(self, input_ids, segment_ids, input_mask, deterministic: bool = True):
        return bert_model.BertModel(self.cfg, name="bert")(
            input_ids, segment_ids, input_mask, deterministic
        )


# The encoder alone (what `read_encoder` reads of any BERT folder): its pooler is read when
# the folder has one, zeros otherwise (as for the heads built without one).
ENCODER = HeadSpec("BertModel", _Encoder, pooler=False, label="the BERT encoder")


def encoder_weights(cfg: BertConfig) -> list[Weight]:
    """The embeddings' and encoder layers' parameters: HF name (with the `bert.` prefix) -> our
    path in the per-layer layout (`encoder.unstack_layers` gives it for a `scan_layers` model)."""
    emb = ("bert", "embeddings")
    table = [
        Weight("bert.embeddings.word_embeddings.weight", emb + ("word_embeddings", "embedding")),
        Weight(
            "bert.embeddings.position_embeddings.weight", emb + ("position_embeddings", "embedding")
        ),
        Weight(
            "bert.embeddings.token_type_embeddings.weight",
            emb + ("token_type_embeddings", "embedding"),
        ),
        *_layer_norm("bert.embeddings.LayerNorm", emb + ("LayerNorm",)),
    ]
    for i in range(cfg.num_hidden_layers):
        hf, ours = f"bert.encoder.layer.{i}", ("bert", f"layer_{i}")
        for proj in ("query", "key", "value"):
            table += dense_weights(
                f"{hf}.attention.self.{proj}", ours + ("attention", proj), flat_bias=True
            )
        table += dense_weights(
            f"{hf}.attention.output.dense", ours + ("attention", "output"), in_dims=2
        )
        table += _layer_norm(
            f"{hf}.attention.output.LayerNorm", ours + ("attention", "output_LayerNorm")
        )
        table += dense_weights(f"{hf}.intermediate.dense", ours + ("intermediate",))
        table += dense_weights(f"{hf}.output.dense", ours + ("output",))
        table += _layer_norm(f"{hf}.output.LayerNorm", ours + ("output_LayerNorm",))
    return table


def weight_table(cfg: BertConfig, spec: HeadSpec = PRETRAINING) -> list[Weight]:
    """Every tensor of HF's `spec.architecture` and where it lives in our (per-layer) tree."""
    return encoder_weights(cfg) + list(_POOLER if spec.pooler else ()) + list(spec.weights)


def _to_ours(tensor: np.ndarray, w: Weight, shape: tuple[int, ...]) -> np.ndarray:
    if w.kernel_in_dims:
        tensor = tensor.T  # [out, in] -> [in, out]
    if tensor.size != int(np.prod(shape)):
        raise CheckpointError(
            f"weight {w.hf_name!r} has {tensor.size} values; the config needs "
            f"shape {shape} ({int(np.prod(shape))} values)"
        )
    return tensor.reshape(shape)


def _to_hf(array: np.ndarray, w: Weight) -> np.ndarray:
    if w.flat:
        return np.ascontiguousarray(array.reshape(-1))
    if not w.kernel_in_dims:
        return np.ascontiguousarray(array)
    in_size = int(np.prod(array.shape[: w.kernel_in_dims]))
    return np.ascontiguousarray(array.reshape(in_size, -1).T)


def _hf_shape(shape: tuple[int, ...], w: Weight) -> tuple[int, ...]:
    if w.flat:
        return (int(np.prod(shape)),)
    if not w.kernel_in_dims:
        return shape
    return (int(np.prod(shape[w.kernel_in_dims :])), int(np.prod(shape[: w.kernel_in_dims])))


# --- config.json ---------------------------------------------------------------------------


def config_from_hf(hf_config: dict[str, Any]) -> BertConfig:
    """BertConfig from a HuggingFace config.json dict; refuses what is not BERT."""
    model_type = hf_config.get("model_type")
    if model_type != "bert":
        raise CheckpointError(f"config.json has model_type {model_type!r}; expected 'bert'")
    for key, required in _REQUIRED_HF_VALUES.items():
        if key in hf_config and hf_config[key] != required:
            raise CheckpointError(
                f"config.json sets {key}={hf_config[key]!r}; bertjax supports "
                f"only {key}={required!r}"
            )
    fields = {f.name for f in dataclasses.fields(BertConfig)}
    # The remaining HF keys (architectures, torch_dtype, pad_token_id, ...) do not change the
    # network's function; ours that HF lacks (compute_dtype, scan_layers, remat_policy, ...)
    # keep their defaults.
    kwargs = {k: v for k, v in hf_config.items() if k in fields}
    try:
        return BertConfig(**kwargs)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"config.json: {e}") from None


def config_to_hf(cfg: BertConfig, spec: HeadSpec = PRETRAINING) -> dict[str, Any]:
    """The config.json dict transformers' `spec.architecture` expects."""
    out = {"architectures": [spec.architecture], "model_type": "bert"}
    for name in (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "hidden_act",
        "hidden_dropout_prob",
        "attention_probs_dropout_prob",
        "max_position_embeddings",
        "type_vocab_size",
        "initializer_range",
        "layer_norm_eps",
    ):
        out[name] = getattr(cfg, name)
    out["position_embedding_type"] = "absolute"
    out["torch_dtype"] = "float32"
    return out | dict(spec.config_json)


# --- reading and writing weights -------------------------------------------------------------


def _read_safetensors(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    if (folder / WEIGHTS_NAME).exists():
        return load_file(str(folder / WEIGHTS_NAME))
    if (folder / WEIGHTS_INDEX_NAME).exists():
        index = json.loads((folder / WEIGHTS_INDEX_NAME).read_text())
        tensors: dict[str, np.ndarray] = {}
        for shard in sorted(set(index["weight_map"].values())):
            tensors.update(load_file(str(folder / shard)))
        return tensors
    found = sorted(p.name for p in folder.iterdir())
    raise CheckpointError(
        f"{folder} has no {WEIGHTS_NAME} (or {WEIGHTS_INDEX_NAME}); found "
        f"{found}. A pytorch_model.bin can be converted by loading it with "
        "transformers and calling save_pretrained(safe_serialization=True)."
    )


def _normalise_names(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Adds the `bert.` prefix of a bare BertModel and maps TF-era LayerNorm gamma/beta names."""
    bare = not any(k.startswith(("bert.", "cls.")) for k in tensors)
    out = {}
    for name, tensor in tensors.items():
        if bare:
            name = "bert." + name
        name = name.replace("LayerNorm.gamma", "LayerNorm.weight")
        name = name.replace("LayerNorm.beta", "LayerNorm.bias")
        out[name] = tensor
    return out


_TIED_DECODER = ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias")


def params_from_hf(
    tensors: dict[str, np.ndarray],
    cfg: BertConfig,
    spec: HeadSpec = PRETRAINING,
    rng: jax.Array | None = None,
    source: str = "checkpoint",
):
    """Our (unboxed) parameters of `spec`'s model from HF tensors, in the layout of `cfg`
    (layers stacked when `cfg.scan_layers`); strict about missing, extra and mis-shaped
    tensors (CheckpointError).

    A group of `spec.optional` that is absent as a whole is freshly initialised from `rng`,
    with a warning; the pooler of a head without one (spec.pooler False) is read when the
    tensors hold it and zeros otherwise (it feeds none of that head's outputs).
    """
    tensors = _normalise_names(tensors)
    layout_cfg, cfg = cfg, dataclasses.replace(cfg, scan_layers=False)  # HF's: layer by layer
    table = weight_table(cfg, spec)
    module = spec.module(cfg)
    shapes = nn.meta.unbox(
        bert_model.abstract_params(cfg, model=module, input_shape=spec.input_shape)
    )
    present = {w.group for w in table if w.group and w.hf_name in tensors}
    missing = [
        w.hf_name for w in table if w.hf_name not in tensors and (not w.group or w.group in present)
    ]
    if missing:
        raise CheckpointError(
            f"{source} is missing {len(missing)} weight(s) of {spec.name}, e.g. {missing[:5]}"
        )
    unused_pooler = () if spec.pooler else _POOLER
    known = {w.hf_name for w in (*table, *unused_pooler)}
    if any(w.group == "mlm" for w in spec.weights):
        known |= set(_TIED_DECODER)  # tied copies, checked below
    unexpected = sorted(n for n in tensors if n not in known and not n.endswith(BUFFER_SUFFIXES))
    if unexpected:
        raise CheckpointError(
            f"{source} has {len(unexpected)} weight(s) that are not part of "
            f"{spec.name} (or of this config), e.g. {unexpected[:5]}"
        )
    params: dict = {}
    for w in (*table, *unused_pooler):
        shape = _get(shapes, w.path).shape
        if w.hf_name not in tensors:
            if w in unused_pooler:
                _set(params, w.path, np.zeros(shape, np.float32))
            continue
        tensor = np.asarray(tensors[w.hf_name], np.float32)
        if tensor.shape != _hf_shape(shape, w):
            raise CheckpointError(
                f"weight {w.hf_name!r} has shape {tuple(tensor.shape)}; config.json implies "
                f"{_hf_shape(shape, w)}"
            )
        _set(params, w.path, _to_ours(tensor, w, shape))
    _check_tied(tensors, params, source)
    absent = sorted(set(spec.optional) - present)
    if absent:
        rng = jax.random.key(0) if rng is None else rng
        fresh = nn.meta.unbox(
            bert_model.init_params(cfg, rng, model=module, input_shape=spec.input_shape)
        )
        for w in table:
            if w.group in absent:
                _set(params, w.path, np.asarray(_get(fresh, w.path)))
        warnings.warn(
            f"{source} has no {' and no '.join(spec.optional[g] for g in absent)}: "
            "initialised freshly (random); train before using its outputs.",
            stacklevel=3,
        )
    return encoder.to_layout(params, layout_cfg.scan_layers)


def _check_tied(tensors, params, source):
    decoder = tensors.get("cls.predictions.decoder.weight")
    if decoder is not None:
        embedding = params["bert"]["embeddings"]["word_embeddings"]["embedding"]
        if decoder.shape != embedding.shape or not np.array_equal(decoder, embedding):
            raise CheckpointError(
                f"{source}: cls.predictions.decoder.weight differs from the word "
                "embeddings; BERT ties them and bertjax cannot load an untied "
                "decoder"
            )
    decoder_bias = tensors.get("cls.predictions.decoder.bias")
    if decoder_bias is not None and "mlm_bias" in params:
        if not np.array_equal(decoder_bias, params["mlm_bias"]):
            raise CheckpointError(
                f"{source}: cls.predictions.decoder.bias differs from "
                "cls.predictions.bias; BERT ties them"
            )


def params_to_hf(params, cfg: BertConfig, spec: HeadSpec = PRETRAINING) -> dict[str, np.ndarray]:
    """HF tensors of `spec.architecture` (BertForPreTraining: the tied decoder left out, as
    transformers saves it) of our (boxed or unboxed) parameters in either layout."""
    params = encoder.unstack_layers(jax.device_get(nn.meta.unbox(params)))
    return {
        w.hf_name: _to_hf(np.asarray(_get(params, w.path), np.float32), w)
        for w in weight_table(cfg, spec)
    }


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def _set(tree, path, value):
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


# --- the public API ----------------------------------------------------------------------


@dataclasses.dataclass
class PretrainedBert:
    """A BertForPreTraining with its weights; call it like the HF model."""

    config: BertConfig
    params: Any
    tokenizer_files: tuple[Path, ...] = ()

    def __call__(self, input_ids, token_type_ids=None, attention_mask=None):
        """Full forward pass; returns PreTrainingOutput with mlm_logits [B, L, V]."""
        input_ids = jnp.asarray(input_ids, jnp.int32)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        return _forward(
            self.config,
            self.params,
            input_ids,
            jnp.asarray(token_type_ids, jnp.int32),
            jnp.asarray(attention_mask, jnp.int32),
        )


@functools.partial(jax.jit, static_argnums=0)
def _forward(cfg, params, input_ids, token_type_ids, attention_mask):
    return bert_model.BertForPreTraining(cfg).apply(
        {"params": params}, input_ids, token_type_ids, attention_mask, deterministic=True
    )


def read_folder(path: str | os.PathLike, spec: HeadSpec = PRETRAINING, **config_overrides):
    """(BertConfig, unboxed parameters, tokenizer files) of a HuggingFace folder holding
    `spec.architecture` (for BertForPreTraining also a BertModel folder: fresh heads).
    `config_overrides` set fields HF does not store, e.g. compute_dtype="bfloat16"."""
    folder = Path(path)
    cfg = _folder_config(folder, config_overrides)
    params = params_from_hf(_read_safetensors(folder), cfg, spec, source=str(folder))
    return cfg, params, _tokenizer_files(folder)


def read_encoder(path: str | os.PathLike, **config_overrides):
    """(BertConfig, {"bert": unboxed parameters}, tokenizer files) of a HuggingFace folder of
    any BERT model (BertForPreTraining, BertModel, a fine-tuned head's): its `bert.` weights,
    checked as strictly as `read_folder` checks them; the heads' weights are left unread."""
    folder = Path(path)
    cfg = _folder_config(folder, config_overrides)
    tensors = {name: tensor for name, tensor in _normalise_names(_read_safetensors(folder)).items()
               if name.startswith("bert.")}  # fmt: skip
    params = params_from_hf(tensors, cfg, ENCODER, source=str(folder))
    return cfg, params, _tokenizer_files(folder)


def _folder_config(folder: Path, config_overrides: dict) -> BertConfig:
    if not (folder / CONFIG_NAME).is_file():
        raise CheckpointError(f"{folder} has no {CONFIG_NAME}; expected a HuggingFace model folder")
    cfg = config_from_hf(json.loads((folder / CONFIG_NAME).read_text()))
    return dataclasses.replace(cfg, **config_overrides) if config_overrides else cfg


def _tokenizer_files(folder: Path) -> tuple[Path, ...]:
    return tuple(folder / n for n in TOKENIZER_FILES if (folder / n).is_file())


def load_pretrained(path: str | os.PathLike, **config_overrides) -> PretrainedBert:
    """Loads a HuggingFace BertForPreTraining or BertModel folder (config.json + safetensors).

    `config_overrides` set fields HF does not store, e.g. compute_dtype="bfloat16".
    """
    cfg, params, tokenizer_files = read_folder(path, **config_overrides)
    return PretrainedBert(cfg, jax.tree_util.tree_map(jnp.asarray, params), tokenizer_files)


def write_folder(
    params,
    cfg: BertConfig,
    out_dir: str | os.PathLike,
    tokenizer_files=(),
    spec: HeadSpec = PRETRAINING,
) -> Path:
    """Writes config.json + model.safetensors (+ tokenizer files) that transformers'
    `spec.architecture` loads with no missing or unexpected keys."""
    from safetensors.numpy import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = params_to_hf(params, cfg, spec)
    # Temp name then rename: a killed export never leaves a truncated model.safetensors.
    save_file(tensors, str(out / (WEIGHTS_NAME + ".tmp")), metadata={"format": "pt"})
    os.replace(out / (WEIGHTS_NAME + ".tmp"), out / WEIGHTS_NAME)
    (out / CONFIG_NAME).write_text(json.dumps(config_to_hf(cfg, spec), indent=2) + "\n")
    for f in tokenizer_files:
        if Path(f).resolve().parent != out.resolve():
            shutil.copy2(f, out / Path(f).name)
    return out


def save_pretrained(model: PretrainedBert, out_dir: str | os.PathLike) -> Path:
    """Writes `model` as a HuggingFace BertForPreTraining folder."""
    return write_folder(model.params, model.config, out_dir, model.tokenizer_files)
