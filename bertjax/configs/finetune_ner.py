r"""Named-entity recognition (`conll2003`, or `ner`: any CoNLL-format set with its own labels):
BertForTokenClassification on each word's first WordPiece, scored with conlleval. The BERT
paper's NER recipe (section 5.3: a case-preserving WordPiece model, the first sub-token's
representation into a token-level classifier, no CRF) names no NER-specific values; these are
from its appendix A.3 ranges (batch 16 or 32; lr 5e-5, 3e-5 or 2e-5; 2, 3 or 4 epochs) on
finetune_glue's sections (AdamW, 10% warm-up, linear decay, clipping at 1).

    bertjax finetune --task conll2003 --init bert-base-cased-ours --data conll2003/ \
        --workdir runs/ner [--lr-sweep] [--config.KEY=VALUE ...]
    bertjax finetune --task ner --init MODEL --data my_ner/ --workdir runs/my_ner \
        [--labels O,B-X,I-X,...] [--tag-scheme iob2]

(`--config finetune_ner` is the default for both.) `data.dir` holds the train, validation and
(optional) test files: eng.train / eng.testa / eng.testb (CoNLL-2003's names) or train.txt /
valid.txt (or dev.txt) / test.txt; without it, `conll2003` reads the `datasets` hub's
eriktks/conll2003. `--lr-sweep` runs the three A.3 rates and keeps the best dev F1.
"""

from ml_collections.config_dict import placeholder

from bertjax.configs import finetune_glue
from bertjax.train.config_schema import Int, Schema, Str


def get_config():
    """The config: finetune_glue's sections with the NER recipe, plus `ner`."""
    config = finetune_glue.get_config()
    config.task = "conll2003"  # conll2003 (its nine labels) or ner (a set's own labels)
    config.data.max_seq_len = 128  # pieces per window: [CLS] sentence pieces [SEP]
    config.train.global_batch_size = 32
    config.train.epochs = 3
    config.train.log_every = 100
    config.optim.learning_rates = (5e-5,)
    config.ner = dict(
        # --task ner: the label list, comma-separated ("O,B-PER,I-PER,..."; a label's id is its
        # position); "" = O, then B- and I- of each type of the training file, sorted.
        # --task conll2003 always has CoNLL-2003's nine labels.
        labels="",
        scheme="auto",  # the files' tags: iob1 | iob2 (checked) | auto (read as they are)
        doc_stride=placeholder(int),  # pieces between a long sentence's windows; None = half
        encoding="utf-8",  # of the CoNLL files (CoNLL-2002's Spanish and Dutch: latin-1)
    )
    return config


# finetune_glue's keys and the `ner` section's: type, range and meaning.
SCHEMA = Schema(
    finetune_glue.SCHEMA.keys
    | {
        "ner.labels": Str(
            "the label list, comma-separated; empty = the training file's (--labels)"
        ),
        "ner.scheme": Str("the files' tags (--tag-scheme)", choices=("auto", "iob1", "iob2")),
        "ner.doc_stride": Int(
            "pieces between a long sentence's windows, None = half (--doc-stride)", low=1, none=True
        ),
        "ner.encoding": Str("the CoNLL files' encoding"),
    },
    rules=finetune_glue.SCHEMA.rules,
    source="bertjax/configs/finetune_ner.py",
)
