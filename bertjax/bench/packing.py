"""Packing benchmark: real tokens/s of packed vs padded rows, and time to the same accuracy.

bertjax bench packing [--config bert_tiny] [--config.KEY=VALUE ...] [--seq-lens 128,512]
    [--steps 400] [--json]
    [--input FILES... --tokenizer DIR]   (default: the offline demo corpus, its own WordPiece)

One run, everything side by side on this machine:
1. The corpus prepared at each `--seq-lens` length twice with the same seed: padded (one
   instance per row) and `--pack`ed; the manifests give each layout's packing efficiency
   (real tokens / row capacity). Both hold the very same sequences.
2. Throughput: our jitted train step on each dataset's first `--timed-steps` loader batches
   (`bench train --data`), rows x length = `--tokens-per-batch` positions per step; real
   (non-pad) tokens/s packed over padded is the speed-up.
3. Time to accuracy, at the first length: `bertjax train` of the config in subprocesses, on
   the same number of real tokens: `--steps` steps each, the packed ones of fewer rows (as
   many as hold a padded batch's real tokens, so about the same sequences per step and the
   same schedule), each with `--seeds` seeds, all scored on the
   padded held-out split (the same sequences). The noise band is the larger of the two
   layouts' seed spreads: packing "reaches the same accuracy" when the two layouts' mean
   accuracies differ by no more than it. Times: the steps alone (from the logged tokens/s),
   and each whole process (start-up, compilation with the persistent cache off, training,
   the evaluation).
"""

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bertjax import outputs
from bertjax.errors import UserError
from bertjax.train import config as config_lib

LAYOUTS = ("padded", "packed")


def add_arguments(parser) -> None:
    """Options of `bertjax bench packing`."""
    config_lib.add_config_arguments(parser, "bert_tiny")
    parser.add_argument(
        "--seq-lens",
        default="128,512",
        help="comma-separated row lengths; the first is also the accuracy run's",
    )
    parser.add_argument(
        "--input",
        nargs="+",
        default=None,
        help="corpus files in BERT format (default: the offline demo corpus)",
    )
    parser.add_argument(
        "--tokenizer",
        default=None,
        help="tokenizer folder (default: WordPiece trained on the corpus)",
    )
    parser.add_argument(
        "--vocab-size",
        type=int,
        default=8000,
        help="WordPiece size when the tokenizer is trained here",
    )
    parser.add_argument(
        "--max-sequences-per-row",
        type=int,
        default=3,
        help="K of the packed datasets (prepare --max-sequences-per-row)",
    )
    parser.add_argument("--dupe-factor", type=int, default=2, help="prepare --dupe-factor")
    parser.add_argument(
        "--tokens-per-batch",
        type=int,
        default=8192,
        help="rows x length of every timed and trained batch",
    )
    parser.add_argument(
        "--timed-steps",
        type=int,
        default=10,
        help="throughput: timed steps (after 2 warm-up), each a new batch",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=400,
        help="accuracy: training steps of the padded run (0: skip)",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=2,
        help="accuracy: runs of each layout (train.seed 0, 1, ...); the noise "
        "band is the larger spread of their accuracies",
    )
    parser.add_argument(
        "--held-out", type=int, default=1024, help="accuracy: held-out sequences it is scored on"
    )
    parser.add_argument(
        "--workdir", default=None, help="where datasets and runs go (default: a temporary folder)"
    )
    parser.add_argument(
        "--json", action="store_true", help="end with one JSON object on the last line"
    )


def _say(msg: str) -> None:
    print(msg, flush=True)


def check_args(args) -> list[int]:
    """The sequence lengths; UserError on options no benchmark can run with."""
    try:
        lengths = [int(x) for x in args.seq_lens.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--seq-lens {args.seq_lens!r}: comma-separated integers") from None
    if not lengths or any(n < 8 for n in lengths):
        raise UserError(f"--seq-lens {args.seq_lens!r}: lengths of at least 8 tokens")
    for flag in ("tokens_per_batch", "timed_steps", "dupe_factor", "vocab_size", "seeds"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')}={getattr(args, flag)}: must be positive")
    if args.steps < 0 or (args.steps and args.held_out < 1):
        raise UserError("--steps must be >= 0, and --held-out positive when it is not 0")
    for n in lengths:
        if args.tokens_per_batch % n:
            raise UserError(
                f"--tokens-per-batch {args.tokens_per_batch} is not a multiple of "
                f"the row length {n}"
            )
    return lengths


def corpus_and_tokenizer(args, root: Path):
    """(corpus files, tokenizer): the given ones, or the demo corpus and its WordPiece."""
    from bertjax.commands import demo
    from bertjax.data.tokenizer import load_tokenizer

    files = (
        [Path(f) for f in args.input]
        if args.input
        else demo.build_corpus(root / "corpus", "stdlib", None)
    )
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise UserError(f"--input: no such file(s): {', '.join(missing)}")
    if args.tokenizer:
        return files, load_tokenizer(args.tokenizer)
    return files, demo.build_tokenizer(files, root / "tokenizer", args.vocab_size)


def prepare_pair(files, tokenizer, root: Path, seq_len: int, args, held_out: int) -> dict:
    """layout -> (dataset folder, its manifest), both of the same sequences."""
    from bertjax.data.corpus import TextCorpus
    from bertjax.data.prepare_engine import InstanceOptions, prepare_dataset

    out = {}
    for layout in LAYOUTS:
        folder = root / f"data_{seq_len}_{layout}"
        packing = {"pack": True, "max_sequences_per_row": args.max_sequences_per_row}
        opts = InstanceOptions(
            max_seq_len=seq_len,
            seed=0,
            dupe_factor=args.dupe_factor,
            block_docs=200,
            **(packing if layout == "packed" else {}),
        )
        corpus = TextCorpus([str(f) for f in files], "bert", "strict")
        manifest = prepare_dataset(
            corpus, tokenizer, folder, opts, held_out=held_out, overwrite=True, progress=False
        )
        out[layout] = (folder, manifest)
    return out


def efficiency(manifest: dict, layout: str) -> float:
    """Real tokens / row capacity of the packed dataset's manifest, for either layout."""
    return manifest["layout"][f"efficiency_{'unpacked' if layout == 'padded' else 'packed'}"]


def throughput(args, data: dict, seq_len: int) -> dict:
    """layout -> bench train's figures on that dataset's first batches (this process)."""
    import jax

    from bertjax.bench import train as bench

    rows = args.tokens_per_batch // seq_len
    out = {}
    for layout, (folder, _) in data.items():
        config = config_lib.load_config(
            args.config, [*args.config_overrides, f"--config.train.global_batch_size={rows}"]
        )
        config_lib.validate(config, jax.device_count(), jax.process_count())
        ds, batches = bench.dataset_batches(config, str(folder), args.timed_steps)
        model_cfg = bench.dataset_model_config(config, ds, f"--seq-lens {seq_len}")
        step_s = bench.time_ours(config, model_cfg, batches, args.timed_steps)
        real = bench.mean_per_step(batches, args.timed_steps, bench.real_tokens)
        out[layout] = {
            "rows": rows,
            "step_s": step_s,
            "tokens_per_s": rows * seq_len / step_s,
            "real_tokens_per_s": real / step_s,
            "real_token_fraction": real / (rows * seq_len),
        }
    return out


def train_run(
    args,
    data_dir: Path,
    eval_dir: Path,
    workdir: Path,
    steps: int,
    rows: int,
    seq_len: int,
    seed: int,
) -> dict:
    """One `bertjax train` process: its wall time, the time of its steps alone (no start-up,
    compilation or evaluation) and its final held-out metrics."""
    from bertjax.train.metrics_writer import read_metrics

    cmd = [
        sys.executable,
        "-m",
        "bertjax.cli",
        "train",
        "--config",
        args.config,
        *(f"--config.{o}" for o in args.config_overrides),
        "--workdir",
        str(workdir),
        f"--config.data.train_dir={data_dir}",
        f"--config.data.eval_dir={eval_dir}",
        f"--config.train.steps={steps}",
        f"--config.train.global_batch_size={rows}",
        f"--config.train.seed={seed}",
        f"--config.train.eval_every={steps}",
        f"--config.train.checkpoint_every={steps}",
        f"--config.train.log_every={max(1, steps // 4)}",
        f"--config.optim.warmup_steps={max(1, steps // 10)}",
        # Off, so that every run compiles its step: a cached one would start sooner.
        "--config.train.compilation_cache_dir=",
    ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall_s = time.perf_counter() - start
    if proc.returncode:
        raise UserError(f"training run {workdir.name} failed:\n{proc.stderr[-2000:]}")
    logged = read_metrics(workdir)
    final = [r for r in logged if r.get("split") == "eval"][-1]
    # Seconds of the steps alone: each logged row's tokens/s covers the steps since the last.
    train_rows, last, train_s = [r for r in logged if r.get("split") == "train"], 0, 0.0
    for r in train_rows:
        train_s += (r["step"] - last) * rows * seq_len / r["tokens_per_s"]
        last = r["step"]
    return {
        "steps": steps,
        "seed": seed,
        "wall_s": wall_s,
        "train_s": train_s,
        "eval_mlm_accuracy": final["eval_mlm_accuracy"],
        "eval_nsp_accuracy": final.get("eval_nsp_accuracy"),
    }


def time_to_accuracy(args, data: dict, seq_len: int, root: Path) -> dict:
    """Padded and packed runs on the same real tokens, `--seeds` each, on the same eval split:
    each layout's mean accuracy and time, and the noise band (the larger seed spread; 0 with
    one seed)."""
    import jax

    rows = args.tokens_per_batch // seq_len
    padded_eff, packed_eff = (efficiency(data["packed"][1], k) for k in LAYOUTS)
    # The same real tokens in every step, so the same steps and learning-rate schedule: a
    # packed step takes fewer rows (a whole number per device), each holding more sequences.
    # (The same rows in fewer steps would be a larger batch in sequences: early in training,
    # fewer optimizer steps on larger batches reach a lower accuracy per token.)
    devices = jax.device_count()
    packed_rows = max(devices, round(rows * padded_eff / packed_eff / devices) * devices)
    layout_rows = {"padded": rows, "packed": packed_rows}
    eval_dir = data["padded"][0] / "eval"
    runs, summary = {}, {}
    for layout in LAYOUTS:
        for seed in range(args.seeds):
            name = f"{layout}_seed{seed}"
            _say(f"  training {name}: {args.steps} steps of {layout_rows[layout]} x {seq_len}")
            runs[name] = train_run(
                args,
                data[layout][0],
                eval_dir,
                root / f"run_{name}",
                args.steps,
                layout_rows[layout],
                seq_len,
                seed,
            )
        seeds = [runs[f"{layout}_seed{s}"] for s in range(args.seeds)]
        accuracy = [r["eval_mlm_accuracy"] for r in seeds]
        summary[layout] = {
            "rows": layout_rows[layout],
            "real_tokens": args.steps
            * layout_rows[layout]
            * seq_len
            * efficiency(data["packed"][1], layout),
            "mlm_accuracy_mean": sum(accuracy) / len(seeds),
            "seed_spread": max(accuracy) - min(accuracy),
            "train_s_mean": sum(r["train_s"] for r in seeds) / len(seeds),
            "wall_s_mean": sum(r["wall_s"] for r in seeds) / len(seeds),
        }
    band = max(summary[k]["seed_spread"] for k in LAYOUTS)
    gap = summary["packed"]["mlm_accuracy_mean"] - summary["padded"]["mlm_accuracy_mean"]
    return {
        "seq_len": seq_len,
        "steps": args.steps,
        "runs": runs,
        "layouts": summary,
        "noise_band": band,
        "packed_minus_padded": gap,
        "same_accuracy": abs(gap) <= band,
        "train_ratio_padded_over_packed": summary["padded"]["train_s_mean"]
        / summary["packed"]["train_s_mean"],
        "wall_ratio_padded_over_packed": summary["padded"]["wall_s_mean"]
        / summary["packed"]["wall_s_mean"],
    }


def report_accuracy(acc: dict) -> None:
    """Prints the time-to-accuracy table."""
    lay = acc["layouts"]
    _say(
        f"time to accuracy at {acc['seq_len']} tokens, {acc['steps']} steps of the same real "
        f"tokens (padded {lay['padded']['rows']} rows, packed {lay['packed']['rows']}; "
        f"{lay['padded']['real_tokens']:.0f} and {lay['packed']['real_tokens']:.0f} real tokens "
        f"in all), scored on the padded held-out split (the same sequences):"
    )
    for name, r in acc["runs"].items():
        _say(
            f"  {name:>13}: MLM acc {r['eval_mlm_accuracy']:.4f}  NSP acc "
            f"{r['eval_nsp_accuracy']:.4f}  steps {r['train_s']:.1f} s  process "
            f"{r['wall_s']:.1f} s"
        )
    _say(
        f"  MLM accuracy packed - padded (means over seeds): {acc['packed_minus_padded']:+.4f}, "
        f"noise band (larger seed spread) {acc['noise_band']:.4f}: "
        f"{'within' if acc['same_accuracy'] else 'OUTSIDE'} the band"
    )
    _say(
        f"  time padded / packed: steps {acc['train_ratio_padded_over_packed']:.2f}x, "
        f"process {acc['wall_ratio_padded_over_packed']:.2f}x"
    )


def run(args) -> int:
    """`bertjax bench packing`: prints the tables (and, with --json, a JSON line)."""
    lengths = check_args(args)
    config_lib.load_config(args.config, args.config_overrides)  # fails before any work
    if args.workdir:  # its datasets and runs, never into a user's
        outputs.check_new_folder(args.workdir)
    with tempfile.TemporaryDirectory(prefix="bertjax-bench-packing-") as tmp:
        root = Path(args.workdir or tmp)
        root.mkdir(parents=True, exist_ok=True)
        files, tokenizer = corpus_and_tokenizer(args, root)
        result = {
            "config": args.config,
            "max_sequences_per_row": args.max_sequences_per_row,
            "tokens_per_batch": args.tokens_per_batch,
            "lengths": {},
            "accuracy": None,
        }
        _say(
            f"bench packing: {args.config}, {args.tokens_per_batch} positions per step, "
            f"K={args.max_sequences_per_row}; real tokens/s measured side by side, this run"
        )
        _say(
            f"{'length':>6} {'layout':>7} {'efficiency':>10} {'tokens/s':>10} "
            f"{'real tokens/s':>13} {'ms/step':>8}"
        )
        for i, seq_len in enumerate(lengths):
            held_out = args.held_out if i == 0 and args.steps else 0
            data = prepare_pair(files, tokenizer, root, seq_len, args, held_out)
            figures = throughput(args, data, seq_len)
            for layout in LAYOUTS:
                f = figures[layout] | {"efficiency": efficiency(data["packed"][1], layout)}
                figures[layout] = f
                _say(
                    f"{seq_len:>6} {layout:>7} {f['efficiency']:>10.1%} "
                    f"{f['tokens_per_s']:>10.0f} {f['real_tokens_per_s']:>13.0f} "
                    f"{f['step_s'] * 1e3:>8.1f}"
                )
            speedup = (
                figures["packed"]["real_tokens_per_s"] / figures["padded"]["real_tokens_per_s"]
            )
            result["lengths"][str(seq_len)] = {**figures, "real_tokens_speedup": speedup}
            _say(f"{seq_len:>6} packed / padded real tokens/s: {speedup:.2f}x")
            if i == 0 and args.steps:
                acc = time_to_accuracy(args, data, seq_len, root)
                result["accuracy"] = acc
        if result["accuracy"]:
            report_accuracy(result["accuracy"])
    if args.json:
        print(json.dumps(result))
    return 0
