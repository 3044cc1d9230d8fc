"""Ctrl-C (SIGINT) at any moment of a real `bertjax train` or `bertjax prepare` process: one
line, exit 130, nothing half-written; the same command run again works and ends equal to an
uninterrupted run. In training, Ctrl-C after the first step saves a checkpoint as SIGTERM does;
prepare's worker processes exit without a word."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from bertjax.train import checkpoint
from tests.helpers import BERTJAX_WITH_SIGINT, snapshot

ENV = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")


def start(argv, log: Path) -> subprocess.Popen:
    """`bertjax ARGV` in a session of its own (Ctrl-C goes to its process group), output to
    files."""
    return subprocess.Popen(
        [sys.executable, "-c", BERTJAX_WITH_SIGINT, *map(str, argv)],
        env=ENV,
        start_new_session=True,
        stdout=open(log.with_suffix(".out"), "w"),
        stderr=open(log.with_suffix(".err"), "w"),
    )


def ctrl_c(proc, log: Path, when) -> tuple[int, str]:
    """SIGINT to the process group (as a terminal's Ctrl-C) after `when` seconds, or once
    `when()` is true; (exit code, stderr)."""
    deadline = time.monotonic() + 240
    if callable(when):
        while not when() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    else:
        time.sleep(when)
    assert proc.poll() is None, (
        "the command ended before Ctrl-C: " + log.with_suffix(".err").read_text()[-2000:]
    )
    os.killpg(proc.pid, signal.SIGINT)
    return proc.wait(timeout=240), log.with_suffix(".err").read_text()


def finish(proc, log: Path) -> str:
    assert proc.wait(timeout=600) == 0, log.with_suffix(".err").read_text()[-3000:]
    return log.with_suffix(".out").read_text()


def test_a_ctrl_c_python_swallowed_is_delivered_again(tmp_path):
    """Raised inside a garbage-collection callback (as in JAX's), KeyboardInterrupt is
    swallowed with an "Exception ignored" message and the work goes on: it is delivered again
    outside the callback, with no message."""
    script = textwrap.dedent("""
        import gc, os, signal, time
        from bertjax import interrupt
        # SIGINT as a process started from a terminal has it: a pytest-xdist worker ignores
        # it, and a child inherits that (install() keeps an ignored SIGINT ignored).
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        interrupt.install()
        fired = []
        def callback(phase, info):
            if phase == "start" and not fired:
                fired.append(1)
                os.kill(os.getpid(), signal.SIGINT)  # handled at once, inside the callback
        gc.callbacks.append(callback)
        try:
            gc.collect()
            for _ in range(100):
                time.sleep(0.01)
            print("went on")
        except KeyboardInterrupt:
            print("interrupted")
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=60,
        check=False,
    )
    assert proc.stdout.strip() == "interrupted" and proc.stderr == "", proc.stderr


def test_ctrl_c_at_any_moment_of_prepare(word_corpus, tmp_path):
    """SIGINT at 0.5 s, 3 s and once shards are being written, each into the rerun of the
    previous: exit 130, the one line, no worker traceback, --out absent; the fourth run
    writes shards byte-identical to an uninterrupted run's."""
    corpus, tok = word_corpus
    big, logs, data = tmp_path / "big.txt", tmp_path / "logs", tmp_path / "data"
    big.write_text(corpus.read_text() * 8)  # about 8 s with 2 workers
    logs.mkdir()
    data.mkdir()
    argv = [
        "prepare",
        "--input",
        big,
        "--tokenizer",
        tok,
        "--max-seq-len",
        "64",
        "--quiet",
        "--workers",
        "2",
        "--block-docs",
        "50",
        "--shard-size",
        "2000",
    ]
    reference = tmp_path / "reference"
    finish(start([*argv, "--out", reference], logs / "ref"), logs / "ref")
    out = data / "out"
    writing = lambda: any(data.glob(".out.partial-*/shard-00001.*"))
    for i, when in enumerate((0.5, 3.0, writing)):
        log = logs / f"try{i}"
        code, err = ctrl_c(start([*argv, "--out", out], log), log, when)
        assert (code, err) == (130, "bertjax prepare: interrupted\n"), (when, err)
        assert list(data.iterdir()) == [], when  # neither --out nor a partial one
    finish(start([*argv, "--out", out], logs / "final"), logs / "final")
    files, reference_files = snapshot(out), snapshot(reference)
    assert files.pop("manifest.json") and reference_files.pop("manifest.json")
    assert files == reference_files  # shards, eval split and tokenizer byte-identical
    manifests = [json.loads((d / "manifest.json").read_text()) for d in (out, reference)]
    for m in manifests:  # the command line names --out, `created` the time
        del m["command"], m["created"]
    assert manifests[0] == manifests[1]


def logged_step(workdir: Path) -> int:
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return 0
    return max(
        (json.loads(line)["step"] for line in path.read_text().splitlines() if line.endswith("}")),
        default=0,
    )


@pytest.mark.slow
def test_ctrl_c_at_any_moment_of_train(tiny_dataset, tmp_path):
    """SIGINT at 0.5 s and 3 s (start-up: before, JAX's gc callback swallowed it and every
    step ran, or the process crashed after printing "interrupted") and after step 2 (it saves
    that step, says so, exits 130), each into the rerun of the previous; the fourth run
    resumes and ends with the parameters of an uninterrupted run, bit for bit. The loader's
    worker process says nothing."""
    argv = [
        "train",
        "--config",
        "bert_tiny",
        f"--config.data.train_dir={tiny_dataset}",
        "--config.train.steps=40",
        "--config.train.checkpoint_every=20",
        "--config.train.global_batch_size=16",
        "--config.train.eval_every=0",
        "--config.train.log_every=1",
        "--config.model.num_hidden_layers=1",
        "--config.optim.warmup_steps=2",
        "--config.data.workers=1",  # a loader process, which Ctrl-C must not make speak
        f"--config.train.compilation_cache_dir={tmp_path / 'jax_cache'}",
    ]
    reference, logs = tmp_path / "reference", tmp_path / "logs"
    logs.mkdir()
    finish(start([*argv, "--workdir", reference], logs / "ref"), logs / "ref")
    workdir = tmp_path / "run"
    for i, when in enumerate((0.5, 3.0)):
        log = logs / f"try{i}"
        code, err = ctrl_c(start([*argv, "--workdir", workdir], log), log, when)
        assert (code, err) == (130, "bertjax train: interrupted\n"), (when, err)
        assert not checkpoint.is_checkpoint_dir(workdir)
    log = logs / "try2"
    code, err = ctrl_c(
        start([*argv, "--workdir", workdir], log), log, lambda: logged_step(workdir) >= 2
    )
    saved = checkpoint.Checkpointer(workdir, read_only=True).all_steps()
    assert code == 130 and len(saved) == 1 and 2 <= saved[0] < 40, (saved, err)
    assert err == (
        f"bertjax train: interrupted: saved the checkpoint of step {saved[0]} in "
        f"{workdir / 'checkpoints'}; the same command resumes from it\n"
    )
    assert logged_step(workdir) == saved[0]
    out = finish(start([*argv, "--workdir", workdir], logs / "final"), logs / "final")
    assert f"resuming from checkpoint step {saved[0]}" in out
    params = [jax.device_get(checkpoint.load_model(w).params) for w in (reference, workdir)]
    jax.tree.map(np.testing.assert_array_equal, *params)
    rows = [
        json.loads(line)["step"]
        for line in (workdir / "metrics.jsonl").read_text().splitlines()
        if line.strip()
    ]
    assert sorted(set(rows)) == list(range(1, 41))
