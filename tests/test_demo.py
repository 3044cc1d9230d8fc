"""`bertjax demo`, shortened, end to end through the CLI: every artifact is written, held-out MLM
accuracy rises, `bertjax eval` on the result reproduces the run's own final evaluation, and the
downstream stage (one seed, one epoch here: tests/test_downstream.py shows the payoff) prints
its table and draws its panel."""

import json
import math

import pytest

from bertjax import cli
from bertjax.train.metrics_writer import read_metrics


@pytest.mark.slow
def test_short_demo_end_to_end(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative --workdir, as `make demo` passes
    workdir = tmp_path / "demo"
    assert (
        cli.main(
            [
                "demo",
                "--workdir",
                "demo",
                "--max-documents",
                "400",
                "--steps",
                "45",
                "--vocab-size",
                "3000",
                "--held-out",
                "96",
                "--downstream-seeds",
                "1",
                "--downstream-epochs",
                "1",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    table = {
        line.split()[0]: line.split()[1:]
        for line in out.splitlines()
        if line.startswith(("mlm_accuracy", "nsp_accuracy", "mlm_loss", "train tokens/s"))
    }
    assert "downstream: word order (dev accuracy, 1 seed)" in out
    assert "gain of pretraining" in out and "unigram logistic" in out
    summary = json.loads((workdir / "downstream" / "downstream.json").read_text())
    assert set(summary["accuracy"]) == {"pretrained", "random_init"}
    assert all(0 <= a[0] <= 1 for a in summary["accuracy"].values())
    before, after = map(float, table["mlm_accuracy"])
    assert after > before + 0.02, table  # it learned something real
    assert float(table["mlm_loss"][1]) < float(table["mlm_loss"][0])

    run = workdir / "run"
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.isdigit()) == ["45"]
    assert {"config.json", "model.safetensors", "vocab.txt"} <= {
        p.name for p in (workdir / "hf_export").iterdir()
    }
    assert list((run / "tb").iterdir()), "no TensorBoard event file"
    assert (workdir / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = read_metrics(run)
    evals = [r for r in records if r["split"] == "eval"]
    assert [r["step"] for r in evals] == [0, 15, 30, 45]
    assert {
        "loss",
        "mlm_accuracy",
        "nsp_accuracy",
        "learning_rate",
        "grad_norm",
        "tokens_per_s",
    } <= set(next(r for r in records if r["split"] == "train"))

    # A second demo may use the folder again: everything in it is the demo's own, and the
    # tokenizer and dataset of the same settings are reused, not rebuilt.
    from bertjax import outputs
    from bertjax.commands import demo

    assert outputs.holding(workdir).kind == outputs.DEMO, outputs.holding(workdir)
    outputs.check_folder(workdir, outputs.DEMO, overwrite=True, flag="--workdir")
    vocab = (workdir / "tokenizer" / "vocab.txt").read_bytes()
    tokenizer = demo.build_tokenizer([], workdir / "tokenizer", len(vocab.splitlines()))
    assert (workdir / "tokenizer" / "vocab.txt").read_bytes() == vocab
    assert demo._same_dataset(workdir / "data", tokenizer, 96)
    assert not demo._same_dataset(workdir / "data", tokenizer, 95)

    # `bertjax eval` of the saved checkpoint gives the run's final evaluation again.
    assert cli.main(["eval", "--workdir", str(run), "--data", str(workdir / "data" / "eval")]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["examples"] == 96
    for key in ("mlm_loss", "mlm_accuracy", "nsp_loss", "nsp_accuracy"):
        assert math.isclose(result[key], evals[-1][f"eval_{key}"], rel_tol=1e-5), key


def test_the_demo_corpus_is_reused_only_when_built_from_the_same_source(tmp_path, monkeypatch):
    """`bertjax demo --corpus wikitext` after a stdlib demo in the same folder reused the stdlib
    corpus (reuse looked at --max-documents alone): the corpus records its source and is
    rebuilt, saying so, when the source or the limit differ."""
    from bertjax.commands import demo
    from bertjax.data import wikitext

    builds = []

    def fake_wikitext(out_dir, max_documents):  # the hub is not reachable in tests
        builds.append(max_documents)
        (out_dir / "wiki_000.txt").write_text("A wiki sentence.\nAnother one.\n")
        return {"documents": 1, "sentences": 2, "words": 5}

    monkeypatch.setattr(wikitext, "build_wikitext_corpus", fake_wikitext)
    corpus = tmp_path / "corpus"
    wiki_files = demo.build_corpus(corpus, "wikitext", 3)
    assert builds == [3] and [f.name for f in wiki_files] == ["wiki_000.txt"]
    done = json.loads((corpus / "DONE.json").read_text())
    assert (done["corpus"], done["max_documents"]) == ("wikitext", 3)
    assert demo.build_corpus(corpus, "wikitext", 3) == wiki_files and builds == [3]  # reused
    demo.build_corpus(corpus, "wikitext", 5)  # another limit: rebuilt
    assert builds == [3, 5]
    # What a stdlib demo leaves (its corpus is built in a child process, too slow to run
    # here): another source, so rebuilt.
    (corpus / "DONE.json").write_text(json.dumps(done | {"corpus": "stdlib", "max_documents": 5}))
    demo.build_corpus(corpus, "wikitext", 5)
    assert builds == [3, 5, 5]
    # A corpus an older demo built records no source: rebuilt rather than guessed.
    (corpus / "DONE.json").write_text(json.dumps({"max_documents": 5}))
    demo.build_corpus(corpus, "wikitext", 5)
    assert builds == [3, 5, 5, 5]
