"""The persistent compilation cache (`train.compilation_cache_dir`): a second `bertjax train`
process loads the train step the first one compiled, with the same numbers; where "auto" puts
the cache; a folder that cannot be created is one clear error."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bertjax.data.synthetic import synthetic_dataset
from bertjax.errors import UserError
from bertjax.train import compile_cache

REPO = Path(__file__).resolve().parents[1]


def train_in_subprocess(data, workdir, cache_setting):
    """One step of `bertjax train --config bert_tiny` in a fresh Python process; its stdout."""
    argv = [sys.executable, "-m", "bertjax.cli", "train", "--config", "bert_tiny",
            "--workdir", str(workdir), f"--config.data.train_dir={data}",
            "--config.train.steps=1", "--config.optim.warmup_steps=1",
            "--config.train.global_batch_size=8",
            "--config.train.eval_every=0", "--config.train.log_every=1",
            "--config.train.async_checkpointing=false", "--config.model.num_hidden_layers=1",
            f"--config.train.compilation_cache_dir={cache_setting}"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # this checkout's bertjax
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300,
                          check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def first_loss(workdir):
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return next(r["loss"] for r in rows if r.get("split") == "train")


def test_a_second_process_loads_the_train_step_from_the_cache(tmp_path):
    """The first process compiles the step and writes it to the cache folder; a second one
    (a restart) loads it from there instead of compiling it, and computes the same loss."""
    data = synthetic_dataset(tmp_path / "data", 16, 16, vocab_size=128)
    cache = tmp_path / "cache"
    first = train_in_subprocess(data, tmp_path / "run1", cache)
    assert f"compiled, then written to the compilation cache {cache}" in first, first
    assert any(p.name.startswith("jit_train_step-") for p in cache.iterdir()), list(cache.iterdir())
    second = train_in_subprocess(data, tmp_path / "run2", cache)
    assert f"(loaded from the compilation cache {cache})" in second, second
    assert first_loss(tmp_path / "run2") == first_loss(tmp_path / "run1")


def test_an_empty_setting_switches_the_cache_off(tmp_path):
    """ "" (after a run that had the cache on, as in a second run in one process): JAX's
    persistent cache is disabled, and a compile is counted as neither hit nor miss."""
    import jax

    assert compile_cache.enable(str(tmp_path / "c"), tmp_path, 1, key="k") == str(tmp_path / "c")
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "c")
    assert compile_cache.enable("", tmp_path, 1, key="k") is None
    assert jax.config.jax_compilation_cache_dir is None
    assert not jax.config.jax_enable_compilation_cache
    with compile_cache.watch() as events:
        jax.jit(lambda x: x * 3 + 1).lower(1.0).compile()
    assert (events.hits, events.misses) == (0, 0)
    assert events.describe(None) == "no compilation cache"


def test_auto_is_the_user_cache_dir_alone_and_the_workdir_with_several_processes(monkeypatch):
    """ "auto": $XDG_CACHE_HOME/bertjax/jax_cache (else ~/.cache/...) for one process; with
    several, WORKDIR/jax_cache (JAX writes entries from process 0 only, so every process must
    read the same folder); "" is off; a folder or URL of one's own is taken as it is."""
    monkeypatch.undo()  # conftest points user_cache_dir at the test session's folder
    monkeypatch.setenv("XDG_CACHE_HOME", "/xdg")
    assert compile_cache.resolve("auto", "/runs/a", 1) == "/xdg/bertjax/jax_cache"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", "/home/me")
    assert compile_cache.resolve("auto", "/runs/a", 1) == "/home/me/.cache/bertjax/jax_cache"
    assert compile_cache.resolve("auto", "/runs/a", 4) == "/runs/a/jax_cache"
    assert compile_cache.resolve("auto", "gs://b/run/", 4) == "gs://b/run/jax_cache"
    assert compile_cache.resolve("", "/runs/a", 4) is None
    # What one types for "off" is off, not a folder of that name in the current directory.
    for off in ("none", "None", "null", "off", "false", "no"):
        assert compile_cache.resolve(off, "/runs/a", 1) is None
    assert compile_cache.resolve("./none", "/runs/a", 1) == "./none"
    assert compile_cache.resolve("~/jc", "/runs/a", 1) == "/home/me/jc"
    assert compile_cache.resolve("gs://b/jc", "/runs/a", 1) == "gs://b/jc"


def test_a_folder_that_cannot_be_created_is_one_clear_error(tmp_path):
    """A cache path under a regular file: UserError naming the key and the way out."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UserError, match=r"train.compilation_cache_dir='.*file/c': cannot create"):
        compile_cache.enable(str(blocker / "c"), tmp_path, 1, key="train.compilation_cache_dir")
