"""Fine-tuning step benchmark: tokens/s of our step of a task's head vs transformers', and the
wall time of the task's recipe.

bertjax bench finetune --preset base [--task sst2] [--seq-len L] [--batch-size B] [--steps 10]
    [--epochs E] [--json]
bertjax bench finetune --preset base --task squad     (the SQuAD recipe's seq 384, 2 epochs)
bertjax bench finetune --preset base --task conll2003 / --task swag   (NER / multiple choice)
bertjax bench finetune --end-to-end --preset minilm --task squad --seq-len 128 --epochs 4
    (whole runs, ours vs transformers, each in its own process: finetune_e2e.py)

On one synthetic batch of full rows (no data, no checkpoint needed): the jitted fine-tuning
train step `bertjax finetune` runs for the task's head (BERT's AdamW with clipping at 1) on
every device, then transformers' model of the same head with torch.optim.AdamW doing the same
step on the same batch, in a process of its own (torch_reference.py). Sequence length, batch
size, epochs and learning rate default to the task's fine-tuning config (kinds.py). The
estimate multiplies our step time by the steps of the epochs over the task's published
training set (every batch padded to the sequence length); it leaves out compilation and the
dev evaluation after each epoch.
"""

import json
import math

from bertjax.bench import finetune_e2e
from bertjax.errors import UserError


def add_arguments(parser) -> None:
    """Options of `bertjax bench finetune`."""
    from bertjax.model_config import PRESETS

    parser.add_argument("--preset", default="base", choices=tuple(PRESETS), help="model size")
    parser.add_argument(
        "--task",
        default="sst2",
        help="the task whose head, recipe and training-set size to take "
        "(any task of `bertjax finetune`)",
    )
    parser.add_argument(
        "--seq-len",
        type=int,
        default=None,
        help="tokens per sequence (default: the task config's data.max_seq_len)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="global batch size (default: train.global_batch_size)",
    )
    parser.add_argument("--steps", type=int, default=10, help="timed steps (after 2 warm-up)")
    parser.add_argument(
        "--epochs", type=int, default=None, help="epochs of the estimate (default: train.epochs)"
    )
    parser.add_argument(
        "--json", action="store_true", help="end with one JSON object on the last line"
    )
    finetune_e2e.add_arguments(parser)


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


def task_config(task: str, args):
    """The task's fine-tuning config (its kind's default) with the benchmark's batch size and
    sequence length; fills the options left unset from it."""
    from bertjax.finetune.kinds import default_config
    from bertjax.train.config import load_config

    config = load_config(default_config(task), [f"task={task}"])
    if args.seq_len and args.seq_len != config.data.max_seq_len and "squad" in config:
        # run_squad.py's query and stride do not fit a shorter row: scale them as the
        # end-to-end bench does (the step's batch does not depend on them)
        windows = finetune_e2e.squad_windows(args.seq_len)
        config.squad.max_query_length = windows["max_query_length"]
        config.squad.doc_stride = windows["doc_stride"]
    args.seq_len = args.seq_len or config.data.max_seq_len
    args.batch_size = args.batch_size or config.train.global_batch_size
    args.epochs = args.epochs or config.train.epochs
    config.data.max_seq_len, config.train.global_batch_size = args.seq_len, args.batch_size
    return config


def time_ours(config, head, batch_np, steps: int) -> float:
    """Seconds per step of `bertjax finetune`'s jitted train step of `head` (after compile and
    2 warm-up steps), the batch split over every device."""
    import jax

    from bertjax.bench.train import seconds_per_jax_step
    from bertjax.finetune.train import optim_config
    from bertjax.train import sharding, step_setup

    mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    ways = sharding.data_parallel_size(mesh)
    if len(batch_np["weights"]) % ways:
        raise UserError(
            f"--batch-size={len(batch_np['weights'])} is not divisible by the {ways} devices"
        )
    total = steps + 2
    optim_cfg = optim_config(config, config.optim.learning_rates[0], total)
    setup = step_setup.build(config, head, mesh, optim_cfg=optim_cfg, total_steps=total)
    state = setup.init_state(jax.random.key(0))
    return seconds_per_jax_step(setup.train_fn, state, sharding.global_batch(batch_np, mesh), steps)


def time_hf(config, head, batch_np, steps: int) -> dict:
    """torch_reference.time_in_subprocess of transformers' model of `head` + torch AdamW (the
    same hyperparameters and clipping) on the same batch, in a process of its own."""
    from bertjax import hf
    from bertjax.bench.torch_reference import time_in_subprocess
    from bertjax.finetune.train import optim_config

    optim_cfg = optim_config(config, config.optim.learning_rates[0], steps + 2)
    return time_in_subprocess(
        hf.config_to_hf(head.model.cfg, head.spec), optim_cfg, batch_np, steps
    )


def work_ratio(head, model_cfg, batch: dict, ratio_vs_hf: float) -> dict:
    """Model FLOPs per step of ours and of transformers' model of the same head
    (flops.model_flops_per_step without the MLM decoder; ours less what cls_only skips), and
    the throughput ratio per model FLOP, as `bench train` reports pretraining's."""
    from bertjax.train import flops as flops_lib

    seq_len = batch["input_ids"].shape[-1]
    rows = batch["input_ids"].size // seq_len  # multiple choice: every choice is a row
    theirs = flops_lib.model_flops_per_step(model_cfg, rows, seq_len, predictions=0)
    ours = theirs
    if getattr(head.model, "cls_only", False):
        ours -= flops_lib.cls_only_flops_saved(model_cfg, rows, seq_len)
    return {
        "model_flops_per_step": ours,
        "hf_work_ratio": theirs / ours,
        "ratio_vs_hf_per_flop": ratio_vs_hf * ours / theirs,
    }


def estimate_hours(train_examples: int, epochs: int, batch_size: int, step_s: float) -> float:
    """Hours of `epochs` epochs of ceil(train_examples / batch_size) steps of `step_s` each."""
    return epochs * math.ceil(train_examples / batch_size) * step_s / 3600


def run(args) -> int:
    """`bertjax bench finetune`: prints the two throughputs, their ratio and the estimate
    (and, with --json, a JSON line)."""
    import jax

    from bertjax.bench.train import BERT_VOCAB
    from bertjax.finetune.kinds import make_kind
    from bertjax.model_config import preset_config

    config = task_config(args.task, args)
    if args.end_to_end:
        return finetune_e2e.run(args, config)
    kind = make_kind(config)
    model_cfg = preset_config(args.preset, vocab_size=BERT_VOCAB)
    check_args(args, model_cfg)
    head = kind.head(model_cfg)
    batch = kind.synthetic_batch(args.batch_size, args.seq_len, model_cfg.vocab_size)
    tokens = batch["input_ids"].size  # batch x seq_len (x the choices of multiple choice)
    real = int(batch["input_mask"].sum())  # all of them: the synthetic rows fill the length
    say = lambda *a: print(*a, flush=True)

    rows = "x".join(map(str, batch["input_ids"].shape[1:-1]))
    say(
        f"bench finetune: {args.preset} + {kind.name} head ({head.spec.architecture}), batch "
        f"{args.batch_size}{f' x {rows} choices' if rows else ''} x {args.seq_len} tokens, "
        f"{args.steps} timed steps, "
        f"{jax.device_count()} {jax.devices()[0].platform} device(s)"
    )
    ours_s = time_ours(config, head, batch, args.steps)
    say(
        f"bertjax:      {tokens / ours_s:10.0f} tokens/s  {ours_s * 1e3:8.1f} ms/step  "
        f"({real / ours_s:.0f} real tokens/s)"
    )
    hf = time_hf(config, head, batch, args.steps)
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
        "task": kind.name,
        "train_examples": kind.train_examples,
        "epochs": args.epochs,
        "estimated_hours": None
        if kind.train_examples is None
        else estimate_hours(kind.train_examples, args.epochs, args.batch_size, ours_s),
    }
    say(
        f"HF PyTorch:   {result['hf_tokens_per_s']:10.0f} tokens/s  {hf_s * 1e3:8.1f} ms/step  "
        f"(own process, {hf['torch_threads']} threads; ours / theirs = "
        f"{result['ratio_vs_hf']:.2f}x)"
    )
    result |= work_ratio(head, model_cfg, batch, result["ratio_vs_hf"])
    if result["hf_work_ratio"] != 1.0:
        say(
            f"  of which work: ours runs the last layer at [CLS] alone, transformers at every "
            f"token: {result['hf_work_ratio']:.3f}x our model FLOPs; per model FLOP ours / "
            f"theirs = {result['ratio_vs_hf_per_flop']:.2f}x"
        )
    if kind.train_examples is None:
        say(f"estimate: none ({kind.name} has no published training-set size)")
    else:
        steps = math.ceil(result["train_examples"] / args.batch_size)
        say(
            f"estimate: {args.epochs} epochs x {steps} steps ({result['train_examples']} "
            f"{kind.name} training examples) = {result['estimated_hours']:.2f} h on this "
            "machine (without compilation and dev evaluation)"
        )
    if args.json:
        print(json.dumps(result))
    return 0
