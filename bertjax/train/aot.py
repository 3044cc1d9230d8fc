"""Ahead-of-time compilation of the pretraining step for a TPU slice that is not here: the step
`bertjax train` would run with a config, compiled by the real TPU compiler on this host for
abstract arguments, and what the compiled program needs per chip and could do.

Memory is the compiler's: `memory_analysis()` of the executable (per chip). FLOPs are read
from the compiled program with every loop body counted once per trip (hlo_cost.py; XLA's
`cost_analysis()` counts a loop body once, so its figures for scanned layers or gradient
accumulation are a layer's or a micro-batch's). The compiler's roofline (`optimal_seconds`
of its cost analysis) is reported only for programs without such loops, for the same reason.
"""

from __future__ import annotations

import dataclasses
import re
import time

from bertjax.errors import UserError
from bertjax.train import flops as flops_lib
from bertjax.train import hlo_cost

# The share of a chip's HBM kept free beyond what the compiled step needs. The compiler already
# refuses a program above its own limit, which keeps the runtime's reservation out (measured:
# 0.25 GiB of a v5e, 1.25 of a v4); what it cannot see is what lives beside the step during a
# run: the evaluation step's activations next to the resident train state, the next batch
# already on the device, and allocator fragmentation between executables.
HBM_HEADROOM = 0.05
# The vocabulary a config with model.vocab_size=0 ("the dataset's") is compiled with when no
# dataset is named: BERT's uncased WordPiece, the vocabulary of the paper's recipes.
BERT_VOCAB_SIZE = 30522


@dataclasses.dataclass(frozen=True)
class BatchLayout:
    """The shapes of one global batch, as the loader builds them (loader.py, packing.py)."""

    seq_len: int  # L: tokens per row
    predictions: int  # masked-LM slots per row (packed: for all its sequences together)
    max_sequences_per_row: int | None  # K of packed rows; None: one sequence per row, padded
    vocab_size: int
    source: str  # where the shapes came from: a dataset's manifest, or the flags

    @property
    def sequences_per_row(self) -> int:
        return self.max_sequences_per_row or 1


def batch_layout(
    config, *, seq_len: int, max_sequences_per_row: int | None, source: str
) -> BatchLayout:
    """The layout of the config's batches at `seq_len` (packed when `max_sequences_per_row`),
    masked as the config's `data` section says; vocabulary: model.vocab_size, or BERT's."""
    from bertjax.data import masking, packing

    if max_sequences_per_row is not None:
        packing.validate_max_sequences(max_sequences_per_row, seq_len, config.train.nsp)
    prob = config.data.masked_lm_prob
    per_seq = config.data.max_predictions_per_seq or masking.default_max_predictions(seq_len, prob)
    try:
        cfg = masking.MaskingConfig(per_seq, prob, config.data.whole_word_masking)
    except ValueError as e:
        raise UserError(str(e)) from None
    slots = (
        per_seq
        if max_sequences_per_row is None
        else masking.packed_prediction_slots(max_sequences_per_row, seq_len, cfg)
    )
    return BatchLayout(
        seq_len, slots, max_sequences_per_row, config.model.vocab_size or BERT_VOCAB_SIZE, source
    )


def dataset_layout(config, data_dir: str) -> BatchLayout:
    """The layout of the batches of the dataset at `data_dir` (its manifest alone is read)."""
    from bertjax.data import packing, shards

    manifest = shards.read_manifest(data_dir)
    layout = batch_layout(
        config,
        seq_len=int(manifest["max_seq_len"]),
        max_sequences_per_row=packing.sequences_per_row(manifest),
        source=f"dataset {data_dir}",
    )
    return dataclasses.replace(layout, vocab_size=int(manifest["tokenizer"]["vocab_size"]))


def abstract_batch(layout: BatchLayout, global_batch_size: int) -> dict:
    """ShapeDtypeStructs of one global batch: the keys, shapes and dtypes of the loader's
    batches (tests/test_compile.py checks them against it)."""
    import jax
    import jax.numpy as jnp

    B, L, P, K = global_batch_size, layout.seq_len, layout.predictions, layout.sequences_per_row
    shapes = {
        "input_ids": ((B, L), jnp.int32),
        "input_mask": ((B, L), jnp.int32),
        "segment_ids": ((B, L), jnp.int32),
        "masked_lm_positions": ((B, P), jnp.int32),
        "masked_lm_ids": ((B, P), jnp.int32),
        "masked_lm_weights": ((B, P), jnp.float32),
        "next_sentence_labels": ((B,), jnp.int32),
    }
    if layout.max_sequences_per_row is not None:
        shapes |= {
            "attn_segment_ids": ((B, L), jnp.int32),
            "position_ids": ((B, L), jnp.int32),
            "next_sentence_positions": ((B, K), jnp.int32),
            "next_sentence_labels": ((B, K), jnp.int32),
            "next_sentence_weights": ((B, K), jnp.float32),
        }
    return {k: jax.ShapeDtypeStruct(shape, dtype) for k, (shape, dtype) in shapes.items()}


def expected_matmul_flops(model_cfg, config, layout: BatchLayout, attention_impl: str) -> dict:
    """What the compiled matmuls should add up to, from `flops.model_flops_per_step` and the
    two terms by which they knowingly differ (recomputation is what remains):

    heads_at_every_token: model_flops_per_step counts the pooler, NSP head and MLM transform
      at every token (6 x parameters x tokens); the model runs the pooler and NSP head at each
      sequence's [CLS] and the MLM transform at the prediction slots only.
    attention_in_kernel: a fused attention kernel's matmuls run inside a custom call, where
      no FLOP count of the compiled program sees them.
    """
    B, L, h = config.train.global_batch_size, layout.seq_len, model_cfg.hidden_size
    model = flops_lib.model_flops_per_step(model_cfg, B, L, layout.predictions)
    counted = (2 * h * h + 2 * h) * B * L
    run = h * h * B * layout.predictions
    if config.train.nsp:  # else the pooler and NSP head feed no loss and are not computed
        run += (h * h + 2 * h) * B * layout.sequences_per_row
    attention = 12 * model_cfg.num_hidden_layers * B * L * L * h
    return {
        "model_per_step": model,
        "heads_at_every_token": 6 * (counted - run),
        "attention_in_kernel": attention if attention_impl != "xla" else 0,
    }


def _gib(n_bytes: float) -> str:
    return f"{n_bytes / flops_lib.GIB:.2f} GiB"


_COMPILER_OOM = re.compile(
    r"(?:required for HLO temporaries \(|Used )([\d.]+)([KMGT])\)?.*?"
    r"(?:exceeds available HBM \(| of )([\d.]+)([KMGT])",
    re.S,
)
_UNITS = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def compiler_oom(message: str) -> tuple[float, float] | None:
    """(bytes needed, bytes available) from the TPU compiler's out-of-memory error, if it is one."""
    match = _COMPILER_OOM.search(message)
    if "RESOURCE_EXHAUSTED" not in message or not match:
        return None
    need, need_unit, have, have_unit = match.groups()
    return float(need) * _UNITS[need_unit], float(have) * _UNITS[have_unit]


def refused_memory(oom: tuple[float, float], device_kind: str) -> dict:
    """memory_report's dict for a step the TPU compiler refused: `oom` is compiler_oom's
    (bytes needed, bytes available); a chip of unknown HBM is taken to have what the compiler
    said was available."""
    need, available = oom
    hbm = flops_lib.chip_hbm(device_kind)
    return {
        "total_bytes": need,
        "hbm_bytes": available if hbm is None else hbm,
        "compiler_available_bytes": available,
        "limit_bytes": int(available if hbm is None else hbm * (1 - HBM_HEADROOM)),
        "headroom": HBM_HEADROOM,
        "fits": False,
        "refused_by_compiler": True,
    }


def _compile_or_oom(lowered):
    """(compiled executable, None), or (None, compiler_oom's bytes) when the TPU compiler ran
    out of HBM; any other compiler error is raised."""
    import jax

    try:
        return lowered.compile(), None
    except jax.errors.JaxRuntimeError as e:
        oom = compiler_oom(str(e))
        if oom is None:
            raise
        return None, oom


def _no_fit_error(memory: dict, mesh, config) -> UserError:
    """no_fit_message's UserError for this process's chips on `mesh`."""
    import jax

    report = {
        "memory_per_chip": memory,
        "mesh": dict(mesh.shape),
        "chips": jax.device_count(),
        "device_kind": jax.local_devices()[0].device_kind,
    }
    return UserError(no_fit_message(report, config))


def compile_fitting(lowered, mesh, config):
    """`lowered.compile()`; the TPU compiler's refusal of a step too large for the chip is a
    UserError, no_fit_message's sentence of the bytes and what in `config` to change, not the
    compiler's trace. `bertjax train` and `bertjax finetune` compile their steps here."""
    import jax

    compiled, oom = _compile_or_oom(lowered)
    if compiled is None:
        raise _no_fit_error(refused_memory(oom, jax.local_devices()[0].device_kind), mesh, config)
    return compiled


def compile_step(train_fn, args):
    """(compiled executable or None, seconds to lower, seconds to compile, the compiler's
    (needed, available) bytes when it ran out of HBM)."""
    start = time.perf_counter()
    lowered = train_fn.trace(*args).lower()
    lowered_at = time.perf_counter()
    compiled, oom = _compile_or_oom(lowered)
    return compiled, lowered_at - start, time.perf_counter() - lowered_at, oom


def memory_report(compiled, device_kind: str) -> dict:
    """Per-chip bytes of the compiled step; for a chip of CHIP_HBM also its HBM, the limit
    (HBM less HBM_HEADROOM) and whether the step fits ("fits" None for another device)."""
    stats = compiled.memory_analysis()
    argument, output = stats.argument_size_in_bytes, stats.output_size_in_bytes
    alias, temp = stats.alias_size_in_bytes, stats.temp_size_in_bytes
    code = stats.generated_code_size_in_bytes
    # Donated state: outputs aliased to arguments take no memory of their own.
    total = argument + output - alias + temp + code
    hbm = flops_lib.chip_hbm(device_kind)
    limit = None if hbm is None else int(hbm * (1 - HBM_HEADROOM))
    return {
        "argument_bytes": argument,
        "output_bytes": output,
        "alias_bytes": alias,
        "temp_bytes": temp,
        "code_bytes": code,
        "total_bytes": total,
        "hbm_bytes": hbm,
        "limit_bytes": limit,
        "headroom": HBM_HEADROOM,
        "fits": None if limit is None else total <= limit,
    }


def describe_memory(memory: dict) -> str:
    """One log line of memory_report's figures."""
    line = (
        f"the compiled step needs {_gib(memory['total_bytes'])} per device (arguments "
        f"{_gib(memory['argument_bytes'])}, temporaries {_gib(memory['temp_bytes'])})"
    )
    if memory["hbm_bytes"] is not None:
        line += f" of {_gib(memory['hbm_bytes'])} HBM (usable {_gib(memory['limit_bytes'])}): " + (
            "fits" if memory["fits"] else "does not fit"
        )
    return line


def check_fits(compiled, mesh, config, log) -> None:
    """Logs what a compiled train step needs per device (`log`: one line); on a chip whose HBM
    is known (a TPU) a step that cannot fit is a UserError naming the bytes and what to change
    (`no_fit_message`), raised before the first step rather than an out-of-memory trace
    during it. A backend that reports no memory: nothing."""
    import jax

    if compiled.memory_analysis() is None:
        return
    memory = memory_report(compiled, jax.local_devices()[0].device_kind)
    log(describe_memory(memory))
    if memory["fits"] is False:
        raise _no_fit_error(memory, mesh, config)


def flops_report(compiled, expected: dict, chips: int) -> dict:
    """Compiled matmul FLOPs of a step (all chips) against the model's, and XLA's own count."""
    cost = hlo_cost.analyze(compiled.as_text())
    compiled_flops = cost.matmul_flops * chips
    explained = (
        expected["model_per_step"]
        - expected["heads_at_every_token"]
        - expected["attention_in_kernel"]
    )
    xla = _cost_analysis(compiled)
    return {
        **expected,
        "compiled_matmul_per_step": compiled_flops,
        "ratio": compiled_flops / expected["model_per_step"],
        "recomputed": compiled_flops - explained,  # remat (ours or the compiler's)
        "matmuls_in_loops": cost.matmul_flops != cost.matmul_flops_loops_once,
        "loops_of_unknown_trip_count": cost.loops_of_unknown_trip_count,
        "xla_cost_analysis_flops_per_chip": xla.get("flops"),
        "kernels": list(cost.kernels),
    }


def _cost_analysis(compiled) -> dict:
    costs = compiled.cost_analysis()
    if isinstance(costs, (list, tuple)):  # older JAX: one dict per program
        costs = costs[0] if costs else {}
    return dict(costs or {})


def roofline_report(
    compiled, flops: dict, *, tokens_per_step: int, chips: int, device_kind: str
) -> dict:
    """Step-time bounds, labelled: the compiler's roofline estimate (`optimal_seconds` of its
    cost analysis: per operation the slower of its FLOPs at peak and its bytes at HBM
    bandwidth) and the compiled matmuls at the chip's dense bf16 peak."""
    peak = flops_lib.chip_peak(device_kind)
    per_chip_matmul = flops["compiled_matmul_per_step"] / chips

    def bound(step_s):
        return {
            "step_s": step_s,
            "tokens_per_s": tokens_per_step / step_s,
            "mfu": flops["model_per_step"] / (step_s * peak * chips),
        }

    optimal = _cost_analysis(compiled).get("optimal_seconds")
    if flops["matmuls_in_loops"]:
        compiler = {
            "unavailable": "XLA's cost analysis counts each loop body once (scanned "
            "layers, gradient accumulation); compile with model.scan_layers=false and "
            "train.grad_accum_steps=1 for its roofline"
        }
    elif optimal is None or optimal <= 0:
        # HloCostAnalysis prices an operation it cannot cost at -1 s, and sums regardless.
        compiler = {
            "unavailable": "the compiler's cost analysis could not price some "
            f"operations (optimal_seconds={optimal})"
        }
    else:
        compiler = bound(optimal)
    return {
        "compiler_estimate": compiler,
        "matmuls_at_peak": bound(per_chip_matmul / peak),
        "peak_flops_per_chip": peak,
    }


def compile_for_slice(config, tpu_slice, layout: BatchLayout, progress=print) -> dict:
    """Compiles the pretraining step of `config` for `tpu_slice` (topology.Slice) with batches
    of `layout`; returns the report (JSON-ready). Its "fits" is False when the step needs more
    than the chip's HBM less HBM_HEADROOM, or when the compiler refused it for lack of HBM."""
    from bertjax import attention
    from bertjax.train import config as config_lib
    from bertjax.train import sharding, step_setup
    from bertjax.train.head import pretraining_head

    config_lib.validate(config, tpu_slice.chips, tpu_slice.hosts)
    model_cfg = config_lib.model_config(config.model, layout.vocab_size)
    config_lib.validate_against_data(
        config, model_cfg, layout.seq_len, layout.vocab_size, layout.source, platform="tpu"
    )
    model_cfg, choice = attention.resolved_config(model_cfg, layout.seq_len, platform="tpu")
    mesh = sharding.make_mesh(config.mesh, tpu_slice.devices)
    setup = step_setup.build(config, pretraining_head(model_cfg, config.train.nsp), mesh)
    batch = {
        "global_batch_size": config.train.global_batch_size,
        "grad_accum_steps": config.train.grad_accum_steps,
        "seq_len": layout.seq_len,
        "layout": "padded" if layout.max_sequences_per_row is None else "packed",
        "max_sequences_per_row": layout.max_sequences_per_row,
        "predictions_per_row": layout.predictions,
        "vocab_size": layout.vocab_size,
        "shapes_from": layout.source,
    }
    expected = expected_matmul_flops(model_cfg, config, layout, model_cfg.attention_impl)
    return compile_setup(
        setup,
        abstract_batch(layout, config.train.global_batch_size),
        tpu_slice,
        preset=config.model.preset,
        attention_choice=choice,
        batch=batch,
        expected=expected,
        progress=progress,
    )


def compile_setup(
    setup,
    batch_shapes: dict,
    tpu_slice,
    *,
    preset: str,
    attention_choice: str,
    batch: dict,
    expected: dict | None = None,
    progress=print,
) -> dict:
    """Compiles `setup`'s train step (step_setup.StepSetup on a mesh of `tpu_slice`'s
    devices) for a global batch of `batch_shapes`; returns the report: the model, `batch`
    (what the report says of the batch), compile times, memory per chip and its verdict, and
    when the step compiled the FLOPs (against `expected`, expected_matmul_flops's, if given),
    kernels and roofline."""
    from bertjax import model as model_lib

    chips, model_cfg = tpu_slice.chips, setup.model_cfg
    args = setup.abstract_train_args(batch_shapes)
    mesh_text = " ".join(f"{axis}={size}" for axis, size in setup.mesh.shape.items())
    progress(
        f"compiling the train step for {tpu_slice.name} ({chips} x {tpu_slice.device_kind},"
        f" mesh {mesh_text}): seconds for bert-tiny, minutes for bert-base on 2 cores"
    )
    compiled, lower_s, compile_s, oom = compile_step(setup.train_fn, args)
    report = {
        "topology": tpu_slice.name,
        "chips": chips,
        "hosts": tpu_slice.hosts,
        "device_kind": tpu_slice.device_kind,
        "mesh": dict(setup.mesh.shape),
        "model": {
            "preset": preset,
            "head": setup.head.spec.architecture,
            "params": model_lib.count_params(args[0].params),
            "scan_layers": model_cfg.scan_layers,
            "remat_policy": model_cfg.remat_policy,
            "compute_dtype": model_cfg.compute_dtype,
            "attention": model_cfg.attention_impl,
            "attention_choice": attention_choice,
        },
        "batch": batch,
        "lower_s": round(lower_s, 2),
        "compile_s": round(compile_s, 2),
    }
    if compiled is None:
        report["memory_per_chip"] = refused_memory(oom, tpu_slice.device_kind)
        report["fits"] = False
        return report
    report["memory_per_chip"] = memory_report(compiled, tpu_slice.device_kind)
    report["fits"] = report["memory_per_chip"]["fits"]
    if expected is None:  # a fine-tuning head: no model FLOPs formula to compare against
        cost = hlo_cost.analyze(compiled.as_text())
        report["kernels"] = list(cost.kernels)
        report["compiled_matmul_flops_per_step"] = cost.matmul_flops * chips
    else:
        report["flops"] = flops_report(compiled, expected, chips)
        report["kernels"] = report["flops"].pop("kernels")
        tokens = batch["global_batch_size"] * batch["seq_len"]
        report["roofline"] = roofline_report(
            compiled,
            report["flops"],
            tokens_per_step=tokens,
            chips=chips,
            device_kind=tpu_slice.device_kind,
        )
    report["splash_attention"] = any(k.startswith("splash") for k in report["kernels"])
    return report


def no_fit_message(report: dict, config) -> str:
    """One sentence: what the step needs per chip, what the chip has, and what to change."""
    memory = report["memory_per_chip"]
    remedies = []
    if config.model.remat_policy != "full":
        remedies.append("--config.model.remat_policy=full (or another policy of docs/TRAINING.md)")
    if report["mesh"]["fsdp"] < report["chips"]:
        remedies.append("a larger --config.mesh.fsdp")
    remedies.append(
        "more --config.train.grad_accum_steps or a smaller --config.train.global_batch_size"
    )
    where = (
        "the TPU compiler refused it"
        if memory.get("refused_by_compiler")
        else f"{memory['headroom']:.0%} of HBM kept free"
    )
    return (
        f"the train step needs {_gib(memory['total_bytes'])} of the "
        f"{_gib(memory['limit_bytes'])} usable per {report['device_kind']} chip "
        f"({_gib(memory['hbm_bytes'])} HBM, {where}): try {', '.join(remedies)}"
    )
