"""No command deletes what it did not make (bertjax/outputs.py): what a folder holds is told
apart (dataset, run, tokenizer, export, demo); --overwrite replaces only an output of the same
kind, never one of another kind, never a folder inside one or holding the command's input; an
output is built beside its target and replaces it only when complete. Each refusal below is one
line with exit code 2 and leaves every pre-existing file byte-identical."""

import json
import re
import shutil
from pathlib import Path

import pytest

from bertjax import interrupt, outputs
from bertjax.cli import main
from bertjax.errors import UserError
from tests.helpers import snapshot


def fake_run(path: Path) -> Path:
    """A training workdir as `bertjax train` leaves it (checkpoint contents are not read)."""
    (path / "checkpoints" / "3" / "state").mkdir(parents=True)
    (path / "checkpoints" / "3" / "state" / "d").write_bytes(b"\x00weights")
    (path / "metrics.jsonl").write_text('{"step": 3, "split": "train", "loss": 6.2}\n')
    (path / "config.json").write_text(json.dumps({"train": {"steps": 3}}))
    return path


def fake_export(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (path / "model.safetensors").write_bytes(b"weights")
    (path / "vocab.txt").write_text("[PAD]\n")
    return path


@pytest.fixture
def world(tmp_path, tiny_dataset, word_corpus):
    """One folder of each kind, and a user's folder of notes."""
    corpus, tok = word_corpus
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    (tmp_path / "tok").mkdir()
    shutil.copy(tok / "vocab.txt", tmp_path / "tok" / "vocab.txt")
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "paper.pdf").write_bytes(b"%PDF draft")
    (tmp_path / "empty.txt").write_text("\n\n")
    return {
        "root": tmp_path,
        "data": data,
        "run": fake_run(tmp_path / "run"),
        "export": fake_export(tmp_path / "export"),
        "tok": tmp_path / "tok",
        "notes": notes,
        "corpus": corpus,
    }


def test_what_a_folder_holds(world):
    kinds = {
        name: outputs.holding(world[name]).kind
        for name in ("data", "run", "export", "tok", "notes")
    }
    assert kinds == {
        "data": "dataset",
        "run": "run",
        "export": "export",
        "tok": "tokenizer",
        "notes": None,
    }
    assert outputs.holding(world["root"] / "missing") is None
    (world["root"] / "only" / "tokenizer").mkdir(parents=True)  # a folder named so: no dataset
    assert outputs.holding(world["root"] / "only").kind is None
    demo = world["root"] / "demo"  # what `bertjax demo` leaves: a rerun may use it again
    (demo / "corpus").mkdir(parents=True)
    (demo / "corpus" / "DONE.json").write_text("{}")
    shutil.copytree(world["data"], demo / "data")
    fake_run(demo / "run")
    assert outputs.holding(demo).kind == "demo"
    outputs.check_folder(demo, outputs.DEMO, overwrite=True, flag="--workdir")
    assert outputs.enclosing(demo / "run" / "checkpoints")[0] == demo / "run"
    part_of = {
        name: outputs.enclosing(world[name[0]] / name[1])
        for name in (
            ("run", "checkpoints"),
            ("run", "hf"),
            ("data", "eval"),
            ("data", "tokenizer"),
            ("export", "x"),
            ("notes", "x"),
        )
    }
    assert [name for name, found in part_of.items() if found] == [
        ("run", "checkpoints"),
        ("data", "eval"),
        ("data", "tokenizer"),
        ("export", "x"),
    ]


def test_an_output_replaces_its_target_only_when_complete(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old").write_text("old")
    with pytest.raises(RuntimeError), outputs.replacing_folder(out) as staging:
        (staging / "new").write_text("half")
        raise RuntimeError("disk full")
    assert snapshot(tmp_path) == {"out/old": snapshot(out)["old"]}  # as it was, no leftovers
    with outputs.replacing_folder(out) as staging:
        (staging / "new").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert [p.name for p in out.iterdir()] == ["new"]
    interrupt._requested.set()  # a Ctrl-C Python swallowed: the output is not put in place
    try:
        with pytest.raises(KeyboardInterrupt), outputs.replacing_folder(out) as staging:
            (staging / "newer").write_text("newer")
    finally:
        interrupt.clear()
    assert [p.name for p in out.iterdir()] == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize(
    "kind, overwrite, allowed",
    [
        ("dataset", False, False),
        ("dataset", True, True),
        ("export", True, False),
        ("tokenizer", True, False),
        ("run", True, True),
    ],
)
def test_overwrite_replaces_only_the_same_kind(world, kind, overwrite, allowed):
    if allowed:
        outputs.check_folder(
            world["data"] if kind == "dataset" else world["run"], kind, overwrite=overwrite
        )
        return
    with pytest.raises(
        UserError,
        match="already holds a bertjax dataset"
        if kind == "dataset"
        else "holds a bertjax dataset .*, not ",
    ):
        outputs.check_folder(world["data"], kind, overwrite=overwrite)


# (the command, the folder whose files must stay byte-identical, the words of the refusal);
# {name} is a path of `world`. The first ones are the probes.
CASES = {
    "export into a run's checkpoints": (
        "export --workdir {run} --out {run}/checkpoints --overwrite",
        "run",
        "is inside .*run, which holds a training run",
    ),
    "export over the run it reads": (
        "export --workdir {run} --out {run} --overwrite",
        "run",
        "holds this command's input",
    ),
    "export over a user's folder": (
        "export --workdir {run} --out {notes} --overwrite",
        "notes",
        r"holds files bertjax did not write \(paper.npz, paper.pdf, paper.png\), not a "
        "HuggingFace model folder",
    ),
    "prepare over a dataset, from an empty corpus": (
        "prepare --input {root}/empty.txt --tokenizer {tok} --out {data} --overwrite --quiet",
        "data",
        "the corpus is empty",
    ),
    "prepare over a dataset, too large a held-out split": (
        "prepare --input {corpus} --tokenizer {tok} --out {data} --overwrite --quiet "
        "--held-out 1000000",
        "data",
        "--held-out 1000000 asks for more instances",
    ),
    "prepare over a dataset with its own tokenizer": (
        "prepare --input {corpus} --tokenizer {data}/tokenizer --out {data} --overwrite",
        "data",
        "holds this command's input .*tokenizer",
    ),
    "prepare over a dataset, a tokenizer that is not one": (
        "prepare --input {corpus} --tokenizer {notes}/paper.pdf --out {data} --overwrite",
        "data",
        "paper.pdf",
    ),
    "prepare over an export": (
        "prepare --input {corpus} --tokenizer {tok} --out {export} --overwrite",
        "export",
        "holds a HuggingFace model folder .*, not a bertjax dataset",
    ),
    "tokenizer into a dataset's tokenizer": (
        "tokenizer train --input {corpus} --kind wordpiece --vocab-size 300 "
        "--out {data}/tokenizer --overwrite",
        "data",
        "is inside .*data, which holds a bertjax",
    ),
    "tokenizer over an export": (
        "tokenizer train --input {corpus} --kind wordpiece --vocab-size 300 --out {export} "
        "--overwrite",
        "export",
        "holds a HuggingFace model folder .*, not a tokenizer",
    ),
    "batches over a file": (
        "batches --data {data} --global-batch-size 8 --steps 1 --out {notes}/paper.npz",
        "notes",
        "paper.npz already exists: pass --overwrite",
    ),
    "batches into a dataset": (
        "batches --data {data} --global-batch-size 8 --steps 1 --out {data}/b.npz --overwrite",
        "data",
        "is inside .*data, which holds a bertjax dataset",
    ),
    "plot over a user's file": (
        "plot --workdir {run} --out {notes}/paper.png",
        "notes",
        "already exists: pass",
    ),
    "demo into a user's folder": (
        "demo --workdir {notes}",
        "notes",
        "holds files bertjax did not write",
    ),
    "finetune into a run": (
        "finetune --task sst2 --init {export} --data {notes} --workdir {run}",
        "run",
        "--workdir .*run already holds a training run",
    ),
    "bench loader on a dataset of another size": (
        "bench loader --data {data} --global-batch-size 8 --steps 1 --workers 0 "
        "--num-instances 999",
        "data",
        None,
    ),
    "bench checkpoint into a run": (
        "bench checkpoint --preset tiny --dir {run}",
        "run",
        "--dir .*run already holds",
    ),
    "bench packing into a dataset": (
        "bench packing --workdir {data} --seq-lens 32",
        "data",
        "--workdir .*data already holds",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_no_command_replaces_what_it_did_not_make(case, world, capsys):
    command, kept, message = CASES[case]
    (world["notes"] / "paper.npz").write_bytes(b"results")
    (world["notes"] / "paper.png").write_bytes(b"figure")
    before = snapshot(world[kept])
    code = main(command.format(**world).split())
    err = capsys.readouterr().err
    if message is None:  # a benchmark that only reads
        assert code == 0, err
    else:
        assert code == 2, err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert re.search(message, err), err
    assert snapshot(world[kept]) == before
    assert not [p for p in world["root"].iterdir() if ".partial-" in p.name]  # no leftovers
