"""`bertjax demo`: the whole product on a laptop with no network, in one command.

corpus (the Python standard library's own docs) -> WordPiece tokenizer -> 64-token shards with a
held-out split -> bert-tiny pretraining with evaluation before and after -> checkpoint,
HuggingFace export, metrics.jsonl, TensorBoard events -> the payoff downstream: the pretrained
encoder and a random initialisation of it fine-tuned on the word-order task made of the same
corpus (finetune/downstream.py) -> a PNG of the curves and the comparison, in one workdir.
"""

import dataclasses
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bertjax import outputs
from bertjax.errors import UserError

TABLE_ROWS = ("mlm_accuracy", "nsp_accuracy", "mlm_loss", "nsp_loss", "loss", "mlm_perplexity")
SEQ_LEN = 64
# bert-tiny learning fast on a CPU (the recipe tests/test_train_e2e.py proves on this corpus):
# dropout off (a few hundred steps cannot overfit tens of thousands of pairs), a large
# learning rate, and 10 prediction slots per 64-token row (15% of 64, the floor).
RECIPE = (
    "--config.train.global_batch_size=64",
    "--config.train.eval_batch_size=128",
    "--config.data.max_predictions_per_seq=10",
    "--config.optim.peak_lr=2e-3",
    "--config.optim.b2=0.98",
    "--config.model.hidden_dropout_prob=0",
    "--config.model.attention_probs_dropout_prob=0",
)


def register(subparsers) -> None:
    """Adds `demo` to the `bertjax` command."""
    p = subparsers.add_parser(
        "demo",
        help="build an offline corpus and pretrain a tiny BERT on it, end to end",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("--workdir", default="demo_workdir", help="where everything is written")
    p.add_argument(
        "--corpus",
        choices=("stdlib", "wikitext"),
        default="stdlib",
        help="stdlib: offline, from this Python's docs; wikitext: via `datasets`",
    )
    p.add_argument("--steps", type=int, default=650, help="pretraining steps")
    p.add_argument(
        "--max-documents", type=int, default=None, help="cap the corpus (shortened demos and tests)"
    )
    p.add_argument("--vocab-size", type=int, default=4000, help="WordPiece vocabulary size")
    p.add_argument("--held-out", type=int, default=512, help="eval instances")
    p.add_argument(
        "--config", default="bert_tiny", help="training config (model and optimizer of the demo)"
    )
    p.add_argument(
        "--downstream-seeds",
        type=int,
        default=2,
        help="fine-tunes per starting point (pretrained, random init) on the word-order task "
        "(0: no downstream comparison)",
    )
    p.add_argument(
        "--downstream-epochs", type=int, default=None, help="epochs of each downstream fine-tune"
    )
    p.set_defaults(func=run)


def run(args) -> int:
    """Entry point of `bertjax demo`."""
    if args.downstream_seeds < 0:
        raise UserError(f"--downstream-seeds {args.downstream_seeds} must be 0 or more")
    if args.downstream_epochs is not None and args.downstream_epochs < 1:
        raise UserError(f"--downstream-epochs {args.downstream_epochs} must be at least 1")
    summary = run_demo(
        args.workdir,
        corpus=args.corpus,
        steps=args.steps,
        max_documents=args.max_documents,
        vocab_size=args.vocab_size,
        held_out=args.held_out,
        config_path=args.config,
        downstream_seeds=args.downstream_seeds,
        downstream_epochs=args.downstream_epochs,
    )
    print(format_table(summary))
    return 0


def _say(msg: str) -> None:
    print(f"bertjax demo: {msg}", flush=True)


def build_corpus(out_dir: Path, corpus: str, max_documents: int | None) -> list[Path]:
    """Corpus files in BERT format; reused when a previous demo already built them from the
    same source (`corpus`) and document limit."""
    done = out_dir / "DONE.json"
    wanted = {"corpus": corpus, "max_documents": max_documents}
    if done.exists():
        built = json.loads(done.read_text())
        if {key: built.get(key) for key in wanted} == wanted:
            return sorted(out_dir.glob("*.txt"))
        _say(
            f"corpus: the one in {out_dir} was built with {_settings(built, wanted)}; "
            f"building it again with {_settings(wanted, wanted)}"
        )
    with outputs.replacing_folder(out_dir) as staging:  # a corpus of other settings: the demo's
        if corpus == "wikitext":
            from bertjax.data.wikitext import build_wikitext_corpus

            stats = build_wikitext_corpus(staging, max_documents)
        else:
            # A child process: building imports hundreds of stdlib modules to read their
            # docstrings, which the training process is better without.
            cmd = [sys.executable, "-m", "bertjax.data.demo_corpus", str(staging)]
            if max_documents:
                cmd += ["--max-documents", str(max_documents)]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode:
                raise UserError(f"building the demo corpus failed: {proc.stderr.strip()[-500:]}")
            stats = json.loads(proc.stdout.strip().splitlines()[-1])
        (staging / done.name).write_text(
            json.dumps(
                {
                    **wanted,
                    **{k: stats[k] for k in ("documents", "sentences", "words")},
                }
            )
        )
    _say(
        f"corpus: {stats['documents']} documents, {stats['sentences']} sentences, "
        f"{stats['words']} words in {out_dir}"
    )
    return sorted(out_dir.glob("*.txt"))


def _settings(recorded: dict, keys) -> str:
    """`--corpus X --max-documents N` as `recorded` holds them (an older demo recorded no
    corpus)."""
    return ", ".join(f"{key}={recorded.get(key, 'unrecorded')}" for key in keys)


def build_tokenizer(files: list[Path], out_dir: Path, vocab_size: int):
    """A WordPiece vocabulary trained on the corpus (reused when an earlier demo trained one
    of this size there; else trained afresh and put in the earlier one's place only once
    complete: train_wordpiece stages it)."""
    from bertjax.data.tokenizer import load_tokenizer, train_wordpiece

    holding = outputs.holding(out_dir)
    if holding is not None and holding.kind == outputs.TOKENIZER:
        earlier = load_tokenizer(out_dir)
        if earlier.vocab_size == vocab_size:
            return earlier

    def lines():
        for f in files:
            with open(f, encoding="utf-8") as fh:
                yield from (line for line in fh if line.strip())

    tok = train_wordpiece(lines(), vocab_size, out_dir, overwrite=True)
    _say(f"tokenizer: WordPiece, {tok.vocab_size} tokens in {out_dir}")
    return tok


def _same_dataset(out_dir: Path, tokenizer, held_out: int) -> bool:
    """Whether `out_dir` holds a dataset this demo would prepare: its row length, its
    tokenizer, its held-out size (as its manifests record them)."""
    from bertjax.data import open_dataset

    holding = outputs.holding(out_dir)
    if holding is None or holding.kind != outputs.DATASET or not holding.complete:
        return False
    try:
        train, held = open_dataset(out_dir), open_dataset(out_dir / "eval")
    except (OSError, ValueError, UserError):
        return False
    return (
        train.manifest["max_seq_len"] == SEQ_LEN
        and train.tokenizer_identity == tokenizer.identity
        and len(held) == held_out
    )


def build_dataset(files: list[Path], tokenizer, out_dir: Path, held_out: int) -> Path:
    """SEQ_LEN-token sentence-pair shards with a held-out eval split (reused when an earlier
    demo prepared the same; else prepared afresh and put in the earlier one's place only once
    complete: prepare_dataset stages it)."""
    from bertjax.data.corpus import TextCorpus
    from bertjax.data.prepare_engine import InstanceOptions, prepare_dataset

    if _same_dataset(out_dir, tokenizer, held_out):
        return out_dir
    manifest = prepare_dataset(
        TextCorpus([str(f) for f in files], "bert", "strict"),
        tokenizer,
        out_dir,
        InstanceOptions(max_seq_len=SEQ_LEN, seed=0, block_docs=200),
        held_out=held_out,
        overwrite=True,
        progress=sys.stderr.isatty(),
    )
    _say(
        f"dataset: {manifest['num_instances']} training instances (+{held_out} held out) "
        f"in {out_dir}"
    )
    return out_dir


def run_demo(
    workdir,
    *,
    corpus="stdlib",
    steps=650,
    max_documents=None,
    vocab_size=4000,
    held_out=512,
    config_path=None,
    overrides=(),
    downstream_seeds=2,
    downstream_epochs=None,
) -> dict:
    """Runs every stage; returns {before, after, tokens_per_s, downstream, paths, seconds}
    (downstream: finetune.downstream's comparison, None with no seeds)."""
    from bertjax import hf
    from bertjax.commands import plot
    from bertjax.configs import base
    from bertjax.train import checkpoint, loop
    from bertjax.train import config as config_lib

    start = time.perf_counter()
    workdir = Path(workdir)
    # New, empty, or an earlier demo's: what the demo replaces there is its own.
    outputs.check_folder(workdir, outputs.DEMO, overwrite=True, flag="--workdir")
    workdir.mkdir(parents=True, exist_ok=True)
    files = build_corpus(workdir / "corpus", corpus, max_documents)
    tokenizer = build_tokenizer(files, workdir / "tokenizer", vocab_size)
    data_dir = build_dataset(files, tokenizer, workdir / "data", held_out)

    run_dir = workdir / "run"
    shutil.rmtree(run_dir, ignore_errors=True)  # the demo always trains afresh
    config = config_lib.load_config(
        str(config_path or "bert_tiny"),
        [
            f"--config.data.train_dir={data_dir}",
            f"--config.train.steps={steps}",
            f"--config.train.eval_every={max(1, steps // 3)}",
            "--config.train.eval_at_start=True",
            f"--config.train.checkpoint_every={steps}",
            f"--config.optim.warmup_steps={max(1, steps // 10)}",
            *RECIPE,
            *overrides,
        ],
    )
    base.SCHEMA.check(config)
    _say(f"pretraining bert-{config.model.preset} for {steps} steps in {run_dir}")
    history = loop.train(config, run_dir)

    hf_dir = workdir / "hf_export"
    loaded = checkpoint.load_model(run_dir)
    with outputs.replacing_folder(hf_dir) as staging:
        hf.write_folder(loaded.params, loaded.model_cfg, staging, loaded.tokenizer_files)
    comparison = None
    if downstream_seeds:
        from bertjax.finetune import downstream

        downstream_dir = workdir / "downstream"
        shutil.rmtree(downstream_dir, ignore_errors=True)  # an earlier demo's: its own
        settings = downstream.Settings(seeds=tuple(range(downstream_seeds)))
        if downstream_epochs is not None:
            settings = dataclasses.replace(settings, epochs=downstream_epochs)
        _say(
            f"downstream: fine-tuning the pretrained encoder and a random initialisation "
            f"({downstream_seeds} seeds each) on the word-order task in {downstream_dir}"
        )
        comparison = downstream.compare(str(run_dir), files, downstream_dir, settings)
    png = plot.plot_workdir(run_dir, workdir / "metrics.png", downstream=comparison)
    before = _eval_at(history, 0)
    after = _eval_at(history, steps)
    train_rows = [h for h in history if "tokens_per_s" in h and h["step"] > 0]
    tokens_per_s = train_rows[-1]["tokens_per_s"] if train_rows else float("nan")
    return {
        "before": before,
        "after": after,
        "tokens_per_s": tokens_per_s,
        "downstream": comparison,
        "seconds": time.perf_counter() - start,
        "paths": {
            "workdir": str(workdir),
            "checkpoints": str(run_dir / "checkpoints"),
            "hf_export": str(hf_dir),
            "metrics": str(run_dir / "metrics.jsonl"),
            "tensorboard": str(run_dir / "tb"),
            "plot": str(png),
        },
    }


def _eval_at(history: list[dict], step: int) -> dict:
    for h in history:
        if h["step"] == step and any(k.startswith("eval_") for k in h):
            return {k[len("eval_") :]: v for k, v in h.items() if k.startswith("eval_")}
    raise RuntimeError(f"no evaluation at step {step} in the run's history")


def format_table(summary: dict) -> str:
    """The before/after table the demo prints."""
    lines = [f"{'held-out metric':<18}{'before':>12}{'after':>12}"]
    for key in TABLE_ROWS:
        if key in summary["before"] and key in summary["after"]:
            lines.append(f"{key:<18}{summary['before'][key]:>12.4f}{summary['after'][key]:>12.4f}")
    lines.append(f"{'train tokens/s':<18}{'':>12}{summary['tokens_per_s']:>12.0f}")
    if summary.get("downstream"):
        from bertjax.finetune import downstream

        lines.append(downstream.format_table(summary["downstream"]))
    lines.append(f"wall time {summary['seconds']:.0f} s")
    lines += [f"{name:<12} {path}" for name, path in summary["paths"].items()]
    return "\n".join(lines)
