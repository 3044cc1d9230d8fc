"""`bertjax finetune --task swag`: a tiny transformers-saved encoder learns the generated
SWAG-style task on the demo corpus through the CLI (accuracy well above the 0.25 of a fixed
choice), writes each split's chosen endings, exports a model transformers'
BertForMultipleChoice loads with the checkpoint's logits; the loss is HF's; bad input is one
clear error, nothing written."""

import csv
import io
import json
from pathlib import Path

import jax
import numpy as np
import pytest

from bertjax import cli
from bertjax.data import load_tokenizer
from bertjax.finetune import choice_head, demo_tasks, swag_data
from bertjax.train import checkpoint

SEQ = 32  # tokens per choice: the generated contexts and endings, cut longest first


@pytest.fixture(scope="module")
def swag_dir(demo_documents, tmp_path_factory) -> Path:
    """train.csv / val.csv / test.csv of the generated task: the rest of a sentence after its
    first half and two more words, against three endings from other documents."""
    folder = tmp_path_factory.mktemp("swag_data")
    demo_tasks.write_swag_task(demo_documents, folder, n_train=1200, n_dev=500, n_test=50)
    return folder


@pytest.fixture(scope="module")
def learnt_run(swag_dir, demo_encoder, tmp_path_factory) -> Path:
    """`bertjax finetune --task swag` on the generated task."""
    workdir = tmp_path_factory.mktemp("swag_run") / "run"
    argv = [
        "finetune",
        "--task",
        "swag",
        "--init",
        str(demo_encoder),
        "--data",
        str(swag_dir),
        "--workdir",
        str(workdir),
        "--max-seq-len",
        str(SEQ),
        "--epochs",
        "3",
        "--lr",
        "2e-3",
        "--batch-size",
        "16",
        "--length-buckets",
        "1",
        "--log-every",
        "50",
    ]
    assert cli.main(argv) == 0
    return workdir


@pytest.mark.slow
def test_a_tiny_encoder_learns_the_generated_swag_task(learnt_run, swag_dir, capsys):
    """Dev accuracy >= 0.33 on 500 questions of documents never trained on, where a fixed
    choice scores about 0.25 (0.33 is 4 standard deviations of chance above it)."""
    result = json.loads((learnt_run / "eval_results.json").read_text())
    splits = swag_data.load_swag_dir(swag_dir)
    baseline = demo_tasks.majority_label_accuracy(
        [ex.label for ex in splits["train"]], [ex.label for ex in splits["validation"]]
    )
    with capsys.disabled():
        print(
            f"\n(swag, generated) dev accuracy {result['accuracy']:.3f}, loss "
            f"{result['loss']:.3f}; majority-label baseline {baseline:.3f}, chance 0.25"
        )
    assert baseline < 0.3
    assert result["accuracy"] >= 0.33, result
    assert (result["task"], result["epoch"], result["examples"]) == ("swag", 3, 500)


@pytest.mark.slow
def test_each_split_gets_its_chosen_endings(learnt_run, swag_dir):
    """predictions/validation_predictions.csv holds every dev question's chosen ending, and
    they score eval_results.json's accuracy; the unlabelled test split gets its file too."""
    result = json.loads((learnt_run / "eval_results.json").read_text())
    dev = swag_data.read_swag_csv(swag_dir / "val.csv", require_labels=True)
    rows = list(
        csv.DictReader(
            io.StringIO((learnt_run / "predictions" / "validation_predictions.csv").read_text())
        )
    )
    assert [int(r["idx"]) for r in rows] == [ex.idx for ex in dev]
    chosen = np.array([int(r["label"]) for r in rows])
    assert set(chosen.tolist()) <= {0, 1, 2, 3}
    assert np.mean(chosen == [ex.label for ex in dev]) == pytest.approx(result["accuracy"])
    test = (learnt_run / "predictions" / "test_predictions.csv").read_text().splitlines()
    assert test[0] == "idx,label" and len(test) == 1 + 50


@pytest.mark.slow
def test_the_export_loads_in_transformers_with_the_checkpoints_logits(
    learnt_run, swag_dir, demo_encoder
):
    """WORKDIR/hf_model loads into transformers' BertForMultipleChoice with no missing or
    unexpected keys and gives the checkpoint's logits [B, 4]."""
    import torch
    import transformers

    folder = learnt_run / "hf_model"
    model, info = transformers.BertForMultipleChoice.from_pretrained(
        folder, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    loaded = checkpoint.load_model(learnt_run)
    assert set(loaded.params) == {"bert", "classifier"}
    dev = swag_data.read_swag_csv(swag_dir / "val.csv")[:24]
    arrays = swag_data.encode_examples(dev, load_tokenizer(demo_encoder), SEQ)
    apply = jax.jit(choice_head.BertForMultipleChoice(loaded.model_cfg).apply)
    ours = apply({"params": loaded.params}, arrays["input_ids"], arrays["segment_ids"],
                 arrays["input_mask"])  # fmt: skip
    with torch.no_grad():
        theirs = model.eval()(
            input_ids=torch.tensor(arrays["input_ids"], dtype=torch.long),
            token_type_ids=torch.tensor(arrays["segment_ids"], dtype=torch.long),
            attention_mask=torch.tensor(arrays["input_mask"], dtype=torch.long),
        ).logits
    assert np.asarray(ours).shape == tuple(theirs.shape) == (24, 4)
    assert np.max(np.abs(np.asarray(ours) - theirs.numpy())) < 1e-4


def test_the_loss_is_hfs(tmp_path):
    """Our objective's loss on a batch of [B, 4, L] choices equals transformers'
    BertForMultipleChoice loss for the same model (the mean over the examples)."""
    import torch
    import transformers

    from bertjax import hf
    from bertjax.finetune import kind_swag
    from bertjax.train.config import load_config

    config = transformers.BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64,
                                     max_position_embeddings=24)  # fmt: skip
    torch.manual_seed(0)
    transformers.BertForMultipleChoice(config).save_pretrained(tmp_path)
    cfg, params, _ = hf.read_folder(tmp_path, choice_head.HF_SPEC)
    kind = kind_swag.make(load_config("finetune_swag"), "swag")
    head = kind.head(cfg)
    batch = kind.synthetic_batch(6, 24, 120, seed=2)
    objective = head.objective
    loss = float(
        jax.jit(
            lambda p, b: objective.loss(
                objective.sums(head.model, p, b, None, True), objective.denominators(b)
            )
        )(params, batch)
    )
    model = transformers.BertForMultipleChoice.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(batch["input_ids"], dtype=torch.long),
            token_type_ids=torch.tensor(batch["segment_ids"], dtype=torch.long),
            attention_mask=torch.tensor(batch["input_mask"], dtype=torch.long),
            labels=torch.tensor(batch["labels"], dtype=torch.long),
        )
    assert float(out.loss) == pytest.approx(loss, rel=1e-5)


# --- bad input -----------------------------------------------------------------------------


HEADER = ",".join(demo_tasks.SWAG_HEADER)
ROW = "0,v,0,A man sits. He,A man sits.,He,gold,stands up.,falls.,runs away.,sings.,{label}"


@pytest.mark.parametrize(
    "files, message",
    [
        (
            {"train.csv": HEADER + "\n" + ROW.format(label=0).replace(",sings.", ",") + "\n"},
            "train.csv, line 2 has 3 endings (ending3 empty or missing): a SWAG row needs 4",
        ),
        (
            {"train.csv": HEADER + "\n" + ROW.format(label=4) + "\n"},
            "train.csv, line 2: label '4' is not a choice 0..3",
        ),
        (
            {"val.csv": HEADER + "\n" + ROW.format(label=-1) + "\n"},
            "val.csv, line 2: label '-1' is not a choice 0..3",
        ),
        ({"train.csv": ""}, "train.csv is empty; expected a CSV header"),
        ({"val.csv": HEADER + "\n"}, "val.csv holds no examples (a header only)"),
        ({"val.csv": None}, "has no val.csv (the validation split)"),
    ],
)
def test_bad_input_is_one_clear_error(tmp_path, capsys, files, message):
    """Each mistake stops `bertjax finetune --task swag` before any model is loaded or file
    written, with exit code 2 and one line naming the file and line."""
    data = tmp_path / "data"
    data.mkdir()
    good = HEADER + "\n" + ROW.format(label=1) + "\n"
    files = {"train.csv": good, "val.csv": good, **files}
    for name, text in files.items():
        if text is not None:
            (data / name).write_text(text)
    argv = ["finetune", "--task", "swag", "--init", "/nonexistent/model", "--data", str(data),
            "--workdir", str(tmp_path / "run")]  # fmt: skip
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()
