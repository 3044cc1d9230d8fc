"""`bertjax bench train`: the JSON line's schema and its figures agree with each other, and the
model-FLOPs count matches the model's real matmul kernels."""

import json

import jax
import pytest

from bertjax import cli
from bertjax import model as model_lib
from bertjax.train.bench import model_flops_per_step

CONFIG = "bert_tiny"
KEYS = {"preset", "seq_len", "global_batch_size", "tokens_per_s", "mfu", "matmul_peak_flops",
        "hf_tokens_per_s", "ratio_vs_hf"}  # fmt: skip


def test_tiny_bench_reports_tokens_mfu_and_the_ratio_vs_hf(capsys):
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
    assert result["mfu"] == pytest.approx(
        result["model_flops_per_step"] / result["step_s"] / result["matmul_peak_flops"]
    )
    assert 0 < result["mfu"] < 1 and result["matmul_peak_flops"] > 1e8
    assert result["ratio_vs_hf"] == pytest.approx(
        result["tokens_per_s"] / result["hf_tokens_per_s"]
    )
    assert "ours / theirs" in out


def test_more_predictions_than_positions_is_one_clear_error(capsys):
    argv = ["bench", "train", "--config", CONFIG, "--seq-len", "16", "--no-hf"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "data.max_predictions_per_seq=20 does not fit --seq-len 16" in err
    assert "Traceback" not in err


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
