"""Length buckets vs padding: examples/s and the dev score of one fine-tuning, both ways per seed.

bertjax bench finetune-buckets [--task sst2] [--rule any] [--preset tiny] [--train 8000]
    [--dev 1000] [--epochs 3] [--batch-size 32] [--max-seq-len 128] [--length-buckets 4]
    [--seeds 2] [--json]
bertjax bench finetune-buckets --task squad    (3,000 questions, windows of 64, 5 epochs)

In one run, on the offline demo corpus (`bertjax demo`'s): `--task sst2`, short single
sentences in SST-2's layout (train.tsv / dev.tsv: sentence, label), labelled 1 when the
sentence holds one of a few frequent words (`--rule any`, about half positive; a tiny BERT
learns it from scratch) or holds one in its first half (`--rule first-half`: harder, it does
not saturate); `--task squad`, demo_tasks.write_squad_task's extractive questions (the text in
a sentence's parentheses), scored by F1. A WordPiece vocabulary is learnt from the text and a
BERT of --preset randomly initialised. The same `bertjax finetune` run (the task's recipe, the
model's own steps) is then made with --length-buckets K and with 0 (every batch padded to
--max-seq-len), for each of --seeds seeds, so that the seed-to-seed noise of the dev score is
measured beside the difference between the two. Training examples/s count epochs 2.. only:
epoch 1, the first runs of every program (compiled before it), is a warm-up; the dev
evaluation and the compilation are outside the clock too.
"""

import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bertjax import outputs
from bertjax.errors import UserError

MIN_WORDS, MAX_WORDS = 3, 40  # SST-2's sentences: a few words to a few dozen
# A randomly initialised model needs more than BERT's 2e-5: bert-tiny learnt the label at 3e-4
# (dev accuracy 0.993 after 3 epochs of 8,000 sentences); small runs at 1e-4 stayed near chance.
LEARNING_RATE = 3e-4
RULES = ("any", "first-half")  # --rule: a keyword anywhere, or in the sentence's first half
# --task squad's defaults: tests/test_finetune_squad.py's generated task (windows of 64
# tokens, questions cut to 16, stride 16; 3,000 training questions, 5 epochs at lr 3e-3).
SQUAD_DEFAULTS = {"train": 3000, "dev": 150, "epochs": 5, "max_seq_len": 64, "lr": 3e-3}


def add_arguments(parser) -> None:
    """Options of `bertjax bench finetune-buckets`."""
    from bertjax.model_config import PRESETS

    parser.add_argument(
        "--task",
        default="sst2",
        choices=("sst2", "squad"),
        help="SST-2-layout sentences, or SQuAD-style extractive questions",
    )
    parser.add_argument(
        "--rule",
        default="any",
        choices=RULES,
        help="sst2's label: a keyword anywhere, or in the first half",
    )
    parser.add_argument("--preset", default="tiny", choices=tuple(PRESETS), help="model size")
    # The demo corpus has ~15,000 distinct sentences of 3-40 words: room for 8,000 + 1,000.
    parser.add_argument(
        "--train",
        type=int,
        default=None,
        help="training sentences or questions (default 8000; squad 3000)",
    )
    parser.add_argument("--dev", type=int, default=None, help="dev ones (default 1000; 150)")
    parser.add_argument(
        "--epochs", type=int, default=None, help="at least 2, epoch 1 untimed (default 3; squad 5)"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="global batch size")
    parser.add_argument(
        "--max-seq-len",
        type=int,
        default=None,
        help="the padded runs' length (default 128; squad 64)",
    )
    parser.add_argument("--length-buckets", type=int, default=4, help="the bucketed runs' K")
    parser.add_argument("--seeds", type=int, default=2, help="seeds of each (noise band)")
    parser.add_argument(
        "--lr",
        type=float,
        default=None,
        help=f"peak learning rate (default {LEARNING_RATE:g}; squad 3e-3)",
    )
    parser.add_argument("--workdir", help="where data and runs go (default: a temporary one)")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")


def fill_defaults(args) -> None:
    """The options left unset, from the task's defaults."""
    squad = args.task == "squad"
    defaults = (
        SQUAD_DEFAULTS
        if squad
        else {"train": 8_000, "dev": 1_000, "epochs": 3, "max_seq_len": 128, "lr": LEARNING_RATE}
    )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if squad and args.rule != "any":
        raise UserError("--rule applies to --task sst2")


def check_args(args) -> None:
    """Raises UserError on options no benchmark can run with."""
    for flag in ("train", "dev", "batch_size", "length_buckets", "seeds"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')}={getattr(args, flag)}: must be positive")
    if args.epochs < 2:
        raise UserError(f"--epochs={args.epochs}: at least 2 (epoch 1 is a warm-up)")
    if not 8 <= args.max_seq_len <= 512:
        raise UserError(f"--max-seq-len={args.max_seq_len}: between 8 and 512")


def corpus_sentences(folder: Path) -> list[str]:
    """The demo corpus's distinct sentences of MIN_WORDS..MAX_WORDS words (built in a child
    process: it imports hundreds of stdlib modules to read their docstrings)."""
    cmd = [sys.executable, "-m", "bertjax.data.demo_corpus", str(folder)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise UserError(f"building the demo corpus failed: {proc.stderr.strip()[-500:]}")
    lines = (line for f in sorted(folder.glob("*.txt")) for line in f.read_text().splitlines())
    return [s for s in dict.fromkeys(lines) if MIN_WORDS <= len(s.split()) <= MAX_WORDS]


def keywords(sentences: list[str]) -> list[str]:
    """Frequent words, most frequent first, taken while the sentences holding any of them
    stay under 55%, until they reach 45%: a label of about half positives."""
    words = [set(s.lower().split()) for s in sentences]
    counts = {}
    for ws in words:
        for w in ws:
            counts[w] = counts.get(w, 0) + 1
    chosen, covered = [], np.zeros(len(sentences), bool)
    for w in sorted(counts, key=lambda w: (-counts[w], w)):
        with_w = covered | np.array([w in ws for ws in words])
        if with_w.mean() <= 0.55:
            chosen, covered = chosen + [w], with_w
        if covered.mean() >= 0.45 or len(chosen) >= 8:
            break
    return chosen


def write_sst2_layout(
    folder: Path, sentences: list[str], n_train: int, n_dev: int, rule: str = "any"
) -> dict:
    """train.tsv and dev.tsv (sentence, label) of distinct sentences, label 1 when one of
    `keywords` is in it (`rule` "any") or in its first half of words ("first-half");
    returns their summary."""
    if len(sentences) < n_train + n_dev:
        raise UserError(
            f"the demo corpus has {len(sentences)} short sentences, fewer than "
            f"--train + --dev = {n_train + n_dev}"
        )
    order = np.random.default_rng(0).permutation(len(sentences))[: n_train + n_dev]
    chosen = [sentences[i].replace("\t", " ") for i in order]
    keys = set(keywords(chosen))

    def label(sentence: str) -> int:
        words = sentence.lower().split()
        return int(
            bool(keys & set(words[: (len(words) + 1) // 2 if rule == "first-half" else len(words)]))
        )

    labels = [label(s) for s in chosen]
    folder.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", slice(0, n_train)), ("dev", slice(n_train, None))):
        rows = [f"{s}\t{y}\n" for s, y in zip(chosen[part], labels[part])]
        (folder / f"{name}.tsv").write_text("sentence\tlabel\n" + "".join(rows))
    return {"keywords": sorted(keys), "positive": float(np.mean(labels)),
            "mean_words": float(np.mean([len(s.split()) for s in chosen]))}  # fmt: skip


def random_model(
    folder: Path,
    preset: str,
    sentences: list[str],
    max_seq_len: int,
    sinusoid_positions: bool = False,
) -> Path:
    """A randomly initialised BERT of `preset` with a WordPiece vocabulary learnt from
    `sentences`, as a HuggingFace folder. `sinusoid_positions`: position embeddings that start
    as sinusoids (Vaswani et al.) scaled to the token embeddings' size, without which a model
    this small needs thousands of steps before it attends to neighbouring tokens (the span
    task)."""
    import jax
    from flax import linen as nn

    from bertjax import hf
    from bertjax import model as model_lib
    from bertjax.data.tokenizer import train_wordpiece

    tokenizer = train_wordpiece(sentences, 4000, folder)
    cfg = model_lib.preset_config(preset, vocab_size=tokenizer.vocab_size,
                                  max_position_embeddings=max(512, max_seq_len))  # fmt: skip
    params = jax.jit(lambda k: nn.meta.unbox(model_lib.init_params(cfg, k)))(jax.random.key(0))
    if sinusoid_positions:
        position = np.arange(cfg.max_position_embeddings)[:, None]
        dim = np.arange(cfg.hidden_size)[None, :]
        angle = position / 10_000 ** (dim // 2 * 2 / cfg.hidden_size)
        table = 0.2 * np.where(dim % 2 == 0, np.sin(angle), np.cos(angle))
        params["bert"]["embeddings"]["position_embeddings"]["embedding"] = table.astype(np.float32)
    return hf.write_folder(params, cfg, folder, [folder / "vocab.txt"])


class _NoWriter:
    """StepMetrics' writer for timed runs: the bench reports its own figures."""

    def write(self, step, metrics) -> None:
        pass


def time_run(args, data: Path, model: Path, root: Path, buckets: int, seed: int) -> dict:
    """One fine-tuning of `bertjax finetune` (train.prepare, start_session, train_epoch,
    evaluate) in root/run_k<buckets>_s<seed>, timed per epoch; its training examples/s and
    tokens/s over epochs 2.., and its dev score (accuracy, or SQuAD's F1) after the last
    epoch. The runs share a compilation cache in root: the programs of a second seed are the
    first's (it shortens the untimed start_session only)."""
    import jax

    from bertjax.finetune import train as ft
    from bertjax.train.config import load_config
    from bertjax.train.step_metrics import StepMetrics

    squad = args.task == "squad"
    windows = ["squad.max_query_length=16", "squad.doc_stride=16"] if squad else []
    cfg = load_config("finetune_squad" if squad else "finetune_glue", [
        f"task={args.task}", f"init={model}", f"data.dir={data}",
        f"data.max_seq_len={args.max_seq_len}", f"data.length_buckets={buckets}",
        f"train.epochs={args.epochs}", f"train.global_batch_size={args.batch_size}",
        f"optim.learning_rates=({args.lr},)", f"train.seed={seed}", "train.log_every=1000000",
        f"train.compilation_cache_dir={root / 'jax_cache'}", *windows])  # fmt: skip
    run = ft.prepare(cfg, root / f"run_k{buckets}_s{seed}")
    steps = run.plan.steps_per_epoch(args.batch_size)
    session = ft.start_session(run, args.lr, args.epochs * steps)
    metrics = StepMetrics(_NoWriter(), 0, 0, remedy=ft.NAN_REMEDY)
    state, step, seconds = session.state, 0, []
    for epoch in range(args.epochs):
        start = time.perf_counter()
        state, step = ft.train_epoch(run, session, state, epoch, step, metrics)
        jax.block_until_ready(state)
        seconds.append(time.perf_counter() - start)
    dev, _ = ft.evaluate(run, session.predict_fn, state.params)
    train = run.splits["train"]
    timed = args.epochs - 1
    padded = sum(args.batch_size * length
                 for length, _ in run.plan.epoch(args.batch_size, seed, 0))  # fmt: skip
    clock = sum(seconds[1:])
    return {
        "length_buckets": buckets, "seed": seed, "bucket_lengths": list(run.plan.lengths),
        "steps_per_epoch": steps, "first_epoch_s": seconds[0], "timed_s": clock,
        "examples_per_s": timed * len(train) / clock,
        "real_tokens_per_s": timed * int(train.arrays["input_mask"].sum()) / clock,
        "tokens_per_s": timed * padded / clock, "task": args.task,
        "dev_score": dev["f1"] if args.task == "squad" else dev["accuracy"],
    }  # fmt: skip


def summary(runs: list[dict]) -> dict:
    """Mean examples/s and dev score of each side, their ratio and differences, and the
    noise band: the largest dev-score difference between two seeds of the same side."""
    side = {name: [r for r in runs if (r["length_buckets"] > 0) == (name == "bucketed")]
            for name in ("bucketed", "padded")}  # fmt: skip
    mean = {name: {k: float(np.mean([r[k] for r in rs])) for k in
                   ("examples_per_s", "real_tokens_per_s", "tokens_per_s", "dev_score")}
            for name, rs in side.items()}  # fmt: skip
    band = max((max(r["dev_score"] for r in rs) - min(r["dev_score"] for r in rs)
                for rs in side.values()), default=0.0)  # fmt: skip
    diff = mean["bucketed"]["dev_score"] - mean["padded"]["dev_score"]
    return {
        "mean": mean,
        "examples_per_s_ratio": mean["bucketed"]["examples_per_s"]
        / mean["padded"]["examples_per_s"],
        "dev_score_difference": diff,
        "noise_band": band,
        "within_noise": abs(diff) <= band,
    }


def table(runs: list[dict], result: dict) -> str:
    """The side-by-side table and the verdict lines."""
    lines = [f"{'run':<22}{'examples/s':>12}{'real tok/s':>12}{'padded tok/s':>14}"
             f"{'steps/epoch':>13}{'dev':>9}"]  # fmt: skip
    for r in runs:
        name = (f"buckets {'/'.join(map(str, r['bucket_lengths']))}" if r["length_buckets"]
                else f"padded {r['bucket_lengths'][0]}")  # fmt: skip
        lines.append(f"{name + ' s' + str(r['seed']):<22}{r['examples_per_s']:>12.1f}"
                     f"{r['real_tokens_per_s']:>12.0f}{r['tokens_per_s']:>14.0f}"
                     f"{r['steps_per_epoch']:>13}{r['dev_score']:>9.4f}")  # fmt: skip
    m = result["mean"]
    lines.append(
        f"bucketed / padded examples/s: {result['examples_per_s_ratio']:.2f}x; dev "
        f"{'F1' if runs[0].get('task') == 'squad' else 'accuracy'} "
        f"{m['bucketed']['dev_score']:.4f} vs {m['padded']['dev_score']:.4f} "
        f"(difference {result['dev_score_difference']:+.4f}; noise band, the largest "
        f"seed-to-seed difference of one side: {result['noise_band']:.4f}; "
        f"{'within' if result['within_noise'] else 'OUTSIDE'} the noise)"
    )
    return "\n".join(lines)


def run(args) -> int:
    """`bertjax bench finetune-buckets`: data, model, the runs, the table (and --json)."""
    import jax

    fill_defaults(args)
    check_args(args)
    if args.workdir:  # its data, model and runs, never into a user's
        outputs.check_new_folder(args.workdir)
    say = lambda *a: print(*a, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.workdir or tmp)
        sentences = corpus_sentences(root / "corpus")
        if args.task == "squad":
            from bertjax.finetune import demo_tasks

            demo_tasks.write_squad_task(
                sentences, root / "data", n_train=args.train, n_dev=args.dev
            )
            data = {"questions": {"train": args.train, "dev": args.dev}}
            model = random_model(
                root / "model", args.preset, sentences, args.max_seq_len, sinusoid_positions=True
            )
            say(
                f"bench finetune-buckets: {args.train} train / {args.dev} dev SQuAD-style "
                f"questions on demo-corpus sentences (the text in parentheses), windows of "
                f"{args.max_seq_len}; random {args.preset} BERT (sinusoid positions); "
                f"{args.epochs} epochs of batch {args.batch_size}, lr {args.lr:g}; "
                f"{jax.device_count()} {jax.devices()[0].platform} device(s)"
            )
        else:
            data = write_sst2_layout(root / "data", sentences, args.train, args.dev, args.rule)
            used = [
                line.split("\t")[0]
                for name in ("train", "dev")
                for line in (root / "data" / f"{name}.tsv").read_text().splitlines()[1:]
            ]
            model = random_model(root / "model", args.preset, used, args.max_seq_len)
            where = "in its first half" if args.rule == "first-half" else "anywhere"
            say(
                f"bench finetune-buckets: {args.train} train / {args.dev} dev demo-corpus "
                f"sentences in SST-2's layout (mean {data['mean_words']:.1f} words, "
                f"{data['positive']:.0%} positive: holds one of {', '.join(data['keywords'])} "
                f"{where}); random {args.preset} BERT; {args.epochs} epochs of batch "
                f"{args.batch_size}, lr {args.lr:g}; {jax.device_count()} "
                f"{jax.devices()[0].platform} device(s)"
            )
        runs = []
        for seed in range(args.seeds):
            for buckets in (args.length_buckets, 0):
                runs.append(time_run(args, root / "data", model, root, buckets, seed))
        result = summary(runs)
    say(table(runs, result))
    say(
        f"examples/s and tokens/s: epochs 2-{args.epochs} (epoch 1 is a warm-up); compilation, "
        "dev evaluation, data and model preparation excluded"
    )
    if args.json:
        print(json.dumps({**result, "runs": runs, "data": data, "preset": args.preset,
                          "task": args.task, "rule": args.rule,
                          "devices": jax.device_count()}))  # fmt: skip
    return 0 if all(math.isfinite(r["dev_score"]) for r in runs) else 1
