"""Tokenizers: WordPiece parity with HF BertTokenizerFast, sentencepiece, training, bad vocabs."""

import random

import numpy as np
import pytest

from bertjax.cli import main
from bertjax.data import load_tokenizer
from bertjax.data.tokenizer import train_sentencepiece, train_wordpiece
from bertjax.errors import UserError

WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "was",
    "for",
    "on",
    "that",
    "with",
    "by",
    "as",
    "at",
    "from",
    "his",
    "her",
    "it",
    "an",
    "were",
    "are",
    "which",
    "this",
    "be",
    "or",
    "has",
    "had",
    "also",
    "first",
    "one",
    "their",
    "its",
    "new",
    "after",
    "who",
    "they",
    "two",
    "time",
    "Paris",
    "Berlin",
    "London",
    "BERT",
    "JAX",
    "Flax",
    "transformer",
    "pretraining",
    "unbelievable",
    "internationalization",
    "tokenization",
    "café",
    "naïve",
    "Ångström",
    "Zürich",
    "résumé",
    "façade",
    "Straße",
    "piñata",
    "coöperate",
    "ﬁne",
]
# punctuation, digits, accents, CJK, emoji, RTL, control and zero-width characters, specials
EXTRAS = [
    "東京",
    "中文字符",
    "日本語のテキスト",
    "한국어",
    "😀",
    "🚀🚀",
    "👩\u200d💻",
    "¡Hola!",
    "¿Qué?",
    "3.14159",
    "1,000,000",
    "2024-01-31",
    "$42.00",
    "50%",
    "a+b=c",
    "x_y",
    "e-mail",
    "C++",
    "#hashtag",
    "@user",
    "ﬀ",
    "[MASK]",
    "[mask]",
    "[CLS]x",
    "«quoted»",
    "“curly”",
    "—",
    "…",
    "Ω≈ç√∫",
    "İstanbul",
    "ΑΒΓ",
    "Привет",
    "مرحبا",
    "שלום",
    "ｆｕｌｌｗｉｄｔｈ",
]
EXTRAS += ["e\u0301", "\u00e9\u0301", "\u200b", "\t", "\u00a0", "\x00", "ΑΒΓ αβγ", "x" * 150]
EXTRAS += ["antidisestablishmentarianism" * 4, "ab" * 60 + " ok"]  # longer than 100 chars


def generated_lines(n, seed):
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        parts = [
            rng.choice(WORDS if rng.random() < 0.75 else EXTRAS) for _ in range(rng.randint(1, 25))
        ]
        line = ""
        for p in parts:
            line += p + rng.choice([" ", " ", " ", ", ", ". ", "", "! ", "(", ") ", "'s ", "  "])
        lines.append(line.upper() if rng.random() < 0.1 else line)
    return lines


@pytest.fixture(scope="module")
def vocab_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    train = generated_lines(2000, seed=0)
    uncased = train_wordpiece(train, 600, root / "uncased", lowercase=True, min_frequency=1)
    cased = train_wordpiece(train, 600, root / "cased", lowercase=False, min_frequency=1)
    return uncased, cased


@pytest.mark.parametrize("lowercase", [True, False])
def test_wordpiece_parity_with_hf(vocab_dirs, lowercase):
    from transformers import BertTokenizerFast

    ours = vocab_dirs[0] if lowercase else vocab_dirs[1]
    assert ours.lowercase == lowercase
    # NB: transformers 5 ignores vocab_file= in the constructor; load the directory instead.
    hf = BertTokenizerFast.from_pretrained(str(ours.vocab_file.parent), do_lower_case=lowercase)
    lines = generated_lines(300, seed=1) + EXTRAS
    want = [hf(t, add_special_tokens=False)["input_ids"] for t in lines]
    got = [ours.encode(t) for t in lines]
    assert got == want
    assert ours.encode_batch(lines) == want
    # the comparison is not vacuous: real pieces, unknowns and continuations all occur
    flat = [i for ids in want for i in ids]
    assert len(set(flat)) > 200 and ours.unk_id in flat
    assert any(ours.id_to_token(i).startswith("##") for i in flat)


def test_uncased_and_cased_differ(vocab_dirs):
    uncased, cased = vocab_dirs
    assert uncased.encode("café PARIS") == uncased.encode("cafe paris")
    assert cased.encode("Paris") != cased.encode("paris")
    assert uncased.identity != cased.identity
    # load_tokenizer reads do_lower_case from the directory; an argument overrides it
    assert load_tokenizer(cased.vocab_file.parent).lowercase is False
    assert load_tokenizer(uncased.vocab_file.parent).lowercase is True
    assert load_tokenizer(uncased.vocab_file, lowercase=False).lowercase is False


def test_specials_are_looked_up_not_assumed(tmp_path):
    words = ["hello", "world", "##s"] + [f"[unused{i}]" for i in range(3)]
    tokens = ["[PAD]"] + words + ["[UNK]", "[MASK]", "x", "[SEP]", "[CLS]"]
    (tmp_path / "vocab.txt").write_text("\n".join(tokens) + "\n")
    tok = load_tokenizer(tmp_path)
    assert tok.special_ids == {"pad_id": 0, "unk_id": 7, "cls_id": 11, "sep_id": 10, "mask_id": 8}
    assert tok.vocab_size == 12 and tok.token_to_id("world") == 2
    assert tok.encode("Hello worlds zzz") == [1, 2, 3, 7]
    assert tok.continuation_mask().tolist() == [t.startswith("##") for t in tokens]


def test_vocab_without_specials_is_rejected(tmp_path):
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[SEP]\nhello\n")
    with pytest.raises(UserError, match=r"lacks the special token\(s\) \[CLS\] \[MASK\]"):
        load_tokenizer(tmp_path / "vocab.txt")
    with pytest.raises(UserError, match="does not exist"):
        load_tokenizer(tmp_path / "nope.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="neither vocab.txt"):
        load_tokenizer(tmp_path / "empty")


def test_sentencepiece(tmp_path):
    sp = train_sentencepiece(generated_lines(1500, seed=2), 300, tmp_path / "sp")
    assert sp.kind == "sentencepiece"
    assert sp.special_ids == {"pad_id": 0, "unk_id": 1, "cls_id": 2, "sep_id": 3, "mask_id": 4}
    again = load_tokenizer(tmp_path / "sp")
    assert again.identity == sp.identity and again.vocab_file.name == "spm.model"
    ids = sp.encode("the first transformer [MASK] of Paris")
    assert sp.mask_id in ids and sp.unk_id not in ids
    assert sp.encode_batch(["of the", "Paris"]) == [sp.encode("of the"), sp.encode("Paris")]
    cont = sp.continuation_mask()
    assert cont.shape == (300,) and not cont[:5].any() and cont.any()
    assert all(not sp.id_to_token(i).startswith("\u2581") for i in np.nonzero(cont)[0])


@pytest.mark.parametrize("kind", ["uncased", "cased", "sentencepiece"])
def test_encode_with_offsets_gives_the_ids_of_encode_and_their_characters(
    vocab_dirs, tmp_path, kind
):
    """encode_with_offsets' ids equal encode's on every generated line (accents, İ, CJK-free
    scripts, over-long words); its spans lie in the text, never go backwards, and a piece's
    characters, normalised as the tokenizer does, spell the piece (WordPiece, minus `##`)."""
    if kind == "sentencepiece":
        tok = train_sentencepiece(
            generated_lines(1500, seed=2), 300, tmp_path / "sp", lowercase=True
        )
    else:
        tok = vocab_dirs[0] if kind == "uncased" else vocab_dirs[1]
    checked = 0
    for text in generated_lines(200, seed=3) + EXTRAS:
        ids, spans = tok.encode_with_offsets(text)
        assert ids == tok.encode(text) and len(spans) == len(ids)
        starts = [s for s, _ in spans]
        assert starts == sorted(starts) and all(0 <= s <= e <= len(text) for s, e in spans)
        for i, (s, e) in zip(ids, spans):
            piece = tok.id_to_token(i)
            if i == tok.unk_id or not text[s:e].isascii():
                continue  # [UNK] and normalised non-ASCII characters spell nothing exactly
            special = i in tok.special_ids.values()  # matched in the raw text, never lowered
            chars = text[s:e].lower() if tok.lowercase and not special else text[s:e]
            if kind == "sentencepiece":
                assert chars.replace(" ", "\u2581").endswith(piece.lstrip("\u2581")), (piece, chars)
            else:
                assert chars == piece.removeprefix("##"), (piece, chars)
            checked += 1
    assert checked > 1000


def test_tokenizer_train_cli(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(generated_lines(1000, seed=3)) + "\n")
    train = f"tokenizer train --input {corpus} --out {tmp_path}"
    assert main(f"{train}/wp --kind wordpiece --vocab-size 400".split()) == 0
    head = (tmp_path / "wp" / "vocab.txt").read_text().split("\n")[:5]
    assert head == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert load_tokenizer(tmp_path / "wp").vocab_size == 400
    assert main(f"{train}/sp --kind sentencepiece --vocab-size 200".split()) == 0
    assert load_tokenizer(tmp_path / "sp").kind == "sentencepiece"
    (tmp_path / "empty.txt").write_text("")
    train = f"tokenizer train --input {tmp_path}/empty.txt --out {tmp_path}/x"
    assert main(f"{train} --kind wordpiece --vocab-size 100".split()) == 2
    assert "empty" in capsys.readouterr().err
