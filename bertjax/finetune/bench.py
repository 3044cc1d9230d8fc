"""Fine-tuning step benchmark: tokens/s of our classifier or span step vs transformers, and
epoch time.

bertjax bench finetune --preset base [--seq-len 128] [--batch-size 32] [--steps 10]
    [--task sst2] [--epochs 3] [--json]
bertjax bench finetune --preset base --task squad     (seq 384, 2 epochs: the SQuAD recipe)

On one synthetic batch (no data, no checkpoint needed): our jitted fine-tuning train step
(BertForSequenceClassification on the pooled output, or for SQuAD BertForQuestionAnswering's
start/end logits, BERT's AdamW with clipping at 1, the exact step `bertjax finetune` runs) on
every device, then transformers' model of the same head with torch.optim.AdamW doing the same
step on the same batch, in a process of its own (train/bench_torch.py). The estimate
multiplies our step time by the steps of `--epochs` epochs of the task's training set (every
batch padded to --seq-len, as `bertjax finetune` pads); it leaves out compilation and the dev
evaluation after each epoch.
"""

import json
import math

import numpy as np

from bertjax.errors import UserError

LEARNING_RATE = 2e-5  # the paper's first choice; it does not change the step's cost
# Training questions of train-v1.1.json / train-v2.0.json; the estimate counts one window per
# question (contexts longer than a window add about 1%).
SQUAD_TRAIN_EXAMPLES = {"squad": 87_599, "squad_v2": 130_319}


def add_arguments(parser) -> None:
    """Options of `bertjax bench finetune`."""
    from bertjax.finetune.tasks import TASKS
    from bertjax.model import PRESETS

    parser.add_argument("--preset", default="base", choices=tuple(PRESETS), help="model size")
    parser.add_argument("--seq-len", type=int, default=None,
                        help="tokens per sequence (default 128; SQuAD 384)")
    parser.add_argument("--batch-size", type=int, default=32, help="global batch size")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (after 2 warm-up)")
    parser.add_argument(
        "--task",
        default="sst2",
        help=f"GLUE task or SQuAD: its head and training-set size ({', '.join(TASKS)}, "
        "squad, squad_v2)",
    )
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs of the estimate (default 3; SQuAD 2)")
    parser.add_argument(
        "--json", action="store_true", help="end with one JSON object on the last line"
    )


def check_args(args, model_cfg) -> None:
    """Raises UserError on options no benchmark can run with."""
    for flag in ("seq_len", "batch_size", "steps", "epochs"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')}={getattr(args, flag)}: must be positive")
    if not 3 <= args.seq_len <= model_cfg.max_position_embeddings:
        raise UserError(
            f"--seq-len {args.seq_len} is outside [3, max_position_embeddings="
            f"{model_cfg.max_position_embeddings}] of preset {args.preset}"
        )


def classification_batch(batch_size: int, seq_len: int, vocab: int, task, seed: int = 0):
    """Full-length two-segment inputs (train/bench.py's synthetic batch), random labels of
    `task` (class ids, or scores in [0, 5] for a regression) and weights of 1."""
    from bertjax.data.synthetic import synthetic_batch

    full = synthetic_batch(seed, batch=batch_size, length=seq_len, predictions=1, vocab=vocab,
                           padded=False)
    batch = {k: full[k] for k in ("input_ids", "input_mask", "segment_ids")}
    rng = np.random.default_rng(seed)
    if task.is_regression:
        batch["labels"] = rng.uniform(0, 5, batch_size).astype(np.float32)
    else:
        batch["labels"] = rng.integers(0, task.num_labels, batch_size).astype(np.int32)
    batch["weights"] = np.ones(batch_size, np.float32)
    return batch


def span_batch(batch_size: int, seq_len: int, vocab: int, seed: int = 0):
    """Full-length two-segment inputs, random answer start/end positions in the second
    segment (end >= start) and weights of 1."""
    from bertjax.data.synthetic import synthetic_batch

    full = synthetic_batch(seed, batch=batch_size, length=seq_len, predictions=1, vocab=vocab,
                           padded=False)
    batch = {k: full[k] for k in ("input_ids", "input_mask", "segment_ids")}
    rng = np.random.default_rng(seed)
    context = np.argmax(batch["segment_ids"], axis=1)  # first position of segment B
    batch["start_positions"] = rng.integers(context, seq_len).astype(np.int32)
    batch["end_positions"] = rng.integers(batch["start_positions"], seq_len).astype(np.int32)
    batch["weights"] = np.ones(batch_size, np.float32)
    return batch


def bench_optim_config(total_steps: int):
    """The optimizer settings of the `finetune_glue` recipe at LEARNING_RATE."""
    from bertjax.finetune import step_setup
    from bertjax.train.config import load_config

    return step_setup.optim_config(load_config("finetune_glue"), LEARNING_RATE, total_steps)


def time_ours(model_cfg, head, batch_np, steps: int) -> float:
    """Seconds per step of `bertjax finetune`'s jitted train step (after compile and 2 warm-up
    steps), the batch split over every device."""
    import jax

    from bertjax.finetune import step_setup
    from bertjax.train import sharding
    from bertjax.train.bench import seconds_per_jax_step

    mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    ways = sharding.data_parallel_size(mesh)
    if len(batch_np["weights"]) % ways:
        raise UserError(
            f"--batch-size={len(batch_np['weights'])} is not divisible by the {ways} devices"
        )
    setup = step_setup.setup_step(
        model_cfg, head, bench_optim_config(steps + 2), steps + 2, mesh, jax.random.key(0)
    )
    batch = sharding.global_batch(batch_np, mesh)
    return seconds_per_jax_step(setup.train_fn, setup.state, batch, steps)


def time_hf(model_cfg, task, batch_np, steps: int) -> dict:
    """bench_torch.time_in_subprocess of transformers' BertForSequenceClassification (`task`
    a GLUE task) or BertForQuestionAnswering (None: SQuAD) + torch AdamW (same hyperparameters
    and clipping) on the same batch, in a process of its own."""
    from bertjax import hf
    from bertjax.train.bench_torch import time_in_subprocess

    if task is None:
        head, hf_config = "span", {**hf.config_to_hf(model_cfg),
                                   "architectures": ["BertForQuestionAnswering"]}
    else:
        head, hf_config = "classification", {
            **hf.config_to_hf(model_cfg), "architectures": ["BertForSequenceClassification"],
            "num_labels": task.num_labels}  # fmt: skip
    # bench_optim_config(steps + 2): what time_ours runs.
    return time_in_subprocess(head, hf_config, bench_optim_config(steps + 2), batch_np,
                              steps)  # fmt: skip


def estimate_hours(train_examples: int, epochs: int, batch_size: int, step_s: float) -> float:
    """Hours of `epochs` epochs of ceil(train_examples / batch_size) steps of `step_s` each."""
    return epochs * math.ceil(train_examples / batch_size) * step_s / 3600


def run(args) -> int:
    """`bertjax bench finetune`: prints the two throughputs, their ratio and the estimate
    (and, with --json, a JSON line)."""
    import jax

    from bertjax.finetune import heads, span_head
    from bertjax.finetune.tasks import TRAIN_EXAMPLES
    from bertjax.finetune.train import resolve_task
    from bertjax.model import preset_config
    from bertjax.train.bench import BERT_VOCAB

    name, task = resolve_task(args.task)  # task: None for SQuAD
    args.seq_len = args.seq_len or (128 if task else 384)
    args.epochs = args.epochs or (3 if task else 2)
    model_cfg = preset_config(args.preset, vocab_size=BERT_VOCAB)
    check_args(args, model_cfg)
    if task:
        head = heads.classifier_head(model_cfg, task.num_labels, task.is_regression)
        batch = classification_batch(args.batch_size, args.seq_len, model_cfg.vocab_size, task)
        outputs, train_examples = f"{task.num_labels} outputs", TRAIN_EXAMPLES[name]
    else:
        head = span_head.head(model_cfg)
        batch = span_batch(args.batch_size, args.seq_len, model_cfg.vocab_size)
        outputs, train_examples = "start/end logits", SQUAD_TRAIN_EXAMPLES[name]
    tokens = args.batch_size * args.seq_len
    real = int(batch["input_mask"].sum())  # all of them: the synthetic rows fill the length
    say = lambda *a: print(*a, flush=True)

    say(
        f"bench finetune: {args.preset} + {name} head ({outputs}), batch "
        f"{args.batch_size} x {args.seq_len} tokens, {args.steps} timed steps, "
        f"{jax.device_count()} {jax.devices()[0].platform} device(s)"
    )
    ours_s = time_ours(model_cfg, head, batch, args.steps)
    say(f"bertjax:      {tokens / ours_s:10.0f} tokens/s  {ours_s * 1e3:8.1f} ms/step  "
        f"({real / ours_s:.0f} real tokens/s)")
    hf = time_hf(model_cfg, task, batch, args.steps)
    hf_s = hf["step_s"]
    result = {
        "preset": args.preset,
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "devices": jax.device_count(),
        "step_s": ours_s,
        "tokens_per_s": tokens / ours_s,
        "real_tokens_per_s": real / ours_s,
        "hf_step_s": hf_s,
        "hf_process": {k: hf[k] for k in ("pid", "torch_threads", "jax_loaded")},
        "hf_tokens_per_s": tokens / hf_s,
        "ratio_vs_hf": (tokens / ours_s) / (tokens / hf_s),
        "task": name,
        "train_examples": train_examples,
        "epochs": args.epochs,
        "estimated_hours": estimate_hours(train_examples, args.epochs, args.batch_size, ours_s),
    }
    say(
        f"HF PyTorch:   {result['hf_tokens_per_s']:10.0f} tokens/s  {hf_s * 1e3:8.1f} ms/step  "
        f"(own process, {hf['torch_threads']} threads; ours / theirs = "
        f"{result['ratio_vs_hf']:.2f}x)"
    )
    steps = math.ceil(result["train_examples"] / args.batch_size)
    say(
        f"estimate: {args.epochs} epochs x {steps} steps ({result['train_examples']} "
        f"{name} training examples) = {result['estimated_hours']:.2f} h on this machine "
        "(without compilation and dev evaluation)"
    )
    if args.json:
        print(json.dumps(result))
    return 0
