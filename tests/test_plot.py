"""Tests for bertjax.commands.plot: the figure's panels, the PNG file and the CLI's errors."""

import io
import json
import struct

import pytest

from bertjax import cli
from bertjax.commands import plot
from bertjax.train import metrics_writer

EXPECTED_TITLES = [
    "Loss (MLM + NSP)",
    "MLM accuracy",
    "NSP accuracy",
    "Learning rate",
    "Throughput",
    "Gradient norm",
]


def _write_run(workdir, steps=120, grad_norm=True):
    """A synthetic run through MetricsWriter: training every step, evaluation every 40."""
    with metrics_writer.MetricsWriter(workdir, steps, tensorboard=False, stream=io.StringIO()) as w:
        for step in range(steps + 1):
            metrics = {
                "loss": 10.0 - step / 20,
                "mlm_accuracy": step / 400,
                "nsp_accuracy": 0.5 + step / 1000,
                "learning_rate": 1e-4 * step / steps,
                "tokens_per_s": 20_000.0 + step % 7,
            }
            if grad_norm:
                metrics["grad_norm"] = 1.0
            w.write(step, metrics)
            if step % 40 == 0:
                w.write_eval(
                    step,
                    {"loss": 10.5 - step / 20, "mlm_accuracy": step / 500, "nsp_accuracy": 0.5},
                )


def _legend_texts(ax):
    legend = ax.get_legend()
    return [t.get_text() for t in legend.get_texts()] if legend else []


def test_figure_has_the_expected_panels_with_train_and_eval(tmp_path):
    _write_run(tmp_path, grad_norm=False)
    fig = plot.build_figure(metrics_writer.read_metrics(tmp_path), title="demo")
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == EXPECTED_TITLES
    assert all(ax.get_xlabel() == "step" and ax.get_ylabel() for ax in axes)
    loss, mlm, nsp, lr, throughput, grad = axes
    for ax in (loss, mlm, nsp):  # training and evaluation, told apart in the legend
        texts = _legend_texts(ax)
        assert len(texts) == 2 and texts[0].startswith("train") and texts[1].startswith("eval")
    assert _legend_texts(loss) == ["train (smoothed; last 4)", "eval (last 4.5)"]
    eval_line = loss.get_lines()[-1]
    assert list(eval_line.get_xdata()) == [0, 40, 80, 120]
    # The learning rate is exact: one unsmoothed line ending at the last logged value.
    assert len(lr.get_lines()) == 1 and lr.get_lines()[0].get_ydata()[-1] == pytest.approx(1e-4)
    assert _legend_texts(throughput) == ["train (smoothed; last 20.0k)"]
    assert [t.get_text() for t in grad.texts] == ["no data"]  # grad_norm was not logged
    assert fig._suptitle.get_text() == "demo"


def test_smooth_is_centred_and_keeps_length():
    values = [0.0, 0.0, 3.0, 0.0, 0.0] * 20
    smoothed = plot.smooth(values)
    assert len(smoothed) == len(values)
    assert smoothed[2] == pytest.approx(0.6)  # 100 points: a window of 5 centred on the spike
    assert plot.smooth([1.0, 2.0, 3.0]) == pytest.approx([1.5, 2.0, 2.5])


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_cli_writes_a_png(tmp_path, capsys):
    _write_run(tmp_path / "run")
    out = tmp_path / "plots" / "curves.png"
    assert cli.main(["plot", "--workdir", str(tmp_path / "run"), "--out", str(out)]) == 0
    assert _png_size(out) == (1500, 850)
    assert out.stat().st_size > 30_000  # six drawn panels, not an empty canvas
    assert capsys.readouterr().out.strip() == f"wrote {out}"


def test_cli_default_out_is_in_the_workdir(tmp_path):
    _write_run(tmp_path, steps=3)
    assert cli.main(["plot", "--workdir", str(tmp_path)]) == 0
    assert _png_size(tmp_path / "metrics.png") == (1500, 850)


def test_cli_errors_are_one_clear_sentence(tmp_path, capsys):
    assert cli.main(["plot", "--workdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no metrics file at" in err and str(tmp_path / "metrics.jsonl") in err
    assert "Traceback" not in err

    (tmp_path / "metrics.jsonl").write_text("")
    assert cli.main(["plot", "--workdir", str(tmp_path)]) == 2
    assert "holds no metrics yet" in capsys.readouterr().err

    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 2.0}) + "\n")
    assert cli.main(["plot", "--workdir", str(tmp_path), "--out", str(tmp_path / "x.txt")]) == 2
    assert "unsupported extension" in capsys.readouterr().err
