"""`bertjax export`: a training checkpoint -> a HuggingFace folder with the dataset's tokenizer
files (loading the model is `train.checkpoint.load_model`'s)."""

import json
from pathlib import Path

from bertjax import outputs
from bertjax.errors import UserError


def register(subparsers) -> None:
    """Adds `export` to the `bertjax` command."""
    p = subparsers.add_parser(
        "export",
        help="write a checkpoint as a HuggingFace BertForPreTraining folder",
        description="Write a training checkpoint as config.json + model.safetensors (+ the "
        "dataset's tokenizer files), loadable by transformers.BertForPreTraining.",
    )
    p.add_argument("--workdir", required=True, help="training workdir holding checkpoints/")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest)")
    p.add_argument("--out", required=True, help="output folder (not a training workdir)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an --out folder that holds an export (nothing else)",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    """Entry point of `bertjax export`."""
    from bertjax import hf
    from bertjax.train import checkpoint

    if not checkpoint.is_checkpoint_dir(args.workdir):
        raise UserError(f"--workdir={args.workdir} has no checkpoints")
    out = Path(args.out)
    outputs.check_folder(out, outputs.EXPORT, overwrite=args.overwrite, inputs=[args.workdir])
    loaded = checkpoint.load_model(args.workdir, args.step)
    with outputs.replacing_folder(out) as staging:
        hf.write_folder(loaded.params, loaded.model_cfg, staging, loaded.tokenizer_files)
    print(
        json.dumps(
            {
                "exported": loaded.source,
                "out": str(out),
                "files": sorted(p.name for p in out.iterdir()),
            }
        )
    )
    return 0
