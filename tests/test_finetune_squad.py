"""`bertjax finetune --task squad / squad_v2`: a tiny transformers-saved encoder learns a
generated extractive task on real text (the demo corpus) through the CLI, writes the official
prediction files and a model that transformers' BertForQuestionAnswering loads; v2.0's null
answers follow --null-score-diff-threshold; bad flags and files are one clear error each."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from bertjax import cli
from bertjax.data import load_tokenizer
from bertjax.finetune import demo_tasks, span_head, squad_data, squad_features, squad_metrics
from bertjax.train import checkpoint
from bertjax.train.metrics_writer import read_metrics
from tests.conftest import shared_once
from tests.helpers import save_tiny_encoder

QUESTION = demo_tasks.SQUAD_QUESTION
parenthesised, squad_json = demo_tasks.parenthesised, demo_tasks.squad_json
SEQ, HIDDEN = 64, 64
# Windows of 64 tokens, questions cut to 16 tokens, stride 16: long contexts span 2-3 windows.
WINDOWS = ["--max-seq-len", str(SEQ), "--max-query-length", "16", "--doc-stride", "16"]


def demo_sentences(out: Path) -> list[str]:
    """The offline demo corpus (pydoc topics and stdlib docstrings), built in a subprocess as
    `bertjax demo` builds it (importing every stdlib module stays out of this process)."""
    cmd = [sys.executable, "-m", "bertjax.data.demo_corpus", str(out)]
    subprocess.run(cmd, check=True, capture_output=True)
    lines = (line for f in sorted(out.glob("*.txt")) for line in f.read_text().splitlines())
    return list(dict.fromkeys(line for line in lines if line))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(parenthesised sentences, fillers, every sentence) of the demo corpus."""
    sentences = demo_sentences(tmp_path_factory.mktemp("corpus"))
    spans, fillers = demo_tasks.squad_sentences(sentences)
    assert len(spans) > 700 and len(fillers) > 3000, (len(spans), len(fillers))
    return spans, fillers, sentences


def paren_task(corpus, folder: Path, n_train: int, n_dev: int) -> list[list[str]]:
    """demo_tasks.write_squad_task on the corpus's sentences."""
    return demo_tasks.write_squad_task(corpus[2], folder, n_train=n_train, n_dev=n_dev)


@pytest.fixture(scope="module")
def tiny_encoder(corpus, tmp_path_factory) -> Path:
    """save_tiny_encoder's 4-layer encoder, its vocabulary learnt from the demo corpus."""
    return save_tiny_encoder(tmp_path_factory.mktemp("encoder"), corpus[2], SEQ, HIDDEN)


@pytest.fixture(scope="module")
def learnt_run(corpus, tiny_encoder, tmp_path_factory):
    """`bertjax finetune --task squad` on 3000 generated training questions, 5 epochs: run
    once per session, whichever xdist worker asks first (conftest.shared_once)."""

    def build(root: Path) -> None:
        dev_contexts = paren_task(corpus, root / "data", n_train=3000, n_dev=150)
        (root / "dev_contexts.json").write_text(json.dumps(dev_contexts))
        argv = ["finetune", "--task", "squad", "--init", str(tiny_encoder), "--data",
                str(root / "data"), "--workdir", str(root / "run"), *WINDOWS, "--epochs", "5",
                "--lr", "3e-3", "--batch-size", "32", "--log-every", "100"]  # fmt: skip
        assert cli.main(argv) == 0

    root = shared_once(tmp_path_factory, "squad_learnt_run", build)
    dev = squad_data.read_squad_json(root / "data" / "dev-v1.1.json", "v1.1")
    return root / "run", dev, json.loads((root / "dev_contexts.json").read_text())


@pytest.mark.slow
def test_a_tiny_encoder_learns_a_generated_extractive_task(learnt_run, capsys):
    """Dev F1 >= 90 on questions about sentences never trained on, where answering the first
    sentence (or the whole sentence that holds the parentheses) scores below 50."""
    workdir, dev, dev_contexts = learnt_run
    result = json.loads((workdir / "eval_results.json").read_text())
    gold = squad_data.gold_answers(dev)
    first = {ex.qid: sentences[0] for ex, sentences in zip(dev, dev_contexts)}
    holder = {ex.qid: next(s for s in sentences if "(" in s)
              for ex, sentences in zip(dev, dev_contexts)}  # fmt: skip
    baselines = {
        "first sentence": squad_metrics.squad_v1_scores(gold, first)["f1"],
        "sentence with the parentheses": squad_metrics.squad_v1_scores(gold, holder)["f1"],
    }
    with capsys.disabled():
        print(f"\n(squad, generated) dev {json.dumps(result)}; baselines F1 {baselines}")
    assert max(baselines.values()) < 50
    assert result["f1"] >= 90 and result["exact_match"] >= 80, result
    assert (result["task"], result["epoch"], result["examples"]) == ("squad", 5, 150)
    assert result["features"] > 150  # contexts longer than a window are split
    evals = [r for r in read_metrics(workdir) if r["split"] == "eval"]
    assert [r["eval_epoch"] for r in evals] == [1, 2, 3, 4, 5]


@pytest.mark.slow
def test_the_run_writes_the_official_files(learnt_run):
    """predictions.json answers every dev question ({id: text}, as evaluate-v1.1.py reads it)
    and scores exactly the F1/EM in eval_results.json; nbest_predictions.json lists up to 20
    candidates with probabilities; a v1.1 run writes no null_odds.json."""
    workdir, dev, _ = learnt_run
    predictions = json.loads((workdir / "predictions" / "predictions.json").read_text())
    assert list(predictions) == [ex.qid for ex in dev]
    result = json.loads((workdir / "eval_results.json").read_text())
    scores = squad_metrics.squad_v1_scores(squad_data.gold_answers(dev), predictions)
    assert scores == {k: result[k] for k in ("exact_match", "f1")}
    nbest = json.loads((workdir / "predictions" / "nbest_predictions.json").read_text())
    assert set(nbest) == set(predictions)
    for qid, candidates in nbest.items():
        assert 1 <= len(candidates) <= 20 and candidates[0]["text"] == predictions[qid]
        assert sum(c["probability"] for c in candidates) == pytest.approx(1.0)
    assert not (workdir / "predictions" / "null_odds.json").exists()


@pytest.mark.slow
def test_the_fine_tuned_model_exports_to_transformers(learnt_run, tiny_encoder):
    """WORKDIR/hf_model loads into transformers' BertForQuestionAnswering with no missing or
    unexpected keys and gives the checkpoint's span logits on dev windows; its tokenizer files
    load into BertTokenizerFast with our token ids."""
    import torch
    import transformers

    workdir, dev, _ = learnt_run
    folder = workdir / "hf_model"
    model, info = transformers.BertForQuestionAnswering.from_pretrained(
        folder, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    loaded = checkpoint.load_model(workdir)
    assert set(loaded.params) == {"bert", "qa_outputs"}
    tokenizer = load_tokenizer(tiny_encoder)
    hf_tokenizer = transformers.BertTokenizerFast.from_pretrained(folder)
    for ex in dev[:20]:
        assert hf_tokenizer(ex.context, add_special_tokens=False)["input_ids"] == tokenizer.encode(
            ex.context
        )
    feats = squad_features.build_features(dev[:24], tokenizer, SEQ, 16, 16)
    apply = jax.jit(span_head.BertForQuestionAnswering(loaded.model_cfg).apply)
    start, end = apply({"params": loaded.params}, feats.input_ids, feats.segment_ids,
                       feats.input_mask)  # fmt: skip
    with torch.no_grad():
        out = model.eval()(
            input_ids=torch.tensor(feats.input_ids, dtype=torch.long),
            token_type_ids=torch.tensor(feats.segment_ids, dtype=torch.long),
            attention_mask=torch.tensor(feats.input_mask, dtype=torch.long),
        )
    for ours, theirs in ((start, out.start_logits), (end, out.end_logits)):
        assert np.max(np.abs(np.asarray(ours) - theirs.numpy())) < 1e-4
    assert np.abs(np.asarray(start)).max() > 1.0  # trained logits, not trivially small


def v2_task(corpus, folder: Path, n_train: int, n_dev: int) -> None:
    """train-v2.0.json / dev-v2.0.json: the parentheses question, unanswerable for contexts
    of two fillers (a third of them)."""
    spans, fillers, _ = corpus
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", n_train), ("dev", n_dev)):
        groups = []
        for g in range(n):
            pool = spans if g % 3 else fillers  # every third question has no answer
            first = pool[rng.integers(len(pool))]
            group = [first, fillers[rng.integers(len(fillers))]]
            groups.append([(s, parenthesised(s)) for s in group])
        (folder / f"{name}-v2.0.json").write_text(json.dumps(squad_json(groups, "v2.0")))


@pytest.mark.slow
def test_squad_v2_answers_nothing_where_the_null_score_wins(corpus, tiny_encoder, tmp_path):
    """A v2.0 run writes null_odds.json beside predictions.json; an answer is "" exactly where
    its null-score difference exceeds --null-score-diff-threshold; eval_results.json holds what
    evaluate-v2.0.py prints for these two files at that threshold (HasAns/NoAns, the best
    thresholds)."""
    v2_task(corpus, tmp_path / "data", n_train=64, n_dev=45)
    workdir, threshold = tmp_path / "run", -1.5
    argv = ["finetune", "--task", "squad_v2", "--init", str(tiny_encoder), "--data",
            str(tmp_path / "data"), "--workdir", str(workdir), *WINDOWS, "--epochs", "1",
            "--batch-size", "16", "--null-score-diff-threshold", str(threshold)]  # fmt: skip
    assert cli.main(argv) == 0
    out = workdir / "predictions"
    predictions = json.loads((out / "predictions.json").read_text())
    null_odds = json.loads((out / "null_odds.json").read_text())
    assert list(predictions) == list(null_odds) == [f"q{g}" for g in range(45)]
    empty = {q for q, text in predictions.items() if text == ""}
    assert empty == {q for q, odds in null_odds.items() if odds > threshold}
    nbest = json.loads((out / "nbest_predictions.json").read_text())
    for q in set(predictions) - empty:  # the others answer their best non-null candidate
        assert predictions[q] == next(c["text"] for c in nbest[q] if c["text"])
    # Not vacuous: the flag silences questions that the default threshold 0 answers.
    assert any(threshold < odds <= 0 for odds in null_odds.values())
    result = json.loads((workdir / "eval_results.json").read_text())
    dev = squad_data.read_squad_json(tmp_path / "data" / "dev-v2.0.json", "v2.0")
    gold = squad_data.gold_answers(dev)
    assert result["null_score_diff_threshold"] == threshold
    # evaluate-v2.0.py dev-v2.0.json predictions.json --na-prob-file null_odds.json
    #     --na-prob-thresh -1.5, reimplemented in squad_metrics (tests/test_squad_metrics.py)
    official = squad_metrics.squad_v2_scores(gold, predictions, null_odds, threshold)
    assert {k: result[k] for k in official} == official
    assert {"HasAns_f1", "NoAns_f1", "best_f1", "best_f1_thresh", "best_exact"} <= set(result)
    assert (result["HasAns_total"], result["NoAns_total"]) == (30, 15)


# --- bad input -----------------------------------------------------------------------------


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def tiny_file(
    version="1.1", context="The cat (a tabby) sat.", answer="a tabby", start=9, impossible=None
):
    qa = {"id": "q0", "question": QUESTION, "answers": [{"text": answer, "answer_start": start}]}
    if impossible is not None:
        qa["is_impossible"] = impossible
    return {"version": version, "data": [{"title": "t", "paragraphs": [
        {"context": context, "qas": [qa]}]}]}  # fmt: skip


def data_dir(root: Path, files: dict) -> str:
    for name, obj in files.items():
        write_json(root / name, obj)
    return str(root)


@pytest.mark.parametrize(
    "flags, files, message",
    [
        (
            "--doc-stride 400",
            None,
            "--doc-stride 400 must be at least 1 and smaller than the 317 "
            "context tokens a window holds",
        ),
        ("--max-query-length 0", None, "max_query_length=0 must be >= 1 (question tokens kept"),
        ("--max-seq-len 40 --max-query-length 64", None, "--max-seq-len 40 leaves no room"),
        ("--n-best-size 0", None, "n_best_size=0 must be >= 1 (start and end candidates"),
        ("--max-answer-length 0", None, "max_answer_length=0 must be >= 1 (longest answer"),
        (
            "--null-score-diff-threshold 1.5",
            None,
            "--null-score-diff-threshold=1.5 applies to SQuAD v2.0 (--task squad_v2) only",
        ),
        (
            "--task squad_v2 --null-score-diff-threshold nan",
            None,
            "squad.null_score_diff_threshold=nan must be a finite number",
        ),
        (
            "--task rte --doc-stride 64",
            None,
            "--doc-stride sets the config key squad.doc_stride "
            "or ner.doc_stride, which config finetune_glue lacks: it applies to SQuAD tasks",
        ),
        ("--config finetune_glue", None, "--task squad needs the config key(s) squad.doc_stride"),
        ("--task squad-v3", None, "unknown task 'squad-v3'; choose one of cola"),
        ("--data /nonexistent", None, "SQuAD data directory /nonexistent does not exist"),
        (
            "",
            {"train-v2.0.json": tiny_file("v2.0", impossible=False)},
            "has no train-v1.1.json (the train file of SQuAD v1.1); it holds train-v2.0.json, a "
            "SQuAD v2.0 file: choose --task squad_v2",
        ),
        (
            "",
            {"train-v1.1.json": tiny_file("v2.0", impossible=False)},
            "train-v1.1.json is a SQuAD v2.0 set (its \"version\" is 'v2.0') but the task is SQuAD "
            "v1.1",
        ),
        (
            "--task squad_v2",
            {"train-v2.0.json": tiny_file("1.1"), "dev-v2.0.json": tiny_file()},
            "train-v2.0.json is a SQuAD v1.1 set",
        ),
        (
            "",
            {"train-v1.1.json": tiny_file(start=3)},
            "question 'q0': answer 'a tabby' is not at answer_start 3 of its context",
        ),
        (
            "",
            {"train-v1.1.json": tiny_file(), "dev-v1.1.json": tiny_file(context=" ")},
            "dev-v1.1.json: question 'q0' has an empty context",
        ),
    ],
)
def test_bad_input_is_one_clear_error(tmp_path, capsys, flags, files, message):
    """Each mistake stops `bertjax finetune` before any model is loaded or file written, with
    exit code 2 and one line naming the flag, file or question id."""
    data = data_dir(tmp_path / "data", files) if files else str(tmp_path / "data")
    if files is None:
        data_dir(tmp_path / "data", {"train-v1.1.json": tiny_file(),
                                     "dev-v1.1.json": tiny_file()})  # fmt: skip
    argv = ["finetune", "--task", "squad", "--init", "/nonexistent/model", "--data", data,
            "--workdir", str(tmp_path / "run"), *flags.split()]  # fmt: skip
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()
