"""Does pretraining pay off downstream? The same encoder fine-tuned from a pretrained
checkpoint and from a random initialisation of its architecture (same task, steps, learning
rate, data order, length buckets; several seeds each) on the word-order task generated from
a text corpus (`word_order_task`), beside the task's majority and bag-of-words baselines.

    summary = compare(init="runs/tiny", corpus_files=[...], workdir="runs/tiny/downstream")
    print(format_table(summary))

BERT's claim, checked in minutes: a pretraining change that lowers the MLM loss but does not
widen this gap has not made a better starting point.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from bertjax import outputs
from bertjax.errors import UserError
from bertjax.finetune import word_order_task

INITS = ("pretrained", "random_init")
TASK = "sst2"  # the word-order files have SST-2's layout: one sentence and a 0/1 label
SUMMARY_FILE = "downstream.json"
MIN_SENTENCES = 200  # below, dev accuracy is too noisy to tell anything


@dataclasses.dataclass(frozen=True)
class Settings:
    """How each fine-tune runs (the same for both starting points)."""

    seeds: tuple[int, ...] = (0, 1)
    epochs: int = 3
    lr: float = 3e-4  # tiny encoders take a large rate (the paper's 2e-5 is for base/large)
    batch_size: int = 32
    max_seq_len: int = 64
    length_buckets: int = 4
    n_train: int = 2000
    n_dev: int = 1000
    swaps: int = 10  # pairs of words exchanged in a moved sentence (8-30 words)


def _say(msg: str) -> None:
    print(f"downstream: {msg}", file=sys.stderr, flush=True)


def _config(init: str, task_dir: Path, settings: Settings, seed: int):
    from bertjax.train import config as config_lib

    config = config_lib.load_config(
        "finetune_glue",
        [
            f"task={TASK}",
            f"init={init}",
            f"data.dir={task_dir}",
            f"data.max_seq_len={settings.max_seq_len}",
            f"data.length_buckets={settings.length_buckets}",
            f"train.global_batch_size={settings.batch_size}",
            f"train.epochs={settings.epochs}",
            f"train.seed={seed}",
            f"train.log_every={10**9}",  # the table is the output; no per-step lines
        ],
    )
    config.optim.learning_rates = (settings.lr,)  # Settings' values: checked by the commands
    return config


def random_bert_params(model_cfg, scan_layers: bool, seed: int = 0) -> dict:
    """Encoder parameters of `model_cfg`'s architecture as BERT initialises them (truncated
    normal, stddev initializer_range), on the host, in the given layer layout."""
    import jax
    from flax import linen as nn

    from bertjax import encoder
    from bertjax import model as model_lib

    unrolled = dataclasses.replace(model_cfg, scan_layers=False)
    params = nn.meta.unbox(model_lib.init_params(unrolled, jax.random.key(seed)))
    return encoder.to_layout(jax.device_get(params["bert"]), scan_layers)


def baselines(task_dir: Path) -> dict:
    """The task's majority-label and unigram-logistic dev accuracies."""
    train = word_order_task.read_rows(task_dir / "train.tsv")
    dev = word_order_task.read_rows(task_dir / "dev.tsv")
    return {
        "majority": word_order_task.majority_accuracy(train[1], dev[1]),
        "unigram_logistic": word_order_task.unigram_logistic_accuracy(train, dev),
    }


def compare(init: str, corpus_files, workdir, settings: Settings = Settings()) -> dict:
    """Writes the word-order task of `corpus_files` (BERT-format text: a sentence per line,
    documents apart by blank lines) in WORKDIR/task, fine-tunes `init` (a pretraining workdir
    or HuggingFace folder) and a random initialisation of its architecture on it for each
    seed (WORKDIR/<init>_seed<N>), and returns (and writes to WORKDIR/downstream.json) the
    dev accuracies, their means and spreads, the gain and the baselines. WORKDIR is the
    caller's to check (a new folder, or one of its own)."""
    from bertjax.finetune import demo_tasks
    from bertjax.finetune import train as finetune_train

    workdir = Path(workdir)
    task_dir = workdir / "task"
    documents = demo_tasks.corpus_documents_of(corpus_files)
    n_train, n_dev = settings.n_train, settings.n_dev
    usable = word_order_task.usable_sentences(documents)
    if usable < MIN_SENTENCES:
        raise UserError(
            f"the corpus holds {usable} sentences of {word_order_task.MIN_WORDS} to "
            f"{word_order_task.MAX_WORDS} words: the word-order task needs {MIN_SENTENCES}"
        )
    short = usable * 9 // 10 < n_train + n_dev  # whole documents per split: room to deal
    if short:
        n_dev = usable * 9 // 10 * n_dev // (n_train + n_dev)
        n_train = usable * 9 // 10 - n_dev
    counts = word_order_task.write_word_order_task(
        documents, task_dir, n_train=n_train, n_dev=n_dev, swaps=settings.swaps
    )
    _say(
        f"word-order task in {task_dir}: {counts['train']['examples']} training and "
        f"{counts['dev']['examples']} dev sentences ({settings.swaps} word pairs swapped in "
        "half of them)"
        + (f"; the corpus holds {usable} usable sentences, fewer than asked" if short else "")
    )
    base = baselines(task_dir)
    runs = {name: [] for name in INITS}
    prepared = None
    for seed in settings.seeds:
        cfg = _config(init, task_dir, settings, seed)
        if prepared is None:  # one load, encoding and bucket plan for every run
            prepared = finetune_train.prepare(cfg, workdir)
        random_bert = random_bert_params(prepared.model_cfg, prepared.model_cfg.scan_layers, seed)
        for name in INITS:
            bert = prepared.bert_params if name == "pretrained" else random_bert
            run = dataclasses.replace(prepared, cfg=cfg, bert_params=bert)
            _say(f"fine-tuning from {name.replace('_', ' ')}, seed {seed}")
            result = finetune_train.train_one(run, settings.lr, workdir / f"{name}_seed{seed}")
            runs[name].append(result[prepared.main_key])
    summary = {
        "init": str(init),
        "task": str(task_dir),
        "settings": dataclasses.asdict(settings),
        "baselines": base,
        "accuracy": runs,
        "mean": {k: float(np.mean(v)) for k, v in runs.items()},
        "spread": {k: float(np.ptp(v)) for k, v in runs.items()},
    }
    summary["gain"] = summary["mean"]["pretrained"] - summary["mean"]["random_init"]
    summary["gain_exceeds_spread"] = summary["gain"] > max(summary["spread"].values())
    outputs.write_file(workdir / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    return summary


def format_table(summary: dict) -> str:
    """The comparison as the demo and `bertjax eval --downstream` print it."""
    seeds = summary["settings"]["seeds"]
    lines = [
        f"downstream: word order (dev accuracy, {len(seeds)} seed{'s' * (len(seeds) > 1)})",
        f"{'start':<20}{'mean':>8}{'spread':>8}   per seed",
    ]
    for name in INITS:
        per_seed = " ".join(f"{a:.3f}" for a in summary["accuracy"][name])
        lines.append(
            f"{name.replace('_', ' '):<20}{summary['mean'][name]:>8.3f}"
            f"{summary['spread'][name]:>8.3f}   {per_seed}"
        )
    for name, value in summary["baselines"].items():
        lines.append(f"{name.replace('_', ' '):<20}{value:>8.3f}")
    verdict = "more" if summary["gain_exceeds_spread"] else "NOT more"
    lines.append(
        f"gain of pretraining {summary['gain']:+.3f}: {verdict} than the larger seed spread "
        f"({max(summary['spread'].values()):.3f})"
    )
    return "\n".join(lines)


def check_corpus(files) -> list[Path]:
    """The corpus files, each checked to exist."""
    paths = [Path(f) for f in files]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise UserError(f"--corpus: no such file(s): {', '.join(missing)}")
    return paths
