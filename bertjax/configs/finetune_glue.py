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

from bertjax.model_config import ATTENTION_IMPLS, COMPUTE_DTYPES, REMAT_POLICY_NAMES
from bertjax.train.config_schema import Bool, Float, Int, Rule, Schema, Str, Tuple
from bertjax.train.optim import OPTIMIZERS, SCHEDULES
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


# Every key above (dotted, as `--config.KEY`): its type, range and meaning, checked when
# `bertjax finetune` starts, before anything is read.
_MESH_AXIS = dict(low=-1, not_equal=(0,))  # an axis size, -1 = the remaining devices
_DROPOUT = dict(low=0, below=1, none=True)
SCHEMA = Schema(
    {
        "task": Str("the task (--task)"),
        "init": Str("pretraining workdir or HuggingFace folder (--init)"),
        "init_step": Int("checkpoint step of init (--init-step)", low=0, none=True),
        "data.dir": Str("data directory (--data)", none=True),
        "data.tokenizer": Str("tokenizer (--tokenizer)", none=True),
        "data.max_seq_len": Int("tokens per example (--max-seq-len)", low=3),
        "data.length_buckets": Int(
            "static batch lengths, 0 = all padded (--length-buckets)", low=0
        ),
        "model.compute_dtype": Str(
            "matmul/activation dtype, None = the checkpoint's", choices=COMPUTE_DTYPES, none=True
        ),
        "model.attention_impl": Str("attention kernel", choices=ATTENTION_IMPLS),
        "model.scan_layers": Bool("scanned layers, None = the checkpoint's", none=True),
        "model.remat_policy": Str(
            "what the backward pass recomputes, None = the checkpoint's",
            choices=REMAT_POLICY_NAMES,
            none=True,
        ),
        "model.hidden_dropout_prob": Float("dropout, None = the checkpoint's", **_DROPOUT),
        "model.attention_probs_dropout_prob": Float(
            "attention dropout, None = the checkpoint's", **_DROPOUT
        ),
        "train.global_batch_size": Int("global batch size (--batch-size)", low=1),
        "train.grad_accum_steps": Int("micro-batches per step (--grad-accum-steps)", low=1),
        "train.epochs": Int("passes over the training split (--epochs)", low=1),
        "train.seed": Int("seed (--seed)", low=0),
        "train.log_every": Int("steps between metrics lines (--log-every)", low=1),
        "train.compilation_cache_dir": Str("persistent compilation cache"),
        "optim.name": Str("optimizer", choices=tuple(OPTIMIZERS)),
        "optim.learning_rates": Tuple(
            "peak learning rates (--lr, --lr-sweep)", item=Float("a learning rate", above=0)
        ),
        "optim.warmup_fraction": Float(
            "fraction of the steps warming up (--warmup)", low=0, high=1
        ),
        "optim.schedule": Str("decay after warm-up", choices=tuple(SCHEDULES)),
        "optim.end_lr": Float("learning rate at the last step", low=0),
        "optim.power": Float("polynomial schedule's exponent", above=0),
        "optim.b1": Float("Adam beta1", low=0, below=1),
        "optim.b2": Float("Adam beta2", low=0, below=1),
        "optim.eps": Float("Adam epsilon", above=0),
        "optim.weight_decay": Float("decoupled weight decay (--weight-decay)", low=0),
        "optim.clip_norm": Float("global-norm clipping, 0 = off", low=0),
        "mesh.data": Int("data-parallel axis (--mesh-data)", **_MESH_AXIS),
        "mesh.fsdp": Int("fully sharded axis (--mesh-fsdp)", **_MESH_AXIS),
        "mesh.tensor": Int("tensor-parallel axis (--mesh-tensor)", **_MESH_AXIS),
        "logical_axis_rules": Tuple("logical axis -> mesh axes, first match wins"),
    },
    rules=(
        Rule(
            ("optim.learning_rates",),
            lambda rates: len(rates) == len(set(rates)) > 0,
            "optim.learning_rates must list at least one rate, none twice",
        ),
        Rule(
            ("mesh.data", "mesh.fsdp", "mesh.tensor"),
            lambda *axes: axes.count(-1) <= 1,
            "only one mesh axis may be -1",
        ),
    ),
    source="bertjax/configs/finetune_glue.py",
)
