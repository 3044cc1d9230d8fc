"""Training-step benchmark: tokens/s and MFU of our step, and the same step in HF PyTorch.

bertjax bench train --config bert_tiny [--config.KEY=VALUE ...] [--seq-len 128] [--json]

On one synthetic batch (no dataset needed): our jitted train step on every device, then
transformers' BertForPreTraining with torch.optim.AdamW doing the same step on the same
batch, in the same process. MFU = model FLOPs per second / the matmul peak of this machine,
measured here with a large float32 matmul on the same devices.
"""

import json
import math
import time

import numpy as np

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


def model_flops_per_step(cfg, batch: int, seq_len: int, predictions: int) -> float:
    """Training FLOPs of one step (forward + backward = 3x forward), counting matmuls only:
    6 x (non-embedding parameters) x tokens, plus attention scores and mixing
    (12 x layers x batch x L^2 x hidden), plus the tied MLM decoder at the masked positions
    (6 x hidden x vocab x predictions). Embedding lookups are gathers, not matmuls."""
    h, layers = cfg.hidden_size, cfg.num_hidden_layers
    per_layer = 4 * h * h + 2 * h * cfg.intermediate_size  # q, k, v, out; the two FF matmuls
    dense = layers * per_layer + h * h + h * h + 2 * h  # + pooler, MLM transform, NSP head
    tokens = batch * seq_len
    attention = 12 * layers * batch * seq_len * seq_len * h
    decoder = 6 * h * cfg.vocab_size * batch * predictions
    return 6 * dense * tokens + attention + decoder


def matmul_peak_flops(devices, n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a jitted float32 [n, n] @ [n, n] per device, run on all `devices` at once."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec

    mesh = jax.make_mesh(
        (len(devices),), ("d",), devices=devices, axis_types=(jax.sharding.AxisType.Auto,)
    )
    sharding = NamedSharding(mesh, PartitionSpec("d"))
    key = jax.random.key(0)
    a = jax.device_put(jax.random.normal(key, (len(devices), n, n), jnp.float32), sharding)
    matmul = jax.jit(lambda x: jnp.einsum("dij,djk->dik", x, x), out_shardings=sharding)
    jax.block_until_ready(matmul(a))
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(matmul(a))
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 * len(devices) / best


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


def time_hf(model_cfg, optim_cfg, batch_np, steps: int) -> float:
    """Seconds per step of transformers' BertForPreTraining + torch AdamW on the same batch."""
    import torch
    import transformers

    from bertjax import hf

    torch.manual_seed(0)
    hf_cfg = transformers.BertConfig(**hf.config_to_hf(model_cfg))
    model = transformers.BertForPreTraining(hf_cfg).train()
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=float(optim_cfg.peak_lr),
        betas=(float(optim_cfg.b1), float(optim_cfg.b2)),
        eps=float(optim_cfg.eps),
        weight_decay=float(optim_cfg.weight_decay),
    )
    labels = np.full(batch_np["input_ids"].shape, -100, np.int64)
    np.put_along_axis(labels, batch_np["masked_lm_positions"], batch_np["masked_lm_ids"], axis=1)
    inputs = {
        "input_ids": torch.from_numpy(batch_np["input_ids"].astype(np.int64)),
        "token_type_ids": torch.from_numpy(batch_np["segment_ids"].astype(np.int64)),
        "attention_mask": torch.from_numpy(batch_np["input_mask"].astype(np.int64)),
        "labels": torch.from_numpy(labels),
        "next_sentence_label": torch.from_numpy(batch_np["next_sentence_labels"].astype(np.int64)),
    }

    return seconds_per_torch_step(model, optimizer, inputs, float(optim_cfg.clip_norm), steps)


def seconds_per_torch_step(model, optimizer, inputs: dict, clip_norm: float, steps: int) -> float:
    """Seconds per PyTorch training step (forward with `inputs` incl. labels, backward,
    global-norm clipping when clip_norm > 0, optimizer step), after 2 warm-up steps."""
    import torch

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = model(**inputs).loss
        loss.backward()
        if clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
        optimizer.step()
        return loss.detach().item()  # waits for the step, as our timer blocks on its output

    for _ in range(2):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) / steps


def run(args) -> int:
    """`bertjax bench train`: prints a table (and, with --json, a JSON line)."""
    import jax

    from bertjax.data.masking import default_max_predictions
    from bertjax.data.synthetic import synthetic_batch

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
    peak = matmul_peak_flops(jax.devices())
    say(f"matmul peak: {peak / 1e9:.1f} GFLOP/s (float32, all devices)")
    ours_s = time_ours(config, model_cfg, batch, args.steps)
    flops = model_flops_per_step(model_cfg, batch_size, args.seq_len, predictions)
    result = {
        "preset": config.model.preset,
        "seq_len": args.seq_len,
        "global_batch_size": batch_size,
        "compute_dtype": config.model.compute_dtype,
        "devices": jax.device_count(),
        "step_s": ours_s,
        "tokens_per_s": tokens / ours_s,
        "model_flops_per_step": flops,
        "mfu": flops / ours_s / peak,
        "matmul_peak_flops": peak,
        "hf_tokens_per_s": None,
        "ratio_vs_hf": None,
    }
    say(
        f"bertjax:      {result['tokens_per_s']:10.0f} tokens/s  {ours_s * 1e3:8.1f} ms/step  "
        f"MFU {result['mfu']:.1%}"
    )
    if not args.no_hf:
        hf_s = time_hf(model_cfg, config.optim, batch, args.steps)
        result["hf_tokens_per_s"] = tokens / hf_s
        result["ratio_vs_hf"] = result["tokens_per_s"] / result["hf_tokens_per_s"]
        say(
            f"HF PyTorch:   {result['hf_tokens_per_s']:10.0f} tokens/s  {hf_s * 1e3:8.1f} "
            f"ms/step  (ours / theirs = {result['ratio_vs_hf']:.2f}x)"
        )
    if args.json:
        print(json.dumps(result))
    return 0
