"""`bertjax bench packing` and `bench train --data`: real (non-pad) tokens/s of packed and
padded rows side by side, each layout's packing efficiency from its manifest, and the
time-to-accuracy runs on the same real tokens (tiny settings here; the figures of the
closing note come from the full-size command in docs/TRAINING.md)."""

import json

import jax
import pytest

from bertjax import cli
from bertjax.data import open_dataset
from bertjax.data.synthetic import synthetic_dataset


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_bench_train_on_a_dataset_counts_its_real_tokens(tmp_path, capsys):
    """`bench train --data`: the loader's first batches of a packed dataset; tokens/s counts
    every position, real_tokens_per_s the non-pad ones (their ratio is the batches' real
    fraction); the PyTorch reference is skipped, saying why."""
    data = synthetic_dataset(tmp_path / "p", 400, 64, vocab_size=300, max_sequences_per_row=3)
    argv = [
        "bench",
        "train",
        "--config",
        "bert_tiny",
        "--data",
        str(data),
        "--steps",
        "3",
        "--config.train.global_batch_size=8",
        "--config.model.num_hidden_layers=1",
        "--json",
    ]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    result = last_json(out)
    real = open_dataset(data).manifest["layout"]["efficiency_packed"]  # over the whole set
    assert result["packed"] and result["seq_len"] == 64 and result["hf_tokens_per_s"] is None
    assert "skipped: transformers' BertForPreTraining has no packed rows" in out
    assert result["real_tokens_per_s"] / result["tokens_per_s"] == pytest.approx(
        result["real_token_fraction"]
    )
    assert abs(result["real_token_fraction"] - real) < 0.15  # 3 batches of 8 rows
    assert 1 < result["sequences_per_s"] * result["step_s"] <= 8 * 3  # several per row
    assert cli.main(argv + ["--seq-len", "128"]) == 2
    assert "differs from the 64 tokens per row" in capsys.readouterr().err


@pytest.mark.slow
def test_packing_bench_compares_the_layouts_on_the_same_sequences(real_text, tmp_path, capsys):
    """Both layouts of each length hold the same sequences; each row of the table is the
    manifest's efficiency and the timed step's real tokens/s; the accuracy runs train on the
    same real tokens per step (packed: fewer rows) and are scored on the same held-out split.
    On the session's real_text corpus and tokenizer."""
    (corpus,) = sorted((real_text / "corpus").glob("*.txt"))
    work = tmp_path / "w"
    argv = [
        "bench",
        "packing",
        "--input",
        str(corpus),
        "--tokenizer",
        str(real_text / "tok"),
        "--seq-lens",
        "32,64",
        "--steps",
        "3",
        "--seeds",
        "1",
        "--held-out",
        "16",
        "--timed-steps",
        "2",
        "--tokens-per-batch",
        "512",
        "--workdir",
        str(work),
        "--max-sequences-per-row",
        "4",
        "--config.model.num_hidden_layers=1",
        "--json",
    ]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    result = last_json(out)
    for length in (32, 64):
        padded = open_dataset(work / f"data_{length}_padded")
        packed = open_dataset(work / f"data_{length}_packed")
        layout = packed.manifest["layout"]
        assert layout["sequences"] == len(padded) > layout["rows"] == len(packed)
        assert layout["max_sequences_per_row"] == 4 and not padded.packed
        figures = result["lengths"][str(length)]
        assert figures["padded"]["efficiency"] == layout["efficiency_unpacked"]
        assert figures["packed"]["efficiency"] == layout["efficiency_packed"]
        assert figures["packed"]["efficiency"] > figures["padded"]["efficiency"]
        assert figures["real_tokens_speedup"] == pytest.approx(
            figures["packed"]["real_tokens_per_s"] / figures["padded"]["real_tokens_per_s"]
        )
        assert f"{length} packed / padded real tokens/s: " in out
    acc = result["accuracy"]
    effs = [result["lengths"]["32"][k]["efficiency"] for k in ("padded", "packed")]
    n = jax.device_count()  # packed rows: the padded batch's real tokens, n per device
    assert acc["steps"] == 3 and acc["layouts"]["padded"]["rows"] == 16
    assert acc["layouts"]["packed"]["rows"] == max(n, round(16 * effs[0] / effs[1] / n) * n)
    assert set(acc["runs"]) == {"padded_seed0", "packed_seed0"} and acc["noise_band"] == 0
    for name, r in acc["runs"].items():
        assert 0 <= r["eval_mlm_accuracy"] <= 1 and 0 < r["train_s"] < r["wall_s"], name
        config = json.loads((work / f"run_{name}" / "config.json").read_text())
        assert config["data"]["eval_dir"] == str(work / "data_32_padded" / "eval")
        assert config["data"]["train_dir"] == str(work / f"data_32_{name[:6]}")
    assert "time padded / packed: steps" in out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--seq-lens", "a,b"], "comma-separated integers"),
        (["--seq-lens", "100"], "--tokens-per-batch 8192 is not a multiple of the row length 100"),
        (["--seeds", "0"], "--seeds=0: must be positive"),
        (
            ["--seq-lens", "32", "--tokens-per-batch", "96", "--steps", "0", "--input", "x"],
            "--input: no such file(s): x",
        ),
        (["--config.train.stepz=3"], "train.stepz"),
    ],
)
def test_bad_options_are_one_clear_error(extra, message, capsys):
    assert cli.main(["bench", "packing", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
