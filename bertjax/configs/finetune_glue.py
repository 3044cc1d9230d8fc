r"""GLUE fine-tuning, the BERT paper's recipe (appendix A.3): batch 32, 3 epochs, AdamW with
10% linear warm-up then linear decay, the best of lr 2e-5 / 3e-5 / 5e-5 on dev.

    bertjax finetune --config finetune_glue --task sst2 --init bert-base-ours \
        --data glue/SST-2 --workdir runs/sst2 [--config.KEY=VALUE ...]

The sections are pretraining's (configs/base.py): `data`, `model`, `train`, `optim`, `mesh`,
`logical_axis_rules`. Flags of `bertjax finetune` are shorthands for keys (`--lr`,
`--lr-sweep`, `--epochs`, `--batch-size`, `--max-seq-len`, ...: `bertjax finetune --help`);
`--config.KEY=VALUE` sets any key; the flags win where both are given.
"""

import ml_collections
from ml_collections.config_dict import placeholder

from bertjax.train.sharding import DEFAULT_LOGICAL_AXIS_RULES

PAPER_LEARNING_RATES = (2e-5, 3e-5, 5e-5)  # BERT paper, section A.3 (batch 32, 3 epochs)


def get_config():
    """The config: the paper's GLUE recipe."""
    config = ml_collections.ConfigDict()
    config.task = ""  # cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte or wnli (--task)
    config.init = ""  # pretraining workdir or HuggingFace BERT folder (--init)
    config.init_step = placeholder(int)  # checkpoint step of `init`; None = the newest

    config.data = dict(
        dir=placeholder(str),  # GLUE tsv / JSONL directory; None = `datasets` nyu-mll/glue
        tokenizer=placeholder(str),  # vocab.txt / sentencepiece model; None = the model's own
        max_seq_len=128,  # tokens per example, [CLS] and [SEP]s included
        # Static batch lengths (multiples of 8) chosen from the training rows' lengths: each
        # batch is cut to the smallest that holds its rows, so XLA compiles a few shapes and
        # short sentences skip most of the padding; 0 = every batch padded to max_seq_len.
        length_buckets=4,
    )

    # How to compute the model `init` holds; None = as the checkpoint (or HF folder) says.
    config.model = dict(
        compute_dtype=placeholder(str),  # float32 | bfloat16
        attention_impl="auto",  # xla | cudnn | splash | auto (the fastest kernel that runs here)
        scan_layers=placeholder(bool),  # nn.scan over the layers
        remat_policy=placeholder(str),  # what the backward pass recomputes: docs/TRAINING.md
        hidden_dropout_prob=placeholder(float),
        attention_probs_dropout_prob=placeholder(float),
    )

    config.train = dict(
        global_batch_size=32,  # examples per step over all devices and processes
        grad_accum_steps=1,  # micro-batches per step
        epochs=3,  # passes over the training split
        seed=0,  # head initialisation, data order and dropout
        log_every=50,  # steps between metrics lines
        # JAX's persistent compilation cache: "auto" = ~/.cache/bertjax/jax_cache
        # ($XDG_CACHE_HOME), or WORKDIR/jax_cache with several processes; "" = off; or a folder
        compilation_cache_dir="auto",
    )

    # BERT's AdamWeightDecay, clipping at 1, linear decay; one run per peak learning rate.
    config.optim = dict(
        name="adamw",  # the fine-tuning optimizer of google-research/bert
        learning_rates=(2e-5,),  # peak rates; more than one: a sweep, the best on dev wins
        warmup_fraction=0.1,  # fraction of the steps with linear warm-up from 0
        schedule="linear",  # decay after warm-up to end_lr
        end_lr=0.0,  # learning rate at the last step
        power=1.0,  # exponent of a "polynomial" schedule
        b1=0.9,  # Adam beta1
        b2=0.999,  # Adam beta2
        eps=1e-6,  # Adam epsilon (BERT's)
        weight_decay=0.01,  # decoupled, not on LayerNorm parameters or biases
        clip_norm=1.0,  # global gradient-norm clipping, as google-research/bert; 0 = off
    )

    config.mesh = dict(
        data=-1,  # replicated parameters, split batch; -1 = the remaining devices
        fsdp=1,  # split batch and parameters
        tensor=1,  # split heads, MLP and vocabulary dimensions
    )
    # Logical axis -> mesh axes, first match wins (bertjax/train/sharding.py explains them).
    config.logical_axis_rules = DEFAULT_LOGICAL_AXIS_RULES
    return config
