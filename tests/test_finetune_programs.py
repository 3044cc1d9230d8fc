"""A fine-tuning run's programs compiled ahead and concurrently (finetune/programs.py): each
the jitted step at its length, bit for bit; a run steps and predicts on them alone (jit
never compiles lazily); a step that cannot fit the chip refused before the first step."""

import types

import jax
import numpy as np
import pytest

from bertjax.errors import UserError
from bertjax.finetune import buckets, classifier_head, programs
from bertjax.finetune import train as ft
from bertjax.train import aot, sharding, step_setup
from bertjax.train.config import load_config
from tests.test_finetune import tiny_cfg, write_rte, write_tiny_model
from tests.test_finetune_buckets import MESH, mask_split


def small_setup(length_buckets: int):
    """A tiny classifier's StepSetup on one CPU device (the run below takes all 8), its config
    and a training split of 64 rows whose lengths fill `length_buckets` buckets."""
    cfg = load_config("finetune_glue", ["train.global_batch_size=8",
                                        f"data.length_buckets={length_buckets}"])  # fmt: skip
    model_cfg = tiny_cfg(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64)  # fmt: skip
    head = classifier_head.head(model_cfg, 2, regression=False)
    optim_cfg = ft.optim_config(cfg, 1e-3, total_steps=10)
    mesh = sharding.make_mesh(MESH, devices=jax.devices()[:1])
    setup = step_setup.build(cfg, head, mesh, optim_cfg=optim_cfg,
                             total_steps=10)  # fmt: skip
    train = mask_split(np.random.default_rng(0).integers(3, 60, 64))
    return setup, cfg, train


def test_each_program_is_the_jitted_step_at_its_length_bit_for_bit():
    """Compiled two at a time in threads, each train and predict program gives exactly what
    the jitted step gives on the same state, batch and key (the same program, so equal, not
    close); a length nobody compiled is a caller's error, not a silent compile."""
    setup, cfg, train = small_setup(length_buckets=2)
    plan = buckets.Plan.of(train, 2, 64)
    lines = []
    compiled = programs.compile_all(
        setup,
        cfg,
        programs.train_batch_shapes(train, plan, 8),
        programs.predict_batch_shapes(
            [mask_split([], name="test"), mask_split([5, 7], name="dev")], (*plan.lengths, 64), 8
        ),
        lines.append,
        workers=2,  # whatever this machine's cores
    )
    assert sorted(compiled.train) == list(plan.lengths) and len(plan.lengths) == 2
    # The dev rows of 5 and 7 tokens fall in the shortest bucket alone.
    assert sorted(compiled.predict) == [plan.lengths[0]]
    lengths = "/".join(map(str, plan.lengths))
    assert lines[0].startswith(
        f"compiled the train step at lengths {lengths} and the predict step at length "
        f"{plan.lengths[0]} in "
    )
    assert ", 2 at a time (" in lines[0]
    assert lines[1].startswith("the compiled step needs")  # the longest step's memory

    # The longest bucket's step (each comparison compiles the jitted step again: one here).
    rows = np.flatnonzero(plan.train_bucket == 1)[:8]
    batch = sharding.global_batch(buckets.take(train, rows, plan.lengths[1]), setup.mesh)
    # Two fresh states: each step donates its own.
    ours, theirs = (setup.init_state(jax.random.key(0)) for _ in range(2))
    got = compiled.train_step(ours, batch, jax.random.key(1))
    want = setup.train_fn(theirs, batch, jax.random.key(1))
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(got), jax.device_get(want))
    params = setup.init_state(jax.random.key(0)).params
    short, long = (buckets.prediction_batch(train, np.arange(8), n) for n in plan.lengths)
    short = sharding.global_batch(short, setup.mesh)
    np.testing.assert_array_equal(
        compiled.predict_step(params, short), setup.predict_fn()(params, short)
    )
    with pytest.raises(ValueError, match=f"no predict step compiled for length {plan.lengths[1]}"):
        compiled.predict_step(params, sharding.global_batch(long, setup.mesh))


def test_a_step_that_cannot_fit_the_chip_is_refused_before_the_first_step(monkeypatch):
    """On a chip whose HBM is known (a TPU v5e's report, stubbed) the longest bucket's step
    that cannot fit is compile_all's error, naming the bytes and what to change: the run
    stops before its first step rather than mid-epoch at that bucket's first batch."""
    setup, cfg, train = small_setup(length_buckets=2)
    plan = buckets.Plan.of(train, 2, 64)
    measured = []

    def too_big(compiled, device_kind):
        measured.append(compiled)
        return {"total_bytes": 16 * 2**30, "argument_bytes": 0, "temp_bytes": 16 * 2**30,
                "hbm_bytes": 16 * 2**30, "limit_bytes": int(15.2 * 2**30), "headroom": 0.05,
                "fits": False}  # fmt: skip

    monkeypatch.setattr(aot, "memory_report", too_big)
    tpu = types.SimpleNamespace(device_kind="TPU v5 lite")
    monkeypatch.setattr(jax, "local_devices", lambda: [tpu])
    with pytest.raises(UserError, match=r"needs 16.00 GiB of the 15.20 GiB usable per TPU v5 lite"):
        programs.compile_all(setup, cfg, programs.train_batch_shapes(train, plan, 8), {},
                             lambda line: None)  # fmt: skip
    # The longest bucket's program is the one measured.
    shapes = {getattr(a, "shape", None) for a in jax.tree.leaves(measured[0].args_info)}
    assert (8, plan.lengths[-1]) in shapes and (8, plan.lengths[0]) not in shapes


def test_a_fine_tune_steps_and_predicts_on_the_programs_compiled_ahead(
    tmp_path, monkeypatch, capsys
):
    """A bucketed GLUE run (train, dev evaluation, test predictions): every program is
    compiled in one go before the first step, and jit's own train and predict steps are
    never called (their caches stay empty: nothing compiled lazily mid-epoch)."""
    built, predict_fns = [], []
    build, predict_fn = step_setup.build, step_setup.StepSetup.predict_fn

    def recording_build(*args, **kwargs):
        built.append(build(*args, **kwargs))
        return built[-1]

    def recording_predict_fn(self):
        predict_fns.append(predict_fn(self))
        return predict_fns[-1]

    monkeypatch.setattr(step_setup, "build", recording_build)
    monkeypatch.setattr(step_setup.StepSetup, "predict_fn", recording_predict_fn)
    tiny_model = write_tiny_model(tmp_path / "model")
    data = tmp_path / "rte"
    write_rte(data, n_train=96, n_dev=24, n_test=16)
    cfg = load_config("finetune_glue", [
        "task=rte", f"init={tiny_model}", f"data.dir={data}", "data.max_seq_len=32",
        "data.length_buckets=2", "train.epochs=2", "train.global_batch_size=16",
        "optim.learning_rates=(1e-3,)"])  # fmt: skip
    result = ft.finetune(cfg, tmp_path / "run")
    log = capsys.readouterr().out
    assert result["epoch"] == 2 and (tmp_path / "run" / "predictions" / "RTE.tsv").is_file()
    assert len(built) == 1 and predict_fns
    assert built[0].train_fn._cache_size() == 0
    assert all(fn._cache_size() == 0 for fn in predict_fns)
    compiled_at = log.index("compiled the train step at length")
    assert compiled_at < log.index("epoch 1/2"), log
