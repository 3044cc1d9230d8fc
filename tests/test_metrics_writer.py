"""Tests for bertjax.train.metrics_writer: metrics.jsonl, TensorBoard scalars, progress output."""

import io
import json
import math
import struct

import jax.numpy as jnp
import numpy as np
import pytest

from bertjax.train import metrics_writer


class FakeStream(io.StringIO):
    """A text stream that says whether it is a terminal."""

    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


class FakeClock:
    def __init__(self, times):
        self.times = list(times)

    def __call__(self):
        return self.times.pop(0)


def _strict_json_lines(path):
    def no_constants(name):
        raise AssertionError(f"non-standard JSON constant {name} in {path}")

    return [json.loads(line, parse_constant=no_constants) for line in path.read_text().splitlines()]


def test_metrics_jsonl_schema(tmp_path):
    stream = FakeStream(tty=False)
    with metrics_writer.MetricsWriter(
        tmp_path, total_steps=10, tensorboard=False, stream=stream
    ) as w:
        w.write(
            1,
            {
                "loss": jnp.float32(7.123456789),
                "mlm_accuracy": np.float64(0.25),
                "learning_rate": 1.23456789e-05,
                "tokens_per_s": 12345.678,
                "num_tokens": np.int64(4096),
                "nsp_loss": float("nan"),
                "grad_norm": jnp.array(float("inf")),
            },
        )
        w.write_eval(1, {"loss": 6.5, "mlm_accuracy": 0.3, "eval_nsp_accuracy": 0.5})
    train, evaluation = _strict_json_lines(tmp_path / "metrics.jsonl")
    assert list(train)[:3] == ["step", "split", "time"]
    assert train["step"] == 1 and train["split"] == "train" and isinstance(train["time"], float)
    assert train["loss"] == pytest.approx(7.12346, abs=0)  # 6 significant digits
    assert train["mlm_accuracy"] == 0.25
    assert train["learning_rate"] == 1.23457e-05
    assert train["tokens_per_s"] == 12345.7
    assert train["num_tokens"] == 4096 and isinstance(train["num_tokens"], int)
    assert train["nsp_loss"] is None and train["grad_norm"] is None  # NaN/inf -> null
    assert evaluation["split"] == "eval" and evaluation["step"] == 1
    assert {k for k in evaluation if k not in ("step", "split", "time")} == {
        "eval_loss",
        "eval_mlm_accuracy",
        "eval_nsp_accuracy",
    }  # no double prefix


@pytest.mark.parametrize(
    "metrics,error",
    [
        ({"loss": np.zeros(3)}, ValueError),
        ({"loss": "low"}, TypeError),
        ({"step": 1.0}, ValueError),
        ({"split": 1.0}, ValueError),
    ],
)
def test_bad_metrics_are_rejected(tmp_path, metrics, error):
    w = metrics_writer.MetricsWriter(tmp_path, 10, tensorboard=False, stream=FakeStream(False))
    with w, pytest.raises(error):
        w.write(1, metrics)


def test_negative_step_is_rejected(tmp_path):
    w = metrics_writer.MetricsWriter(tmp_path, 10, tensorboard=False, stream=FakeStream(False))
    with w, pytest.raises(ValueError, match="step"):
        w.write(-1, {"loss": 1.0})


def _read_tfrecords(path):
    """Yields the records of a TFRecord file (TensorBoard's event file container)."""
    data = path.read_bytes()
    offset = 0
    while offset < len(data):
        (length,) = struct.unpack_from("<Q", data, offset)
        offset += 12  # length and its masked crc32c
        yield data[offset : offset + length]
        offset += length + 4  # payload and its masked crc32c


def _tensorboard_scalars(logdir):
    from tensorboardX.proto import event_pb2

    scalars = {}
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        for record in _read_tfrecords(path):
            event = event_pb2.Event.FromString(record)
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def test_tensorboard_event_file_holds_the_scalars(tmp_path):
    with metrics_writer.MetricsWriter(tmp_path, 20, stream=FakeStream(False)) as w:
        for step in (0, 10, 20):
            w.write(
                step, {"loss": 10.0 - step / 10, "learning_rate": 1e-4, "nsp_loss": float("nan")}
            )
        w.write_eval(20, {"loss": 7.5, "mlm_accuracy": 0.125})
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    scalars = _tensorboard_scalars(tmp_path / "tb")
    assert set(scalars) == {"train/loss", "train/learning_rate", "eval/loss", "eval/mlm_accuracy"}
    assert scalars["train/loss"] == [(0, 10.0), (10, 9.0), (20, 8.0)]
    assert scalars["train/learning_rate"] == [(s, pytest.approx(1e-4)) for s in (0, 10, 20)]
    assert scalars["eval/mlm_accuracy"] == [(20, 0.125)]


def test_non_tty_output_is_one_plain_line_per_write(tmp_path):
    stream = FakeStream(tty=False)
    clock = FakeClock([0.0, 10.0, 20.0])
    with metrics_writer.MetricsWriter(
        tmp_path, 100, tensorboard=False, stream=stream, clock=clock
    ) as w:
        for step in (0, 10, 20):
            w.write(
                step,
                {"loss": 2.5, "mlm_accuracy": 0.5, "learning_rate": 1e-4, "tokens_per_s": 25_000.0},
            )
        w.write_eval(20, {"loss": 2.25, "mlm_accuracy": 0.375, "nsp_accuracy": 0.75})
    out = stream.getvalue()
    assert "\r" not in out and "\x1b" not in out
    lines = out.splitlines()
    assert len(lines) == 4 and out.endswith("\n")
    assert lines[0].startswith("step   0/100 (  0%) | loss 2.5000 | mlm_acc 0.500 | lr 1.00e-04")
    assert lines[0].endswith("| 25.0k tok/s | ETA --")
    # 10 steps per 10 s measured: 80 steps left -> 80 s.
    assert lines[2] == (
        "step  20/100 ( 20%) | loss 2.5000 | mlm_acc 0.500 | lr 1.00e-04 | 25.0k tok/s | ETA 1m20s"
    )
    assert lines[3] == "eval @ step 20 | loss 2.2500 | mlm_acc 0.375 | nsp_acc 0.750"


def test_tty_output_rewrites_one_live_line(tmp_path):
    stream = FakeStream(tty=True)
    clock = FakeClock([0.0, 5.0, 10.0])
    w = metrics_writer.MetricsWriter(tmp_path, 1000, tensorboard=False, stream=stream, clock=clock)
    w.write(0, {"loss": 10.0})
    w.write(100, {"loss": 9.0})
    assert "\n" not in stream.getvalue()  # live line: rewritten in place, never scrolled
    assert stream.getvalue().count("\r") == 2
    w.write_eval(100, {"loss": 8.5})  # kept on screen: ends with a newline
    w.write(200, {"loss": 8.0})
    w.close()
    out = stream.getvalue()
    frames = out.split("\r")[1:]
    assert frames[0].startswith("step    0/1000") and not frames[0].endswith("\n")
    # 100 steps in 5 s measured: 900 steps left -> 45 s.
    assert frames[1].startswith("step  100/1000") and frames[1].rstrip().endswith("ETA 45s")
    assert frames[2].startswith("eval @ step 100 | loss 8.5000") and frames[2].endswith("\n")
    assert frames[3].startswith("step  200/1000") and frames[3].endswith("\n")  # from close()
    # Rewriting a line pads it to the previous length, so no stale characters remain.
    assert len(frames[2].rstrip("\n")) >= len(frames[1])


def test_disabled_writer_writes_nothing(tmp_path):
    stream = FakeStream(tty=False)
    workdir = tmp_path / "run"
    with metrics_writer.MetricsWriter(workdir, 10, enabled=False, stream=stream) as w:
        w.write(1, {"loss": 1.0})
        w.write_eval(1, {"loss": 1.0})
    assert not workdir.exists() and stream.getvalue() == ""


def test_resumed_run_appends_and_read_metrics_resolves_restart(tmp_path):
    quiet = {"tensorboard": False, "stream": FakeStream(False)}
    with metrics_writer.MetricsWriter(tmp_path, 100, **quiet) as w:  # run 1: killed after step 50
        for step in range(0, 60, 10):
            w.write(step, {"loss": 1.0, "run": 1})
        w.write_eval(40, {"loss": 1.0, "run": 1})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 60, "split": "tr')  # the line being written when it was killed
    with metrics_writer.MetricsWriter(tmp_path, 100, **quiet) as w:  # run 2: resumed from step 40
        for step in range(40, 80, 10):
            w.write(step, {"loss": 2.0, "run": 2})
        w.write_eval(40, {"loss": 2.0, "run": 2})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert lines[7] == '{"step": 60, "split": "tr'  # run 2 did not glue onto the cut line
    assert all(json.loads(line) for i, line in enumerate(lines) if i != 7)

    records = metrics_writer.read_metrics(tmp_path)
    train = [(r["step"], r["run"]) for r in records if r["split"] == "train"]
    assert train == [(0, 1), (10, 1), (20, 1), (30, 1), (40, 2), (50, 2), (60, 2), (70, 2)]
    assert [(r["step"], r["eval_run"]) for r in records if r["split"] == "eval"] == [(40, 2)]


def test_read_metrics_tolerates_a_truncated_last_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo')
    assert metrics_writer.read_metrics(tmp_path) == [{"step": 1, "loss": 2.0, "split": "train"}]


def test_read_metrics_rejects_a_corrupt_complete_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2, loss}\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a valid JSON line"):
        metrics_writer.read_metrics(tmp_path)


def test_read_metrics_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        metrics_writer.read_metrics(tmp_path)


@pytest.mark.parametrize(
    "seconds,text", [(0, "0s"), (59.4, "59s"), (61, "1m01s"), (3600 * 2 + 5 * 60, "2h05m")]
)
def test_format_duration(seconds, text):
    assert metrics_writer.format_duration(seconds) == text


def test_to_json_number_keeps_six_significant_digits():
    assert metrics_writer.to_json_number("x", math.pi) == 3.14159
    assert metrics_writer.to_json_number("x", np.float32(1e-7) * 3) == 3e-07
    assert metrics_writer.to_json_number("x", True) is True
