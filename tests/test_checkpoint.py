"""Orbax checkpoints: round trip, restore onto another mesh, damaged-checkpoint fallback, keep
policy, and the SIGTERM watcher."""

import json
import logging
import os
import re
import signal

import flax.linen as nn
import jax
import numpy as np
import pytest

from bertjax import model as model_lib
from bertjax.train import checkpoint, optim, preemption, sharding
from bertjax.train import step as step_lib
from helpers import optim_config

RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("vocab", "tensor"),
)
MODEL_CFG = model_lib.preset_config(
    "tiny",
    vocab_size=96,
    max_position_embeddings=32,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)
OPTIM_CFG = optim_config(warmup_steps=2)


def make_setup(data, fsdp=1, tensor=1, num_devices=8):
    mesh = sharding.make_mesh(
        dict(data=data, fsdp=fsdp, tensor=tensor), devices=jax.devices()[:num_devices]
    )
    tx, schedule = optim.make_optimizer(OPTIM_CFG, total_steps=20)
    abstract, shardings = step_lib.state_shardings(MODEL_CFG, tx, mesh, RULES)
    abstract = nn.meta.unbox(abstract)
    train_step = step_lib.jit_train_step(
        mesh,
        RULES,
        shardings,
        model=model_lib.BertForPreTraining(MODEL_CFG),
        tx=tx,
        schedule=schedule,
        deterministic=True,
    )
    return mesh, tx, abstract, shardings, train_step


def make_batch(seed=0, batch=8, length=16, predictions=4):
    rng = np.random.default_rng(seed)
    return {
        "input_ids": rng.integers(5, 96, (batch, length)).astype(np.int32),
        "input_mask": np.ones((batch, length), np.int32),
        "segment_ids": (np.arange(length) >= length // 2).astype(np.int32)[None].repeat(batch, 0),
        "masked_lm_positions": rng.integers(1, length, (batch, predictions)).astype(np.int32),
        "masked_lm_ids": rng.integers(5, 96, (batch, predictions)).astype(np.int32),
        "masked_lm_weights": np.ones((batch, predictions), np.float32),
        "next_sentence_labels": rng.integers(0, 2, (batch,)).astype(np.int32),
    }


def trained_state(setup, steps=2):
    mesh, tx, _, shardings, train_step = setup
    state = step_lib.create_sharded_state(
        jax.random.key(0), model_cfg=MODEL_CFG, tx=tx, shardings=shardings
    )
    for s in range(steps):
        state, _ = train_step(state, sharding.global_batch(make_batch(s), mesh), jax.random.key(1))
    return jax.block_until_ready(state)


def assert_trees_equal(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def test_round_trip_restores_everything_bitwise(tmp_path):
    setup = make_setup(data=2, fsdp=4)
    state = trained_state(setup)
    ckpt = checkpoint.Checkpointer(tmp_path)
    loader_state = {"step": 2, "seed": 3, "global_batch_size": 8}
    config = {"model": {"preset": "tiny"}, "train": {"steps": 20}}
    assert ckpt.save(2, state, jax.random.key(42), loader_state, config)
    ckpt.wait()
    assert ckpt.all_steps() == [2]
    restored, rng, restored_loader, restored_config = ckpt.restore(setup[2], setup[3])
    assert_trees_equal(state, restored)
    assert restored_loader == loader_state and restored_config == config
    np.testing.assert_array_equal(jax.random.key_data(rng), jax.random.key_data(jax.random.key(42)))
    # Restored arrays live in the requested shardings.
    leaf = restored.params["bert"]["embeddings"]["word_embeddings"]["embedding"]
    assert leaf.sharding == setup[3].params["bert"]["embeddings"]["word_embeddings"]["embedding"]
    ckpt.close()


@pytest.mark.parametrize(
    "target",
    [
        dict(data=2, num_devices=2),
        dict(data=1, num_devices=1),
        dict(data=4, tensor=2, num_devices=8),
    ],
)
def test_restore_onto_another_mesh_gives_the_same_next_loss(tmp_path, target):
    source = make_setup(data=2, fsdp=4)
    state = trained_state(source)
    ckpt = checkpoint.Checkpointer(tmp_path)
    ckpt.save(2, state, jax.random.key(0), {"step": 2}, {})
    ckpt.wait()
    saved_on_host = jax.device_get(state)
    batch = make_batch(7)
    # The step donates `state`: run it after the host copy above.
    _, expected = source[4](state, sharding.global_batch(batch, source[0]), jax.random.key(1))

    other = make_setup(**target)
    reader = checkpoint.Checkpointer(tmp_path, read_only=True)
    restored, _, _, _ = reader.restore(other[2], other[3])
    assert_trees_equal(saved_on_host, jax.device_get(restored))
    _, got = other[4](restored, sharding.global_batch(batch, other[0]), jax.random.key(1))
    np.testing.assert_allclose(float(got["loss"]), float(expected["loss"]), rtol=0, atol=1e-5)


def test_damaged_newest_checkpoint_falls_back_with_one_warning_line(tmp_path, capfd):
    setup = make_setup(data=8)
    state = trained_state(setup, steps=1)
    ckpt = checkpoint.Checkpointer(tmp_path)
    ckpt.save(1, state, jax.random.key(0), {"step": 1}, {"c": 1})
    ckpt.save(2, state, jax.random.key(0), {"step": 2}, {"c": 2})
    ckpt.wait()
    damaged = 0
    for root, _, files in os.walk(tmp_path / "checkpoints" / "2" / "state"):
        for name in files:
            with open(os.path.join(root, name), "r+b") as f:
                f.truncate(max(0, os.path.getsize(f.name) // 3))
            damaged += 1
    assert damaged
    capfd.readouterr()
    resumed = checkpoint.Checkpointer(tmp_path)
    _, _, loader_state, config = resumed.restore(setup[2], setup[3])
    assert loader_state == {"step": 1} and config == {"c": 1}
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(
        r"checkpoints/2 could not be restored .*falling back to "
        "the one before",
        err[0],
    ), err
    # Moved aside once the run's start-up checks passed, so that it can save step 2 again.
    assert not (tmp_path / checkpoint.DAMAGED_DIR).exists()
    resumed.set_aside_damaged()
    assert (tmp_path / checkpoint.DAMAGED_DIR / "2").is_dir()
    assert checkpoint.Checkpointer(tmp_path).all_steps() == [1]


def test_keep_last_n_plus_every_mth(tmp_path):
    setup = make_setup(data=8)
    state = trained_state(setup, steps=0)
    ckpt = checkpoint.Checkpointer(tmp_path, keep=2, keep_every=4, async_save=False)
    for s in range(1, 10):
        ckpt.save(s, state, jax.random.key(0), {"step": s}, {})
    ckpt.close()
    assert checkpoint.Checkpointer(tmp_path, read_only=True).all_steps() == [4, 8, 9]


def test_reading_a_run_does_not_warn_that_it_is_read_only(tmp_path, caplog):
    """Orbax warns on every read-only manager; export/eval/plot read runs by design."""
    checkpoint.Checkpointer(tmp_path, async_save=False).close()
    with caplog.at_level(logging.INFO):
        checkpoint.Checkpointer(tmp_path, read_only=True).all_steps()
        logging.getLogger("absl").warning("Given directory is read only=x (after: not dropped)")
    messages = [r.getMessage() for r in caplog.records]
    assert not any("read only=" + str(tmp_path) in m for m in messages), messages
    assert "Given directory is read only=x (after: not dropped)" in messages


def test_no_checkpoint_is_a_clear_error(tmp_path):
    setup = make_setup(data=8)
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        checkpoint.Checkpointer(tmp_path).restore(setup[2], setup[3])


def test_sigterm_sets_the_stop_flag_and_handler_is_restored():
    before = signal.getsignal(signal.SIGTERM)
    watcher = preemption.PreemptionWatcher()
    assert not watcher.should_stop(0)
    os.kill(os.getpid(), signal.SIGTERM)
    assert watcher.should_stop(1)
    watcher.close()
    assert signal.getsignal(signal.SIGTERM) == before


def test_restore_params_needs_neither_optimizer_nor_mesh(tmp_path):
    setup = make_setup(data=2, fsdp=4)
    state = trained_state(setup, steps=1)
    ckpt = checkpoint.Checkpointer(tmp_path)
    ckpt.save(1, state, jax.random.key(0), {"step": 1}, {"model": {"preset": "tiny"}})
    ckpt.wait()
    params, config, step = checkpoint.Checkpointer(tmp_path, read_only=True).restore_params()
    assert config == {"model": {"preset": "tiny"}} and step == 1
    assert_trees_equal(jax.device_get(state.params), jax.device_get(params))
    with pytest.raises(FileNotFoundError, match="step 5"):
        checkpoint.Checkpointer(tmp_path, read_only=True).restore_params(step=5)


def test_checkpoint_benchmark_reports_size_and_times(capsys):
    from bertjax import cli

    assert (
        cli.main(["bench", "checkpoint", "--preset", "tiny", "--vocab-size", "128", "--json"]) == 0
    )
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # params + two Adam moments, float32, barely compressible: about 12 bytes per parameter.
    assert result["checkpoint_bytes"] > 10 * result["params"]
    assert 0 < result["save_blocking_s"] <= result["save_total_s"] and result["restore_s"] > 0


def test_a_relative_workdir_works(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    setup = make_setup(data=8)
    state = trained_state(setup, steps=0)
    ckpt = checkpoint.Checkpointer("runs/relative", async_save=False)
    ckpt.save(1, state, jax.random.key(0), {"step": 1}, {})
    ckpt.close()
    assert (tmp_path / "runs" / "relative" / "checkpoints" / "1").is_dir()
    assert checkpoint.Checkpointer("runs/relative", read_only=True).all_steps() == [1]


def test_after_a_failed_restore_only_the_abandoned_reads_errors_are_dropped():
    """The unraisable hook installed after a failed restore drops errors raised in callbacks of
    tensorstore's abandoned reads (a closed event loop, an error raised in orbax's own code such
    as its read coroutine re-raising when closed, or any error in a TensorStore object's
    callback) and passes every other unraisable error on."""
    import types

    from bertjax.train import quiet_restore

    class TensorStoreCallback:
        def __repr__(self):
            return "<bound method spec of TensorStore({'driver': 'zarr'})>"

    # An error raised in a coroutine of orbax's serialization module, as its read coroutine
    # raises when garbage-collected: the unraisable's object is the coroutine, whose repr does
    # not name TensorStore; only where the error was raised says it is orbax's.
    orbax_code = compile(
        "def read():\n    raise Exception('Encountered error while reading array index')\n",
        "/venv/site-packages/orbax/checkpoint/_src/serialization/serialization.py",
        "exec",
    )
    namespace = {}
    exec(orbax_code, namespace)
    try:
        namespace["read"]()
    except Exception as e:
        orbax_error = e

    passed = []
    hook = quiet_restore._drop_abandoned_read_errors(passed.append)
    dropped = [
        types.SimpleNamespace(exc_value=RuntimeError("Event loop is closed"), object=None),
        types.SimpleNamespace(exc_value=ValueError("NOT_FOUND"), object=TensorStoreCallback()),
        types.SimpleNamespace(
            exc_value=orbax_error,
            exc_traceback=orbax_error.__traceback__,
            object="<coroutine object _read_array_index_and_device_put at 0x7f>",
        ),
    ]
    kept = types.SimpleNamespace(exc_value=ValueError("a user's own"), object="<function f>")
    for unraisable in [*dropped, kept]:
        hook(unraisable)
    assert passed == [kept]
