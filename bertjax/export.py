"""`bertjax export`: a training checkpoint -> a HuggingFace folder with the dataset's tokenizer
files (loading the model is `train.checkpoint.load_model`'s)."""

import json
import os
import shutil
from pathlib import Path

from bertjax.errors import UserError


def register(subparsers) -> None:
    """Adds `export` to the `bertjax` command."""
    p = subparsers.add_parser(
        "export", help="write a checkpoint as a HuggingFace BertForPreTraining folder",
        description="Write a training checkpoint as config.json + model.safetensors (+ the "
        "dataset's tokenizer files), loadable by transformers.BertForPreTraining.")
    p.add_argument("--workdir", required=True, help="training workdir holding checkpoints/")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest)")
    p.add_argument("--out", required=True, help="output folder (not a training workdir)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an --out folder that already holds files")
    p.set_defaults(func=run)


def check_out_dir(out: Path, workdir: str, overwrite: bool) -> None:
    """Refuses an --out that is the workdir or holds a run, and (without `overwrite`) one that
    already holds files: an export never replaces anything silently."""
    from bertjax.train import checkpoint

    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    if not out.exists():
        return
    run_config = out / "config.json"
    holds_run = (checkpoint.is_checkpoint_dir(out) or (out / "metrics.jsonl").exists()
                 or (run_config.is_file() and '"train"' in run_config.read_text()))
    if out.resolve() == Path(workdir).resolve() or holds_run:
        raise UserError(f"--out {out} is a training workdir (its checkpoints, metrics.jsonl or "
                        "the run's config.json would be mixed with the export): choose "
                        "another folder")
    existing = sorted(p.name for p in out.iterdir())
    if existing and not overwrite:
        raise UserError(f"--out {out} already holds {', '.join(existing[:4])}"
                        f"{' ...' if len(existing) > 4 else ''}: pass --overwrite to replace it")


def run(args) -> int:
    """Entry point of `bertjax export`."""
    from bertjax import hf
    from bertjax.train import checkpoint

    if not checkpoint.is_checkpoint_dir(args.workdir):
        raise UserError(f"--workdir={args.workdir} has no checkpoints")
    out = Path(args.out)
    check_out_dir(out, args.workdir, args.overwrite)
    loaded = checkpoint.load_model(args.workdir, args.step)
    # Written beside, then moved into place: a failed export leaves no complete-looking folder.
    tmp = out.with_name(f".{out.name}.export-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        hf.write_folder(loaded.params, loaded.model_cfg, tmp, loaded.tokenizer_files)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps({"exported": loaded.source, "out": str(out),
                      "files": sorted(p.name for p in out.iterdir())}))
    return 0
