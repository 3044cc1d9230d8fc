"""Tests for bertjax.train.profiling: the --profile-steps spec and the trace it writes."""

import gzip
import json

import jax
import jax.numpy as jnp
import pytest

from bertjax.errors import UserError
from bertjax.train import profiling


@pytest.mark.parametrize(
    "spec,expected", [("2:3", (2, 3)), ("0:0", (0, 0)), (" 10 : 15 ", (10, 15))]
)
def test_parse_profile_steps_accepts_start_stop(spec, expected):
    assert profiling.parse_profile_steps(spec) == expected


@pytest.mark.parametrize("spec", ["", "3", "3:", ":3", "5:2", "-1:3", "a:b", "1:2:3", "1.5:3"])
def test_parse_profile_steps_rejects_bad_specs_with_one_clear_sentence(spec):
    with pytest.raises(UserError, match=r"--profile-steps must be START:STOP") as e:
        profiling.parse_profile_steps(spec)
    assert repr(spec) in str(e.value)


def test_profiler_starts_at_a_and_stops_after_b(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(jax.profiler, "start_trace", lambda d, **kw: calls.append(("start", d)))
    monkeypatch.setattr(jax.profiler, "stop_trace", lambda: calls.append(("stop",)))
    prof = profiling.StepProfiler("2:4", tmp_path)
    seen = []
    for step in range(8):
        prof.on_step(step)
        seen.append((step, prof.active))
    prof.close()
    assert calls == [("start", str(tmp_path)), ("stop",)]
    assert [s for s, active in seen if active] == [2, 3, 4]


def test_profiler_resumed_inside_window_starts_at_once_and_close_stops(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(jax.profiler, "start_trace", lambda d, **kw: calls.append("start"))
    monkeypatch.setattr(jax.profiler, "stop_trace", lambda: calls.append("stop"))
    prof = profiling.StepProfiler("2:10", tmp_path)
    for step in range(5, 8):  # resumed at step 5, run ends at 7: inside the window
        prof.on_step(step)
    assert calls == ["start"]
    prof.close()
    prof.close()  # idempotent
    assert calls == ["start", "stop"]


def test_profiler_writes_a_trace_holding_the_jitted_step(tmp_path):
    @jax.jit
    def tiny_step(x):
        return jnp.tanh(x @ x.T).sum(), x + 1.0

    x = jnp.ones((32, 32))
    tiny_step(x)  # compile outside the window, as a training loop would
    logged = []
    with profiling.StepProfiler("1:2", tmp_path / "profile", log=logged.append) as prof:
        out = None
        for step in range(4):
            prof.on_step(step, wait_for=out)
            out = tiny_step(x)
            x = out[1]
    assert prof.done and not prof.active
    assert len(logged) == 2
    xplanes = list((tmp_path / "profile" / "plugins" / "profile").glob("*/*.xplane.pb"))
    assert len(xplanes) == 1 and xplanes[0].stat().st_size > 0
    (perfetto,) = (tmp_path / "profile" / "plugins" / "profile").glob("*/perfetto_trace.json.gz")
    names = {
        e.get("name") for e in json.loads(gzip.decompress(perfetto.read_bytes()))["traceEvents"]
    }
    assert any("tiny_step" in str(name) for name in names)


@pytest.mark.slow
def test_train_profile_steps_writes_a_trace(tmp_path):

    from bertjax import cli
    from bertjax.data.synthetic import synthetic_dataset

    data = synthetic_dataset(tmp_path / "data", 64, 32, vocab_size=128)
    workdir = tmp_path / "run"
    config = "bert_tiny"
    assert (
        cli.main(
            [
                "train",
                "--config",
                config,
                "--workdir",
                str(workdir),
                f"--config.data.train_dir={data}",
                "--config.train.steps=4",
                "--config.optim.warmup_steps=1",
                "--config.train.global_batch_size=16",
                "--config.train.eval_every=0",
                "--config.model.num_hidden_layers=1",
                "--profile-steps",
                "2:3",
            ]
        )
        == 0
    )
    traces = list((workdir / "profile").rglob("*.xplane.pb"))
    assert traces and traces[0].stat().st_size > 0
