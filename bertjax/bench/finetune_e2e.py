"""`bertjax bench finetune --end-to-end`: a whole fine-tuning run, ours against the same run in
transformers, each in a fresh process of its own, on the same data, model and schedule.

bertjax bench finetune --end-to-end [--task sst2|squad] [--preset minilm] [--seq-len 128]
    [--train 2000] [--dev 500] [--epochs 4] [--batch-size 32] [--lr 1e-4] [--init FOLDER]
    [--json]

The data are generated offline from the demo corpus (`bertjax demo`'s): `--task sst2`
sentences in SST-2's layout (finetune_buckets.write_sst2_layout), `--task squad`
demo_tasks.write_squad_task's extractive questions; the model is a randomly initialised BERT
of --preset saved as a HuggingFace folder with a WordPiece vocabulary learnt from the text,
or with --init a HuggingFace BERT folder of the user's (a real checkpoint, its own vocabulary;
both sides start from it, the head fresh).
Ours is `bertjax finetune` with the task's config (its length buckets, a dev evaluation after
every epoch, the predictions and, for SQuAD, the exported model written at the end) and the
persistent compilation cache off, so every program it needs is compiled in the run; theirs is
torch_finetune.py's plain loop (every row padded to --seq-len, as run_glue.py / run_qa.py by
default). Each side's wall time is its whole process, start-up included; examples/s is
epochs x training examples over it, and the ratio ours over theirs.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bertjax import outputs
from bertjax.errors import UserError

TASKS = ("sst2", "squad")  # a GLUE task in SST-2's layout, and SQuAD v1.1
DEFAULTS = {"sst2": {"train": 2000, "dev": 500}, "squad": {"train": 2080, "dev": 150}}
# The demo task needs more than the recipes' 2e-5 from a random encoder (finetune_buckets).
LEARNING_RATE = 1e-4


def add_arguments(parser) -> None:
    """The options of the end-to-end mode (beside bench/finetune.py's own)."""
    parser.add_argument("--end-to-end", action="store_true",
                        help="time a whole fine-tuning run (train epochs, dev evaluation "
                        "after each, predictions), ours vs transformers, on generated data "
                        "(--task sst2 or squad)")  # fmt: skip
    parser.add_argument(
        "--train",
        type=int,
        default=None,
        help="end-to-end: training examples (default 2000; squad 2080)",
    )
    parser.add_argument(
        "--dev", type=int, default=None, help="end-to-end: dev examples (default 500; squad 150)"
    )
    parser.add_argument(
        "--lr", type=float, default=LEARNING_RATE, help="end-to-end: peak learning rate"
    )
    parser.add_argument(
        "--length-buckets",
        type=int,
        default=None,
        help="end-to-end: ours' --length-buckets (default: the task config's)",
    )
    parser.add_argument(
        "--corpus",
        default=None,
        help="end-to-end: a demo corpus folder already built (default: build one)",
    )
    parser.add_argument(
        "--workdir",
        default=None,
        help="end-to-end: where data and runs go (default: a temporary folder)",
    )
    parser.add_argument(
        "--init",
        default=None,
        help="end-to-end: a HuggingFace BERT folder (config.json, weights, vocab.txt) both "
        "sides fine-tune, instead of a random --preset model",
    )


def squad_windows(seq_len: int) -> dict:
    """Window settings that fit `seq_len`: run_squad.py's 64 / 128 at 384, scaled down below
    (our stride: tokens between window starts; transformers': tokens two windows share)."""
    query = min(64, seq_len // 4)
    stride = min(128, (seq_len - query - 3) // 2)
    return {"max_query_length": query, "doc_stride": stride,
            "overlap": seq_len - query - 3 - stride}  # fmt: skip


def build_inputs(args, root: Path) -> tuple[Path, Path]:
    """(data folder, model folder) of the run, generated in `root`."""
    from bertjax.bench.finetune_buckets import corpus_sentences, random_model, write_sst2_layout
    from bertjax.finetune import demo_tasks

    if args.corpus:
        sentences = corpus_sentences_in(Path(args.corpus))
    else:
        sentences = corpus_sentences(root / "corpus")
    data = root / "data"
    if args.task == "squad":
        demo_tasks.write_squad_task(sentences, data, n_train=args.train, n_dev=args.dev)
        used = sentences
    else:
        write_sst2_layout(data, sentences, args.train, args.dev)
        used = [line.split("\t")[0] for name in ("train", "dev")
                for line in (data / f"{name}.tsv").read_text().splitlines()[1:]]  # fmt: skip
    if args.init:
        return data, Path(args.init)
    model = random_model(
        root / "model", args.preset, used, args.seq_len, sinusoid_positions=args.task == "squad"
    )
    return data, model


def check_init_folder(folder: Path) -> None:
    """Raises UserError unless `folder` looks like a HuggingFace BERT folder both sides load."""
    if not folder.is_dir():
        raise UserError(f"--init {folder}: no such folder")
    missing = [name for name in ("config.json", "vocab.txt") if not (folder / name).is_file()]
    if missing:
        raise UserError(
            f"--init {folder}: not a HuggingFace BERT folder (missing {', '.join(missing)})"
        )
    if not any((folder / w).is_file() for w in ("model.safetensors", "pytorch_model.bin")):
        raise UserError(f"--init {folder}: holds no model.safetensors or pytorch_model.bin")


def corpus_sentences_in(folder: Path) -> list[str]:
    """The sentences of an already built demo corpus folder, filtered as corpus_sentences'."""
    from bertjax.bench.finetune_buckets import MAX_WORDS, MIN_WORDS

    files = sorted(folder.glob("*.txt"))
    if not files:
        raise UserError(f"--corpus {folder} holds no .txt files of the demo corpus")
    lines = (line for f in files for line in f.read_text().splitlines())
    return [s for s in dict.fromkeys(lines) if MIN_WORDS <= len(s.split()) <= MAX_WORDS]


def child_env() -> dict:
    """The environment of both children: this very bertjax importable."""
    package_root = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


def run_ours(args, data: Path, model: Path, workdir: Path) -> dict:
    """`bertjax finetune` in a new process: its wall seconds and last-epoch dev metrics."""
    cmd = [
        sys.executable,
        "-m",
        "bertjax",
        "finetune",
        "--task",
        args.task,
        "--init",
        str(model),
        "--data",
        str(data),
        "--workdir",
        str(workdir),
        "--max-seq-len",
        str(args.seq_len),
        "--epochs",
        str(args.epochs),
        "--batch-size",
        str(args.batch_size),
        "--lr",
        str(args.lr),
        "--seed",
        "0",
        "--config.train.compilation_cache_dir=",
    ]
    if args.length_buckets is not None:
        cmd += ["--length-buckets", str(args.length_buckets)]
    if args.task == "squad":
        windows = squad_windows(args.seq_len)
        cmd += [
            "--max-query-length",
            str(windows["max_query_length"]),
            "--doc-stride",
            str(windows["doc_stride"]),
        ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"`bertjax finetune` failed:\n{proc.stderr[-3000:]}")
    out = proc.stdout.strip().splitlines()
    buckets = next(
        (
            line.removeprefix("bertjax finetune: ")
            for line in out
            if line.startswith("bertjax finetune: length buckets")
        ),
        "",
    )
    return {"wall_s": wall, "dev": json.loads(out[-1]), "buckets": buckets}


def torch_request(args, config, data: Path, model: Path, out: Path) -> dict:
    """What torch_finetune.run reads: the run's data, model, sizes and our optimizer's
    settings (config.optim) at --lr."""
    optim = {k: float(config.optim[k]) for k in ("b1", "b2", "eps", "weight_decay", "clip_norm")}
    request = {
        "task": args.task,
        "model": str(model),
        "data": str(data),
        "out": str(out),
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "seed": 0,
        "optim": {
            **optim,
            "peak_lr": args.lr,
            "warmup_fraction": float(config.optim.warmup_fraction),
        },
    }
    if args.task == "squad":
        request |= {
            "stride": squad_windows(args.seq_len)["overlap"],
            "n_best": int(config.squad.n_best_size),
            "max_answer": int(config.squad.max_answer_length),
        }
    return request


def run_theirs(request: dict) -> dict:
    """torch_finetune's run in a new process that imports no JAX: its wall seconds and
    report."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "bertjax.bench.torch_finetune"],
                          input=json.dumps(request), capture_output=True, text=True,
                          env=child_env(), check=False)  # fmt: skip
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"the transformers run failed:\n{proc.stderr[-3000:]}")
    return {"wall_s": wall, **json.loads(proc.stdout.strip().splitlines()[-1])}


def check_args(args) -> None:
    """Raises UserError on options the end-to-end mode cannot run with."""
    if args.task not in TASKS:
        raise UserError(
            f"--end-to-end runs --task {' or '.join(TASKS)} (generated data), not {args.task}"
        )
    for key, value in DEFAULTS[args.task].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for flag in ("train", "dev", "batch_size", "epochs"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')}={getattr(args, flag)}: must be positive")
    if not 16 <= args.seq_len <= 512:
        raise UserError(f"--seq-len={args.seq_len}: between 16 and 512")
    if args.init:
        check_init_folder(Path(args.init))


def model_name(args) -> str:
    """What both sides fine-tune, as the table names it."""
    return f"the BERT of {args.init}" if args.init else f"random {args.preset} BERT"


def run(args, config) -> int:
    """Data and model, then both runs, then their table (and --json). `config`: the task's
    fine-tuning config (bench/finetune.task_config)."""
    check_args(args)
    if args.workdir:
        outputs.check_new_folder(args.workdir)
    say = lambda *a: print(*a, flush=True)
    with tempfile.TemporaryDirectory(prefix="bertjax-e2e-") as tmp:
        root = Path(args.workdir or tmp)
        data, model = build_inputs(args, root)
        say(
            f"bench finetune --end-to-end: {args.task}, {args.train} train / {args.dev} dev "
            f"generated examples, {model_name(args)}, seq {args.seq_len}, batch "
            f"{args.batch_size}, {args.epochs} epochs at lr {args.lr:g}; each side a fresh "
            f"process"
        )
        ours = run_ours(args, data, model, root / "ours")
        theirs = run_theirs(torch_request(args, config, data, model, root / "theirs"))
    examples = args.epochs * args.train
    ours["examples_per_s"] = examples / ours["wall_s"]
    theirs["examples_per_s"] = examples / theirs["wall_s"]
    ratio = ours["examples_per_s"] / theirs["examples_per_s"]
    main = "f1" if args.task == "squad" else "accuracy"
    say(f"ours: {ours['buckets']}")
    say(
        f"bertjax:      {ours['wall_s']:8.1f} s  {ours['examples_per_s']:8.1f} examples/s  "
        f"dev {main} {ours['dev'][main]:.4f}"
    )
    seconds = ", ".join(f"{k} {v:.1f} s" for k, v in theirs["seconds"].items())
    say(
        f"transformers: {theirs['wall_s']:8.1f} s  {theirs['examples_per_s']:8.1f} examples/s  "
        f"dev {main} {theirs['dev'][-1][main]:.4f}  ({seconds}; "
        f"{theirs['torch_threads']} threads)"
    )
    say(
        f"ours / transformers = {ratio:.2f}x examples/s (whole runs, start-up and compilation "
        "included)"
    )
    if args.json:
        print(
            json.dumps(
                {
                    "task": args.task,
                    "preset": None if args.init else args.preset,  # --init's model instead
                    "init": args.init,
                    "seq_len": args.seq_len,
                    "batch_size": args.batch_size,
                    "epochs": args.epochs,
                    "train_examples": args.train,
                    "dev_examples": args.dev,
                    "ours": ours,
                    "transformers": theirs,
                    "ratio_vs_hf": ratio,
                }
            )
        )
    return 0
