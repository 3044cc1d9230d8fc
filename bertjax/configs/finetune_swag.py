r"""SWAG multiple choice (`swag`): BertForMultipleChoice, one score per ending from the pooled
output of `[CLS] sent1 [SEP] sent2 ending [SEP]`, a softmax over the four. The BERT paper's
SWAG recipe (section 4.4): 3 epochs, learning rate 2e-5, batch 16; finetune_glue's sections
otherwise (AdamW, 10% warm-up, linear decay, clipping at 1).

    bertjax finetune --task swag --init bert-base-ours --data swag/ --workdir runs/swag

(`--config finetune_swag` is the default for SWAG.) `data.dir` holds the official train.csv,
val.csv and (optional, unlabelled) test.csv; without it the `datasets` hub's allenai/swag
(regular) is read.
"""

from bertjax.configs import finetune_glue
from bertjax.train.config_schema import Schema


def get_config():
    """The config: the paper's SWAG recipe on finetune_glue's sections."""
    config = finetune_glue.get_config()
    config.task = "swag"
    config.data.max_seq_len = 128  # tokens per choice; SWAG's longest is about 100
    config.train.global_batch_size = 16  # examples (of 4 choices each) per step
    config.train.epochs = 3
    config.train.log_every = 100
    config.optim.learning_rates = (2e-5,)
    return config


# finetune_glue's keys: type, range and meaning.
SCHEMA = Schema(
    finetune_glue.SCHEMA.keys | {},
    rules=finetune_glue.SCHEMA.rules,
    source="bertjax/configs/finetune_swag.py",
)
