"""Nothing lost, nothing stuck, nothing silently wrong (single process): damaged checkpoints
are skipped and set aside so the run finishes exactly, a changed config is named as such,
corrupt or foreign data stops the run before any step, JSON never holds NaN, exports never
overwrite silently, and file-system mistakes are one line."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from bertjax import hf
from bertjax import model as model_lib
from bertjax.cli import main
from bertjax.data.shards import write_dataset
from bertjax.data.synthetic import synthetic_arrays, synthetic_dataset, synthetic_vocab
from bertjax.data.tokenizer import load_tokenizer
from bertjax.errors import UserError
from bertjax.train import checkpoint, loop
from bertjax.train.config import load_config

VOCAB, L = 256, 32


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("recovery")
    path = synthetic_dataset(root / "data", 128, L, vocab_size=VOCAB, shard_size=64)
    synthetic_dataset(root / "data" / "eval", 16, L, vocab_size=VOCAB, seed=1)
    return path


# The run every test trains (6 steps, checkpoints at 3 and 6), as config overrides.
RUN = {
    "train.steps": 6,
    "train.checkpoint_every": 3,
    "train.global_batch_size": 16,
    "train.log_every": 1,
    "train.eval_every": 0,
    "train.async_checkpointing": False,
    "model.num_hidden_layers": 1,
    "optim.warmup_steps": 2,
}


def overrides(data_dir, **changes) -> list[str]:
    return [f"{k}={v}" for k, v in ({"data.train_dir": data_dir} | RUN | changes).items()]


def config(data_dir, **changes):
    return load_config("bert_tiny", overrides(data_dir, **changes))


def params_of(workdir):
    return jax.device_get(checkpoint.load_model(workdir).params)


def metric_rows(workdir):
    lines = (Path(workdir) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines if line.strip()]


@pytest.fixture(scope="module")
def straight(data_dir, tmp_path_factory):
    """An uninterrupted 6-step run: the reference for every recovered one."""
    workdir = tmp_path_factory.mktemp("straight")
    loop.train(config(data_dir), workdir)
    return params_of(workdir)


def remove_a_data_file(step_dir):
    data_files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and "/d/" in str(p)]
    assert data_files, "no ocdbt data file found"
    max(data_files, key=lambda p: p.stat().st_size).unlink()  # the one holding the weights


def remove_the_ocdbt_manifest(step_dir):
    manifests = list((step_dir / "state").rglob("manifest.ocdbt"))
    assert manifests
    for m in manifests:
        m.unlink()


def truncate_a_file(step_dir):
    biggest = max(
        (p for p in (step_dir / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size
    )
    with open(biggest, "r+b") as f:
        f.truncate(biggest.stat().st_size // 3)


def run_cli(*argv):
    """`bertjax ARGV` in a process of its own: a restore there reads the files on disk, not
    what this process's tensorstore cache still holds of them."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    return subprocess.run(
        [sys.executable, "-m", "bertjax.cli", *argv],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )


def train_argv(data_dir, workdir):
    """`bertjax train` of the same run as config(data_dir)."""
    return [
        "train",
        "--config",
        "bert_tiny",
        "--workdir",
        str(workdir),
        *(f"--config.{item}" for item in overrides(data_dir)),
    ]


@pytest.fixture(scope="module")
def finished_run(data_dir, tmp_path_factory):
    """A 6-step run (checkpoints 3 and 6) written by a `bertjax train` process."""
    workdir = tmp_path_factory.mktemp("finished") / "run"
    proc = run_cli(*train_argv(data_dir, workdir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir


@pytest.mark.parametrize(
    "damage",
    [remove_a_data_file, remove_the_ocdbt_manifest, truncate_a_file],
    ids=lambda f: f.__name__,
)
def test_a_damaged_newest_checkpoint_is_set_aside_and_the_run_ends_exactly(
    damage, data_dir, straight, finished_run, tmp_path
):
    """Step 6's checkpoint damaged: rerunning the command restores step 3 (naming step 6 and
    why), moves step 6 aside, trains 4..6 and saves 6 again; the parameters equal an
    uninterrupted run's bit for bit and metrics.jsonl has one row per step; stderr is one
    warning line. Before: orbax's StepAlreadyExistsError at step 6 on every rerun, duplicate
    metrics rows, and orbax's and asyncio's tracebacks."""
    workdir = tmp_path / "run"
    shutil.copytree(finished_run, workdir)
    damage(workdir / "checkpoints" / "6")
    if damage is truncate_a_file:  # eval and export fall back too, and say so
        proc = run_cli("eval", "--workdir", str(workdir), "--data", str(data_dir / "eval"))
        assert proc.returncode == 0, proc.stderr[-3000:]
        warnings = [w for w in proc.stderr.splitlines() if not w.startswith("evaluation: ")]
        assert len(warnings) == 1 and "checkpoints/6 could not be restored" in warnings[0]
        assert json.loads(proc.stdout.splitlines()[-1])["model"].endswith("step 3")
        proc = run_cli("export", "--workdir", str(workdir), "--out", str(tmp_path / "hf"))
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "checkpoints/6 could not be restored" in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert json.loads(proc.stdout.splitlines()[-1])["exported"].endswith("step 3")
    proc = run_cli(*train_argv(data_dir, workdir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    # One line for the damaged step: before, orbax's traces (8,000 lines for a large model).
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"bertjax: warning: checkpoint {workdir}/checkpoints/6 could not be restored ("
    ), lines
    assert lines[0].endswith(
        f"falling back to the one before (set aside in "
        f"{workdir}/{checkpoint.DAMAGED_DIR} when the run starts)"
    )
    assert "resuming from checkpoint step 3" in proc.stdout
    assert (workdir / checkpoint.DAMAGED_DIR / "6").is_dir()
    assert checkpoint.Checkpointer(workdir, read_only=True).all_steps() == [3, 6]
    jax.tree.map(np.testing.assert_array_equal, straight, params_of(workdir))
    assert metric_rows(workdir) == [1, 2, 3, 4, 5, 6]


def test_resuming_with_another_model_names_the_change_and_moves_nothing(data_dir, tmp_path):
    """Another head count than the checkpoint's is a config change, not damage: one error
    naming the field, and every checkpoint stays. Before: a 100-line orbax traceback, and
    the checkpoint treated as damaged."""
    workdir = tmp_path / "run"
    loop.train(config(data_dir, **{"train.steps": 3}), workdir)
    with pytest.raises(
        UserError,
        match=r"holds another model than the config "
        r"\(num_attention_heads: 2 in the checkpoint, 4 now\)",
    ):
        loop.train(config(data_dir, **{"model.num_attention_heads": 4}), workdir)
    assert checkpoint.Checkpointer(workdir).all_steps() == [3]
    assert not (workdir / checkpoint.DAMAGED_DIR).exists()


def foreign_dataset(root: Path, like: Path) -> Path:
    """The same arrays as a dataset of a tokenizer of the same size with one word changed."""
    vocab = synthetic_vocab(root / "vocab", VOCAB)
    text = vocab.read_text()
    assert "\nw6\n" in text
    vocab.write_text(text.replace("\nw6\n", "\nx6\n"))
    arrays = synthetic_arrays(16, L, VOCAB, seed=1)
    return write_dataset(root / "ds", arrays, load_tokenizer(vocab), L, seed=1)


def test_data_of_another_tokenizer_is_refused_before_any_step(data_dir, tmp_path, capsys):
    """An eval split of another tokenizer with the same vocabulary size: `data.eval_dir` and
    `bertjax eval --data` are one error naming it. Before: plausible numbers."""
    other = foreign_dataset(tmp_path / "foreign", data_dir)
    with pytest.raises(UserError, match=rf"data.eval_dir={other} was made with another tokenizer"):
        loop.train(
            config(data_dir, **{"train.eval_every": 3, "data.eval_dir": other}), tmp_path / "run"
        )
    assert not (tmp_path / "run" / "checkpoints").exists()
    workdir = tmp_path / "ok"
    loop.train(config(data_dir, **{"train.steps": 3}), workdir)
    assert main(["eval", "--workdir", str(workdir), "--data", str(other)]) == 2
    assert f"--data={other} was made with another tokenizer" in capsys.readouterr().err


def test_a_corrupt_shard_stops_training_before_any_step(data_dir, tmp_path, capsys):
    """A flipped byte in a shard: `bertjax train` exits 2 with one line naming the shard,
    and nothing is written. Before: training went on (and saved checkpoints)."""
    corrupt = tmp_path / "data"
    shutil.copytree(data_dir, corrupt)
    shard = corrupt / "shard-00001.input_ids.npy"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF
    shard.write_bytes(bytes(data))
    argv = [
        "train",
        "--config",
        "bert_tiny",
        "--workdir",
        str(tmp_path / "run"),
        f"--config.data.train_dir={corrupt}",
        "--config.train.eval_every=0",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"shard file {shard} is corrupted" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_eval_json_holds_null_not_nan(data_dir, tmp_path, capsys):
    """A model whose outputs are NaN: `bertjax eval` prints valid JSON (null, with the reason
    once). Before: `"loss": NaN`, which no strict JSON reader accepts."""
    cfg = model_lib.preset_config("tiny", vocab_size=VOCAB, num_hidden_layers=1)
    params = jax.device_get(model_lib.init_params(cfg, jax.random.key(0)))
    params = jax.tree.map(lambda x: np.full_like(np.asarray(x), np.nan), params)
    vocab = data_dir.parent / "data.vocab" / "vocab.txt"
    folder = hf.write_folder(params, cfg, tmp_path / "nan_model", [vocab])
    assert main(["eval", "--workdir", str(folder), "--data", str(data_dir / "eval")]) == 0

    def no_constants(name):
        raise AssertionError(f"{name} in JSON output")

    out = json.loads(capsys.readouterr().out, parse_constant=no_constants)
    assert out["loss"] is None and "check the data first" in out["null_values"]


def test_export_never_overwrites_silently(data_dir, tmp_path, capsys):
    """`export --out` the workdir is refused; a folder of other files is refused even with
    --overwrite; an earlier export needs --overwrite and is then replaced whole. Before: the
    run's config.json was replaced by the HF one, and --overwrite deleted any folder."""
    workdir = tmp_path / "run"
    loop.train(config(data_dir, **{"train.steps": 3}), workdir)
    run_config = (workdir / "config.json").read_text()
    assert main(["export", "--workdir", str(workdir), "--out", str(workdir)]) == 2
    assert "holds this command's input" in capsys.readouterr().err
    assert (workdir / "config.json").read_text() == run_config
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "notes.txt").write_text("mine")
    assert main(["export", "--workdir", str(workdir), "--out", str(notes), "--overwrite"]) == 2
    assert "holds files bertjax did not write (notes.txt)" in capsys.readouterr().err
    assert (notes / "notes.txt").read_text() == "mine"
    out = tmp_path / "hf"
    assert main(["export", "--workdir", str(workdir), "--out", str(out)]) == 0
    assert main(["export", "--workdir", str(workdir), "--out", str(out)]) == 2
    assert "already holds a HuggingFace model folder" in capsys.readouterr().err
    assert main(["export", "--workdir", str(workdir), "--out", str(out), "--overwrite"]) == 0
    assert {"config.json", "model.safetensors", "vocab.txt"} <= {p.name for p in out.iterdir()}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "notes", "run"]  # no leftovers


def test_file_system_mistakes_are_one_line(data_dir, tmp_path, capsys):
    """A workdir that is a file, an --out under a file: exit 2 and one line naming the path.
    Before: NotADirectoryError tracebacks."""
    a_file = tmp_path / "file"
    a_file.write_text("x")
    argv = [
        "train",
        "--config",
        "bert_tiny",
        "--workdir",
        str(a_file),
        f"--config.data.train_dir={data_dir}",
        "--config.train.eval_every=0",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"--workdir {a_file} is a file" in err and "Traceback" not in err
    workdir = tmp_path / "run"
    loop.train(config(data_dir, **{"train.steps": 3}), workdir)
    capsys.readouterr()
    assert main(["export", "--workdir", str(workdir), "--out", str(a_file / "hf")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(a_file) in err and "Traceback" not in err
