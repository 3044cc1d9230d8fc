"""Training-step benchmark: tokens/s, model FLOPs/s and MFU of our step, and the same step in
HF PyTorch.

bertjax bench train --config bert_tiny [--config.KEY=VALUE ...] [--seq-len 128] [--json]

On one synthetic batch (no dataset needed): our jitted train step on every device, then
transformers' BertForPreTraining with torch.optim.AdamW doing the same step on the same
batch, in a process of its own (bench_torch.py). MFU = model FLOPs per second / the peak of
flops.device_peak: a known accelerator's published dense bf16 peak, or on a CPU this
machine's measured float32 matmul rate; the output names which.
"""

import json
import time

from bertjax.errors import UserError
from bertjax.train import config as config_lib

BERT_VOCAB = 30522  # model.vocab_size 0 means "the dataset's"; with no dataset, BERT's own


def add_arguments(parser) -> None:
    """Options of `bertjax bench train`."""
    config_lib.add_config_arguments(parser)
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per sequence")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (after 2 warm-up)")
    parser.add_argument("--no-hf", action="store_true", help="skip the PyTorch comparison")
    parser.add_argument(
        "--json", action="store_true", help="end with one JSON object on the last line"
    )


def time_ours(config, model_cfg, batch_np, steps: int) -> float:
    """Seconds per step of our jitted, sharded train step (after compile and 2 warm-up steps)."""
    import jax

    from bertjax import model as model_lib
    from bertjax.train import optim, sharding
    from bertjax.train import step as step_lib

    mesh = sharding.make_mesh(config.mesh)
    rules = sharding.logical_rules(config)
    tx, schedule = optim.make_optimizer(config.optim, config.train.steps)
    abstract, shardings = step_lib.state_shardings(model_cfg, tx, mesh, rules)
    sharding.check_divisible(abstract, shardings)
    state = step_lib.create_sharded_state(
        jax.random.key(0), model_cfg=model_cfg, tx=tx, shardings=shardings
    )
    train_step = step_lib.jit_train_step(
        mesh,
        rules,
        shardings,
        model=model_lib.BertForPreTraining(model_cfg),
        tx=tx,
        schedule=schedule,
        accum_steps=config.train.grad_accum_steps,
        nsp=config.train.nsp,
    )
    return seconds_per_jax_step(train_step, state, sharding.global_batch(batch_np, mesh), steps)


def seconds_per_jax_step(train_step, state, batch, steps: int) -> float:
    """Seconds per call of a jitted `train_step(state, batch, rng) -> (state, metrics)`, after
    compiling and one more warm-up step (the state is donated and threaded through)."""
    import jax

    rng = jax.random.key(1)
    for _ in range(2):  # compile, then one more so that timings exclude any first-run cost
        state, metrics = train_step(state, batch, rng)
    jax.block_until_ready((state, metrics))
    t0 = time.perf_counter()
    for _ in range(steps):
        state, metrics = train_step(state, batch, rng)
    jax.block_until_ready((state, metrics))  # the whole output, not just the loss
    return (time.perf_counter() - t0) / steps


def time_hf(model_cfg, optim_cfg, batch_np, steps: int) -> dict:
    """bench_torch.time_in_subprocess of transformers' BertForPreTraining + torch AdamW on the
    same batch, in a process of its own."""
    from bertjax import hf
    from bertjax.train.bench_torch import time_in_subprocess

    return time_in_subprocess("pretraining", hf.config_to_hf(model_cfg), optim_cfg, batch_np,
                              steps)


def run(args) -> int:
    """`bertjax bench train`: prints a table (and, with --json, a JSON line)."""
    import jax

    from bertjax.data.masking import default_max_predictions
    from bertjax.data.synthetic import synthetic_batch
    from bertjax.train import flops as flops_lib

    config = config_lib.load_config(args.config, args.config_overrides)
    config_lib.validate(config, jax.device_count(), jax.process_count())
    model_cfg = config_lib.model_config(config.model, BERT_VOCAB)
    if args.seq_len > model_cfg.max_position_embeddings:
        raise UserError(
            f"--seq-len {args.seq_len} is above the model's "
            f"max_position_embeddings={model_cfg.max_position_embeddings}"
        )
    batch_size = config.train.global_batch_size
    predictions = config.data.max_predictions_per_seq or default_max_predictions(
        args.seq_len, config.data.masked_lm_prob
    )
    if predictions > args.seq_len - 2:  # [CLS] and the last [SEP] are never masked
        raise UserError(
            f"data.max_predictions_per_seq={predictions} does not fit --seq-len {args.seq_len}: "
            f"at most {args.seq_len - 2} positions can be masked"
        )
    batch = synthetic_batch(0, batch=batch_size, length=args.seq_len, predictions=predictions,
                            vocab=model_cfg.vocab_size, padded=False)
    tokens = batch_size * args.seq_len
    say = lambda *a: print(*a, flush=True)

    say(
        f"bench train: {config.model.preset}, batch {batch_size} x {args.seq_len} tokens, "
        f"{config.model.compute_dtype}, {jax.device_count()} {jax.devices()[0].platform} "
        f"device(s)"
    )
    peak = flops_lib.device_peak(jax.devices(), jax.local_devices()[0])
    say(f"MFU denominator: {peak.denominator}")
    ours_s = time_ours(config, model_cfg, batch, args.steps)
    flops = flops_lib.model_flops_per_step(model_cfg, batch_size, args.seq_len, predictions)
    result = {
        "preset": config.model.preset,
        "seq_len": args.seq_len,
        "global_batch_size": batch_size,
        "compute_dtype": config.model.compute_dtype,
        "devices": jax.device_count(),
        "device_kind": jax.devices()[0].device_kind,
        "step_s": ours_s,
        "tokens_per_s": tokens / ours_s,
        "model_flops_per_step": flops,
        "model_flops_per_s": flops / ours_s,
        "mfu": flops / ours_s / peak.flops_per_s,
        "peak_flops": peak.flops_per_s,
        "peak_measured": peak.measured,
        "mfu_denominator": peak.denominator,
        "hf_tokens_per_s": None,
        "hf_process": None,  # the reference's own process: pid, torch_threads, jax_loaded
        "ratio_vs_hf": None,
    }
    say(
        f"bertjax:      {result['tokens_per_s']:10.0f} tokens/s  {ours_s * 1e3:8.1f} ms/step  "
        f"{result['model_flops_per_s'] / 1e9:.1f} model GFLOP/s  MFU {result['mfu']:.1%}"
    )
    if not args.no_hf:
        hf = time_hf(model_cfg, config.optim, batch, args.steps)
        result["hf_tokens_per_s"] = tokens / hf["step_s"]
        result["hf_process"] = {k: hf[k] for k in ("pid", "torch_threads", "jax_loaded")}
        result["ratio_vs_hf"] = result["tokens_per_s"] / result["hf_tokens_per_s"]
        say(
            f"HF PyTorch:   {result['hf_tokens_per_s']:10.0f} tokens/s  {hf['step_s'] * 1e3:8.1f} "
            f"ms/step  (own process, {hf['torch_threads']} threads; "
            f"ours / theirs = {result['ratio_vs_hf']:.2f}x)"
        )
    if args.json:
        print(json.dumps(result))
    return 0
