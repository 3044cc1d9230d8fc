"""`bertjax finetune --task ner / conll2003`: a tiny transformers-saved encoder learns the
generated NER task on the demo corpus through the CLI (entity F1 far above the majority tag's
0), writes CoNLL prediction files that conlleval scores as eval_results.json says, exports a
model transformers' BertForTokenClassification loads with the checkpoint's logits; the token
loss is HF's and adds up over micro-batches; bad input is one clear error, nothing written."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from bertjax import cli
from bertjax.data import load_tokenizer
from bertjax.finetune import conll_data, conlleval, demo_tasks, token_features, token_head
from bertjax.train import checkpoint
from tests.conftest import DEMO_ENCODER_SEQ

LABELS = ("O", "B-NUM", "I-NUM", "B-ORG", "I-ORG")  # the generated set's own, sorted by type


@pytest.fixture(scope="module")
def ner_data(demo_documents, tmp_path_factory) -> Path:
    """train.txt / valid.txt / test.txt of the generated task in IOB1, as CoNLL-2003's own
    files (I- opens a chunk), every sentence with an entity (about 1,700 for training)."""
    folder = tmp_path_factory.mktemp("ner_data")
    demo_tasks.write_ner_task(demo_documents, folder, n_dev=150, n_test=50, n_train=None,
                              keep_plain=0.0, scheme="iob1")  # fmt: skip
    return folder


@pytest.fixture(scope="module")
def learnt_run(ner_data, demo_encoder, tmp_path_factory) -> Path:
    """`bertjax finetune --task ner` on the generated task (labels from its training file)."""
    workdir = tmp_path_factory.mktemp("ner_run") / "run"
    argv = ["finetune", "--task", "ner", "--init", str(demo_encoder), "--data", str(ner_data),
            "--workdir", str(workdir), "--max-seq-len", str(DEMO_ENCODER_SEQ), "--epochs", "4",
            "--lr", "2e-3", "--batch-size", "32", "--length-buckets", "2", "--log-every",
            "50"]  # fmt: skip
    assert cli.main(argv) == 0
    return workdir


@pytest.mark.slow
def test_a_tiny_encoder_learns_the_generated_ner_task(learnt_run, ner_data, capsys):
    """Dev entity F1 >= 90 (each type >= 70), where tagging every word with the majority tag
    (O) finds no entity (F1 0); the label list is the training file's."""
    result = json.loads((learnt_run / "eval_results.json").read_text())
    data = conll_data.load_conll_dir(ner_data, labels=None)
    assert data.scheme == "iob1"
    baseline = demo_tasks.majority_tag_scores(
        [s.tags for s in data.splits["train"]], [s.tags for s in data.splits["validation"]]
    )
    with capsys.disabled():
        print(
            f"\n(ner, generated) dev f1 {result['f1']:.2f} (ORG {result['f1_ORG']:.2f}, NUM "
            f"{result['f1_NUM']:.2f}), accuracy {result['accuracy']:.2f}; majority-tag "
            f"baseline f1 {baseline['f1']:.2f}, accuracy {baseline['accuracy']:.2f}"
        )
    assert baseline["f1"] == 0.0
    assert result["f1"] >= 90 and min(result["f1_ORG"], result["f1_NUM"]) >= 70, result
    assert (result["task"], result["epoch"]) == ("ner", 4)
    assert result["examples"] == len(data.splits["validation"]) <= result["features"]
    info = checkpoint.load_model(learnt_run)
    assert set(info.params) == {"bert", "classifier"}


@pytest.mark.slow
def test_the_prediction_files_score_as_the_results_say(learnt_run, ner_data):
    """predictions/validation.conll (`word gold predicted`, a blank line after each sentence)
    holds every dev word once, and conlleval's rules on it give eval_results.json's scores; its
    report is conlleval's text; the test split's file is written too."""
    result = json.loads((learnt_run / "eval_results.json").read_text())
    dev = conll_data.read_conll_file(ner_data / "valid.txt", LABELS)
    blocks = (learnt_run / "predictions" / "validation.conll").read_text().split("\n\n")
    rows = [[line.split() for line in block.splitlines()] for block in blocks if block.strip()]
    assert [[r[0] for r in rows_] for rows_ in rows] == [list(s.words) for s in dev]
    assert [[r[1] for r in rows_] for rows_ in rows] == [list(s.tags) for s in dev]
    scores = conlleval.evaluate([s.tags for s in dev], [[r[2] for r in rows_] for rows_ in rows])
    assert {k: scores[k] for k in ("precision", "recall", "f1", "accuracy")} == {
        k: result[k] for k in ("precision", "recall", "f1", "accuracy")
    }
    report = (learnt_run / "predictions" / "validation_conlleval.txt").read_text()
    assert report == conlleval.format_report(scores) and "ORG: precision" in report
    test = conll_data.read_conll_file(ner_data / "test.txt", LABELS)
    test_text = (learnt_run / "predictions" / "test.conll").read_text()
    assert len(test_text.splitlines()) == sum(len(s.words) + 1 for s in test)


@pytest.mark.slow
def test_the_export_loads_in_transformers_with_the_checkpoints_logits(
    learnt_run, ner_data, demo_encoder
):
    """WORKDIR/hf_model loads into transformers' BertForTokenClassification with no missing or
    unexpected keys, names the labels in config.json, and gives the checkpoint's logits."""
    import torch
    import transformers

    folder = learnt_run / "hf_model"
    model, info = transformers.BertForTokenClassification.from_pretrained(
        folder, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert model.config.id2label == dict(enumerate(LABELS))
    assert model.config.label2id == {label: i for i, label in enumerate(LABELS)}
    loaded = checkpoint.load_model(learnt_run)
    tokenizer = load_tokenizer(demo_encoder)
    dev = conll_data.read_conll_file(ner_data / "valid.txt", LABELS)[:32]
    feats = token_features.build_features([s.words for s in dev], tokenizer, None,
                                          DEMO_ENCODER_SEQ)  # fmt: skip
    apply = jax.jit(token_head.BertForTokenClassification(loaded.model_cfg, len(LABELS)).apply)
    ours = apply({"params": loaded.params}, feats.input_ids, feats.segment_ids, feats.input_mask)
    with torch.no_grad():
        theirs = model.eval()(
            input_ids=torch.tensor(feats.input_ids, dtype=torch.long),
            token_type_ids=torch.tensor(feats.segment_ids, dtype=torch.long),
            attention_mask=torch.tensor(feats.input_mask, dtype=torch.long),
        )
    real = feats.input_mask.astype(bool)
    assert np.max(np.abs(np.asarray(ours)[real] - theirs.logits.numpy()[real])) < 1e-4
    assert np.abs(np.asarray(ours)).max() > 1.0  # trained logits, not trivially small


@pytest.mark.slow
def test_features_of_the_fine_tuned_run_from_its_checkpoint_and_its_export(learnt_run, tmp_path):
    """`bertjax features --init` takes the fine-tuned run's workdir (its checkpoint) and its
    HuggingFace export alike: the same encoder, the same values."""
    (tmp_path / "in.txt").write_text("The Python Software Foundation has 3 modules .\n")
    out = {}
    for name, init in (("ckpt", learnt_run), ("hf", learnt_run / "hf_model")):
        argv = ["features", "--init", str(init), "--input", str(tmp_path / "in.txt"), "--out",
                str(tmp_path / f"{name}.jsonl"), "--layers=-1,-2"]  # fmt: skip
        assert cli.main(argv) == 0
        out[name] = json.loads((tmp_path / f"{name}.jsonl").read_text())
    assert [f["token"] for f in out["ckpt"]["features"]] == [
        f["token"] for f in out["hf"]["features"]
    ]
    values = {k: np.array([[x["values"] for x in f["layers"]] for f in v["features"]])
              for k, v in out.items()}  # fmt: skip
    np.testing.assert_allclose(values["ckpt"], values["hf"], atol=2e-6, rtol=0)


def test_the_token_loss_is_hfs_and_adds_up_over_micro_batches(tmp_path):
    """Our objective's loss equals transformers' (labels -100 where the weight is 0) for the
    same model and batch; the loss sums of two halves over the whole batch's labelled tokens
    add up to it (train_step's gradient accumulation), where a mean of the halves' means
    would not (they hold different numbers of labelled tokens)."""
    import torch
    import transformers

    from bertjax import hf
    from bertjax.finetune import kind_ner
    from bertjax.train.config import load_config

    labels = ("O", "B-A", "I-A")
    config = transformers.BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64,
                                     max_position_embeddings=24, num_labels=3)  # fmt: skip
    torch.manual_seed(0)
    transformers.BertForTokenClassification(config).save_pretrained(tmp_path)
    spec = token_head.hf_spec(labels)
    cfg, params, _ = hf.read_folder(tmp_path, spec)
    kind = kind_ner.make(load_config("finetune_ner", ["task=ner", "ner.labels=" +
                                                      ",".join(labels)]), "ner")  # fmt: skip
    head = kind.head(cfg)
    batch = kind.synthetic_batch(8, 24, 120, seed=3)
    batch["label_weights"][:4, 12:] = 0  # the first half labels fewer tokens
    objective = head.objective

    @jax.jit
    def losses(params, batch):
        denominator = objective.denominators(batch)
        whole = objective.loss(objective.sums(head.model, params, batch, None, True),
                               denominator)  # fmt: skip
        halves = [{k: v[s] for k, v in batch.items()} for s in (slice(0, 4), slice(4, 8))]
        sums = [objective.sums(head.model, params, h, None, True) for h in halves]
        added = sum(objective.loss(s, denominator) for s in sums)
        means = [objective.loss(s, objective.denominators(h)) for s, h in zip(sums, halves)]
        return whole, added, (means[0] + means[1]) / 2

    whole, added, mean_of_means = map(float, losses(params, batch))
    assert added == pytest.approx(whole, rel=1e-5)
    assert abs(mean_of_means - whole) > 1e-3
    model = transformers.BertForTokenClassification.from_pretrained(tmp_path).eval()
    hf_labels = np.where(batch["label_weights"] > 0, batch["label_ids"], -100)
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(batch["input_ids"], dtype=torch.long),
            token_type_ids=torch.tensor(batch["segment_ids"], dtype=torch.long),
            attention_mask=torch.tensor(batch["input_mask"], dtype=torch.long),
            labels=torch.tensor(hf_labels, dtype=torch.long),
        )
    assert float(out.loss) == pytest.approx(whole, rel=1e-5)


# --- bad input -----------------------------------------------------------------------------


def conll(rows) -> str:
    return "".join(f"{w} _ _ {t}\n" if w else "\n" for w, t in rows)


GOOD = conll([("The", "O"), ("PSF", "B-ORG"), ("met", "O"), ("", ""), ("Fine", "O")])


@pytest.mark.parametrize(
    "flags, files, message",
    [
        (
            "--task conll2003",
            {"eng.train": conll([("Rome", "B-LOC"), ("3", "B-NUM")])},
            "eng.train, line 2: tag 'B-NUM' is not in the label list (O, B-PER",
        ),
        (
            "--task ner --labels O,B-ORG,I-ORG",
            {"train.txt": GOOD + "Pi _ _ B-NUM\n"},
            "train.txt, line 6: tag 'B-NUM' is not in the label list (O, B-ORG, I-ORG)",
        ),
        (
            "--task ner",
            {"train.txt": GOOD + "Lonely\n"},
            "train.txt, line 6 has one column ('Lonely'): a token line needs the word first and "
            "the NER tag last",
        ),
        (
            "--task ner",
            {"train.txt": GOOD, "valid.txt": ""},
            "valid.txt holds no sentences (no token lines)",
        ),
        ("--task ner", {"train.txt": ""}, "train.txt holds no sentences"),
        (
            "--task ner --tag-scheme iob2",
            {"train.txt": conll([("the", "O"), ("X", "I-ORG")])},
            "train.txt, line 2: I-ORG follows O, which IOB2 does not allow",
        ),
        (
            "--task ner --tag-scheme bio",
            None,
            "ner.scheme='bio' must be one of auto, iob1, iob2 (the files' tags (--tag-scheme))",
        ),
        (
            "--task conll2003 --labels O,B-X,I-X",
            None,
            "--labels 'O,B-X,I-X' applies to --task ner; --task conll2003 has CoNLL-2003's labels",
        ),
        ("--task ner --labels O,B-X,B-X", None, "--labels lists B-X more than once"),
        ("--task ner --labels B-X,I-X", None, "--labels has no O label"),
        (
            "--task ner --no-data",
            None,
            "--task ner reads a directory of CoNLL-format files: pass --data DIR",
        ),
        ("--task ner --max-seq-len 2", None, "data.max_seq_len=2 must be >= 3"),
        (
            "--task ner --doc-stride 100 --max-seq-len 64",
            None,
            "--doc-stride 100 must be between 1 and the 62 pieces a window holds",
        ),
        (
            "--task swag --tag-scheme iob1",
            None,
            "--tag-scheme sets the config key ner.scheme, "
            "which config finetune_swag lacks: it applies to NER tasks",
        ),
        (
            "--task conll2003 --config finetune_glue",
            None,
            "--task conll2003 needs the config "
            "key(s) ner.labels, ner.scheme, ner.doc_stride, ner.encoding: use --config "
            "finetune_ner",
        ),
    ],
)
def test_bad_input_is_one_clear_error(tmp_path, capsys, flags, files, message):
    """Each mistake stops `bertjax finetune` before any model is loaded or file written, with
    exit code 2 and one line naming the file and line, or the flag."""
    data = tmp_path / "data"
    data.mkdir()
    files = files or {"train.txt": GOOD}
    files.setdefault("train.txt" if "eng.train" not in files else "eng.testa", GOOD)
    if "eng.train" not in files:
        files.setdefault("valid.txt", GOOD)
    for name, text in files.items():
        (data / name).write_text(text)
    flags = flags.split()
    data_flags = [] if "--no-data" in flags else ["--data", str(data)]
    argv = ["finetune", "--init", "/nonexistent/model", *data_flags, "--workdir",
            str(tmp_path / "run"), *(f for f in flags if f != "--no-data")]  # fmt: skip
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
