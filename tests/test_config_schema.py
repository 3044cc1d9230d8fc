"""Every config key of every command has its type and range checked at start-up, in one table
beside the config's declaration (configs/base.py, finetune_glue.py, finetune_squad.py SCHEMA):
a wrong value, a rule across keys, or a change on resume of what the checkpoints were trained
on is one error naming the key, exit 2, before any file of the run changes. Evaluation and
fine-tuning data are checked the same way."""

import importlib
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from bertjax.cli import main
from bertjax.configs import base, finetune_squad
from bertjax.data.shards import write_dataset
from bertjax.data.synthetic import synthetic_arrays, synthetic_dataset
from bertjax.errors import UserError
from bertjax.finetune.glue_data import load_split
from bertjax.train.config import config_names, flat_keys, load_config
from bertjax.train.config_schema import Float, Int, Key, Str
from tests.helpers import snapshot

# A fine-tuning config declares its own SCHEMA; the pretraining recipes have base.py's keys.
SCHEMAS = {
    name: getattr(importlib.import_module(f"bertjax.configs.{name}"), "SCHEMA", base.SCHEMA)
    for name in config_names()
}
RUN = [
    "--config.train.steps=4",
    "--config.train.checkpoint_every=2",
    "--config.train.global_batch_size=16",
    "--config.train.eval_every=0",
    "--config.train.log_every=1",
    "--config.model.num_hidden_layers=1",
    "--config.optim.warmup_steps=1",
    "--config.train.async_checkpointing=false",
]


@pytest.mark.parametrize("name", config_names())
def test_every_key_of_every_packaged_config_has_a_range(name):
    """A key added to a config without a line in its schema fails here; the schema lists
    every key it covers (`describe`) and no key the configs lack."""
    schema = SCHEMAS.get(name, base.SCHEMA)
    keys = flat_keys(load_config(name))
    assert [k for k in keys if k not in schema.keys] == []
    schema.check(load_config(name))  # the recipes themselves pass
    described = [line.split()[0] for line in schema.describe().splitlines()]
    assert described == list(schema.keys)
    if name in ("base", "finetune_squad"):  # the configs that hold every key of their kind
        assert set(schema.keys) == set(keys)


def test_a_key_knows_its_type_and_range():
    assert Int("n", low=1).problem(True) == "must be an integer"  # a bool is not a count
    assert Int("n", low=1).problem(0) == "must be >= 1"
    assert Float("lr", above=0).problem(3) is None  # an int is a number
    assert Float("lr", above=0).problem(float("nan")) == "must be a finite number"
    assert Float("p", low=0, below=1).problem(1.0) == "must be >= 0 and < 1"
    assert Int("axis", low=-1, not_equal=(0,)).problem(0) == "must be >= -1 and not 0"
    assert Str("s", choices=("a", "b")).problem("c") == "must be one of a, b"
    assert Key("k", int, none=True).problem(None) is None
    with pytest.raises(UserError, match=r"bertjax does not read: train\.stepz"):
        base.SCHEMA.check({**load_config("bert_tiny").to_dict(), "train": {"stepz": 1}})


@pytest.fixture(scope="module")
def finished_run(tiny_dataset, tmp_path_factory):
    """A 4-step `bertjax train` run with checkpoints at steps 2 and 4."""
    workdir = tmp_path_factory.mktemp("schema") / "run"
    argv = [
        "train",
        "--config",
        "bert_tiny",
        "--workdir",
        str(workdir),
        f"--config.data.train_dir={tiny_dataset}",
        *RUN,
    ]
    assert main(argv) == 0
    return workdir


@pytest.fixture(scope="module")
def packed_dataset(tmp_path_factory):
    """The same vocabulary as tiny_dataset, packed rows of 2 sequences."""
    root = tmp_path_factory.mktemp("packed")
    return synthetic_dataset(root / "data", 128, 32, vocab_size=256, max_sequences_per_row=2)


# override -> the words of the refusal. The first ones are the probes.
BAD = {
    "train.keep_checkpoints=0": r"train\.keep_checkpoints=0 must be >= 1 \(recent checkpoints",
    "train.keep_checkpoints=-1": r"train\.keep_checkpoints=-1 must be >= 1",
    "train.checkpoint_every=0": r"train\.checkpoint_every=0 must be >= 1",
    "optim.peak_lr=-0.001": r"optim\.peak_lr=-0\.001 must be > 0",
    "optim.warmup_steps=10": r"the warm-up is longer than the run.*optim\.warmup_steps=10, "
    r"train\.steps=6",
    "train.nsp=false": r"cannot resume .*train\.nsp: True in the checkpoint, False now",
    "train.seed=7": r"cannot resume .*train\.seed: 0 in the checkpoint, 7 now",
    "optim.clip_norm=0.0": r"optim\.clip_norm: 1\.0 in the checkpoint, 0\.0 now",
    "model.hidden_dropout_prob=1.0": r"hidden_dropout_prob=1\.0 must be >= 0 and < 1",
    "data.masked_lm_prob=0.0": r"data\.masked_lm_prob=0\.0 must be > 0 and <= 1",
    "mesh.data=0": r"mesh\.data=0 must be >= -1 and not 0",
    "train.profile_steps=soon": r"train\.profile_steps='soon' must be a string matching",
    "train.eval_batch_size=0": r"train\.eval_batch_size=0 must be >= 1",
    "packed data": r"cannot resume .*: the data differs from the checkpoint's",
}


@pytest.mark.parametrize("override", list(BAD))
def test_a_bad_value_is_one_error_naming_the_key_and_the_run_is_untouched(
    override, finished_run, tiny_dataset, packed_dataset, capsys
):
    before = snapshot(finished_run)
    data = packed_dataset if override == "packed data" else tiny_dataset
    argv = [
        "train",
        "--config",
        "bert_tiny",
        "--workdir",
        str(finished_run),
        f"--config.data.train_dir={data}",
        *RUN,
        "--config.train.steps=6",
    ]
    if override != "packed data":
        argv.append(f"--config.{override}")
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert re.search(BAD[override], err), err
    assert snapshot(finished_run) == before  # config.json, metrics and checkpoints alike


def test_eval_checks_its_batch_and_says_when_nsp_is_absent(
    finished_run, tiny_dataset, tmp_path, capsys
):
    """--batch-size 0 is an error (it meant the default); data prepared with --no-nsp gets no
    NSP accuracy (it was 0.0); a batch far larger than the split is cut to the split."""
    assert main(["eval", "--workdir", str(finished_run), "--data", "x", "--batch-size", "0"]) == 2
    assert "--batch-size 0 must be at least 1" in capsys.readouterr().err
    rows = synthetic_arrays(24, 32, 256, seed=3)
    rows["next_sentence_label"][:] = 0
    no_nsp = write_dataset(tmp_path / "no_nsp", rows, tiny_dataset / "tokenizer", 32, nsp=False)
    assert (
        main(
            ["eval", "--workdir", str(finished_run), "--data", str(no_nsp), "--batch-size", "4096"]
        )
        == 0
    )
    captured = capsys.readouterr()
    result = json.loads(captured.out.strip().splitlines()[-1])
    assert "nsp_accuracy" not in result and result["nsp"].startswith("absent: ")
    assert math.isfinite(result["mlm_accuracy"]) and result["masked_tokens"] > 0
    assert "evaluation: batches of 24, not 4096: that holds all 24 rows" in captured.err


@pytest.mark.parametrize(
    "label, split",
    [("nan", "train"), ("inf", "train"), ("99", "train"), ("-0.5", "train"), ("nan", "validation")],
)
def test_a_regression_label_outside_the_task_range_names_file_and_line(tmp_path, label, split):
    """STS-B scores are finite numbers from 0 to 5: before, nan/inf/99 trained into a NaN loss
    that named no row, and a nan in dev.tsv gave NaN in eval_results.json and exit 0."""
    header = "\t".join(
        [
            "index",
            "genre",
            "filename",
            "year",
            "old_index",
            "source1",
            "source2",
            "sentence1",
            "sentence2",
            "score",
        ]
    )
    rows = [
        f"{i}\tg\tf\t2012\t{i}\ts\ts\ta b\tc d\t{score}"
        for i, score in enumerate(["1.5", label, "4.0"])
    ]
    name = "train.tsv" if split == "train" else "dev.tsv"
    (tmp_path / name).write_text("\n".join([header, *rows]) + "\n")
    with pytest.raises(
        UserError,
        match=rf"{name}, line 3: STS-B score '{label}' is not a number "
        "from 0 to 5",
    ):
        load_split("stsb", split, str(tmp_path))
    ok = tmp_path / "ok"
    ok.mkdir()
    (ok / name).write_text("\n".join([header, rows[0], rows[2]]) + "\n")
    assert [e["label"] for e in load_split("stsb", split, str(ok))] == [1.5, 4.0]


def test_fine_tuning_values_are_checked_before_anything_is_read(tmp_path, capsys):
    for flags, words in (
        (["--lr=-1e-5"], "learning_rates=(-1e-05,) has an item -1e-05 that must be > 0"),
        (["--epochs", "0"], "epochs=0 must be >= 1"),
        (["--lr-sweep", "2e-5", "2e-5"], "learning_rates must list at least one rate, none twice"),
    ):
        argv = [
            "finetune",
            "--task",
            "sst2",
            "--init",
            str(tmp_path / "none"),
            "--workdir",
            str(tmp_path / "run"),
            *flags,
        ]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1, err
    assert not Path(tmp_path / "run").exists()
    assert np.isclose(finetune_squad.SCHEMA.keys["optim.b2"].below, 1)
