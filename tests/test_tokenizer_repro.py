"""Reproducible tokenizer training: byte-identical files across processes, HF parity of the
WordPiece algorithm, and `tokenizer train` never writing over a tokenizer by accident."""

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_tokenizer import generated_lines

from bertjax.cli import main
from bertjax.data import load_tokenizer
from bertjax.data.demo_corpus import build_demo_corpus
from bertjax.data.tokenizer import SPECIAL_TOKENS
from bertjax.data.tokenizer_train import PREFIX, count_words, learn_vocab

REPO = Path(__file__).resolve().parents[1]


def tie_lines() -> list[str]:
    """Text where every pair count ties: each 3-letter word over 12 letters occurs once, so
    all 288 first pairs (x, ##y) and (##y, ##z) occur 12 times, and later merges tie too."""
    letters = "abcdefghijkl"
    words = ["".join(w) for w in itertools.product(letters, repeat=3)]
    return [" ".join(words[i : i + 16]) for i in range(0, len(words), 16)]


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> dict[str, Path]:
    """A slice of the demo corpus (real prose) and the all-ties corpus, as text files."""
    root = tmp_path_factory.mktemp("corpora")
    demo = build_demo_corpus(root / "demo", max_documents=400, num_files=1)["paths"][0]
    ties = root / "ties.txt"
    ties.write_text("\n".join(tie_lines()) + "\n", encoding="utf-8")
    return {"demo": Path(demo), "ties": ties}


# One process trains every tokenizer of the test; two such processes must agree byte for byte.
_TRAIN_ALL = """
import sys
from bertjax.cli import main
out, demo, ties = sys.argv[1:]
for name, corpus, kind, size in [("demo-wp", demo, "wordpiece", 3000),
                                 ("ties-wp", ties, "wordpiece", 300),
                                 ("demo-sp", demo, "sentencepiece", 1500),
                                 ("ties-sp", ties, "sentencepiece", 60)]:
    flags = ["--min-frequency", "1"] if name == "ties-wp" else []
    argv = ["tokenizer", "train", "--input", corpus, "--kind", kind,
            "--vocab-size", str(size), "--out", f"{out}/{name}", *flags]
    assert main(argv) == 0, name
"""


def test_training_is_byte_identical_across_processes(corpora, tmp_path):
    """Two processes with different hash seeds train WordPiece and sentencepiece on real
    text and on text made of ties; every output file is byte-identical (each process writes
    its own --out, as two machines would). Failed before: HF's trainer listed the vocabulary
    in a new order every run, chose other tokens among ties (the all-ties vocab differed),
    and sentencepiece stored its --out path inside spm.model."""
    outs = []
    for seed in ("1", "2"):
        out = tmp_path / f"run{seed}"
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(REPO)}
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                _TRAIN_ALL,
                str(out),
                str(corpora["demo"]),
                str(corpora["ties"]),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        outs.append(out)
    files = sorted(p.relative_to(outs[0]) for p in outs[0].rglob("*") if p.is_file())
    assert len(files) == 4 * 2 + 2 * 1  # config + vocab.txt, or config + spm.model + spm.vocab
    differ = [str(f) for f in files if (outs[0] / f).read_bytes() != (outs[1] / f).read_bytes()]
    assert differ == []
    # The outputs are real tokenizers of the requested sizes, with specials at 0-4.
    demo_wp = load_tokenizer(outs[0] / "demo-wp")
    assert demo_wp.vocab_size == 3000
    assert [demo_wp.id_to_token(i) for i in range(5)] == list(SPECIAL_TOKENS.values())
    assert demo_wp.encode("the function returns a list") != []
    assert load_tokenizer(outs[0] / "ties-wp").vocab_size == 300
    assert load_tokenizer(outs[0] / "demo-sp").vocab_size == 1500


def test_vocab_order_is_the_documented_one():
    """vocab.txt is: specials, characters by code point, ## characters by code point, then
    merges by count with ties to the smaller (left id, right id). New: HF's trainer gave
    no defined order."""
    vocab = learn_vocab({"ab": 3, "ba": 3, "c": 1}, 100, ["[X]"], min_frequency=1)
    chars = ["[X]", "a", "b", "c", "##a", "##b"]
    # (a, ##b) and (b, ##a) both occur 3 times: ids (1, 5) < (2, 4), so "ab" is merged first.
    assert vocab == chars + ["ab", "ba"]
    assert learn_vocab({"ab": 3, "ba": 4}, 100, ["[X]"], 1)[5:] == ["ba", "ab"]
    # min_frequency stops the merges; vocab_size too, but never drops characters.
    assert learn_vocab({"ab": 1, "ba": 4}, 100, ["[X]"], 2) == chars[:3] + chars[4:] + ["ba"]
    assert learn_vocab({"ab": 3, "ba": 4}, 2, ["[X]"], 1) == chars[:3] + chars[4:]


@pytest.mark.parametrize("corpus", ["generated", "ties"])
def test_same_merges_as_hf_with_pinned_ids(corpus):
    """With HF's trainer given our ids for every character piece (as leading special tokens),
    it learns exactly our vocabulary: our WordPiece trainer is HF's algorithm (word counts
    from the same normalizer and pre-tokenizer on text with accents, CJK, emoji, control
    characters and 100+ character words; the same merges and tie rule), minus the random
    numbering."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordPiece
    from tokenizers.trainers import WordPieceTrainer

    lines = generated_lines(1500, seed=5) if corpus == "generated" else tie_lines()
    size, min_frequency = (650, 2) if corpus == "generated" else (300, 1)
    counts = count_words(lines, lowercase=True)
    ours = learn_vocab(counts, size, SPECIAL_TOKENS.values(), min_frequency)

    chars = sorted({c for w in counts for c in w})
    inner = sorted({c for w in counts for c in w[1:]})
    pinned = [*SPECIAL_TOKENS.values(), *chars, *(PREFIX + c for c in inner)]
    hf = Tokenizer(WordPiece(unk_token="[UNK]"))
    hf.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )
    hf.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = WordPieceTrainer(
        vocab_size=size,
        min_frequency=min_frequency,
        special_tokens=pinned,
        continuing_subword_prefix=PREFIX,
        show_progress=False,
    )
    hf.train_from_iterator(lines, trainer)
    vocab = hf.get_vocab()
    assert sorted(vocab, key=vocab.__getitem__) == ours
    assert len(ours) == size and len(ours) > len(pinned) + 100  # many merges compared


def test_tokenizer_train_refuses_to_overwrite(corpora, tmp_path, capsys):
    """An --out holding a tokenizer is one clear error naming the file (exit 2, files
    untouched); --overwrite replaces it, removing the other kind's files; a failed training
    leaves --out as it was and no temporary directory; a file as --out is refused. Failed
    before: a second run silently replaced vocab.txt."""

    def train(kind, size, out=tmp_path / "t", *flags):
        argv = ["tokenizer", "train", "--input", str(corpora["ties"]), "--out", str(out)]
        return main([*argv, "--kind", kind, "--vocab-size", str(size), *flags])

    assert train("wordpiece", 200) == 0
    before = (tmp_path / "t" / "vocab.txt").read_bytes()
    assert train("wordpiece", 250) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 't'} already holds a tokenizer" in err and "--overwrite" in err
    assert (tmp_path / "t" / "vocab.txt").read_bytes() == before

    assert train("sentencepiece", 60, tmp_path / "t", "--overwrite") == 0
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == [
        "spm.model",
        "spm.vocab",
        "tokenizer_config.json",
    ]
    assert load_tokenizer(tmp_path / "t").kind == "sentencepiece"
    model = (tmp_path / "t" / "spm.model").read_bytes()
    # Too large a vocabulary for this corpus: sentencepiece fails, nothing changes.
    assert train("sentencepiece", 100_000, tmp_path / "t", "--overwrite") == 2
    assert "sentencepiece training failed" in capsys.readouterr().err
    assert (tmp_path / "t" / "spm.model").read_bytes() == model
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]
    # A file as --out is refused by name.
    (tmp_path / "notes.txt").write_text("mine")
    assert train("wordpiece", 200, tmp_path / "notes.txt") == 2
    assert "notes.txt exists and is not a directory" in capsys.readouterr().err
