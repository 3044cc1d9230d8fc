"""`bertjax train`: mesh -> data -> model and shardings -> init or restore -> compile -> loop."""

import dataclasses
import math
import os
import sys
import time
from pathlib import Path

from bertjax.errors import UserError
from bertjax.train import config as config_lib


def register(subparsers) -> None:
    """Adds `train` to the `bertjax` command."""
    p = subparsers.add_parser(
        "train",
        help="pretrain BERT (MLM + NSP) from a config file",
        description="Pretrain BERT (masked LM + next-sentence prediction) on a prepared "
        "dataset, on every device of every process.",
    )
    config_lib.add_config_arguments(p)
    p.add_argument("--workdir", required=True, help="where metrics.jsonl (and checkpoints) go")
    group = p.add_argument_group(
        "multi-process",
        "Several hosts run the same command; detected automatically on TPU "
        "VMs, Slurm and Open MPI, or given explicitly here (or by JAX_COORDINATOR_ADDRESS, "
        "JAX_NUM_PROCESSES, JAX_PROCESS_ID).",
    )
    group.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0")
    group.add_argument("--num-processes", type=int, metavar="N", help="number of processes")
    group.add_argument("--process-id", type=int, metavar="I", help="this process, 0 .. N-1")
    p.add_argument("--init-from", metavar="PATH", default=None,
                   help="warm start from a HuggingFace folder or a training workdir "
                   "(= --config.train.init_from); a workdir with checkpoints resumes instead")
    p.add_argument("--profile-steps", metavar="A:B", default=None,
                   help="write a jax.profiler trace of steps A..B to WORKDIR/profile")
    p.set_defaults(func=run)


def run(args) -> int:
    """Entry point of `bertjax train`."""
    overrides = list(args.config_overrides)
    if args.init_from is not None:
        overrides.append(f"train.init_from={args.init_from}")
    if args.profile_steps is not None:
        overrides.append(f"train.profile_steps={args.profile_steps}")
    config = config_lib.load_config(args.config, overrides)
    initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    try:
        train(config, args.workdir)
    except FloatingPointError as e:  # a diverged run: say where, without a traceback
        print(f"bertjax train: error: {e}", file=sys.stderr)
        return 1
    return 0


def detect_cluster() -> str | None:
    """The multi-process environment this process runs in, if any (before touching JAX)."""
    env = os.environ
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return "JAX_COORDINATOR_ADDRESS"
    if (
        "SLURM_JOB_ID" in env
        and "SLURM_STEP_NODELIST" in env
        and int(env.get("SLURM_NTASKS", 1)) > 1
    ):
        return "slurm"
    if "OMPI_MCA_orte_hnp_uri" in env and int(env.get("OMPI_COMM_WORLD_SIZE", 1)) > 1:
        return "open-mpi"
    hosts = env.get("TPU_WORKER_HOSTNAMES") or env.get("TPU_PROCESS_ADDRESSES") or ""
    if "," in hosts or env.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return "tpu-pod"
    import importlib.util  # a Cloud TPU VM: libtpu installed and TPU chips present

    has_chips = Path("/dev/accel0").exists() or Path("/dev/vfio/0").exists()
    if has_chips and importlib.util.find_spec("libtpu") is not None:
        return "tpu-vm"
    return None


def initialize_distributed(coordinator=None, num_processes=None, process_id=None) -> None:
    """Joins the processes of a multi-host run; must come before any other JAX call.

    Explicit flags win; otherwise the environment is detected (`detect_cluster`) and JAX
    reads the rest from it. A lone process on a workstation does nothing.
    """
    import jax

    explicit = [coordinator, num_processes, process_id]
    if any(v is not None for v in explicit):
        if any(v is None for v in explicit):
            raise UserError("--coordinator, --num-processes and --process-id go together")
        if not 0 <= process_id < num_processes:
            raise UserError(f"--process-id={process_id} must be in [0, {num_processes})")
        jax.distributed.initialize(
            coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
        )
        return
    cluster = detect_cluster()
    if cluster is not None:
        print(f"bertjax train: {cluster} environment detected, joining its processes", flush=True)
        jax.distributed.initialize()


@dataclasses.dataclass
class Run:
    """What the phases of `train` hand each other (and tests and later features can reach)."""

    config: object
    workdir: Path
    mesh: object = None
    rules: tuple = ()
    train_ds: object = None
    eval_ds: object = None
    model_cfg: object = None
    model: object = None
    tx: object = None
    schedule: object = None
    abstract_state: object = None
    state_shardings: object = None
    is_writer: bool = True
    resumed_loader_state: dict | None = None  # the loader state a restored checkpoint holds


def _log(msg: str) -> None:
    import jax

    if jax.process_index() == 0:
        print(f"bertjax train: {msg}", flush=True)


def setup_mesh(run: Run) -> None:
    """1. Mesh over all devices of all processes, sized by config.mesh; validated config."""
    import jax

    from bertjax.train import sharding

    config_lib.validate(run.config, jax.device_count(), jax.process_count())
    run.mesh = sharding.make_mesh(run.config.mesh)
    run.rules = sharding.logical_rules(run.config)
    run.is_writer = jax.process_index() == 0
    shape = ", ".join(f"{k}={v}" for k, v in run.mesh.shape.items())
    _log(
        f"mesh {shape} over {jax.device_count()} {jax.devices()[0].platform} devices, "
        f"{jax.process_count()} process(es)"
    )


def setup_data(run: Run) -> None:
    """2. Open the train and eval datasets and check that the model fits them."""
    from bertjax import attention
    from bertjax import model as model_lib
    from bertjax.data.shards import open_dataset

    data, train_cfg = run.config.data, run.config.train
    if not data.train_dir:
        raise UserError(
            "data.train_dir is not set: pass --config.data.train_dir=DIR "
            "(a directory written by `bertjax prepare`)"
        )
    run.train_ds = _open(open_dataset, data.train_dir, "data.train_dir")
    if train_cfg.eval_every > 0:
        eval_dir = data.eval_dir or str(Path(data.train_dir) / "eval")
        if not (Path(eval_dir) / "manifest.json").exists():
            raise UserError(
                f"evaluation dataset {eval_dir} does not exist: set "
                "--config.data.eval_dir=DIR or --config.train.eval_every=0"
            )
        run.eval_ds = _open(open_dataset, eval_dir, "data.eval_dir")
    run.model_cfg = model_config(run.config.model, run.train_ds.vocab_size)
    for ds, key in ((run.train_ds, "data.train_dir"), (run.eval_ds, "data.eval_dir")):
        if ds is not None:
            config_lib.validate_against_data(
                run.config, run.model_cfg, ds.max_seq_len, ds.vocab_size, f"{key}={ds.path}"
            )
    run.model = model_lib.BertForPreTraining(run.model_cfg)
    _log(attention.describe_choice(run.model_cfg, run.train_ds.max_seq_len))


# Model sizes where 0 in the config means "the preset's value".
_ZERO_MEANS_PRESET = (
    "vocab_size",
    "num_hidden_layers",
    "hidden_size",
    "num_attention_heads",
    "intermediate_size",
)


def model_config(model_section, dataset_vocab_size: int):
    """BertConfig from the config's `model` section: the preset, then every other field
    (0 = keep the preset's value; vocab_size 0 = the dataset's)."""
    from bertjax import model as model_lib

    fields = {
        k: v
        for k, v in model_section.items()
        if k != "preset" and not (k in _ZERO_MEANS_PRESET and v == 0)
    }
    fields.setdefault("vocab_size", dataset_vocab_size)
    if "hidden_size" in fields and "intermediate_size" not in fields:
        fields["intermediate_size"] = 4 * fields["hidden_size"]
    try:
        return model_lib.preset_config(model_section.preset, **fields)
    except ValueError as e:
        raise UserError(f"config model: {e}") from None


def _open(open_dataset, path, key):
    try:
        return open_dataset(path)
    except FileNotFoundError as e:
        raise UserError(f"{key}={path}: {e}") from None


def setup_state_shardings(run: Run) -> None:
    """3. Optimizer, then the state's shardings from its abstract shape (nothing allocated)."""
    from bertjax import model as model_lib
    from bertjax.train import optim, sharding
    from bertjax.train import step as step_lib

    run.tx, run.schedule = optim.make_optimizer(run.config.optim, run.config.train.steps)
    run.abstract_state, run.state_shardings = step_lib.state_shardings(
        run.model_cfg, run.tx, run.mesh, run.rules
    )
    sharding.check_divisible(run.abstract_state, run.state_shardings)
    params = model_lib.count_params(run.abstract_state.params)
    _log(
        f"model {run.config.model.preset}: {params / 1e6:.2f}M parameters, "
        f"vocab {run.model_cfg.vocab_size}, compute {run.model_cfg.compute_dtype}"
    )


def init_or_restore(run: Run, ckpt):
    """4. The state to start from, and the step it is at.

    Order: (1) the latest checkpoint in the workdir (resume: exact, same data order),
    (2) an `init_from` warm start (a HuggingFace folder or another run's workdir),
    (3) from scratch. Returns (state, dropout rng key, start step).
    """
    import flax.linen as nn
    import jax

    from bertjax.train import step as step_lib

    root = jax.random.key(run.config.train.seed)
    init_rng, dropout_rng = jax.random.fold_in(root, 0), jax.random.fold_in(root, 1)
    if ckpt.latest_step() is not None:
        state, dropout_rng, loader_state, _ = ckpt.restore(
            nn.meta.unbox(run.abstract_state), run.state_shardings)
        start_step = int(jax.device_get(state.step))
        run.resumed_loader_state = loader_state
        _log(f"resuming from checkpoint step {start_step} in {ckpt.directory}")
        return state, dropout_rng, start_step
    state = step_lib.create_sharded_state(
        init_rng, model_cfg=run.model_cfg, tx=run.tx, shardings=run.state_shardings
    )
    if run.config.train.init_from:
        state = warm_start(run, state, run.config.train.init_from)
    return state, dropout_rng, 0


# BertConfig fields that decide the parameters' shapes and meaning (dropout and dtype do not).
_ARCHITECTURE_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                        "intermediate_size", "hidden_act", "max_position_embeddings",
                        "type_vocab_size", "layer_norm_eps")


def warm_start(run: Run, state, path: str):
    """`state` with the parameters (and, with train.init_opt_state, the Adam moments) of
    `path`; the step, schedule and data order start from zero, as phase 2 of BERT does."""
    import jax
    import numpy as np

    from bertjax import export
    from bertjax.train import checkpoint

    loaded = export.load_model(path)
    differ = [f"{k}: {getattr(loaded.model_cfg, k)} there, {getattr(run.model_cfg, k)} here"
              for k in _ARCHITECTURE_FIELDS
              if getattr(loaded.model_cfg, k) != getattr(run.model_cfg, k)]
    if differ:
        raise UserError(f"--init-from {path}: its model differs from the config's ({'; '.join(differ)})")
    params = jax.device_put(jax.device_get(loaded.params), run.state_shardings.params)
    opt_state = state.opt_state
    if run.config.train.init_opt_state:
        if not export.is_checkpoint_dir(path):
            raise UserError(f"train.init_opt_state needs a training workdir to take the "
                            f"optimizer state from; {path} is a HuggingFace folder")
        import flax.linen as nn

        other, _, _, _ = checkpoint.Checkpointer(path, read_only=True).restore(
            nn.meta.unbox(run.abstract_state), run.state_shardings)
        # Keep the moments, restart the step counters: phase 2 runs its own schedule.
        opt_state = jax.tree_util.tree_map_with_path(
            lambda p, x, sh: jax.device_put(np.zeros(x.shape, x.dtype), sh)
            if "count" in str(p[-1]) else x,
            other.opt_state, run.state_shardings.opt_state)
    _log(f"initialised from {loaded.source}"
         + (" (parameters and optimizer moments)" if run.config.train.init_opt_state else ""))
    return state.replace(params=params, opt_state=opt_state)


def make_loader(run: Run, start_step: int):
    """The step-indexed loader of this process's slices of the global batches."""
    import jax

    from bertjax.data.loader import Loader, default_masking

    data = run.config.data
    masking = default_masking(
        run.train_ds,
        data.masked_lm_prob,
        data.max_predictions_per_seq or None,
        data.whole_word_masking,
    )
    return Loader(
        run.train_ds,
        run.config.train.global_batch_size,
        seed=run.config.train.seed,
        start_step=start_step,
        masking=masking,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        workers=data.workers,
        threads=data.threads,
        prefetch=data.prefetch,
    )


def evaluate(run: Run, eval_fn, params) -> dict:
    """MLM/NSP loss and accuracy over the whole eval split (every example once)."""
    import jax

    from bertjax.data.loader import default_masking, eval_batches
    from bertjax.train import losses, sharding

    data = run.config.data
    masking = default_masking(
        run.eval_ds,
        data.masked_lm_prob,
        data.max_predictions_per_seq or None,
        data.whole_word_masking,
    )
    totals = {}
    for batch in eval_batches(
        run.eval_ds,
        run.config.train.eval_batch_size,
        seed=run.config.train.seed,
        masking=masking,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    ):
        sums = jax.device_get(eval_fn(params, sharding.global_batch(batch, run.mesh)))
        for k, v in sums.items():  # float64 on the host: exact enough over any split
            totals[k] = totals.get(k, 0.0) + float(v)
    metrics = {k: float(v) for k, v in losses.metrics_from_sums(totals).items()}
    metrics["mlm_perplexity"] = math.exp(min(metrics["mlm_loss"], 700.0))  # no overflow
    metrics["masked_tokens"] = round(totals["mlm_weight_sum"])
    if "nsp_weight_sum" in totals:
        metrics["examples"] = round(totals["nsp_weight_sum"])
    return metrics


def open_writer(workdir, total_steps: int, enabled: bool):
    """The one place metrics go through: metrics.jsonl, TensorBoard, the progress line."""
    from bertjax.train.report import MetricsWriter

    return MetricsWriter(workdir, total_steps, enabled)


def check_finite(
    step: int,
    metrics: dict,
    last_good: int,
    *,
    remedy: str = "Lower optim.peak_lr, raise optim.warmup_steps, or keep optim.clip_norm > 0",
) -> None:
    """Stops the run on a NaN or Inf loss, naming the step (nothing is saved after it).
    `remedy` ends the message: advice in the caller's own settings (the default names the
    pretraining config keys; `bertjax finetune` passes its flags)."""
    if not math.isfinite(metrics["loss"]):
        raise FloatingPointError(
            f"loss is {metrics['loss']} at step {step} (last finite check: step {last_good}); "
            f"stopping without saving. {remedy}"
        )


def train(config, workdir) -> list[dict]:
    """Runs `config.train.steps` steps; returns the metrics of every logged step at full
    precision (`step`, training metrics, and `eval_*` metrics on evaluation steps)."""
    import jax

    from bertjax import export
    from bertjax.train import checkpoint, sharding, workdir_io
    from bertjax.train import step as step_lib
    from bertjax.train.profiling import StepProfiler

    run = Run(config=config, workdir=workdir_io.path(workdir))  # pathlib would turn gs:// into gs:/
    setup_mesh(run)  # 1. mesh
    setup_data(run)  # 2. data
    setup_state_shardings(run)  # 3. model, optimizer, shardings
    train_cfg = config.train
    ckpt = checkpoint.Checkpointer(
        run.workdir, keep=train_cfg.keep_checkpoints,
        keep_every=train_cfg.keep_checkpoints_every or None,
        async_save=train_cfg.async_checkpointing)
    state, dropout_rng, start_step = init_or_restore(run, ckpt)  # 4. init or restore
    if start_step >= train_cfg.steps:
        _log(f"nothing to do: the checkpoint is at step {start_step} of {train_cfg.steps}")
        ckpt.close()
        return []
    if run.is_writer:
        run.workdir.mkdir(parents=True, exist_ok=True)
        (run.workdir / "config.json").write_text(config.to_json(indent=2))

    # 5. compile, once, with explicit shardings; the state is donated to each next step.
    train_fn = step_lib.jit_train_step(
        run.mesh,
        run.rules,
        run.state_shardings,
        model=run.model,
        tx=run.tx,
        schedule=run.schedule,
        accum_steps=train_cfg.grad_accum_steps,
        nsp=train_cfg.nsp,
    )
    eval_fn = step_lib.jit_eval_step(
        run.mesh, run.rules, run.state_shardings.params, model=run.model, nsp=train_cfg.nsp
    )
    loader = make_loader(run, start_step)
    check_resumed_loader(run, loader)
    writer = open_writer(run.workdir, train_cfg.steps, run.is_writer)
    ckpt_meta = export.checkpoint_metadata(run.model_cfg, config, run.train_ds.tokenizer_dir)
    watcher = checkpoint.PreemptionWatcher()
    profiler = (StepProfiler(train_cfg.profile_steps, run.workdir / "profile")
                if train_cfg.profile_steps else None)
    batch = sharding.global_batch(next(loader), run.mesh)
    t0 = time.perf_counter()
    train_fn = train_fn.lower(state, batch, dropout_rng).compile()
    _log(
        f"compiled the train step in {time.perf_counter() - t0:.1f}s; "
        f"training steps {start_step + 1}..{train_cfg.steps}"
    )

    # 6. loop. Step n's metrics are fetched after step n+1 is dispatched, so the host never
    # idles the devices; only log, eval and final steps are fetched at all.
    tokens_per_step = train_cfg.global_batch_size * run.train_ds.max_seq_len
    last = {"step": start_step, "time": time.perf_counter(), "finite": start_step}
    pending, history = None, []
    if run.eval_ds is not None and start_step == 0 and train_cfg.eval_at_start:
        eval_metrics = evaluate(run, eval_fn, state.params)  # the untrained baseline
        writer.write_eval(0, eval_metrics)
        history.append({"step": 0, **{f"eval_{k}": v for k, v in eval_metrics.items()}})
        last["time"] = time.perf_counter()

    def fetch(done_step, metrics):
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        now = time.perf_counter()
        metrics["tokens_per_s"] = (
            tokens_per_step * (done_step - last["step"]) / max(now - last["time"], 1e-9)
        )
        writer.write(done_step, metrics)  # a NaN is logged too (as null), then stops the run
        check_finite(done_step, metrics, last["finite"])
        last.update(step=done_step, time=now, finite=done_step)
        history.append({"step": done_step, **metrics})

    try:
        for step in range(start_step, train_cfg.steps):
            if step > start_step:
                batch = sharding.global_batch(next(loader), run.mesh)
            if profiler is not None:
                profiler.on_step(step + 1, wait_for=state)
            state, metrics = train_fn(state, batch, dropout_rng)
            if pending is not None:
                fetch(*pending)
            done = step + 1
            is_eval = run.eval_ds is not None and (
                done % train_cfg.eval_every == 0 or done == train_cfg.steps
            )
            preempted = watcher.should_stop(done)
            is_ckpt = preempted or done % train_cfg.checkpoint_every == 0 or done == train_cfg.steps
            is_log = (done % train_cfg.log_every == 0 or done == train_cfg.steps or is_eval
                      or is_ckpt)
            pending = (done, metrics) if is_log else None
            if is_eval:
                fetch(*pending)
                pending = None
                eval_metrics = evaluate(run, eval_fn, state.params)
                writer.write_eval(done, eval_metrics)
                history[-1] |= {f"eval_{k}": v for k, v in eval_metrics.items()}
                last["time"] = time.perf_counter()  # throughput excludes evaluation
            if is_ckpt:
                if pending is not None:  # a NaN stops the run here, before it is saved
                    fetch(*pending)
                    pending = None
                writer.sync()  # a remote metrics.jsonl holds every row up to the checkpoint
                ckpt.save(done, state, dropout_rng, loader.state(), ckpt_meta, force=True)
            if preempted:
                _log(f"SIGTERM: saved the checkpoint of step {done}; exiting")
                break
        if pending is not None:
            fetch(*pending)
        jax.block_until_ready(state)
    finally:
        if profiler is not None:
            profiler.close()
        watcher.close()
        loader.close()
        writer.close()
        ckpt.close()  # waits for the last asynchronous save to be complete on storage
    return history


def check_resumed_loader(run: Run, loader) -> None:
    """A resumed run must see the data an uninterrupted one would: same dataset, seed,
    global batch and masking as the checkpoint's loader state."""
    saved = run.resumed_loader_state
    if saved is None:
        return
    now = loader.state()
    differ = [f"{k}: {saved.get(k)!r} in the checkpoint, {now[k]!r} now"
              for k in now if saved.get(k) != now[k]]
    if differ:
        raise UserError(f"cannot resume {run.workdir} exactly: the data differs from the "
                        f"checkpoint's ({'; '.join(differ)}); use a new --workdir")
