"""WordPiece (via `tokenizers`) and sentencepiece tokenizers behind one small interface.

`load_tokenizer(path)`: a BERT `vocab.txt`, a sentencepiece `.model`, or a directory of either;
the interface both classes offer is listed in docs/ARCHITECTURE.md "Data". Special tokens are
looked up in the vocabulary, never assumed to sit at fixed ids.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

from bertjax import outputs
from bertjax.errors import UserError

SPECIAL_TOKENS = {
    "pad_id": "[PAD]",
    "unk_id": "[UNK]",
    "cls_id": "[CLS]",
    "sep_id": "[SEP]",
    "mask_id": "[MASK]",
}
CONFIG_FILE = "tokenizer_config.json"
MAX_INPUT_CHARS_PER_WORD = 100  # as the original BERT: longer words become [UNK]


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class _Base:
    """What both tokenizers share: special ids, identity, saving."""

    kind: str
    lowercase: bool
    vocab_file: Path

    @property
    def special_ids(self) -> dict[str, int]:
        """`{"pad_id": .., "unk_id": .., "cls_id": .., "sep_id": .., "mask_id": ..}`."""
        return {k: getattr(self, k) for k in SPECIAL_TOKENS}

    @property
    def files(self) -> list[Path]:
        """The files that define this tokenizer (copied into datasets and HF exports)."""
        return [self.vocab_file]

    @property
    def identity(self) -> dict:
        """What makes two tokenizers the same: kind, lower-casing, vocabulary hash."""
        return {"kind": self.kind, "lowercase": self.lowercase, "vocab_sha256": self._vocab_sha256}

    def save(self, out_dir) -> Path:
        """Copies `files` into `out_dir` and writes `tokenizer_config.json` (HF-compatible)."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        for f in self.files:
            if (out_dir / f.name).resolve() != f.resolve():
                shutil.copyfile(f, out_dir / f.name)
        config = {
            "tokenizer_kind": self.kind,
            "do_lower_case": self.lowercase,
            **{tok.strip("[]").lower() + "_token": tok for tok in SPECIAL_TOKENS.values()},
        }
        if self.kind == "wordpiece":
            config["tokenizer_class"] = "BertTokenizer"
        (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=1) + "\n")
        return out_dir

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({str(self.vocab_file)!r}, vocab_size={self.vocab_size},"
            f" lowercase={self.lowercase})"
        )


class WordPieceTokenizer(_Base):
    """BERT WordPiece from a vocab.txt, tokenized by the `tokenizers` library.

    Same pipeline as the original BERT and HF `BertTokenizerFast`: clean text, split CJK
    characters, lower-case + strip accents when uncased, split on whitespace/punctuation,
    greedy longest-match WordPiece with the `##` prefix.
    """

    kind = "wordpiece"

    def __init__(self, vocab_file, lowercase: bool = True):
        from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers
        from tokenizers.models import WordPiece

        self.vocab_file = Path(vocab_file)
        self.lowercase = bool(lowercase)
        lines = self.vocab_file.read_text(encoding="utf-8").split("\n")
        if lines and lines[-1] == "":
            lines.pop()  # the final newline
        self._tokens = [t.rstrip("\r") for t in lines]
        vocab = {}
        for i, t in enumerate(self._tokens):
            if t in vocab:
                raise UserError(
                    f"{self.vocab_file} line {i + 1} repeats the token {t!r} "
                    f"(first on line {vocab[t] + 1})"
                )
            vocab[t] = i
        missing = [t for t in SPECIAL_TOKENS.values() if t not in vocab]
        if missing:
            raise UserError(
                f"{self.vocab_file} lacks the special token(s) {' '.join(missing)};"
                " a BERT vocab needs [PAD] [UNK] [CLS] [SEP] [MASK]"
            )
        for attr, tok in SPECIAL_TOKENS.items():
            setattr(self, attr, vocab[tok])
        self._vocab = vocab
        self.vocab_size = len(self._tokens)
        self._vocab_sha256 = _sha256(self.vocab_file)

        tok = Tokenizer(
            WordPiece(
                vocab,
                unk_token="[UNK]",
                continuing_subword_prefix="##",
                max_input_chars_per_word=MAX_INPUT_CHARS_PER_WORD,
            )
        )
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True,
            handle_chinese_chars=True,
            strip_accents=None,  # None: as lowercase
            lowercase=self.lowercase,
        )
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix="##")
        # HF BertTokenizerFast matches the specials in raw text ("[MASK]" -> mask id); so do we.
        tok.add_special_tokens(
            [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS.values()]
        )
        self._tok = tok

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without [CLS]/[SEP]."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """`encode` over many texts at once (parallel in Rust, no offsets kept)."""
        return [e.ids for e in self._tok.encode_batch_fast(list(texts), add_special_tokens=False)]

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """(`encode(text)`, each token's [start, end) character span in `text`); the
        `tokenizers` pipeline tracks the alignment through lower-casing and accent stripping."""
        encoding = self._tok.encode(text, add_special_tokens=False)
        return list(encoding.ids), [(int(s), int(e)) for s, e in encoding.offsets]

    def id_to_token(self, i: int) -> str:
        """The vocabulary entry of id `i`."""
        return self._tokens[i]

    def token_to_id(self, token: str) -> int | None:
        """The id of `token`, or None when it is not in the vocabulary."""
        return self._vocab.get(token)

    def continuation_mask(self) -> np.ndarray:
        """bool [vocab_size]: True for `##` pieces, which continue the previous word."""
        return np.array([t.startswith("##") and len(t) > 2 for t in self._tokens], bool)


class SentencePieceTokenizer(_Base):
    """A sentencepiece `.model`; [CLS] [SEP] [MASK] must be pieces of the model."""

    kind = "sentencepiece"

    def __init__(self, model_file, lowercase: bool = False):
        import sentencepiece as spm

        self.vocab_file = Path(model_file)
        self.lowercase = bool(lowercase)
        try:
            self._sp = spm.SentencePieceProcessor(model_file=str(self.vocab_file))
        except (RuntimeError, OSError) as e:
            raise UserError(f"{self.vocab_file} is not a sentencepiece model ({e})") from None
        sp = self._sp
        self.vocab_size = sp.get_piece_size()
        found = {k: self._piece_id(t) for k, t in SPECIAL_TOKENS.items()}
        # Models trained elsewhere (ALBERT, T5) name their pad/unk "<pad>"/"<unk>".
        if found["pad_id"] is None and sp.pad_id() >= 0:
            found["pad_id"] = sp.pad_id()
        if found["unk_id"] is None:
            found["unk_id"] = sp.unk_id()
        missing = [SPECIAL_TOKENS[k] for k, v in found.items() if v is None]
        if missing:
            raise UserError(
                f"{self.vocab_file} lacks the special piece(s) {' '.join(missing)};"
                " train it with user_defined_symbols=[CLS],[SEP],[MASK]"
            )
        for attr, i in found.items():
            setattr(self, attr, i)
        self._vocab_sha256 = _sha256(self.vocab_file)

    def _piece_id(self, piece: str) -> int | None:
        i = self._sp.piece_to_id(piece)
        return i if self._sp.id_to_piece(i) == piece else None

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without [CLS]/[SEP]."""
        return self._sp.encode(text.lower() if self.lowercase else text, out_type=int)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """`encode` over many texts at once."""
        texts = [t.lower() for t in texts] if self.lowercase else list(texts)
        return self._sp.encode(texts, out_type=int)

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """(`encode(text)`, each piece's [start, end) character span in `text`); a piece's
        span includes the space its `▁` stands for."""
        if self.lowercase:
            # str.lower can lengthen a character ("İ" -> "i̇"): map each lower-cased character
            # back to its source. Lower-casing in context (final sigma) keeps lengths.
            lowered = text.lower()
            source_of = np.repeat(np.arange(len(text)), [len(c.lower()) for c in text])
            assert len(source_of) == len(lowered)
        else:
            lowered, source_of = text, np.arange(len(text))
        source_of = np.append(source_of, len(text))
        try:
            out = self._sp.encode(lowered, out_type="offset_mapping")
        except ValueError:
            raise UserError(
                "character offsets of a sentencepiece tokenizer need a sentencepiece release "
                "whose encode offers out_type='offset_mapping' (0.2.3 does); upgrade it"
            ) from None
        spans = [
            (int(source_of[s]), int(source_of[e - 1]) + 1 if e > s else int(source_of[s]))
            for s, e in out["offsets"]
        ]
        return list(out["ids"]), spans

    def id_to_token(self, i: int) -> str:
        """The piece of id `i`."""
        return self._sp.id_to_piece(int(i))

    def token_to_id(self, token: str) -> int | None:
        """The id of piece `token`, or None when it is not in the model."""
        return self._piece_id(token)

    def continuation_mask(self) -> np.ndarray:
        """bool [vocab_size]: True for ordinary pieces that do not start a word (no `▁`)."""
        sp = self._sp
        return np.array(
            [
                not (
                    sp.id_to_piece(i).startswith("\u2581")
                    or sp.is_control(i)
                    or sp.is_unknown(i)
                    or sp.is_unused(i)
                    or sp.is_byte(i)
                    or i in self.special_ids.values()
                )
                for i in range(self.vocab_size)
            ],
            bool,
        )


def load_tokenizer(path, lowercase: bool | None = None):
    """Loads a tokenizer from a vocab.txt, a sentencepiece .model, or a directory of either.

    `lowercase=None` takes `do_lower_case` from the directory's tokenizer_config.json, else
    lower-cases WordPiece (the original BERT's default, uncased) and not sentencepiece.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"tokenizer {path} does not exist")
    config = {}
    if path.is_dir():
        if (path / CONFIG_FILE).exists():
            config = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
        models = sorted(path.glob("*.model"))
        if (path / "vocab.txt").exists() and config.get("tokenizer_kind") != "sentencepiece":
            path = path / "vocab.txt"
        elif len(models) == 1:
            path = models[0]
        else:
            raise UserError(
                f"tokenizer directory {path} holds neither vocab.txt nor exactly "
                f"one sentencepiece .model ({len(models)} found)"
            )
    if lowercase is None:
        lowercase = config.get("do_lower_case", path.suffix != ".model")
    if path.suffix == ".model":
        return SentencePieceTokenizer(path, lowercase=lowercase)
    return WordPieceTokenizer(path, lowercase=lowercase)


def train_wordpiece(
    lines,
    vocab_size: int,
    out_dir,
    lowercase: bool = True,
    min_frequency: int = 2,
    overwrite: bool = False,
) -> WordPieceTokenizer:
    """Learns a WordPiece vocabulary from an iterable of text lines; writes out_dir/vocab.txt.

    Reproducible: the same lines and arguments give a byte-identical vocab.txt on every run,
    in the order documented in `tokenizer_train.learn_vocab` (the specials [PAD]=0 [UNK]=1
    [CLS]=2 [SEP]=3 [MASK]=4, the characters, the `##` characters, then the merges).
    Refuses an `out_dir` that holds a tokenizer unless `overwrite`, and one that holds anything
    else (bertjax.outputs); `out_dir` changes only when training succeeded.
    """
    from bertjax.data import tokenizer_train as train

    out_dir = Path(out_dir)
    outputs.check_folder(out_dir, outputs.TOKENIZER, overwrite=overwrite)
    counts = train.count_words(lines, lowercase)
    tokens = train.learn_vocab(counts, vocab_size, SPECIAL_TOKENS.values(), min_frequency)
    with outputs.replacing_folder(out_dir) as tmp:
        (tmp / "vocab.txt").write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
        WordPieceTokenizer(tmp / "vocab.txt", lowercase=lowercase).save(tmp)
    return WordPieceTokenizer(out_dir / "vocab.txt", lowercase=lowercase)


def train_sentencepiece(
    lines,
    vocab_size: int,
    out_dir,
    lowercase: bool = False,
    model_type: str = "unigram",
    overwrite: bool = False,
) -> SentencePieceTokenizer:
    """Trains a sentencepiece model on text lines; writes out_dir/spm.model (+ spm.vocab).

    [PAD]=0 and [UNK]=1 are the model's pad/unk pieces; [CLS] [SEP] [MASK] are user-defined
    symbols (ids 2, 3, 4). Reproducible (byte-identical spm.model for the same lines and
    arguments); the same output rules as `train_wordpiece`.
    """
    from bertjax.data import tokenizer_train as train

    out_dir = Path(out_dir)
    outputs.check_folder(out_dir, outputs.TOKENIZER, overwrite=overwrite)
    lines = (line.lower() for line in lines) if lowercase else lines
    model = train.sentencepiece_model(lines, vocab_size, model_type)
    with outputs.replacing_folder(out_dir) as tmp:
        (tmp / "spm.model").write_bytes(model)
        train.write_sentencepiece_vocab(tmp / "spm.model")
        SentencePieceTokenizer(tmp / "spm.model", lowercase=lowercase).save(tmp)
    return SentencePieceTokenizer(out_dir / "spm.model", lowercase=lowercase)
