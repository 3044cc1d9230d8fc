"""`bertjax bench train`: the JSON line's schema and its figures agree with each other; the
PyTorch reference runs in a process of its own; the MFU denominator is a known chip's
published peak or this CPU's measured one, and the model-FLOPs count matches the model's real
matmul kernels."""

import json
import os
import types

import jax
import pytest

from bertjax import cli
from bertjax import model as model_lib
from bertjax.bench.train import BERT_VOCAB
from bertjax.model_config import preset_config
from bertjax.train import flops
from bertjax.train.flops import model_flops_per_step

CONFIG = "bert_tiny"
KEYS = {"preset", "seq_len", "global_batch_size", "tokens_per_s", "model_flops_per_s", "mfu",
        "peak_flops", "mfu_denominator", "hf_tokens_per_s", "ratio_vs_hf",
        "hf_work_ratio", "ratio_vs_hf_per_flop"}  # fmt: skip


def test_tiny_bench_reports_tokens_mfu_and_the_ratio_vs_hf(capsys):
    """The figures agree (tokens/s, model FLOPs/s, MFU against the named CPU peak, the ratio);
    the PyTorch reference ran in another process, one that never imported JAX (inside the
    benchmark's JAX process it was measured ~2x slower, issue 13)."""
    argv = ["bench", "train", "--config", CONFIG, "--config.train.global_batch_size=8",
            "--seq-len", "32", "--steps", "2", "--json"]  # fmt: skip
    code = cli.main(argv)
    out = capsys.readouterr().out
    assert code == 0, out
    result = json.loads(out.strip().splitlines()[-1])  # the last line is the JSON object
    assert KEYS <= set(result), set(result)
    assert (result["preset"], result["seq_len"], result["global_batch_size"]) == ("tiny", 32, 8)
    tokens = 8 * 32
    assert result["tokens_per_s"] == pytest.approx(tokens / result["step_s"])
    assert result["model_flops_per_s"] == pytest.approx(
        result["model_flops_per_step"] / result["step_s"]
    )
    assert result["mfu"] == pytest.approx(result["model_flops_per_s"] / result["peak_flops"])
    assert 0 < result["mfu"] < 1 and result["peak_flops"] > 1e8 and result["peak_measured"]
    assert result["mfu_denominator"].startswith("measured float32 matmul peak of this CPU")
    assert f"MFU denominator: {result['mfu_denominator']}" in out
    assert result["ratio_vs_hf"] == pytest.approx(
        result["tokens_per_s"] / result["hf_tokens_per_s"]
    )
    assert "(own process, " in out and "ours / theirs" in out
    # transformers scores all 32 tokens of a row against the vocabulary, we the 20 masked slots.
    cfg = preset_config("tiny", vocab_size=BERT_VOCAB)
    assert model_flops_per_step(cfg, 8, 32, 20) == result["model_flops_per_step"]
    hf_flops = model_flops_per_step(cfg, 8, 32, predictions=32)
    assert result["hf_work_ratio"] == pytest.approx(hf_flops / result["model_flops_per_step"])
    assert result["hf_work_ratio"] > 1
    assert result["ratio_vs_hf_per_flop"] == pytest.approx(
        result["ratio_vs_hf"] / result["hf_work_ratio"]
    )
    assert "its 20 masked slots" in out and "per model FLOP ours / theirs" in out
    assert result["hf_process"]["pid"] != os.getpid()
    assert result["hf_process"]["jax_loaded"] is False


def test_more_predictions_than_positions_is_one_clear_error(capsys):
    argv = ["bench", "train", "--config", CONFIG, "--seq-len", "16", "--no-hf"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "data.max_predictions_per_seq=20 does not fit --seq-len 16" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("kind, peak", [
    ("TPU v4", 275e12), ("TPU v5 lite", 197e12), ("TPU v5e", 197e12), ("TPU v5", 459e12),
    ("TPU v5p", 459e12), ("TPU v6 lite", 918e12), ("NVIDIA A100-SXM4-80GB", 312e12),
    ("NVIDIA A100 80GB PCIe", 312e12), ("NVIDIA H100 80GB HBM3", 989e12),
    ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H100 NVL", 835e12), ("NVIDIA H200", 989e12),
    ("NVIDIA H200 NVL", 835e12), ("NVIDIA B200", 2.25e15), ("cpu", None), ("TPU v3", None),
])  # fmt: skip
def test_chip_table_gives_each_known_chips_dense_bf16_peak(kind, peak):
    """JAX's device_kind strings (TPU v5e is "TPU v5 lite", v5p "TPU v5") map to the
    published dense bf16 peak; chips not in the table map to None."""
    assert flops.chip_peak(kind) == peak


def test_mfu_denominator_is_the_table_for_known_chips_and_measured_on_cpu():
    """Four H100s: 4 x 989 TFLOP/s, named, nothing measured. This CPU: the measured float32
    matmul rate of one device (XLA's CPU devices share every core), named as measured."""
    h100 = types.SimpleNamespace(device_kind="NVIDIA H100 80GB HBM3", platform="gpu")
    peak = flops.device_peak([h100] * 4)
    assert peak.flops_per_s == 4 * 989e12 and not peak.measured
    assert peak.denominator == ("dense bf16 peak of 4 x NVIDIA H100 80GB HBM3 "
                                "(989 TFLOP/s each, published)")  # fmt: skip
    cpu = flops.device_peak(jax.devices())
    assert cpu.measured and 1e8 < cpu.flops_per_s < 1e14
    assert cpu.denominator.startswith("measured float32 matmul peak of this CPU (")


def test_model_flops_count_every_matmul_kernel_of_the_model():
    """One token, no prediction: 6 x (all matmul kernel weights: layers, pooler, MLM
    transform, NSP head) + the attention term 12 x layers x hidden."""
    cfg = model_lib.preset_config("tiny", vocab_size=1000)
    params = model_lib.abstract_params(cfg)
    kernels = sum(
        leaf.size
        for path, leaf in jax.tree_util.tree_leaves_with_path(params)
        if "kernel" in jax.tree_util.keystr(path)
    )
    attention = 12 * cfg.num_hidden_layers * cfg.hidden_size
    assert model_flops_per_step(cfg, 1, 1, 0) == 6 * kernels + attention
    decoder = 6 * cfg.hidden_size * cfg.vocab_size  # the tied decoder at one masked position
    assert model_flops_per_step(cfg, 1, 1, 1) == 6 * kernels + attention + decoder
