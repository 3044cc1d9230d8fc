"""`bertjax prepare`: end to end, determinism, workers, parts + merge, held-out, bad input."""

import json
import random
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from bertjax import outputs
from bertjax.cli import main
from bertjax.data import open_dataset
from bertjax.data.corpus import HFCorpus, TextCorpus, split_sentences

WORDS = [f"w{i}" for i in range(200)]
N_DOCS = 150


def write_corpus(path, n_docs=N_DOCS, seed=0):
    """BERT format; every sentence starts with its document's tag `dNNN`."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for d in range(n_docs):
            for _ in range(rng.randint(1, 25)):
                words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 20)))
                f.write(f"d{d} {words} .\n")
            f.write("\n")
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("prep")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "."]
    vocab += [f"d{i}" for i in range(N_DOCS)] + WORDS
    (root / "tok").mkdir()
    (root / "tok" / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return root, write_corpus(root / "corpus.txt"), root / "tok"


def cli(cmd: str) -> int:
    """Runs `bertjax CMD` in this process (paths here hold no spaces)."""
    return main(cmd.split())


def prepare(setup, out, *extra):
    _, corpus, tok = setup
    cmd = f"prepare --input {corpus} --tokenizer {tok} --out {out} --quiet --max-seq-len 32"
    return cli(cmd + " --block-docs 10 --shard-size 100 " + " ".join(map(str, extra)))


def shard_bytes(d):
    return {p.name: p.read_bytes() for p in sorted(d.glob("shard-*.npy"))}


def doc_tags(ds, tok_offset=6):
    ids = ds.get_batch(np.arange(len(ds)))["input_ids"]
    return set(np.unique(ids[(ids >= tok_offset) & (ids < tok_offset + N_DOCS)]).tolist())


def test_prepare_end_to_end_and_seed(setup, tmp_path, capsys):
    _, corpus, tok = setup
    cmd = f"prepare --input {corpus} --tokenizer {tok} --out {tmp_path / 'a'} --seed 1"
    assert cli(cmd + " --max-seq-len 32 --block-docs 10 --shard-size 100") == 0
    assert "tokens/s" in capsys.readouterr().err  # the progress line
    ds = open_dataset(tmp_path / "a", verify_checksums=True)
    assert len(ds) > 300 and len(ds.manifest["shards"]) > 2
    b = ds.get_batch(np.arange(len(ds)))
    length = b["input_mask"].sum(1)
    assert (b["input_ids"][:, 0] == 2).all() and length.max() <= 32
    assert (b["input_ids"][np.arange(len(ds)), length - 1] == 3).all()
    assert 0.5 < b["next_sentence_labels"].mean() < 0.65
    assert ds.manifest["stats"]["documents"] == N_DOCS and ds.manifest["seed"] == 1
    assert (tmp_path / "a" / "tokenizer" / "vocab.txt").exists()
    assert prepare(setup, tmp_path / "b", "--seed", 1) == 0
    assert prepare(setup, tmp_path / "c", "--seed", 2) == 0
    assert shard_bytes(tmp_path / "a") == shard_bytes(tmp_path / "b")
    c = shard_bytes(tmp_path / "c")
    assert (
        c["shard-00000.input_ids.npy"] != shard_bytes(tmp_path / "a")["shard-00000.input_ids.npy"]
    )


PACK = pytest.mark.parametrize("pack", [(), ("--pack",)], ids=["unpacked", "packed"])


@PACK
def test_workers_give_the_same_dataset(setup, tmp_path, pack):
    assert prepare(setup, tmp_path / "w1", "--workers", 1, "--held-out", 30, *pack) == 0
    assert prepare(setup, tmp_path / "w2", "--workers", 2, "--held-out", 30, *pack) == 0
    one, two = shard_bytes(tmp_path / "w1"), shard_bytes(tmp_path / "w2")
    assert len(one) >= 8 and one == two
    assert shard_bytes(tmp_path / "w1" / "eval") == shard_bytes(tmp_path / "w2" / "eval")


@PACK
def test_parts_merged_equal_one_shot_and_held_out(setup, tmp_path, pack):
    assert prepare(setup, tmp_path / "one", "--held-out", 40, *pack) == 0
    parts = []
    for i in range(3):
        parts.append(tmp_path / f"p{i}")
        part = ("--shard-index", i, "--num-shards", 3, *pack)
        assert prepare(setup, parts[-1], "--held-out", 40, *part) == 0
    sizes = [len(open_dataset(p)) for p in parts]
    assert all(s > 0 for s in sizes) and not (tmp_path / "p1" / "eval").exists()
    assert cli(f"prepare merge {' '.join(map(str, parts))} --out {tmp_path / 'm'}") == 0
    one, merged = open_dataset(tmp_path / "one"), open_dataset(tmp_path / "m")  # verified
    assert len(merged) == sum(sizes) == len(one)
    assert shard_bytes(tmp_path / "one") == shard_bytes(tmp_path / "m")
    assert [s["sha256"] for s in one.manifest["shards"]] == [
        s["sha256"] for s in merged.manifest["shards"]
    ]
    assert shard_bytes(tmp_path / "one" / "eval") == shard_bytes(tmp_path / "m" / "eval")
    # held-out: exactly N instances, from documents that training never sees
    ev = open_dataset(tmp_path / "one" / "eval")
    assert len(ev) == 40 and ev.manifest["split"] == "eval"
    assert doc_tags(ev) and not doc_tags(ev) & doc_tags(one)
    # merge refuses an incomplete or inconsistent set of parts
    assert cli(f"prepare merge {parts[0]} {parts[2]} --out {tmp_path / 'm2'}") == 2
    assert cli(f"prepare merge {tmp_path / 'one'} --out {tmp_path / 'm3'}") == 2


def test_no_nsp(setup, tmp_path):
    assert prepare(setup, tmp_path / "n", "--no-nsp") == 0
    ds = open_dataset(tmp_path / "n")
    b = ds.get_batch(np.arange(len(ds)))
    assert ds.manifest["nsp"] is False
    assert (b["next_sentence_labels"] == 0).all() and (b["segment_ids"] == 0).all()
    assert np.mean(b["input_mask"].sum(1) == 32) > 0.9  # full-length segments


def test_killed_prepare_leaves_nothing_at_out(tmp_path):
    """SIGKILL mid-run: the shards were going to a hidden folder beside --out, so --out does
    not exist, and the same command may run again (the leftover is not in its way)."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "."] + WORDS
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    corpus = write_corpus(tmp_path / "big.txt", n_docs=20_000, seed=1)
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bertjax.cli",
            "prepare",
            "--input",
            str(corpus),
            "--tokenizer",
            str(tmp_path / "vocab.txt"),
            "--out",
            str(out),
            "--shard-size",
            "64",
            "--block-docs",
            "50",
            "--quiet",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".out.partial-*/shard-00003.*")) and (time.monotonic() < deadline):
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()  # killed while still working
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert list(tmp_path.glob(".out.partial-*/shard-*")) and not out.exists()
    outputs.check_folder(out, outputs.DATASET, overwrite=False)  # a rerun may write there


def bad_corpus_cases(tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n  \n")
    good = b"d1 w1 w2 .\nd1 w3 .\n"
    (tmp_path / "latin1.txt").write_bytes(good + b"d2 caf\xe9 w4 .\n")
    return {"empty": tmp_path / "empty.txt", "latin1": tmp_path / "latin1.txt"}


BAD_INPUT = [
    ("empty", "", "corpus is empty"),
    ("latin1", "", r"latin1.txt is not valid UTF-8: byte 0xe9 at byte offset 25"),
    ("good", "--max-seq-len 7", "between 8 and 4096"),
    ("good", "--max-seq-len 5000", "between 8 and 4096"),
    ("good", "--held-out 100000", "more instances than the whole corpus"),
    ("good", "--shard-index 3 --num-shards 3", "--shard-index 3"),
    ("good", "--pack --max-sequences-per-row 0", "--max-sequences-per-row 0 must be between 1"),
    ("good", "--pack --max-sequences-per-row 26", r"between 1 and 25 .*--max-seq-len 128"),
    ("good", "--max-sequences-per-row 2", "is a setting of --pack: add --pack"),
]


@pytest.mark.parametrize("case, extra, message", BAD_INPUT)
def test_bad_input(setup, tmp_path, capsys, case, extra, message):
    files = bad_corpus_cases(tmp_path) | {"good": setup[1]}
    out = tmp_path / "out"
    rc = cli(f"prepare --input {files[case]} --tokenizer {setup[2]} --out {out} --quiet {extra}")
    assert rc == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (out / "manifest.json").exists()
    assert not out.exists() or not any(out.iterdir())  # nothing half-written left behind


def test_bad_vocab_and_existing_dataset(setup, tmp_path, capsys):
    (tmp_path / "v.txt").write_text("[PAD]\n[UNK]\n[SEP]\n[MASK]\nw1\n")
    assert (
        cli(f"prepare --input {setup[1]} --tokenizer {tmp_path / 'v.txt'} --out {tmp_path}/o") == 2
    )
    assert "[CLS]" in capsys.readouterr().err
    assert prepare(setup, tmp_path / "d") == 0
    before = (tmp_path / "d" / "manifest.json").read_text()
    assert prepare(setup, tmp_path / "d") == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "d" / "manifest.json").read_text() == before
    assert prepare(setup, tmp_path / "d", "--overwrite", "--seed", 5) == 0
    assert json.loads((tmp_path / "d" / "manifest.json").read_text())["seed"] == 5


def test_errors_replace_counts(setup, tmp_path):
    path = bad_corpus_cases(tmp_path)["latin1"]
    corpus = TextCorpus([path], errors="replace")
    assert list(corpus) == [["d1 w1 w2 .", "d1 w3 .", "d2 caf\ufffd w4 ."]]
    assert corpus.replacements == 1
    cmd = f"prepare --input {path} --tokenizer {setup[2]} --out {tmp_path / 'r'} --quiet"
    assert cli(cmd + " --errors replace") == 0
    assert open_dataset(tmp_path / "r").manifest["stats"]["utf8_replacements"] == 1


def test_document_formats(tmp_path):
    assert split_sentences(
        'He said "Go." Then Mr. Smith left! Was it 3.5 p.m.? Yes. 東京。大阪'
    ) == ['He said "Go."', "Then Mr. Smith left!", "Was it 3.5 p.m.?", "Yes.", "東京。", "大阪"]
    (tmp_path / "lines.txt").write_text("One doc. Two sentences.\n\nSecond doc here.\n")
    assert list(TextCorpus([tmp_path / "lines.txt"], "docs-lines")) == [
        ["One doc.", "Two sentences."],
        ["Second doc here."],
    ]
    (tmp_path / "blocks.txt").write_text("A wrapped\nsentence. And more.\n\n\nB doc.\n")
    assert list(TextCorpus([tmp_path / "blocks.txt"], "docs-blocks")) == [
        ["A wrapped sentence.", "And more."],
        ["B doc."],
    ]
    (tmp_path / "bert.txt").write_text("s1\ns2\n\n\ns3\n")
    (tmp_path / "bert2.txt").write_text("s4\n")  # a new file starts a new document
    assert list(TextCorpus([tmp_path / "bert.txt", tmp_path / "bert2.txt"])) == [
        ["s1", "s2"],
        ["s3"],
        ["s4"],
    ]


def test_hf_dataset_local_json(setup, tmp_path, capsys):
    rng = random.Random(0)
    with open(tmp_path / "docs.jsonl", "w") as f:
        for d in range(40):
            body = " ".join(
                f"D{d} " + " ".join(rng.choice(WORDS) for _ in range(8)) + "."
                for _ in range(rng.randint(2, 8))
            )
            f.write(json.dumps({"id": d, "body": body}) + "\n")
    docs = list(HFCorpus(str(tmp_path / "docs.jsonl"), text_column="body"))
    assert len(docs) == 40 and all(s.endswith(".") for s in docs[0])
    cmd = f"prepare --hf-dataset {tmp_path / 'docs.jsonl'} --tokenizer {setup[2]} --quiet"
    assert cli(cmd + f" --text-column body --out {tmp_path / 'h'} --block-docs 10") == 0
    assert len(open_dataset(tmp_path / "h")) > 40
    assert cli(cmd + f" --out {tmp_path / 'h2'}") == 2
    assert "no column 'text'" in capsys.readouterr().err


def test_bench_prepare(setup, capsys):
    cmd = f"bench prepare --input {setup[1]} --tokenizer {setup[2]} --workers 1"
    assert cli(cmd + " --block-docs 20") == 0
    out = capsys.readouterr().out
    assert "raw tokenizer encode_batch" in out and "ratio to raw tokenizer" in out
