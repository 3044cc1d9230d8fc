"""`bertjax bench finetune`: the JSON line's schema, the ratio and the wall-time estimate agree
with the measured step times, the PyTorch reference runs in a process of its own, SQuAD's span
step takes the paper's sequence length and epochs, NER's and SWAG's heads run against
transformers' own, and bad options are one clear error."""

import json
import math
import os

import pytest

from bertjax import cli
from bertjax.bench.train import BERT_VOCAB
from bertjax.finetune.kind_squad import TRAIN_EXAMPLES as SQUAD_TRAIN_EXAMPLES
from bertjax.finetune.tasks import TASKS, TRAIN_EXAMPLES
from bertjax.model_config import preset_config
from bertjax.train import flops

KEYS = {"preset", "seq_len", "batch_size", "tokens_per_s", "hf_tokens_per_s", "ratio_vs_hf",
        "task", "epochs", "estimated_hours"}  # fmt: skip


def test_tiny_bench_reports_the_ratio_and_a_consistent_estimate(capsys):
    # STS-B: the regression head (one output, MSE) on both sides; 8 rows on the 8 test devices.
    argv = "bench finetune --preset tiny --seq-len 16 --batch-size 8 --steps 2 --task stsb "
    code = cli.main((argv + "--epochs 2 --json").split())
    out = capsys.readouterr().out
    assert code == 0, out
    lines = out.strip().splitlines()
    result = json.loads(lines[-1])  # the last line is the JSON object
    assert KEYS <= set(result), set(result)
    assert (result["preset"], result["seq_len"], result["batch_size"]) == ("tiny", 16, 8)
    assert (result["task"], result["epochs"], result["train_examples"]) == ("stsb", 2, 5_749)
    tokens = 8 * 16
    assert result["tokens_per_s"] == pytest.approx(tokens / result["step_s"])
    # The synthetic rows have no padding: every padded token is a real one.
    assert result["real_tokens_per_s"] == pytest.approx(result["tokens_per_s"])
    assert result["hf_tokens_per_s"] == pytest.approx(tokens / result["hf_step_s"])
    assert result["ratio_vs_hf"] == pytest.approx(
        result["tokens_per_s"] / result["hf_tokens_per_s"]
    )
    # 2 epochs of ceil(5749 / 8) = 719 batches, each padded to 8 x 16 tokens.
    hours = 2 * math.ceil(TRAIN_EXAMPLES["stsb"] / 8) * tokens / result["tokens_per_s"] / 3600
    assert result["estimated_hours"] == pytest.approx(hours)
    assert result["estimated_hours"] > 0
    assert "ours / theirs" in out and "2 epochs x 719 steps (5749 stsb" in out
    # The classifier runs the last layer at [CLS] alone, transformers' at every token: the
    # ratio per model FLOP takes that work out, as bench train's does for the MLM decoder.
    cfg = preset_config("tiny", vocab_size=BERT_VOCAB)
    full = flops.model_flops_per_step(cfg, 8, 16, predictions=0)
    ours = full - flops.cls_only_flops_saved(cfg, 8, 16)
    assert result["model_flops_per_step"] == pytest.approx(ours)
    assert result["hf_work_ratio"] == pytest.approx(full / ours) and result["hf_work_ratio"] > 1
    assert result["ratio_vs_hf_per_flop"] == pytest.approx(
        result["ratio_vs_hf"] / result["hf_work_ratio"]
    )
    assert "of which work: ours runs the last layer at [CLS] alone" in out
    # The PyTorch reference ran in another process, one that never imported JAX.
    assert result["hf_process"]["pid"] != os.getpid()
    assert result["hf_process"]["jax_loaded"] is False


def test_squad_bench_times_the_span_step_at_the_papers_settings(capsys):
    """--task squad: both sides train a span head (transformers' BertForQuestionAnswering in its
    own process); without --seq-len and --epochs the estimate is the SQuAD recipe's, 2 epochs
    of the 87,599 v1.1 training questions at sequence length 384."""
    argv = "bench finetune --preset tiny --batch-size 8 --steps 2 --task squad --json"
    code = cli.main(argv.split())
    out = capsys.readouterr().out
    assert code == 0, out
    result = json.loads(out.strip().splitlines()[-1])
    assert (result["task"], result["seq_len"], result["epochs"]) == ("squad", 384, 2)
    assert result["train_examples"] == SQUAD_TRAIN_EXAMPLES["squad"] == 87_599
    assert result["hf_process"]["jax_loaded"] is False and result["hf_step_s"] > 0
    hours = 2 * math.ceil(87_599 / 8) * result["step_s"] / 3600
    assert result["estimated_hours"] == pytest.approx(hours)
    assert "squad head (BertForQuestionAnswering)" in out and "2 epochs x 10950 steps" in out
    # The span head reads every token: both sides do the same work.
    assert result["hf_work_ratio"] == 1.0
    assert result["ratio_vs_hf_per_flop"] == pytest.approx(result["ratio_vs_hf"])


@pytest.mark.parametrize("seq_len", [128, 64])
def test_squad_bench_at_a_shorter_row_scales_the_windows_to_fit(seq_len):
    """`--task squad --seq-len 128` was refused: run_squad.py's query length 64 and stride 128
    leave no room in a 128-token row. The bench takes the end-to-end bench's scaled windows,
    which the SQuAD kind accepts."""
    import argparse

    from bertjax.bench import finetune, finetune_e2e
    from bertjax.finetune.kinds import make_kind

    args = argparse.Namespace(seq_len=seq_len, batch_size=None, epochs=None)
    config = finetune.task_config("squad", args)
    windows = finetune_e2e.squad_windows(seq_len)
    assert config.data.max_seq_len == seq_len
    assert (config.squad.max_query_length, config.squad.doc_stride) == (
        windows["max_query_length"],
        windows["doc_stride"],
    )
    assert make_kind(config).name == "squad"  # the kind's own window check passes
    # At the recipe's length the recipe's windows are kept.
    config = finetune.task_config(
        "squad", argparse.Namespace(seq_len=384, batch_size=None, epochs=None)
    )
    assert (config.squad.max_query_length, config.squad.doc_stride) == (64, 128)


@pytest.mark.slow
@pytest.mark.parametrize(
    "task, architecture, rows, examples",
    [
        ("conll2003", "BertForTokenClassification", 8 * 16, 14_041),
        ("swag", "BertForMultipleChoice", 8 * 4 * 16, 73_546),
    ],
)
def test_ner_and_swag_bench_against_their_transformers_heads(
    capsys, task, architecture, rows, examples
):
    """The NER and SWAG kinds' synthetic batches train on both sides (transformers' head in a
    process of its own); SWAG's tokens count its four choices per example."""
    argv = f"bench finetune --preset tiny --seq-len 16 --batch-size 8 --steps 2 --task {task}"
    code = cli.main((argv + " --json").split())
    out = capsys.readouterr().out
    assert code == 0, out
    result = json.loads(out.strip().splitlines()[-1])
    assert (result["task"], result["train_examples"]) == (task, examples)
    assert result["tokens_per_s"] == pytest.approx(rows / result["step_s"])
    assert result["hf_tokens_per_s"] == pytest.approx(rows / result["hf_step_s"])
    assert result["hf_process"]["jax_loaded"] is False and result["hf_step_s"] > 0
    assert f"{task} head ({architecture})" in out


def test_every_task_has_a_training_set_size():
    assert set(TRAIN_EXAMPLES) == set(TASKS)
    assert all(n > 0 for n in TRAIN_EXAMPLES.values())


@pytest.mark.parametrize(
    "options, message",
    [
        ("--batch-size 12", "--batch-size=12 is not divisible by the 8 devices"),
        ("--seq-len 600", "--seq-len 600 is outside [3, max_position_embeddings=512]"),
        ("--steps 0", "--steps=0: must be positive"),
        ("--task squad3", "unknown task 'squad3'; choose one of cola, sst2"),
    ],
)
def test_bad_options_are_one_clear_error(capsys, options, message):
    argv = ["bench", "finetune", "--preset", "tiny", "--seq-len", "16", *options.split()]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.slow  # two fresh processes that each import their framework and train: ~50 s
def test_end_to_end_mode_runs_both_whole_runs_in_processes_of_their_own(
    capsys, demo_corpus_dir, tmp_path
):
    """--end-to-end: `bertjax finetune` and the transformers loop each train the same generated
    SQuAD task from the same HF folder in a fresh process, score dev after the epoch and write
    predictions; examples/s is epochs x training questions over each wall time, the ratio
    theirs over ours in wall time."""
    argv = (
        f"bench finetune --end-to-end --task squad --preset tiny --seq-len 32 --train 24 "
        f"--dev 8 --epochs 1 --batch-size 8 --corpus {demo_corpus_dir} "
        f"--workdir {tmp_path / 'e2e'} --json"
    )
    code = cli.main(argv.split())
    out = capsys.readouterr().out
    assert code == 0, out
    result = json.loads(out.strip().splitlines()[-1])
    ours, theirs = result["ours"], result["transformers"]
    assert ours["examples_per_s"] == pytest.approx(24 / ours["wall_s"])
    assert theirs["examples_per_s"] == pytest.approx(24 / theirs["wall_s"])
    assert result["ratio_vs_hf"] == pytest.approx(theirs["wall_s"] / ours["wall_s"])
    # Both scored dev: our last epoch's metrics, theirs after each epoch (one here).
    assert ours["dev"]["examples"] == 8 and 0 <= ours["dev"]["f1"] <= 100
    assert len(theirs["dev"]) == 1 and 0 <= theirs["dev"][0]["f1"] <= 100
    assert theirs["jax_loaded"] is False and theirs["pid"] != os.getpid()
    assert theirs["steps"] >= 3  # ceil(windows / 8): every question has one window or more
    # Each wrote its predictions (and ours the whole run's files) in its own folder.
    assert (tmp_path / "e2e" / "ours" / "predictions" / "predictions.json").is_file()
    assert (tmp_path / "e2e" / "theirs" / "predictions.json").is_file()
    assert "ours / transformers = " in out


def _folder_with(*names):
    def make(folder):
        folder.mkdir()
        for name in names:
            (folder / name).write_text("x")

    return make


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda folder: None, "model: no such folder"),
        (_folder_with("config.json"), "not a HuggingFace BERT folder (missing vocab.txt)"),
        (_folder_with("config.json", "vocab.txt"), "holds no model.safetensors or pytorch_model"),
    ],
    ids=["no-folder", "no-vocab", "no-weights"],
)
def test_end_to_end_init_that_is_not_a_bert_folder_is_one_clear_error(
    capsys, tmp_path, make, message
):
    """--init FOLDER is checked before any data or run is made: one line, exit 2."""
    folder = tmp_path / "model"
    make(folder)
    argv = f"bench finetune --end-to-end --task sst2 --init {folder} --workdir {tmp_path / 'w'}"
    assert cli.main(argv.split()) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "w").exists()


def test_end_to_end_init_is_the_model_both_sides_fine_tune(tmp_path, demo_corpus_dir):
    """With --init, the data are generated as ever and both sides get the user's folder:
    no random model is made, and the transformers request names the folder."""
    import argparse

    from bertjax.bench import finetune, finetune_e2e

    folder = tmp_path / "real"
    _folder_with("config.json", "vocab.txt", "model.safetensors")(folder)
    args = argparse.Namespace(task="sst2", train=8, dev=4, seq_len=32, batch_size=4, epochs=1,
                              lr=1e-4, init=str(folder), corpus=str(demo_corpus_dir),
                              preset="minilm")  # fmt: skip
    finetune_e2e.check_args(args)
    data, model = finetune_e2e.build_inputs(args, tmp_path / "root")
    assert model == folder and not (tmp_path / "root" / "model").exists()
    assert (data / "train.tsv").is_file()
    request = finetune_e2e.torch_request(
        args, finetune.task_config("sst2", args), data, model, tmp_path / "out"
    )
    assert request["model"] == str(folder)
    assert finetune_e2e.model_name(args) == f"the BERT of {folder}"
