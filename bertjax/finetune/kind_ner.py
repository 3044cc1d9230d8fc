"""The NER task kind: token classification for the shared fine-tuning loop (train.py):
CoNLL-format files (or the hub's conll2003), each word's label on its first piece with
max-context windows over long sentences, BertForTokenClassification, predictions decoded back
to words, conlleval's entity-level scores, CoNLL-format prediction files and an export that
transformers' BertForTokenClassification loads.

`conll2003` is CoNLL-2003 with its nine labels; `ner` is any CoNLL-format set, its label list
from the config (`ner.labels`) or, by default, from the types its training file holds.
"""

import dataclasses
from pathlib import Path

import numpy as np

from bertjax.errors import UserError
from bertjax.finetune import batches, conll_data, conlleval, heads, token_features, token_head

DEFAULT_CONFIG = "finetune_ner"
TASKS = ("conll2003", "ner")
TRAIN_EXAMPLES = {"conll2003": 14_041}  # sentences of eng.train
FLAGS = {"labels": "--labels", "scheme": "--tag-scheme", "doc_stride": "--doc-stride",
         "encoding": "--config.ner.encoding"}  # the `ner` section's keys  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Sentences:
    """What decoding and scoring a split's rows need: its sentences and their windows."""

    sentences: list  # conll_data.Sentence, in the file's order
    features: token_features.TokenFeatures  # the split's rows, in order


def task_names() -> tuple[str, ...]:
    """conll2003 and ner."""
    return TASKS


def canonical_name(name: str) -> str | None:
    """ "conll2003" for its spellings ("CoNLL-2003", "conll03"), "ner", else None."""
    key = name.lower().replace("-", "").replace("_", "")
    return {"conll2003": "conll2003", "conll03": "conll2003", "ner": "ner"}.get(key)


def make(cfg, name: str) -> "NerKind":
    """The NER kind of task `name` for the run's config `cfg`."""
    return NerKind(cfg, name)


def configured_labels(cfg, name: str) -> tuple[str, ...] | None:
    """The label list the config gives (CoNLL-2003's for conll2003), None when `ner` takes
    its training file's types; a UserError names the flag at fault."""
    text = cfg.ner.labels.strip()
    if name == "conll2003":
        if text:
            raise UserError(
                f"--labels {text!r} applies to --task ner; --task conll2003 has "
                "CoNLL-2003's labels (" + ",".join(conll_data.CONLL2003_LABELS) + ")"
            )
        return conll_data.CONLL2003_LABELS
    if not text:
        return None
    return conll_data.check_label_list([t.strip() for t in text.split(",")], "--labels")


def check_config(cfg, name: str) -> None:
    """Raises a UserError naming the flag when an NER setting cannot work."""
    if "ner" not in cfg:
        raise UserError(
            f"--task {name} needs the config key(s) "
            f"{', '.join('ner.' + k for k in FLAGS)}: use --config finetune_ner "
            "(the default for NER tasks) or a config derived from it"
        )
    if cfg.ner.scheme not in conll_data.SCHEMES:
        raise UserError(
            f"--tag-scheme {cfg.ner.scheme!r} is not one of {', '.join(conll_data.SCHEMES)}"
        )
    try:
        "".encode(cfg.ner.encoding)
    except LookupError:
        raise UserError(
            f"--config.ner.encoding={cfg.ner.encoding!r} is not a text encoding Python knows"
        ) from None
    configured_labels(cfg, name)
    token_features.check_window(cfg.data.max_seq_len, cfg.ner.doc_stride)


class NerKind:
    """CoNLL-2003 (`conll2003`) or another CoNLL-format set (`ner`) of a run's config (see
    kinds.TaskKind)."""

    exports_model = True
    token_outputs = True  # logits [n, max_seq_len, num_labels]
    dev_splits = ("validation",)
    output_splits = ("validation", "test")  # each with its CoNLL file and conlleval report
    main_metric = "f1"
    min_seq_len = 3  # [CLS] a piece [SEP]

    def __init__(self, cfg, name: str):
        check_config(cfg, name)
        self.cfg, self.name = cfg, name
        self.train_examples = TRAIN_EXAMPLES.get(name)
        self.labels = configured_labels(cfg, name)  # None until the training file is read
        self.scheme = None if cfg.ner.scheme == "auto" else cfg.ner.scheme

    def load_examples(self) -> dict[str, list]:
        """split -> validated Sentences of the files in cfg.data (or, for conll2003 without
        one, the hub's); fixes the label list (and the detected tag scheme)."""
        ner = self.cfg.ner
        if self.cfg.data.dir is None and self.name == "ner":
            raise UserError(
                "--task ner reads a directory of CoNLL-format files: pass --data "
                "DIR (train.txt, valid.txt, test.txt or eng.train, eng.testa, "
                "eng.testb)"
            )
        if self.cfg.data.dir is None:
            data = conll_data.load_conll_hub(conll_data.HUB_NAME, ner.scheme)
            if data.labels != conll_data.CONLL2003_LABELS:
                raise UserError(
                    f"{conll_data.HUB_NAME} names its tags "
                    f"{', '.join(data.labels)}, not CoNLL-2003's nine"
                )
        else:
            data = conll_data.load_conll_dir(
                self.cfg.data.dir, self.labels, ner.scheme, ner.encoding
            )
        self.labels, self.scheme = data.labels, data.scheme
        return data.splits

    def encode(self, examples: dict, tokenizer) -> dict[str, batches.Split]:
        """split -> Split of the sentences' windows, each word's label id on its first piece;
        every split keeps what decoding needs."""
        splits = {}
        for name, sentences in examples.items():
            features = token_features.build_features(
                [s.words for s in sentences],
                tokenizer,
                conll_data.tag_ids(sentences, self.labels),
                self.cfg.data.max_seq_len,
                self.cfg.ner.doc_stride,
            )
            splits[name] = batches.Split(
                name,
                features.model_inputs(),
                features.sentence_index.astype(np.int64),
                Sentences(sentences, features),
            )
        return splits

    def head(self, model_cfg):
        """BertForTokenClassification over the label list."""
        if self.labels is None:
            raise UserError(
                "--task ner takes its label list from its training file; to build "
                "the head without data, give the list (--labels O,B-X,I-X,..., "
                "config key ner.labels) or take --task conll2003's"
            )
        return token_head.head(model_cfg, self.labels)

    def synthetic_batch(
        self, batch_size: int, seq_len: int, vocab_size: int, seed: int = 0
    ) -> dict:
        """Full-length rows, random label ids on a random two thirds of the positions
        between [CLS] and [SEP] (as words' first pieces), weight 1 there."""
        batch = batches.synthetic_inputs(batch_size, seq_len, vocab_size, seed)
        batch["segment_ids"] = np.zeros_like(batch["segment_ids"])  # one sentence per row
        rng = np.random.default_rng(seed)
        num_labels = len(self.labels or conll_data.CONLL2003_LABELS)
        batch["label_ids"] = rng.integers(0, num_labels, (batch_size, seq_len)).astype(np.int32)
        weights = rng.random((batch_size, seq_len)) < 2 / 3
        weights[:, 0] = weights[:, -1] = False
        batch["label_weights"] = weights.astype(np.float32)
        return batch

    def decode(self, split: batches.Split, outputs) -> list[tuple[str, ...]]:
        """Each sentence's predicted tags, one per word (the argmax at its first piece)."""
        return token_features.decode(split.source.features, outputs, self.labels)

    def metrics(self, split: batches.Split, outputs, predictions) -> dict:
        """conlleval's precision, recall, f1 (entities) and accuracy (tags), overall and per
        entity type (`f1_PER`, ...), in percent; the mean cross-entropy of the labelled
        pieces; the numbers of sentences and rows."""
        from bertjax.finetune.metrics import mean_cross_entropy

        gold = [s.tags for s in split.source.sentences]
        scores = conlleval.evaluate(gold, predictions)
        labelled = split.arrays["label_weights"] > 0
        out = {k: scores[k] for k in ("precision", "recall", "f1", "accuracy")}
        for kind, per in scores["per_type"].items():
            out |= {f"{k}_{kind}": per[k] for k in ("precision", "recall", "f1")}
        loss = mean_cross_entropy(outputs[labelled], split.arrays["label_ids"][labelled])
        return {**out, "loss": loss, "examples": len(gold), "features": len(split)}

    def write_predictions(self, out_dir: Path, split: batches.Split, predictions) -> list[Path]:
        """`{split}.conll`: `word gold predicted` per line, a blank line after each sentence
        (what `conlleval < FILE` reads), and `{split}_conlleval.txt`, the report conlleval
        prints for it."""
        sentences = split.source.sentences
        gold = [s.tags for s in sentences]
        path = conlleval.write_conll(
            Path(out_dir) / f"{split.name}.conll", [s.words for s in sentences], gold, predictions
        )
        report = Path(out_dir) / f"{split.name}_conlleval.txt"
        report.write_text(conlleval.format_report(conlleval.evaluate(gold, predictions)))
        return [path, report]

    def checkpoint_info(self) -> dict:
        """What the checkpoint records of the task beside the model."""
        return {
            "task": self.name,
            "labels": list(self.labels or ()),
            "scheme": self.scheme,
            **{k: v for k, v in self.cfg.ner.to_dict().items() if k != "labels"},
        }

    def export(self, out: Path, params, model_cfg, tokenizer) -> None:
        """`out`: a folder transformers.BertForTokenClassification loads, config.json naming
        the labels (id2label / label2id)."""
        heads.export_folder(out, params, model_cfg, tokenizer, token_head.hf_spec(self.labels))
