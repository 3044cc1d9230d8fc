"""BertConfig: BERT's hyperparameters (HuggingFace's field names) and how we compute them, the
size presets, and the named choices every other module validates against. Pure Python: the
bottom of the model, imported by attention.py, encoder.py, model.py and the config checks."""

import dataclasses
from collections.abc import Mapping
from typing import Any

PRESETS: dict[str, dict[str, int]] = {
    # name: (layers, hidden, heads), intermediate = 4 x hidden as in Turc et al. 2019 / BERT.
    "tiny": dict(num_hidden_layers=2, hidden_size=128, num_attention_heads=2),
    "mini": dict(num_hidden_layers=4, hidden_size=256, num_attention_heads=4),
    # MiniLM-L6-H384 (Wang et al. 2020), the encoder of sentence-transformers' all-MiniLM-L6-v2.
    "minilm": dict(num_hidden_layers=6, hidden_size=384, num_attention_heads=12),
    "small": dict(num_hidden_layers=4, hidden_size=512, num_attention_heads=8),
    "medium": dict(num_hidden_layers=8, hidden_size=512, num_attention_heads=8),
    "base": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12),
    "large": dict(num_hidden_layers=24, hidden_size=1024, num_attention_heads=16),
}

HIDDEN_ACTS = ("gelu", "gelu_new", "gelu_pytorch_tanh")
COMPUTE_DTYPES = ("float32", "bfloat16")
ATTENTION_IMPLS = ("xla", "cudnn", "splash", "auto")  # attention.py runs each
# Activations tagged with `checkpoint_name` in every encoder layer (MaxText's names): the q/k/v
# projections, the attention context before its output projection, that projection, and the
# feed-forward block's two matmuls.
TAGGED_ACTIVATIONS = (
    "query_proj", "key_proj", "value_proj", "context", "out_proj", "mlpwi", "mlpwo"
)  # fmt: skip
_QKV = ("query_proj", "key_proj", "value_proj")
# `remat_policy` -> what each layer keeps for the backward pass: a tuple of the tagged
# activations it saves, the name of one of JAX's generic `jax.checkpoint_policies`, or None
# (recompute the whole layer). Ordered from most memory (fastest) to least, as MaxText lists
# its own; "none" (no rematerialisation at all) is not a policy.
REMAT_POLICIES: dict[str, tuple[str, ...] | str | None] = {
    "minimal_with_context": TAGGED_ACTIVATIONS,
    "minimal": (*_QKV, "out_proj", "mlpwi", "mlpwo"),
    "save_dot_with_context_except_mlp": (*_QKV, "context", "out_proj"),
    "save_dot_except_mlpwi": (*_QKV, "out_proj", "mlpwo"),
    "save_dot_except_mlp": (*_QKV, "out_proj"),
    "save_qkv_proj": _QKV,
    "save_out_proj": ("out_proj",),
    "dots_saveable": "dots_saveable",
    "dots_with_no_batch_dims_saveable": "dots_with_no_batch_dims_saveable",
    "nothing_saveable": "nothing_saveable",
    "full": None,
}
REMAT_POLICY_NAMES = ("none", *REMAT_POLICIES)
# Fields with a fixed set of values, each checked by `check_choices`.
CHOICES = {
    "hidden_act": HIDDEN_ACTS,
    "compute_dtype": COMPUTE_DTYPES,
    "attention_impl": ATTENTION_IMPLS,
    "remat_policy": REMAT_POLICY_NAMES,
}
# Fields that decide the parameters' shapes and meaning (dropout and how we compute do not).
ARCHITECTURE_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "max_position_embeddings",
    "type_vocab_size",
    "layer_norm_eps",
)
# Fields that say how we compute, not what the model is: a run may set them anew over a
# checkpoint's (fine-tuning's `model` section, `bertjax eval`).
COMPUTE_FIELDS = ("compute_dtype", "attention_impl", "scan_layers", "remat_policy")


def check_choices(fields: Mapping[str, Any], prefix: str = "") -> None:
    """ValueError naming the key (`prefix` + field) when a field of CHOICES holds another value
    (None, "not set", passes)."""
    for name, allowed in CHOICES.items():
        if fields.get(name) is not None and fields[name] not in allowed:
            raise ValueError(
                f"{prefix}{name}={fields[name]!r}: expected one of {', '.join(allowed)}"
            )


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """BERT hyperparameters; field names follow HuggingFace's `BertConfig` where they exist."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"  # "gelu" = exact erf GELU; "gelu_new"/"gelu_pytorch_tanh" = tanh form
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    # Not in HF's config: how we compute, not what the model is (COMPUTE_FIELDS).
    compute_dtype: str = "float32"  # activations/matmuls; parameters always float32
    attention_impl: str = "xla"  # xla | cudnn | splash | auto: see attention.py
    scan_layers: bool = False  # nn.scan over the layers: parameters stacked on axis "layers"
    remat_policy: str = "none"  # what each layer keeps for the backward pass: REMAT_POLICIES

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}"
            )
        check_choices(dataclasses.asdict(self))
        for name in (
            "vocab_size",
            "num_hidden_layers",
            "max_position_embeddings",
            "type_vocab_size",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def dtype(self):
        import jax.numpy as jnp  # here: the config itself is plain Python

        return jnp.dtype(self.compute_dtype)


def config_fields() -> tuple[str, ...]:
    """Names of every BertConfig field (used to reject unknown keys)."""
    return tuple(f.name for f in dataclasses.fields(BertConfig))


def config_from_dict(fields: Mapping[str, Any]) -> BertConfig:
    """BertConfig from a saved dict (a checkpoint's model config). Checkpoints written before
    `remat_policy` existed hold the boolean `remat`: True meant today's "full"."""
    fields = dict(fields)
    if fields.pop("remat", False) and fields.get("remat_policy", "none") == "none":
        fields["remat_policy"] = "full"
    return BertConfig(**fields)


def preset_config(name: str, **overrides: Any) -> BertConfig:
    """Returns the BertConfig of preset `name` (tiny ... large) with `overrides` applied."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known presets: {', '.join(PRESETS)}")
    unknown = sorted(set(overrides) - set(config_fields()))
    if unknown:
        raise ValueError(f"unknown BertConfig keys {unknown}; known keys: {config_fields()}")
    fields = dict(PRESETS[name])
    fields["intermediate_size"] = 4 * fields["hidden_size"]
    fields.update(overrides)
    return BertConfig(**fields)


def override(cfg: BertConfig, fields: Mapping[str, Any], source: str = "model") -> BertConfig:
    """`cfg` with every field of `fields` that is not None: a run's `model` section over the
    config a checkpoint or HuggingFace folder came with. ValueError naming `source`.KEY for a
    key BertConfig lacks or a value it refuses."""
    unknown = sorted(set(fields) - set(config_fields()))
    if unknown:
        raise ValueError(f"{source}.{unknown[0]}: BertConfig has no such field")
    check_choices(fields, prefix=f"{source}.")
    return dataclasses.replace(cfg, **{k: v for k, v in fields.items() if v is not None})
