"""Trained models in and out: load from a training checkpoint or a HuggingFace folder, and
`bertjax export` (checkpoint -> HuggingFace folder with the dataset's tokenizer files)."""

import dataclasses
import json
from pathlib import Path

from bertjax.errors import UserError

# What a checkpoint's "config" item holds besides the training config (written by the loop).
MODEL_CONFIG_KEY = "model_config"
TOKENIZER_DIR_KEY = "tokenizer_dir"


@dataclasses.dataclass
class LoadedModel:
    """Parameters (plain arrays) with the BertConfig they belong to and where they came from."""

    model_cfg: object
    params: dict
    source: str
    tokenizer_files: tuple = ()
    step: int | None = None


def checkpoint_metadata(model_cfg, config, tokenizer_dir) -> dict:
    """The JSON saved beside the arrays in every training checkpoint."""
    return {
        "config": config.to_dict() if hasattr(config, "to_dict") else dict(config),
        MODEL_CONFIG_KEY: dataclasses.asdict(model_cfg),
        TOKENIZER_DIR_KEY: str(tokenizer_dir) if tokenizer_dir else "",
    }


def _tokenizer_files(tokenizer_dir: str) -> tuple[Path, ...]:
    if not tokenizer_dir or not Path(tokenizer_dir).is_dir():
        return ()
    return tuple(sorted(p for p in Path(tokenizer_dir).iterdir() if p.is_file()))


def is_checkpoint_dir(path) -> bool:
    """True for a training workdir (WORKDIR/checkpoints/<step>/...)."""
    from bertjax.train import checkpoint

    d = checkpoint.checkpoint_dir(path)
    return d.exists() and any(p.name.isdigit() for p in d.iterdir())


def load_model(path, step: int | None = None) -> LoadedModel:
    """Loads a model from a training workdir (newest checkpoint, or `step`) or an HF folder."""
    from bertjax import hf
    from bertjax import model as model_lib
    from bertjax.train import checkpoint, workdir_io

    path = str(path)
    if not is_checkpoint_dir(path):
        if not (workdir_io.path(path) / hf.CONFIG_NAME).is_file():
            raise UserError(f"{path} is neither a training workdir with checkpoints (no "
                            f"{checkpoint.checkpoint_dir(path)}/<step>) nor a HuggingFace "
                            f"folder (no {hf.CONFIG_NAME})")
        if "train" in json.loads((workdir_io.path(path) / hf.CONFIG_NAME).read_text()):
            # bertjax train's own config.json, not a HuggingFace one: say what is missing.
            raise UserError(f"{path} is a training workdir without checkpoints yet (no "
                            f"{checkpoint.checkpoint_dir(path)}/<step>)")
        if step is not None:
            raise UserError(f"{path} is a HuggingFace folder: --step applies to checkpoints only")
        try:
            loaded = hf.load_pretrained(path)
        except hf.CheckpointError as e:
            raise UserError(str(e)) from None
        return LoadedModel(loaded.config, loaded.params, path, loaded.tokenizer_files)
    ckpt = checkpoint.Checkpointer(path, read_only=True)
    try:
        params, meta = ckpt.restore_params(step)
    except FileNotFoundError as e:
        raise UserError(str(e)) from None
    if MODEL_CONFIG_KEY not in meta:
        raise UserError(f"checkpoint in {path} has no model config; was it written by bertjax?")
    model_cfg = model_lib.BertConfig(**meta[MODEL_CONFIG_KEY])
    used_step = step if step is not None else ckpt.latest_step()
    return LoadedModel(model_cfg, params, f"{path} step {used_step}",
                       _tokenizer_files(meta.get(TOKENIZER_DIR_KEY, "")), used_step)


def register(subparsers) -> None:
    """Adds `export` to the `bertjax` command."""
    p = subparsers.add_parser(
        "export", help="write a checkpoint as a HuggingFace BertForPreTraining folder",
        description="Write a training checkpoint as config.json + model.safetensors (+ the "
        "dataset's tokenizer files), loadable by transformers.BertForPreTraining.")
    p.add_argument("--workdir", required=True, help="training workdir holding checkpoints/")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest)")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=run)


def run(args) -> int:
    """Entry point of `bertjax export`."""
    from bertjax import hf

    if not is_checkpoint_dir(args.workdir):
        raise UserError(f"--workdir={args.workdir} has no checkpoints")
    loaded = load_model(args.workdir, args.step)
    out = hf.write_folder(loaded.params, loaded.model_cfg, args.out, loaded.tokenizer_files)
    print(json.dumps({"exported": loaded.source, "out": str(out),
                      "files": sorted(p.name for p in out.iterdir())}))
    return 0
