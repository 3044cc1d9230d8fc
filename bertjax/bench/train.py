"""Training-step benchmark: tokens/s, model FLOPs/s and MFU of our step, and the same step in
HF PyTorch.

bertjax bench train --config bert_tiny [--config.KEY=VALUE ...] [--seq-len 128] [--json]
bertjax bench train --config bert_tiny --data DATASET_DIR [--steps 10] [--json]

On one synthetic batch of full rows (no dataset needed), or with `--data` on the dataset's
first `--steps` real batches as the loader serves them (packed or padded rows): our jitted
train step on every device, then transformers' BertForPreTraining with torch.optim.AdamW
doing the same step on the same (first) batch, in a process of its own (torch_reference.py;
skipped for packed rows, which transformers' model cannot keep apart). `tokens_per_s` counts
every position the step computes (padding included), `real_tokens_per_s` the non-pad ones.
MFU = model FLOPs per second / the peak of flops.device_peak: a known accelerator's published
dense bf16 peak, or on a CPU this machine's measured float32 matmul rate; the output names
which. Model FLOPs count padded positions too: they are what the hardware computes.
"""

import json
import time

from bertjax.errors import UserError
from bertjax.train import config as config_lib

BERT_VOCAB = 30522  # model.vocab_size 0 means "the dataset's"; with no dataset, BERT's own


def add_arguments(parser) -> None:
    """Options of `bertjax bench train`."""
    config_lib.add_config_arguments(parser)
    parser.add_argument(
        "--seq-len",
        type=int,
        default=None,
        help="tokens per row of the synthetic batch (default 128; with --data: the dataset's)",
    )
    parser.add_argument(
        "--data", default=None, help="time real batches of this prepared dataset (packed or not)"
    )
    parser.add_argument("--steps", type=int, default=10, help="timed steps (after 2 warm-up)")
    parser.add_argument("--no-hf", action="store_true", help="skip the PyTorch comparison")
    parser.add_argument(
        "--json", action="store_true", help="end with one JSON object on the last line"
    )


def time_ours(config, model_cfg, batches_np, steps: int) -> float:
    """Seconds per step of our jitted, sharded train step (after compile and 2 warm-up steps)
    over `batches_np` (one batch dict, or a list of them taken in turn)."""
    import jax

    from bertjax import attention
    from bertjax.train import sharding, step_setup
    from bertjax.train.head import pretraining_head

    if isinstance(batches_np, dict):
        batches_np = [batches_np]
    model_cfg, _ = attention.resolved_config(model_cfg, batches_np[0]["input_ids"].shape[1])
    mesh = sharding.make_mesh(config.mesh)
    setup = step_setup.build(config, pretraining_head(model_cfg, config.train.nsp), mesh)
    state = setup.init_state(jax.random.key(0))
    batches = [sharding.global_batch(b, mesh) for b in batches_np]
    return seconds_per_jax_step(setup.train_fn, state, batches, steps)


def seconds_per_jax_step(train_step, state, batches, steps: int) -> float:
    """Seconds per call of a jitted `train_step(state, batch, rng) -> (state, metrics)`, after
    compiling and one more warm-up step (the state is donated and threaded through); `batches`
    is one device batch, or a list of them taken in turn (step i gets batches[i % n])."""
    import jax

    batches = [batches] if isinstance(batches, dict) else list(batches)
    rng = jax.random.key(1)
    for i in range(2):  # compile, then one more so that timings exclude any first-run cost
        state, metrics = train_step(state, batches[i % len(batches)], rng)
    jax.block_until_ready((state, metrics))
    t0 = time.perf_counter()
    for i in range(steps):
        state, metrics = train_step(state, batches[i % len(batches)], rng)
    jax.block_until_ready((state, metrics))  # the whole output, not just the loss
    return (time.perf_counter() - t0) / steps


def time_hf(model_cfg, optim_cfg, batch_np, steps: int) -> dict:
    """torch_reference.time_in_subprocess of transformers' BertForPreTraining + torch AdamW on the
    same batch, in a process of its own."""
    from bertjax import hf
    from bertjax.bench.torch_reference import time_in_subprocess

    return time_in_subprocess(hf.config_to_hf(model_cfg), optim_cfg, batch_np, steps)


def dataset_batches(config, data_dir: str, steps: int):
    """(dataset, the loader's first `steps` global batches of it) with the config's masking:
    exactly what `bertjax train` would feed its first steps."""
    from bertjax.data import loader
    from bertjax.data.shards import open_dataset

    ds = open_dataset(data_dir)
    masking = config_lib.masking_config(config.data, ds)
    plan = loader.BatchPlan(len(ds), config.train.global_batch_size, config.train.seed, masking)
    vocab = loader.masking_vocab(ds, masking)
    return ds, [loader.batch_for_step(ds, vocab, plan, step) for step in range(steps)]


def dataset_model_config(config, ds, source: str):
    """The config's model for dataset `ds`; UserError naming `source` (the option that chose
    the dataset) if its rows are longer than the model's position embeddings."""
    model_cfg = config_lib.model_config(config.model, ds.vocab_size)
    if ds.max_seq_len > model_cfg.max_position_embeddings:
        raise UserError(
            f"{source}: {ds.max_seq_len}-token rows are above the model's "
            f"max_position_embeddings={model_cfg.max_position_embeddings}"
        )
    return model_cfg


def mean_per_step(batches: list[dict], steps: int, count) -> float:
    """The mean of `count(batch)` over `steps` steps that take `batches` in turn (as
    seconds_per_jax_step does)."""
    return sum(count(batches[i % len(batches)]) for i in range(steps)) / steps


def real_tokens(batch: dict) -> int:
    """The batch's non-pad tokens."""
    return int(batch["input_mask"].sum())


def synthetic_batches(config, model_cfg, seq_len: int) -> list[dict]:
    """One synthetic batch of full rows (every position a real token) at `seq_len`."""
    from bertjax.data.masking import default_max_predictions
    from bertjax.data.synthetic import synthetic_batch

    if seq_len > model_cfg.max_position_embeddings:
        raise UserError(
            f"--seq-len {seq_len} is above the model's "
            f"max_position_embeddings={model_cfg.max_position_embeddings}"
        )
    predictions = config.data.max_predictions_per_seq or default_max_predictions(
        seq_len, config.data.masked_lm_prob
    )
    if predictions > seq_len - 2:  # [CLS] and the last [SEP] are never masked
        raise UserError(
            f"data.max_predictions_per_seq={predictions} does not fit --seq-len {seq_len}: "
            f"at most {seq_len - 2} positions can be masked"
        )
    return [
        synthetic_batch(
            0,
            batch=config.train.global_batch_size,
            length=seq_len,
            predictions=predictions,
            vocab=model_cfg.vocab_size,
            padded=False,
        )
    ]


def run(args) -> int:
    """`bertjax bench train`: prints a table (and, with --json, a JSON line)."""
    import jax

    from bertjax.train import flops as flops_lib

    config = config_lib.load_config(args.config, args.config_overrides)
    config_lib.validate(config, jax.device_count(), jax.process_count())
    if args.steps < 1:
        raise UserError(f"--steps={args.steps}: must be positive")
    source, packed = "synthetic full rows", False
    if args.data:
        ds, batches = dataset_batches(config, args.data, args.steps)
        if args.seq_len not in (None, ds.max_seq_len):
            raise UserError(
                f"--seq-len {args.seq_len} differs from the {ds.max_seq_len} tokens "
                f"per row of --data {args.data}: leave it out"
            )
        model_cfg = dataset_model_config(config, ds, f"--data {args.data}")
        seq_len, packed = ds.max_seq_len, ds.packed
        source = f"{'packed' if packed else 'padded'} rows of {args.data}"
    else:
        model_cfg = config_lib.model_config(config.model, BERT_VOCAB)
        seq_len = args.seq_len or 128
        batches = synthetic_batches(config, model_cfg, seq_len)
    batch_size = config.train.global_batch_size
    predictions = batches[0]["masked_lm_positions"].shape[1]  # slots per row
    tokens = batch_size * seq_len
    # Over the timed steps, which take the batches in turn: real (non-pad) tokens and sequences.
    real = mean_per_step(batches, args.steps, real_tokens)
    sequences = mean_per_step(
        batches,
        args.steps,
        lambda b: float(b.get("next_sentence_weights", b["input_mask"][:, :1]).sum()),
    )
    say = lambda *a: print(*a, flush=True)

    say(
        f"bench train: {config.model.preset}, batch {batch_size} x {seq_len} tokens "
        f"({source}), {config.model.compute_dtype}, {jax.device_count()} "
        f"{jax.devices()[0].platform} device(s)"
    )
    peak = flops_lib.device_peak(jax.devices(), jax.local_devices()[0])
    say(f"MFU denominator: {peak.denominator}")
    ours_s = time_ours(config, model_cfg, batches, args.steps)
    flops = flops_lib.model_flops_per_step(model_cfg, batch_size, seq_len, predictions)
    result = {
        "preset": config.model.preset,
        "seq_len": seq_len,
        "global_batch_size": batch_size,
        "data": args.data,
        "packed": packed,
        "compute_dtype": config.model.compute_dtype,
        "devices": jax.device_count(),
        "device_kind": jax.devices()[0].device_kind,
        "step_s": ours_s,
        "tokens_per_s": tokens / ours_s,
        "real_tokens_per_s": real / ours_s,
        "real_token_fraction": real / tokens,
        "sequences_per_s": sequences / ours_s,
        "model_flops_per_step": flops,
        "model_flops_per_s": flops / ours_s,
        "mfu": flops / ours_s / peak.flops_per_s,
        "peak_flops": peak.flops_per_s,
        "peak_measured": peak.measured,
        "mfu_denominator": peak.denominator,
        "hf_tokens_per_s": None,
        "hf_process": None,  # the reference's own process: pid, torch_threads, jax_loaded
        "ratio_vs_hf": None,
        "hf_work_ratio": None,  # transformers' model FLOPs per step over ours
        "ratio_vs_hf_per_flop": None,
    }
    say(
        f"bertjax:      {result['tokens_per_s']:10.0f} tokens/s  "
        f"({result['real_tokens_per_s']:.0f} real, {result['real_token_fraction']:.1%})  "
        f"{ours_s * 1e3:8.1f} ms/step  {result['model_flops_per_s'] / 1e9:.1f} model GFLOP/s  "
        f"MFU {result['mfu']:.1%}"
    )
    if packed and not args.no_hf:
        say(
            "HF PyTorch:   skipped: transformers' BertForPreTraining has no packed rows (its "
            "attention would mix the sequences of a row)"
        )
    elif not args.no_hf:
        hf = time_hf(model_cfg, config.optim, batches[0], args.steps)
        result["hf_tokens_per_s"] = tokens / hf["step_s"]
        result["hf_process"] = {k: hf[k] for k in ("pid", "torch_threads", "jax_loaded")}
        result["ratio_vs_hf"] = result["tokens_per_s"] / result["hf_tokens_per_s"]
        # BertForPreTraining scores every token against the vocabulary (labels -100 where
        # nothing is masked), ours the masked slots only: part of the ratio is work it does
        # and we skip. Per model FLOP it compares with a fine-tuning head's, where both sides
        # compute the same (issue 27).
        hf_flops = flops_lib.model_flops_per_step(model_cfg, batch_size, seq_len, seq_len)
        result["hf_work_ratio"] = hf_flops / flops
        result["ratio_vs_hf_per_flop"] = result["ratio_vs_hf"] / result["hf_work_ratio"]
        say(
            f"HF PyTorch:   {result['hf_tokens_per_s']:10.0f} tokens/s  {hf['step_s'] * 1e3:8.1f} "
            f"ms/step  (own process, {hf['torch_threads']} threads, on the first batch; "
            f"ours / theirs = {result['ratio_vs_hf']:.2f}x)"
        )
        say(
            f"  of which work: transformers' MLM decoder runs at all {seq_len} tokens of a row, "
            f"ours at its {predictions} masked slots: {result['hf_work_ratio']:.2f}x our model "
            f"FLOPs; per model FLOP ours / theirs = {result['ratio_vs_hf_per_flop']:.2f}x"
        )
    if args.json:
        print(json.dumps(result))
    return 0
