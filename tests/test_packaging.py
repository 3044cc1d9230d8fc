"""bertjax installed as a package (not editable, not from the repository) runs: the recipes
ship inside it, so `--config bert_tiny` works from any directory, and `bertjax eval` too."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_an_installed_bertjax_trains_and_evaluates_from_an_empty_directory(tmp_path):
    target, cwd = tmp_path / "site", tmp_path / "elsewhere"
    cwd.mkdir()
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            target,
            str(REPO),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    assert (target / "bertjax" / "configs" / "bert_tiny.py").is_file()
    env = dict(os.environ, PYTHONPATH=str(target), XLA_FLAGS="", JAX_PLATFORMS="cpu")

    def run(*args):
        proc = subprocess.run(
            [sys.executable, *args],
            cwd=cwd,
            env=env,
            check=False,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    where = run("-c", "import bertjax; print(bertjax.__file__)")
    assert where.startswith(str(target)), where  # the installed copy, not the repository
    run(
        "-c",
        "from bertjax.data.synthetic import synthetic_dataset as s; "
        "s('data', 64, 32, vocab_size=300); s('data/eval', 16, 32, vocab_size=300, seed=1)",
    )
    run(
        "-m",
        "bertjax.cli",
        "train",
        "--config",
        "bert_tiny",
        "--workdir",
        "run",
        "--config.data.train_dir=data",
        "--config.train.steps=2",
        "--config.optim.warmup_steps=1",
        "--config.train.global_batch_size=8",
        "--config.train.eval_batch_size=8",
        "--config.train.eval_every=2",
        "--config.train.async_checkpointing=False",
    )
    metrics = json.loads(
        run("-m", "bertjax.cli", "eval", "--workdir", "run", "--data", "data/eval")
        .strip()
        .splitlines()[-1]
    )
    assert metrics["examples"] == 16 and metrics["model"].endswith("step 2")
