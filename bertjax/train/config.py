"""Config files: load `get_config(arg)`, apply `--config.KEY=VALUE` overrides, validate early."""

import argparse
import ast
import difflib
import importlib.util
import inspect
import sys
from pathlib import Path

import ml_collections

from bertjax.errors import UserError

OVERRIDE_PREFIX = "--config."
# The recipes shipped inside the package (`--config bert_base_phase1`).
PACKAGED_CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# Keys every pretraining config has, so that scripts drive any of them the same way.
REQUIRED_KEYS = (
    "model.preset",
    "model.compute_dtype",
    "data.train_dir",
    "data.eval_dir",
    "train.steps",
    "train.global_batch_size",
    "train.seed",
    "train.log_every",
    "train.eval_every",
    "train.checkpoint_every",
    "optim.name",
    "optim.peak_lr",
    "optim.warmup_steps",
    "mesh.data",
    "mesh.fsdp",
    "mesh.tensor",
    "logical_axis_rules",
)
# Keys that were renamed: setting one (override or config file) says what replaced it.
RENAMED_KEYS = {
    "model.remat": "model.remat was replaced by model.remat_policy: remat=true is "
    "--config.model.remat_policy=full, remat=false is --config.model.remat_policy=none "
    "(docs/TRAINING.md lists the other policies)",
}


# Fine-tuning keys that moved into sections (the config dialect pretraining has): old -> new.
MOVED_KEYS = {
    "data": "data.dir",
    "tokenizer": "data.tokenizer",
    "max_seq_len": "data.max_seq_len",
    "length_buckets": "data.length_buckets",
    "batch_size": "train.global_batch_size",
    "grad_accum_steps": "train.grad_accum_steps",
    "epochs": "train.epochs",
    "seed": "train.seed",
    "log_every": "train.log_every",
    "compilation_cache_dir": "train.compilation_cache_dir",
    "learning_rates": "optim.learning_rates",
    "warmup": "optim.warmup_fraction",
    "weight_decay": "optim.weight_decay",
    "doc_stride": "squad.doc_stride",
    "max_query_length": "squad.max_query_length",
    "n_best_size": "squad.n_best_size",
    "max_answer_length": "squad.max_answer_length",
    "null_score_diff_threshold": "squad.null_score_diff_threshold",
}


def config_names() -> list[str]:
    """The recipes shipped in `bertjax/configs/`, loadable by name."""
    return sorted(p.stem for p in PACKAGED_CONFIGS.glob("*.py") if not p.stem.startswith("_"))


def config_path(spec: str) -> tuple[Path, str]:
    """(file, argument) of a config spec: `NAME[:arg]` (a recipe in `bertjax/configs/`) or
    `path/to/config.py[:arg]`."""
    if ".py" in spec or "/" in spec or "\\" in spec:
        path_str, _, arg = spec.partition(".py:")
        path = Path(path_str if not arg else path_str + ".py")
        if not path.is_file():
            raise UserError(f"config file {path} does not exist")
        return path, arg
    name, _, arg = spec.partition(":")
    path = PACKAGED_CONFIGS / f"{name}.py"
    if not name or not path.is_file():
        raise UserError(
            f"--config {spec}: no config named {name!r}; the packaged ones are "
            f"{', '.join(config_names())} (or give a path to a .py file)"
        )
    return path, arg


def load_config(spec: str, overrides: list[str] = ()) -> ml_collections.ConfigDict:
    """Loads a config (see `config_path`), calls its `get_config([arg])`, applies the
    overrides. The returned ConfigDict is locked: assigning a key it does not have is an error.
    """
    path, arg = config_path(spec)
    module_spec = importlib.util.spec_from_file_location(f"_bertjax_config_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:  # a broken config file is the user's to fix, not a traceback
        raise UserError(f"config file {path} failed to load: {type(e).__name__}: {e}") from e
    get_config = getattr(module, "get_config", None)
    if get_config is None:
        raise UserError(f"config file {path} defines no get_config() function")
    takes_arg = bool(inspect.signature(get_config).parameters)
    if arg and not takes_arg:
        raise UserError(f"config file {path}: get_config() takes no argument, got {arg!r}")
    config = get_config(arg or None) if takes_arg else get_config()
    if isinstance(config, dict):
        config = ml_collections.ConfigDict(config)
    config.lock()
    apply_overrides(config, overrides, source=str(path))
    return config


def flat_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """Every leaf key of `config` in dotted form, e.g. `optim.peak_lr`."""
    keys = []
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            keys.extend(flat_keys(value, f"{prefix}{key}."))
        else:
            keys.append(prefix + key)
    return keys


def _get(config, dotted: str):
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def _parse_value(key: str, text: str, current, declared: type = type(None)):
    """Parses `text` into the type of the key's current value (for an unset value, the type
    its `placeholder` declares), or raises UserError."""
    if current is None and declared is not type(None):
        if text.lower() in ("none", "null"):
            return None
        current = declared(False) if declared is bool else declared()

    def bad(kind):
        return UserError(
            f"--config.{key}={text}: expected {kind} (the current value is {current!r})"
        )

    if isinstance(current, bool):
        lowered = text.lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise bad("true or false")
    if isinstance(current, int):
        try:
            return int(text.replace("_", ""))
        except ValueError:
            raise bad("an integer") from None
    if isinstance(current, float):
        try:
            return float(text)
        except ValueError:
            raise bad("a number") from None
    if isinstance(current, str):
        return text
    if isinstance(current, (tuple, list)):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise bad(f"a Python {type(current).__name__} literal") from None
        if not isinstance(value, (tuple, list)):
            raise bad(f"a Python {type(current).__name__} literal")
        return type(current)(value)
    if current is None:  # untyped: a Python literal if it parses, the raw string otherwise
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text
    raise UserError(
        f"--config.{key} is a {type(current).__name__} and cannot be set from the command line"
    )


def apply_overrides(config: ml_collections.ConfigDict, overrides, source: str = "config"):
    """Applies `KEY=VALUE` (or `--config.KEY=VALUE`) strings to the locked `config` in place."""
    valid = flat_keys(config)
    for item in overrides:
        text = item.removeprefix(OVERRIDE_PREFIX)
        key, eq, value_text = text.partition("=")
        if not eq:
            raise UserError(f"override {item!r} has no '=': write --config.KEY=VALUE")
        if key not in valid:
            if key in RENAMED_KEYS:
                raise UserError(RENAMED_KEYS[key])
            if MOVED_KEYS.get(key) in valid:
                raise UserError(f"--config.{key} is now --config.{MOVED_KEYS[key]}")
            if any(k.startswith(key + ".") for k in valid):
                raise UserError(
                    f"--config.{key} is not a leaf key of {source}; set its fields one by one"
                )
            close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
            hint = f"; did you mean --config.{close[0]}?" if close else ""
            raise UserError(f"--config.{key}: {source} has no key {key!r}{hint}")
        parent, _, leaf = key.rpartition(".")
        node = _get(config, parent) if parent else config
        value = _parse_value(key, value_text, _get(config, key), node.get_type(leaf))
        try:
            node[leaf] = value
        except TypeError as e:
            raise UserError(f"--config.{key}={value_text}: {e}") from None


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """Splits `argv` into `KEY=VALUE` overrides (from `--config.KEY=VALUE` or
    `--config.KEY VALUE`) and the remaining arguments."""
    overrides, rest = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith(OVERRIDE_PREFIX):
            if "=" in arg:
                overrides.append(arg[len(OVERRIDE_PREFIX) :])
            elif i + 1 < len(argv):
                overrides.append(f"{arg[len(OVERRIDE_PREFIX) :]}={argv[i + 1]}")
                i += 1
            else:
                raise UserError(f"{arg} has no value: write {arg}=VALUE")
        else:
            rest.append(arg)
        i += 1
    return overrides, rest


def add_config_arguments(
    parser: argparse.ArgumentParser, default: str | None = None, *, default_help: str = ""
) -> None:
    """Adds `--config NAME|FILE[:ARG]` (required unless there is a `default`, or a
    `default_help` saying what the caller picks when it is left out: it is None then) and
    makes `parser` accept `--config.KEY=VALUE` overrides.

    argparse rejects options it does not know in advance, and the override keys depend on
    the config file, so they are pulled out before argparse sees the arguments; they end
    up in `args.config_overrides`.
    """
    parser.add_argument(
        "--config",
        required=default is None and not default_help,
        default=default,
        metavar="NAME|FILE[:ARG]",
        help="a packaged config (" + ", ".join(config_names()) + ") or a Python file "
        "defining get_config(); override any field with --config.KEY=VALUE "
        "(e.g. --config.train.steps=20)"
        + (f"; default {default_help or default}" if default or default_help else ""),
    )
    parse_known_args = parser.parse_known_args

    def parse_with_overrides(args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        try:
            overrides, rest = split_overrides(args)
        except UserError as e:
            parser.error(str(e))
        namespace, extras = parse_known_args(rest, namespace)
        namespace.config_overrides = overrides
        return namespace, extras

    parser.parse_known_args = parse_with_overrides


def validate(config: ml_collections.ConfigDict, num_devices: int, num_processes: int = 1) -> None:
    """Checks what can be checked before any data is read or anything compiled."""
    # Local imports: these pull in JAX, which `bertjax --help` need not load.
    from bertjax import model_config
    from bertjax.train import sharding
    from bertjax.train.optim import OPTIMIZERS, SCHEDULES

    keys = set(flat_keys(config))
    missing = [k for k in REQUIRED_KEYS if k not in keys]
    if missing:
        raise UserError(
            f"the config lacks {', '.join(missing)}: every pretraining config "
            "has these keys (start from bertjax/configs/base.py)"
        )
    renamed = [k for k in RENAMED_KEYS if k in keys]
    if renamed:
        raise UserError(RENAMED_KEYS[renamed[0]])
    try:
        model_config.check_choices(config.model, prefix="model.")
    except ValueError as e:
        raise UserError(str(e)) from None
    for key, registry in (("optim.name", OPTIMIZERS), ("optim.schedule", SCHEDULES)):
        if _get(config, key) not in registry:
            raise UserError(f"{key}={_get(config, key)!r}: expected one of {', '.join(registry)}")
    for key in (
        "train.steps",
        "train.global_batch_size",
        "train.log_every",
        "train.grad_accum_steps",
    ):
        if _get(config, key) < 1:
            raise UserError(f"{key}={_get(config, key)} must be at least 1")
    if config.optim.warmup_steps < 0:
        raise UserError(f"optim.warmup_steps={config.optim.warmup_steps} must be at least 0")
    shape = sharding.mesh_shape(config.mesh, num_devices)
    data_parallel = shape["data"] * shape["fsdp"]
    batch, accum = config.train.global_batch_size, config.train.grad_accum_steps
    if batch % accum:
        raise UserError(
            f"train.global_batch_size={batch} is not divisible by train.grad_accum_steps={accum}"
        )
    if (batch // accum) % data_parallel:
        raise UserError(
            f"train.global_batch_size={batch} / train.grad_accum_steps={accum} = {batch // accum} "
            f"is not divisible by the data-parallel size mesh.data x mesh.fsdp = {data_parallel}"
        )
    if data_parallel % num_processes:
        raise UserError(
            f"the data-parallel size mesh.data x mesh.fsdp = {data_parallel} is not a multiple of "
            f"the {num_processes} processes: each process feeds its own slice of the batch"
        )
    eval_batch = config.train.eval_batch_size
    if config.train.eval_every > 0 and (eval_batch < 1 or eval_batch % data_parallel):
        raise UserError(
            f"train.eval_batch_size={eval_batch} is not a positive multiple of the "
            f"data-parallel size mesh.data x mesh.fsdp = {data_parallel}"
        )


def validate_against_data(
    config: ml_collections.ConfigDict,
    model_cfg,
    max_seq_len: int,
    dataset_vocab_size: int,
    data_dir: str,
    platform: str | None = None,
    dataset_nsp: bool = True,
) -> None:
    """Checks that the model fits the dataset (vocabulary size, sequence length), that the
    dataset has the NSP labels `train.nsp` trains on, and that this process can run its
    attention kernel at that length (`model.attention_impl`)."""
    if config.train.nsp and not dataset_nsp:
        raise UserError(
            f"{data_dir} was prepared with --no-nsp (its sentence pairs carry no next-sentence "
            "labels), but train.nsp is true: set --config.train.nsp=false, or prepare the "
            "data without --no-nsp"
        )
    if model_cfg.vocab_size != dataset_vocab_size:
        raise UserError(
            f"model.vocab_size={model_cfg.vocab_size} differs from the vocabulary size "
            f"{dataset_vocab_size} of the tokenizer of {data_dir}; set --config.model.vocab_size=0 "
            "to take the dataset's"
        )
    if max_seq_len > model_cfg.max_position_embeddings:
        raise UserError(
            f"{data_dir} has max_seq_len {max_seq_len}, above the model's "
            f"max_position_embeddings={model_cfg.max_position_embeddings} "
            f"(model.preset={config.model.preset!r})"
        )
    from bertjax import attention  # local: attention imports jax

    attention.resolve_for_model(model_cfg, seq_len=max_seq_len, platform=platform)


# Model sizes where 0 in the config means "the preset's value".
_ZERO_MEANS_PRESET = (
    "vocab_size",
    "num_hidden_layers",
    "hidden_size",
    "num_attention_heads",
    "intermediate_size",
)


def model_config(model_section, dataset_vocab_size: int):
    """BertConfig from the config's `model` section: the preset, then every other field
    (0 = keep the preset's value; vocab_size 0 = the dataset's)."""
    from bertjax import model as model_lib

    if "remat" in model_section:
        raise UserError(RENAMED_KEYS["model.remat"])
    fields = {
        k: v
        for k, v in model_section.items()
        if k != "preset" and not (k in _ZERO_MEANS_PRESET and v == 0)
    }
    fields.setdefault("vocab_size", dataset_vocab_size)
    if "hidden_size" in fields and "intermediate_size" not in fields:
        fields["intermediate_size"] = 4 * fields["hidden_size"]
    try:
        return model_lib.preset_config(model_section.preset, **fields)
    except ValueError as e:
        raise UserError(f"config model: {e}") from None


def masking_config(data_section, ds):
    """The dynamic-masking settings of the config's `data` section for dataset `ds`."""
    from bertjax.data.loader import default_masking

    return default_masking(
        ds,
        data_section.masked_lm_prob,
        data_section.max_predictions_per_seq or None,
        data_section.whole_word_masking,
    )
