"""The pretraining loop: mesh -> data -> model and shardings -> init or restore -> compile ->
steps, with evaluation, checkpoints and pre-emption saves (`bertjax train` calls `train`)."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING

from bertjax import interrupt
from bertjax.errors import UserError
from bertjax.train import config as config_lib
from bertjax.train.step_metrics import PRETRAINING_REMEDY, StepMetrics

if TYPE_CHECKING:
    import jax
    import ml_collections

    from bertjax.data.shards import Dataset
    from bertjax.model_config import BertConfig
    from bertjax.train.head import Head
    from bertjax.train.step_setup import StepSetup


@dataclasses.dataclass
class Run:
    """What the phases of `train` hand each other; each phase fills its own fields."""

    config: ml_collections.ConfigDict
    workdir: Path
    mesh: jax.sharding.Mesh | None = None  # 1. setup_mesh
    is_writer: bool = True  # process 0 writes logs, config.json and metrics
    train_ds: Dataset | None = None  # 2. setup_data
    eval_ds: Dataset | None = None
    model_cfg: BertConfig | None = None  # as configured (attention_impl may be "auto")
    head: Head | None = None  # BertForPreTraining on the kernel this platform runs
    setup: StepSetup | None = None  # 3. setup_step: optimizer, shardings, jitted step
    resumed_loader_state: dict | None = None  # 4. the loader state a restored checkpoint holds
    compile_cache_dir: str | None = None  # JAX's persistent compilation cache (None: off)


def _log(msg: str) -> None:
    from bertjax.log import log

    log("train", msg)


def setup_mesh(run: Run) -> None:
    """1. Mesh over all devices of all processes, sized by config.mesh; validated config."""
    import jax

    from bertjax.train import sharding

    config_lib.validate(run.config, jax.device_count(), jax.process_count())
    run.mesh = sharding.make_mesh(run.config.mesh)
    run.is_writer = jax.process_index() == 0
    shape = ", ".join(f"{k}={v}" for k, v in run.mesh.shape.items())
    _log(
        f"mesh {shape} over {jax.device_count()} {jax.devices()[0].platform} devices, "
        f"{jax.process_count()} process(es)"
    )


def setup_compile_cache(run: Run) -> None:
    """Before the first compile: JAX's persistent compilation cache in
    `train.compilation_cache_dir`, so that a restarted run loads its compiled steps."""
    import jax

    from bertjax.train import compile_cache

    run.compile_cache_dir = compile_cache.enable(
        run.config.train.compilation_cache_dir,
        run.workdir,
        jax.process_count(),
        key="train.compilation_cache_dir",
    )


def _open(path, key, verify_checksums: bool):
    from bertjax.data.shards import open_dataset

    try:
        return open_dataset(path, verify_checksums=verify_checksums)
    except FileNotFoundError as e:
        raise UserError(f"{key}={path}: {e}") from None


def setup_data(run: Run) -> None:
    """2. Open the train and eval datasets and check that the model fits them."""
    from bertjax import attention
    from bertjax.data.integrity import check_same_tokenizer
    from bertjax.train.head import pretraining_head

    data, train_cfg = run.config.data, run.config.train
    if not data.train_dir:
        raise UserError(
            "data.train_dir is not set: pass --config.data.train_dir=DIR "
            "(a directory written by `bertjax prepare`)"
        )
    run.train_ds = _open(data.train_dir, "data.train_dir", data.verify_checksums)
    if train_cfg.eval_every > 0:
        eval_dir = data.eval_dir or str(Path(data.train_dir) / "eval")
        if not (Path(eval_dir) / "manifest.json").exists():
            raise UserError(
                f"evaluation dataset {eval_dir} does not exist: set "
                "--config.data.eval_dir=DIR or --config.train.eval_every=0"
            )
        run.eval_ds = _open(eval_dir, "data.eval_dir", data.verify_checksums)
        check_same_tokenizer(
            run.train_ds.tokenizer_identity,
            run.eval_ds.tokenizer_identity,
            f"data.eval_dir={eval_dir}",
        )
    run.model_cfg = config_lib.model_config(run.config.model, run.train_ds.vocab_size)
    for ds, key in ((run.train_ds, "data.train_dir"), (run.eval_ds, "data.eval_dir")):
        if ds is not None:
            config_lib.validate_against_data(
                run.config,
                run.model_cfg,
                ds.max_seq_len,
                ds.vocab_size,
                f"{key}={ds.path}",
                dataset_nsp=ds.manifest.get("nsp", True),
            )
    resolved, choice = attention.resolved_config(run.model_cfg, run.train_ds.max_seq_len)
    run.head = pretraining_head(resolved, nsp=train_cfg.nsp)
    _log(choice)


def setup_step(run: Run) -> None:
    """3. Optimizer, the state's shardings from its abstract shape (nothing allocated), and
    the jitted train step (step_setup.build)."""
    from bertjax import model as model_lib
    from bertjax.train import step_setup

    run.setup = step_setup.build(run.config, run.head, run.mesh)
    params = model_lib.count_params(run.setup.abstract_state.params)
    _log(
        f"model {run.config.model.preset}: {params / 1e6:.2f}M parameters, "
        f"vocab {run.model_cfg.vocab_size}, compute {run.model_cfg.compute_dtype}, layers "
        f"{'scanned' if run.model_cfg.scan_layers else 'unrolled'}, remat_policy "
        f"{run.model_cfg.remat_policy}"
    )


def init_or_restore(run: Run, ckpt):
    """4. The state to start from, and the step it is at.

    Order: (1) the latest checkpoint in the workdir (resume: exact, same data order),
    (2) an `init_from` warm start (a HuggingFace folder or another run's workdir),
    (3) from scratch. Returns (state, dropout rng key, start step).
    """
    import jax

    from bertjax.train.resume import restore_state
    from bertjax.train.warm_start import warm_start

    root = jax.random.key(run.config.train.seed)
    init_rng, dropout_rng = jax.random.fold_in(root, 0), jax.random.fold_in(root, 1)
    if ckpt.latest_step() is not None:
        state, dropout_rng, loader_state, _ = restore_state(ckpt, run.setup)
        start_step = int(jax.device_get(state.step))
        run.resumed_loader_state = loader_state
        _log(f"resuming from checkpoint step {start_step} in {ckpt.directory}")
        return state, dropout_rng, start_step
    state = run.setup.init_state(init_rng)
    train_cfg = run.config.train
    if train_cfg.init_from:
        state, source = warm_start(
            state, train_cfg.init_from, run.setup, init_opt_state=train_cfg.init_opt_state
        )
        _log(
            f"initialised from {source}"
            + (" (parameters and optimizer moments)" if train_cfg.init_opt_state else "")
        )
    return state, dropout_rng, 0


def make_loader(run: Run, start_step: int):
    """The step-indexed loader of this process's slices of the global batches."""
    import jax

    from bertjax.data.loader import Loader

    data = run.config.data
    return Loader(
        run.train_ds,
        run.config.train.global_batch_size,
        seed=run.config.train.seed,
        start_step=start_step,
        masking=config_lib.masking_config(data, run.train_ds),
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        workers=data.workers,
        threads=data.threads,
        prefetch=data.prefetch,
    )


def check_resumed_loader(run: Run, loader) -> None:
    """A resumed run must see the data an uninterrupted one would: same dataset, seed,
    global batch and masking as the checkpoint's loader state."""
    saved = run.resumed_loader_state
    if saved is None:
        return
    now = loader.state()
    differ = [
        f"{k}: {saved.get(k)!r} in the checkpoint, {now[k]!r} now"
        for k in now
        if saved.get(k) != now[k]
    ]
    if differ:
        raise UserError(
            f"cannot resume {run.workdir} exactly: the data differs from the "
            f"checkpoint's ({'; '.join(differ)}); use a new --workdir"
        )


def make_evaluator(run: Run):
    """The held-out evaluator of the run (None without an eval split)."""
    from bertjax.train.evaluator import Evaluator

    if run.eval_ds is None:
        return None
    return Evaluator(
        run.eval_ds,
        batch_size=run.config.train.eval_batch_size,
        seed=run.config.train.seed,
        masking=config_lib.masking_config(run.config.data, run.eval_ds),
        model=run.head.model,
        mesh=run.mesh,
        rules=run.setup.rules,
        param_shardings=run.setup.state_shardings.params,
        nsp=run.config.train.nsp,
    )


def compile_train_step(run: Run, state, batch, dropout_rng):
    """5. The train step, compiled once with explicit shardings; the state is donated."""
    from bertjax.train import aot, compile_cache

    t0 = time.perf_counter()
    with compile_cache.watch() as cache_events:
        lowered = run.setup.train_fn.lower(state, batch, dropout_rng)
        compiled = aot.compile_fitting(lowered, run.mesh, run.config)
    _log(
        f"compiled the train step in {time.perf_counter() - t0:.1f}s "
        f"({cache_events.describe(run.compile_cache_dir)})"
    )
    check_memory(run, compiled)
    return compiled


def check_memory(run: Run, compiled) -> None:
    """aot.check_fits of the compiled train step: a log line of its memory, and a step that
    cannot fit a known chip is an error before the first step."""
    from bertjax.train import aot

    aot.check_fits(compiled, run.mesh, run.config, _log)


def throughput_counts(run: Run, seq_len: int) -> dict:
    """The model FLOPs of one step and the peak FLOP/s of the devices (flops.device_peak: a
    known chip's published dense bf16 peak, this CPU's measured matmul rate): StepMetrics
    turns them into model FLOPs/s and MFU."""
    import jax

    from bertjax.data.masking import packed_prediction_slots
    from bertjax.train import flops

    masking = config_lib.masking_config(run.config.data, run.train_ds)
    slots = masking.max_predictions_per_seq  # prediction slots per row
    if run.train_ds.packed:
        slots = packed_prediction_slots(run.train_ds.max_sequences_per_row, seq_len, masking)
    per_step = flops.model_flops_per_step(
        run.model_cfg, run.config.train.global_batch_size, seq_len, slots
    )
    peak = flops.device_peak(jax.devices(), jax.local_devices()[0])
    _log(f"MFU against the {peak.denominator}")
    return {"flops_per_step": per_step, "peak_flops": peak.flops_per_s}


def train(config, workdir) -> list[dict]:
    """Runs `config.train.steps` steps; returns the metrics of every logged step at full
    precision (`step`, training metrics, and `eval_*` metrics on evaluation steps)."""
    from bertjax.train import checkpoint, sharding, workdir_io

    run = Run(config=config, workdir=workdir_io.path(workdir))  # pathlib would turn gs:// into gs:/
    if run.workdir.exists() and not run.workdir.is_dir():
        raise UserError(f"--workdir {run.workdir} is a file: give a folder for the run")
    setup_mesh(run)  # 1. mesh
    setup_compile_cache(run)  # before the first compile (the state's initialisation)
    setup_data(run)  # 2. data
    setup_step(run)  # 3. optimizer, shardings, jitted step
    train_cfg = config.train
    with contextlib.ExitStack() as cleanup:
        ckpt = checkpoint.Checkpointer(
            run.workdir,
            keep=train_cfg.keep_checkpoints,
            keep_every=train_cfg.keep_checkpoints_every or None,
            async_save=train_cfg.async_checkpointing,
        )
        # Closing waits for the last asynchronous save to be complete on storage.
        cleanup.callback(ckpt.close)
        state, dropout_rng, start_step = init_or_restore(run, ckpt)  # 4. init or restore
        if start_step >= train_cfg.steps:
            _log(f"nothing to do: the checkpoint is at step {start_step} of {train_cfg.steps}")
            return []
        loader = make_loader(run, start_step)
        cleanup.callback(loader.close)
        check_resumed_loader(run, loader)
        # Every start-up check passed: only now may the run's files change.
        ckpt.set_aside_damaged()
        if run.is_writer:
            run.workdir.mkdir(parents=True, exist_ok=True)
            workdir_io.write_atomic(run.workdir / "config.json", config.to_json(indent=2).encode())
        batch = sharding.global_batch(next(loader), run.mesh)
        train_fn = compile_train_step(run, state, batch, dropout_rng)  # 5. compile
        _log(f"training steps {start_step + 1}..{train_cfg.steps}")
        return run_steps(run, train_fn, state, dropout_rng, batch, loader, ckpt, start_step)


def run_steps(run: Run, train_fn, state, dropout_rng, batch, loader, ckpt, start_step):
    """6. The loop from `start_step` (whose batch is `batch`) to the end or a pre-emption.

    Step n's metrics are fetched after step n+1 is dispatched, so the host never idles the
    devices; only log, eval and checkpoint steps are fetched at all.
    """
    import jax

    from bertjax.train import checkpoint, metrics_writer, sharding
    from bertjax.train.metrics_writer import MetricsWriter
    from bertjax.train.preemption import PreemptionWatcher
    from bertjax.train.profiling import StepProfiler

    train_cfg = run.config.train
    evaluator = make_evaluator(run)
    ckpt_meta = checkpoint.checkpoint_metadata(
        run.model_cfg, run.config, run.train_ds.tokenizer_dir, run.train_ds.tokenizer_identity
    )
    history = []
    if run.is_writer and start_step > 0:
        # What a killed (or failed) run logged past its checkpoint is logged again now.
        metrics_writer.drop_after(run.workdir, start_step)
    with contextlib.ExitStack() as cleanup:
        writer = cleanup.enter_context(MetricsWriter(run.workdir, train_cfg.steps, run.is_writer))
        watcher = PreemptionWatcher()
        cleanup.callback(watcher.close)
        profiler = None
        if train_cfg.profile_steps:
            profiler = StepProfiler(train_cfg.profile_steps, run.workdir / "profile")
            cleanup.callback(profiler.close)
        seq_len = run.train_ds.max_seq_len
        tokens_per_step = train_cfg.global_batch_size * seq_len
        step_metrics = StepMetrics(
            writer,
            tokens_per_step,
            start_step,
            remedy=PRETRAINING_REMEDY,
            **throughput_counts(run, seq_len),
        )

        def evaluate(done: int) -> dict:
            eval_metrics = evaluator.eval(state.params)
            writer.write_eval(done, eval_metrics)
            step_metrics.restart_clock()  # throughput excludes evaluation
            return {f"eval_{k}": v for k, v in eval_metrics.items()}

        if evaluator is not None and start_step == 0 and train_cfg.eval_at_start:
            history.append({"step": 0, **evaluate(0)})  # the untrained baseline
        interrupt.check()  # a Ctrl-C during start-up that Python swallowed
        cleanup.enter_context(watcher.stopping_on_interrupt())  # Ctrl-C saves, as SIGTERM
        for step in range(start_step, train_cfg.steps):
            if step > start_step:
                batch = sharding.global_batch(next(loader), run.mesh)
            if profiler is not None:
                profiler.on_step(step + 1, wait_for=state)
            state, metrics = train_fn(state, batch, dropout_rng)
            done = step + 1
            is_eval = evaluator is not None and (
                done % train_cfg.eval_every == 0 or done == train_cfg.steps
            )
            preempted = watcher.should_stop(done)
            is_ckpt = preempted or done % train_cfg.checkpoint_every == 0 or done == train_cfg.steps
            is_log = done % train_cfg.log_every == 0 or done == train_cfg.steps
            history += filter(
                None, [step_metrics.dispatched(done, metrics, log=is_log or is_eval or is_ckpt)]
            )
            if is_eval or is_ckpt:  # a NaN stops the run here, before it is saved
                history += filter(None, [step_metrics.flush()])
            if is_eval:
                history[-1] |= evaluate(done)
            if is_ckpt:
                writer.sync()  # a remote metrics.jsonl holds every row up to the checkpoint
                ckpt.save(done, state, dropout_rng, loader.state(), ckpt_meta, force=True)
            if preempted and not watcher.interrupted:
                _log(f"SIGTERM: saved the checkpoint of step {done}; exiting")
            if preempted:
                break
        history += filter(None, [step_metrics.flush()])
        jax.block_until_ready(state)
    if watcher.interrupted:  # after the cleanup: the checkpoint is complete on storage
        raise interrupt.Stopped(
            f"saved the checkpoint of step {done} in {ckpt.directory}; "
            "the same command resumes from it"
        )
    return history
