"""Checkpointed training end to end, with real `bertjax train` subprocesses: SIGKILL + resume is
bit-identical to an uninterrupted run, SIGTERM saves and exits 0, phase 1 -> phase 2 hand-over,
export -> transformers, and `--init-from`."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from bertjax.data.synthetic import synthetic_dataset
from bertjax.train.checkpoint import load_model
from bertjax.train.metrics_writer import read_metrics

CONFIG = "bert_tiny"
# Metrics that depend on the wall clock, not on the computation.
TIMING_KEYS = {
    "time",
    "tokens_per_s",
    "real_tokens_per_s",
    "model_flops_per_s",
    "mfu",
    "step_time_s",
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    path = synthetic_dataset(root / "data", 192, 32, vocab_size=256, shard_size=64)
    synthetic_dataset(root / "data" / "eval", 24, 32, vocab_size=256, seed=1)
    return path


def train_cmd(data_dir, workdir, *extra):
    return [
        sys.executable,
        "-m",
        "bertjax.cli",
        "train",
        "--config",
        CONFIG,
        "--workdir",
        str(workdir),
        f"--config.data.train_dir={data_dir}",
        "--config.train.global_batch_size=16",
        "--config.train.log_every=1",
        "--config.train.eval_every=0",
        "--config.model.num_hidden_layers=1",
        "--config.optim.warmup_steps=1",
        *extra,
    ]


def child_env(devices=2):
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    return env


def run_train(data_dir, workdir, *extra, timeout=300):
    proc = subprocess.run(
        train_cmd(data_dir, workdir, *extra),
        env=child_env(),
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def train_history(workdir):
    return {
        r["step"]: {k: v for k, v in r.items() if k not in TIMING_KEYS}
        for r in read_metrics(workdir)
        if r.get("split", "train") == "train"
    }


def final_params(workdir):
    return jax.device_get(load_model(workdir).params)


def assert_bitwise_equal(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def wait_for(predicate, proc, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"training ended early: {proc.stderr.read()[-3000:]}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("timed out waiting for the training subprocess")


def logged_steps(workdir):
    path = Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return 0
    steps = [
        json.loads(line)["step"] for line in path.read_text().splitlines() if line.endswith("}")
    ]
    return max(steps, default=0)


@pytest.fixture(scope="module")
def packed_data_dir(tmp_path_factory):
    """Packed rows (up to 3 sequences each) of 32 tokens, and their held-out split."""
    root = tmp_path_factory.mktemp("resume_packed")
    path = synthetic_dataset(
        root / "data", 400, 32, vocab_size=256, shard_size=64, max_sequences_per_row=3
    )
    synthetic_dataset(
        root / "data" / "eval", 40, 32, vocab_size=256, seed=1, max_sequences_per_row=3
    )
    return path


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_sigkill_then_resume_is_bitwise_identical_to_an_uninterrupted_run(
    layout, request, tmp_path
):
    """Padded rows, and packed rows (the input pipeline's guarantee holds for both)."""
    data_dir = request.getfixturevalue("data_dir" if layout == "padded" else "packed_data_dir")
    steps = ["--config.train.steps=30", "--config.train.checkpoint_every=15"]
    run_train(data_dir, tmp_path / "straight", *steps)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        train_cmd(data_dir, killed, *steps),
        env=child_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Kill -9 once checkpoint 15 is complete (orbax renames it into place when done) and the
    # run has gone on past it, so the kill lands mid-run with steps to lose.
    wait_for(lambda: (killed / "checkpoints" / "15").is_dir() and logged_steps(killed) >= 17, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert logged_steps(killed) < 30, "the run finished before it could be killed"

    resumed = run_train(data_dir, killed, *steps)
    assert "resuming from checkpoint step 15" in resumed.stdout + resumed.stderr
    assert_bitwise_equal(final_params(tmp_path / "straight"), final_params(killed))
    straight, again = train_history(tmp_path / "straight"), train_history(killed)
    assert sorted(again) == list(range(1, 31))
    for step in range(16, 31):
        assert again[step] == straight[step], step


@pytest.mark.slow
def test_sigterm_saves_at_the_next_step_and_exits_zero(data_dir, tmp_path):
    workdir = tmp_path / "run"
    proc = subprocess.Popen(
        train_cmd(
            data_dir,
            workdir,
            "--config.train.steps=100000",
            "--config.train.checkpoint_every=100000",
        ),
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: logged_steps(workdir) >= 3, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert len(saved) == 1 and 3 <= saved[0] < 100000
    assert "SIGTERM" in out + err
    assert logged_steps(workdir) == saved[0]  # nothing trained after the saved step


@pytest.mark.slow
def test_phase2_starts_from_phase1_and_export_loads_in_transformers(data_dir, tmp_path):
    import torch
    import transformers

    phase1 = tmp_path / "phase1"
    run_train(data_dir, phase1, "--config.train.steps=4", "--config.train.checkpoint_every=4")
    # Phase 2: its own (longer-sequence) dataset and schedule, from phase 1's parameters.
    data64 = synthetic_dataset(tmp_path / "data64", 96, 64, vocab_size=256, seed=3)
    for carry in ("False", "True"):
        phase2 = tmp_path / f"phase2_{carry}"
        out = run_train(
            data64,
            phase2,
            "--config.train.steps=2",
            "--config.train.checkpoint_every=2",
            f"--init-from={phase1}",
            f"--config.train.init_opt_state={carry}",
        )
        assert f"initialised from {phase1}" in out.stdout + out.stderr
        first = read_metrics(phase2)[0]
        assert first["step"] == 1
        # Phase 2 starts with its own schedule: warm-up from zero again.
        assert first["learning_rate"] == 0.0
    # The hand-over is real: phase 2's first loss is phase 1's model's, not a fresh one's.
    fresh = tmp_path / "fresh"
    run_train(data64, fresh, "--config.train.steps=1", "--config.train.checkpoint_every=1")
    assert read_metrics(tmp_path / "phase2_False")[0]["loss"] != read_metrics(fresh)[0]["loss"]

    hf_dir = tmp_path / "hf"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bertjax.cli",
            "export",
            "--workdir",
            str(phase1),
            "--out",
            str(hf_dir),
        ],
        check=False,
        capture_output=True,
        text=True,
        env=child_env(1),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert (hf_dir / "vocab.txt").exists()
    reloaded, info = transformers.BertForPreTraining.from_pretrained(
        hf_dir, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ids = np.random.default_rng(0).integers(5, 256, (2, 16))
    with torch.no_grad():
        ref = reloaded.eval()(input_ids=torch.tensor(ids)).prediction_logits.numpy()
    from bertjax import hf

    ours = hf.load_pretrained(hf_dir)(ids).mlm_logits
    assert np.max(np.abs(np.asarray(ours) - ref)) <= 2e-5


def test_init_from_a_missing_path_is_a_clear_error(data_dir, tmp_path):
    proc = subprocess.run(
        train_cmd(
            data_dir,
            tmp_path / "w",
            "--config.train.steps=2",
            f"--init-from={tmp_path / 'nothing'}",
        ),
        env=child_env(),
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "neither a training workdir" in proc.stderr and "Traceback" not in proc.stderr


def test_a_workdir_without_checkpoints_is_not_taken_for_a_huggingface_folder(tmp_path):
    """A run writes its config.json at the start: before the first checkpoint, export and
    --init-from must say the checkpoints are missing, not fail parsing it as an HF config."""
    from bertjax.errors import UserError
    from bertjax.train.config import load_config

    (tmp_path / "config.json").write_text(load_config(CONFIG).to_json(indent=2))
    with pytest.raises(UserError, match=r"training workdir without checkpoints yet"):
        load_model(tmp_path)
