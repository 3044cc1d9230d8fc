"""A workdir on gs:// works like a local one: metrics.jsonl, config.json, TensorBoard events,
resume, and the readers (read_metrics, plot, eval, export). Offline: gs:// is a fake fsspec
filesystem rooted in tmp_path that, like an object store, cannot append."""

import importlib
import importlib.util
import io
import json
import os
import shutil
import struct
from pathlib import Path

import pytest
from etils import epath
from etils.epath import backend as epath_backend
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem

from bertjax import cli
from bertjax.data.synthetic import synthetic_dataset
from bertjax.errors import UserError
from bertjax.train import checkpoint, metrics_writer, workdir_io

CONFIG = "bert_tiny"
RUN = "gs://bucket/run"


class _FakeGCS(DirFileSystem):
    """gs://bucket/key -> ROOT/bucket/key on the local disk; no append, as on GCS."""

    protocol = ("gs", "gcs")
    root = ""  # set on the subclass each test makes: fsspec caches instances per class

    def __init__(self, *args, finalize_on_close=None, **kwargs):  # epath passes this to gcsfs
        super().__init__(path=self.root, fs=LocalFileSystem(), **kwargs)

    def open(self, path, mode="rb", *args, **kwargs):
        if "a" in mode:
            raise NotImplementedError(f"{path}: an object store cannot append (mode {mode!r})")
        return super().open(path, mode, *args, **kwargs)


@pytest.fixture
def gcs(tmp_path, monkeypatch):
    """Routes gs:// (through etils.epath -> fsspec) to tmp_path/gcs; returns that root.

    The test runs in tmp_path, so a URL mangled into a local path (pathlib turns gs://bucket
    into gs:/bucket) lands in tmp_path/gs: instead of the fake bucket, and is caught.
    """
    root = tmp_path / "gcs"
    root.mkdir()
    fake = type("FakeGCS", (_FakeGCS,), {"root": str(root)})
    registry = importlib.import_module("fsspec.registry")._registry  # fsspec.registry: a view
    for name in ("gs", "gcs"):  # what fsspec.register_implementation(clobber=True) does, undone
        monkeypatch.setitem(registry, name, fake)
    epath_backend.fsspec_backend._get_filesystem.cache_clear()  # epath caches the filesystem
    monkeypatch.chdir(tmp_path)
    yield root
    epath_backend.fsspec_backend._get_filesystem.cache_clear()
    assert not (tmp_path / "gs:").exists(), "a gs:// URL was written as a local path"


def _quiet(**kwargs):
    return {"tensorboard": False, "stream": io.StringIO(), **kwargs}


def test_workdir_path_keeps_local_paths_and_opens_urls(gcs):
    assert workdir_io.path("runs/x") == Path("runs/x")  # relative stays relative
    assert not workdir_io.path("runs/x").is_absolute()
    remote = workdir_io.path(RUN) / "config.json"
    assert str(remote) == "gs://bucket/run/config.json"
    remote.parent.mkdir(parents=True, exist_ok=True)
    remote.write_text("{}")
    assert (gcs / "bucket" / "run" / "config.json").read_text() == "{}"
    with pytest.raises(UserError, match=r"ftp://h/x: unsupported URL scheme ftp://"):
        workdir_io.path("ftp://h/x")


def test_a_url_without_its_fsspec_driver_is_one_clear_error(monkeypatch):
    def no_driver(protocol):
        raise ImportError("Please install gcsfs to access Google Storage")

    monkeypatch.setattr(importlib.import_module("fsspec"), "get_filesystem_class", no_driver)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)  # no tensorflow
    with pytest.raises(UserError, match=r"^gs://b/r: gs:// is opened through fsspec.*gcsfs"):
        workdir_io.path("gs://b/r")


def test_metrics_on_gs_resume_keeps_one_file_and_drops_superseded_rows(gcs):
    with metrics_writer.MetricsWriter(RUN, 100, **_quiet()) as w:  # run 1: killed after step 50
        for step in range(0, 60, 10):
            w.write(step, {"loss": 1.0, "run": 1})
        w.write_eval(40, {"loss": 1.0, "run": 1})
    obj = gcs / "bucket" / "run" / "metrics.jsonl"
    assert len(obj.read_text().splitlines()) == 7
    with open(obj, "a") as f:  # as if copied from a local run killed mid-line
        f.write('{"step": 60, "split": "tr')
    with metrics_writer.MetricsWriter(RUN, 100, **_quiet()) as w:  # run 2: resumed from step 40
        for step in range(40, 80, 10):
            w.write(step, {"loss": 2.0, "run": 2})
        w.write_eval(40, {"loss": 2.0, "run": 2})
    lines = obj.read_text().splitlines()
    assert len(lines) == 13 and lines[7] == '{"step": 60, "split": "tr'  # history kept whole
    assert all(json.loads(line) for i, line in enumerate(lines) if i != 7)

    records = metrics_writer.read_metrics(RUN)
    train = [(r["step"], r["run"]) for r in records if r["split"] == "train"]
    assert train == [(0, 1), (10, 1), (20, 1), (30, 1), (40, 2), (50, 2), (60, 2), (70, 2)]
    assert [(r["step"], r["eval_run"]) for r in records if r["split"] == "eval"] == [(40, 2)]


def test_read_metrics_reads_a_gs_object(gcs):
    obj = gcs / "bucket" / "run" / "metrics.jsonl"
    obj.parent.mkdir(parents=True)
    obj.write_text(
        '{"step": 1, "loss": 2.0}\n{"step": 2, "split": "eval", "eval_loss": 1.5}\n{"step": 3, "lo'
    )
    assert metrics_writer.read_metrics(RUN) == [
        {"step": 1, "loss": 2.0, "split": "train"},
        {"step": 2, "split": "eval", "eval_loss": 1.5},
    ]
    with pytest.raises(FileNotFoundError):
        metrics_writer.read_metrics("gs://bucket/other")


def test_remote_metrics_are_uploaded_at_most_every_sync_secs_and_at_close(gcs):
    obj = gcs / "bucket" / "run" / "metrics.jsonl"
    w = metrics_writer.MetricsWriter(RUN, 10, **_quiet(sync_secs=3600))
    w.write(1, {"loss": 3.0})  # the first write is uploaded at once: the run shows up
    assert [json.loads(x)["step"] for x in obj.read_text().splitlines()] == [1]
    w.write(2, {"loss": 2.0})
    w.write_eval(2, {"loss": 2.5})
    assert len(obj.read_text().splitlines()) == 1  # within sync_secs: not uploaded again
    w.sync()  # what the loop calls before each checkpoint save
    assert [json.loads(x)["step"] for x in obj.read_text().splitlines()] == [1, 2, 2]
    w.write(3, {"loss": 1.0})
    w.close()
    assert [json.loads(x)["step"] for x in obj.read_text().splitlines()] == [1, 2, 2, 3]
    w.close()  # twice is fine


def test_metrics_upload_every_write_with_sync_secs_zero(gcs):
    obj = gcs / "bucket" / "run" / "metrics.jsonl"
    with metrics_writer.MetricsWriter(RUN, 10, **_quiet(sync_secs=0)) as w:
        for step in (1, 2, 3):
            w.write(step, {"loss": 1.0})
            assert len(obj.read_text().splitlines()) == step


def _tensorboard_scalars(logdir: Path) -> dict:
    """{tag: [(step, value)]} from the TFRecord event files in logdir."""
    from tensorboardX.proto import event_pb2

    scalars = {}
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        data, offset = path.read_bytes(), 0
        while offset < len(data):
            (length,) = struct.unpack_from("<Q", data, offset)
            event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4  # length + its crc, payload + its crc
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def test_tensorboard_events_are_uploaded_to_gs_tb(gcs):
    stagings = []
    for run, steps in ((1, (10, 20)), (2, (30,))):  # a resumed run adds its own event file
        w = metrics_writer.MetricsWriter(RUN, 30, stream=io.StringIO())
        stagings.append(w._tb_dir.local)
        assert not str(stagings[-1]).startswith(str(gcs))
        for step in steps:
            w.write(step, {"loss": 10.0 - step / 10, "run": run})
        w.write_eval(steps[-1], {"loss": 7.5})
        w.close()
    tb = gcs / "bucket" / "run" / "tb"
    assert len(list(tb.glob("events.out.tfevents.*"))) == 2
    scalars = _tensorboard_scalars(tb)
    assert scalars["train/loss"] == [(10, 9.0), (20, 8.0), (30, 7.0)]
    assert scalars["eval/loss"] == [(20, 7.5), (30, 7.5)]
    assert not any(s.exists() for s in stagings)  # staging directories removed at close


def test_plot_reads_a_gs_workdir_and_writes_the_image_there(gcs, capsys):
    with metrics_writer.MetricsWriter(RUN, 20, **_quiet()) as w:
        for step in range(1, 21):
            w.write(step, {"loss": 5.0 - step / 10, "learning_rate": 1e-4})
        w.write_eval(20, {"loss": 3.5})
    assert cli.main(["plot", "--workdir", RUN]) == 0
    assert (gcs / "bucket" / "run" / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote gs://bucket/run/metrics.png" in capsys.readouterr().out
    assert cli.main(["plot", "--workdir", RUN, "--out", "gs://bucket/figs/run.svg"]) == 0
    assert b"<svg" in (gcs / "bucket" / "figs" / "run.svg").read_bytes()[:500]
    assert cli.main(["plot", "--workdir", "gs://bucket/none"]) == 2
    assert "no metrics file at gs://bucket/none/metrics.jsonl" in capsys.readouterr().err


@pytest.fixture
def local_checkpoints(tmp_path, monkeypatch):
    """Checkpoints of gs://X go to tmp_path/ckpt/X/checkpoints.

    Orbax writes arrays through TensorStore, whose gs:// is its own GCS client (network, and
    Google credentials), not fsspec: it cannot be faked offline. Everything else of the run
    goes to the fake bucket; this stand-in also checks the URL reaches it intact.
    """
    local_root = tmp_path / "ckpt"

    def checkpoint_dir(workdir):
        text = os.fspath(workdir)
        assert text.startswith("gs://"), f"checkpoint_dir got {text!r}, not the gs:// URL"
        return epath.Path(local_root / text.removeprefix("gs://") / "checkpoints")

    monkeypatch.setattr(checkpoint, "checkpoint_dir", checkpoint_dir)
    return local_root / "bucket" / "run" / "checkpoints"


@pytest.mark.slow
def test_train_resume_eval_and_export_with_a_gs_workdir(gcs, local_checkpoints, tmp_path, capsys):
    data = synthetic_dataset(tmp_path / "data", 64, 32, vocab_size=512)
    synthetic_dataset(tmp_path / "data" / "eval", 16, 32, vocab_size=512, seed=1)
    args = [
        "train",
        "--config",
        CONFIG,
        "--workdir",
        RUN,
        f"--config.data.train_dir={data}",
        "--config.train.global_batch_size=8",
        "--config.model.num_hidden_layers=1",
        "--config.train.steps=4",
        "--config.optim.warmup_steps=1",
        "--config.train.log_every=2",
        "--config.train.eval_every=4",
        "--config.train.checkpoint_every=2",
        "--config.train.eval_batch_size=8",
    ]
    assert cli.main(args) == 0, capsys.readouterr().err
    run_dir = gcs / "bucket" / "run"
    assert json.loads((run_dir / "config.json").read_text())["train"]["steps"] == 4
    assert sorted(p.name for p in local_checkpoints.iterdir() if p.name.isdigit()) == ["2", "4"]
    first = metrics_writer.read_metrics(RUN)

    # Lose the last checkpoint, as a run killed before saving it would: the rerun resumes at
    # step 2 and logs step 4 again, in the same metrics.jsonl, whose rows past step 2 it drops
    # first (one row per step).
    shutil.rmtree(local_checkpoints / "4")
    assert cli.main(args) == 0, capsys.readouterr().err
    assert "resuming from checkpoint step 2" in capsys.readouterr().out
    raw = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["split"]) for r in raw] == [(2, "train"), (4, "train"), (4, "eval")]
    records = metrics_writer.read_metrics(RUN)
    assert records == raw
    assert records[0] == first[0] and records[1]["time"] > first[1]["time"]  # step 4 anew
    assert len(list((run_dir / "tb").glob("events.out.tfevents.*"))) == 2

    assert cli.main(["eval", "--workdir", RUN, "--data", str(data / "eval")]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["model"] == f"{RUN} step 4" and result["examples"] == 16
    assert result["loss"] == pytest.approx(records[2]["eval_loss"], rel=1e-5)

    assert cli.main(["export", "--workdir", RUN, "--out", str(tmp_path / "hf")]) == 0
    exported = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert exported["exported"] == f"{RUN} step 4" and "config.json" in exported["files"]
