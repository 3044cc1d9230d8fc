"""`bertjax eval` on a hand-computable case: every example counted once, the last partial batch
kept, and the loss of a model whose outputs are uniform known in closed form."""

import json
import math

import flax.linen as nn
import jax
import numpy as np

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
