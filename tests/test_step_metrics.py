"""StepMetrics: the throughput it adds to each fetched record (tokens/s, model FLOPs/s, MFU)
agree with each other, the progress line shows the MFU, and the host never runs more than one
step ahead of the devices."""

import io

import pytest

from bertjax.train import metrics_writer
from bertjax.train.step_metrics import StepMetrics


class Recorder:
    """A writer that keeps what it is given."""

    def __init__(self):
        self.records = []

    def write(self, step, metrics):
        self.records.append((step, dict(metrics)))


def test_model_flops_per_s_and_mfu_follow_the_step_rate():
    """Two steps fetched at once: model FLOPs/s is FLOPs per step x the same step rate that
    gives tokens/s, and MFU divides it by the peak; without FLOPs neither key appears."""
    writer = Recorder()
    metrics = StepMetrics(writer, 1000, 0, remedy="", flops_per_step=6e9, peak_flops=2e11)
    metrics.dispatched(2, {"loss": 1.5}, log=True)
    record = metrics.flush()
    steps_per_s = record["tokens_per_s"] / 1000
    assert record["model_flops_per_s"] == pytest.approx(6e9 * steps_per_s)
    assert record["mfu"] == pytest.approx(record["model_flops_per_s"] / 2e11)
    assert writer.records[0][1]["mfu"] == record["mfu"]
    plain = StepMetrics(Recorder(), 1000, 0, remedy="")
    plain.dispatched(1, {"loss": 1.5}, log=True)
    assert not {"model_flops_per_s", "mfu"} & set(plain.flush())


def test_the_progress_line_shows_the_mfu(tmp_path):
    stream = io.StringIO()
    with metrics_writer.MetricsWriter(tmp_path, 10, tensorboard=False, stream=stream) as w:
        w.write(1, {"loss": 2.5, "tokens_per_s": 25_000.0, "mfu": 0.4123})
    assert "| 25.0k tok/s | MFU 41.2% | ETA --" in stream.getvalue()


class Pending:
    """A metric whose step has been dispatched: it counts the waits for its result."""

    def __init__(self):
        self.waits = 0

    def block_until_ready(self):
        self.waits += 1
        return self


def test_each_dispatch_waits_for_the_previous_step():
    """Unlogged steps are never fetched, yet dispatching step n waits for step n-1 (and never
    for step n itself): however rarely a run logs, at most two steps are queued."""
    metrics = StepMetrics(Recorder(), 1000, 0, remedy="")
    steps = [{"loss": Pending()} for _ in range(4)]
    for n, step_metrics in enumerate(steps):
        metrics.dispatched(n + 1, step_metrics, log=False)
        assert [s["loss"].waits for s in steps] == [1] * n + [0] * (4 - n)
