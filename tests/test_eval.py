"""`bertjax eval` on a hand-computable case: every example counted once, the last partial batch
kept, and the loss of a model whose outputs are uniform known in closed form."""

import json
import math

import flax.linen as nn
import jax
import numpy as np
import pytest

from bertjax import cli, hf
from bertjax import model as model_lib
from bertjax.data.shards import open_dataset
from bertjax.data.synthetic import synthetic_dataset

VOCAB = 256


def zero_model_folder(path):
    """A BERT whose parameters are all zero: every MLM and NSP logit is 0 (uniform)."""
    cfg = model_lib.preset_config("tiny", vocab_size=VOCAB)
    params = jax.tree.map(
        np.zeros_like, jax.device_get(nn.meta.unbox(model_lib.init_params(cfg, jax.random.key(0))))
    )
    hf.write_folder(params, cfg, path)
    return path


def test_eval_of_a_uniform_model_is_exact(tmp_path, capsys):
    data = synthetic_dataset(tmp_path / "eval", 37, 32, vocab_size=VOCAB, seed=4)
    ds = open_dataset(data)
    labels = np.array([int(ds[i]["next_sentence_labels"]) for i in range(len(ds))])
    lengths = np.array([int(ds[i]["input_mask"].sum()) for i in range(len(ds))])
    # The original BERT's count per sequence (P = 20 at this length).
    expected_tokens = int(sum(min(20, max(1, round(0.15 * n))) for n in lengths))
    assert labels[0] != round(labels.mean()), "example 0 pads the last batch: keep it a minority"

    folder = zero_model_folder(tmp_path / "zero")
    # 37 examples in batches of 8: the last batch holds 5 real rows and 3 padding rows.
    assert (
        cli.main(["eval", "--workdir", str(folder), "--data", str(data), "--batch-size", "8"]) == 0
    )
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["examples"] == 37
    assert result["masked_tokens"] == expected_tokens
    assert math.isclose(result["mlm_loss"], math.log(VOCAB), rel_tol=1e-5)
    assert math.isclose(result["mlm_perplexity"], VOCAB, rel_tol=1e-4)
    assert result["mlm_accuracy"] == 0.0  # argmax of uniform logits is id 0 ([PAD]), never a target
    assert math.isclose(result["nsp_loss"], math.log(2), rel_tol=1e-6)
    assert math.isclose(result["nsp_accuracy"], float(np.mean(labels == 0)), rel_tol=1e-9)


def test_eval_rejects_a_dataset_the_model_does_not_fit(tmp_path, capsys):
    data = synthetic_dataset(tmp_path / "eval", 16, 32, vocab_size=128)
    folder = zero_model_folder(tmp_path / "zero")
    assert cli.main(["eval", "--workdir", str(folder), "--data", str(data)]) == 2
    assert "vocab_size=256 differs" in capsys.readouterr().err


@pytest.mark.slow
def test_a_checkpoint_trained_with_splash_is_evaluated_and_fine_tuned_on_cpu(tmp_path, capsys):
    """A checkpoint whose model config names the TPU-only splash kernel (as a TPU run writes
    it; made here by training with xla and recording splash, since splash cannot train on a
    CPU) is evaluated and fine-tuned on this CPU as it is: `auto` picks xla, and both logs
    say which kernel runs, why, and which one the checkpoint was trained with."""
    from bertjax.train import checkpoint
    from tests.test_finetune import SPECIALS, WORDS, write_tsv, write_vocab

    vocab = write_vocab(tmp_path / "tok")
    data = synthetic_dataset(tmp_path / "data", 64, 32, vocab_size=len(SPECIALS + WORDS))
    workdir = tmp_path / "run"
    assert (
        cli.main(
            [
                "train",
                "--config",
                "bert_tiny",
                "--workdir",
                str(workdir),
                f"--config.data.train_dir={data}",
                "--config.train.steps=2",
                "--config.train.global_batch_size=8",
                "--config.model.num_hidden_layers=1",
                "--config.optim.warmup_steps=1",
                "--config.train.checkpoint_every=2",
                "--config.train.eval_every=0",
            ]
        )
        == 0
    )
    # The checkpoint's JSON metadata (orbax's JsonSave item "config"): record splash there.
    [meta_file] = [
        p
        for p in (workdir / "checkpoints" / "2" / "config").iterdir()
        if p.is_file() and checkpoint.MODEL_CONFIG_KEY in p.read_text()
    ]
    meta = json.loads(meta_file.read_text())
    meta[checkpoint.MODEL_CONFIG_KEY].update(
        attention_impl="splash", attention_probs_dropout_prob=0.0
    )
    meta_file.write_text(json.dumps(meta))
    assert checkpoint.load_model(workdir).model_cfg.attention_impl == "splash"
    capsys.readouterr()

    assert cli.main(["eval", "--workdir", str(workdir), "--data", str(data)]) == 0
    err = capsys.readouterr().err
    assert (
        "attention xla (model.attention_impl=auto; auto: no fused kernel on cpu); "
        "trained with splash"
    ) in err, err

    rng = np.random.default_rng(0)
    (tmp_path / "sst2").mkdir()
    for split, n in (("train", 32), ("dev", 8)):
        topics = rng.integers(0, 2, n)
        write_tsv(
            tmp_path / "sst2" / f"{split}.tsv",
            ["sentence", "label"],
            [(" ".join(WORDS[15 * t + j] for j in rng.integers(0, 15, 6)), t) for t in topics],
        )
    assert (
        cli.main(
            [
                "finetune",
                "--task",
                "sst2",
                "--init",
                str(workdir),
                "--tokenizer",
                str(vocab),
                "--data",
                str(tmp_path / "sst2"),
                "--workdir",
                str(tmp_path / "ft"),
                "--epochs",
                "1",
                "--batch-size",
                "8",
                "--max-seq-len",
                "32",
            ]
        )
        == 0
    )
    out = capsys.readouterr()
    assert (
        "attention xla (model.attention_impl=auto; auto: no fused kernel on cpu); "
        "the checkpoint's: splash"
    ) in out.out + out.err
