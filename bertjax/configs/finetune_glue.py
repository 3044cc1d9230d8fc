r"""GLUE fine-tuning, the BERT paper's recipe (appendix A.3): batch 32, 3 epochs, AdamW with
10% linear warm-up then linear decay, the best of lr 2e-5 / 3e-5 / 5e-5 on dev.

    bertjax finetune --config finetune_glue --task sst2 --init bert-base-ours \
        --data glue/SST-2 --workdir runs/sst2 [--config.KEY=VALUE ...]

Every field has a flag of `bertjax finetune` as a shorthand (`--lr`, `--lr-sweep`, `--epochs`,
`--batch-size`, `--max-seq-len`, ...: see `bertjax finetune --help`); `--config.KEY=VALUE`
sets any key, the flags win where both are given.
"""

import ml_collections

from bertjax.train.config_schema import Float, Int, Rule, Schema, Str, Tuple
from bertjax.train.optim import OPTIMIZERS, SCHEDULES

PAPER_LEARNING_RATES = (2e-5, 3e-5, 5e-5)  # BERT paper, section A.3 (batch 32, 3 epochs)


def get_config():
    """The config: the paper's GLUE recipe."""
    config = ml_collections.ConfigDict()
    config.task = ""  # cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte or wnli (--task)
    config.init = ""  # pretraining workdir or HuggingFace BERT folder (--init)
    config.init_step = None  # checkpoint step of `init`; None = the newest (--init-step)
    config.data = None  # GLUE tsv / JSONL directory; None = `datasets` nyu-mll/glue (--data)
    config.tokenizer = None  # vocab.txt / sentencepiece model; None = the model's own
    config.max_seq_len = 128  # tokens per example, [CLS] and [SEP]s included (--max-seq-len)
    # Static batch lengths (multiples of 8) chosen from the training rows' lengths: each batch
    # is cut to the smallest that holds its rows, so XLA compiles a few shapes and short
    # sentences skip most of the padding; 0 = every batch padded to max_seq_len
    # (--length-buckets)
    config.length_buckets = 4
    config.batch_size = 32  # global, over all devices and processes (--batch-size)
    config.grad_accum_steps = 1  # micro-batches per step (--grad-accum-steps)
    config.epochs = 3  # passes over the training split (--epochs)
    config.learning_rates = (2e-5,)  # more than one: a sweep, best on dev wins (--lr, --lr-sweep)
    config.warmup = 0.1  # fraction of the steps with linear warm-up (--warmup)
    config.weight_decay = 0.01  # decoupled, not on LayerNorm or biases (--weight-decay)
    config.seed = 0  # head initialisation, data order and dropout (--seed)
    config.log_every = 50  # steps between metrics lines (--log-every)
    # JAX's persistent compilation cache: "auto" = ~/.cache/bertjax/jax_cache
    # ($XDG_CACHE_HOME), or WORKDIR/jax_cache with several processes; "" = off; or a folder
    config.compilation_cache_dir = "auto"
    config.mesh = dict(
        data=-1,  # replicated parameters, split batch; -1 = the remaining devices (--mesh-data)
        fsdp=1,  # split batch and parameters (--mesh-fsdp)
        tensor=1,  # split heads, MLP and vocabulary dimensions (--mesh-tensor)
    )
    # BERT's AdamWeightDecay; peak_lr, warmup_steps and weight_decay are set per run from
    # learning_rates, warmup and weight_decay above.
    config.optim = dict(
        name="adamw",  # the fine-tuning optimizer of google-research/bert
        schedule="linear",  # linear decay to end_lr after the warm-up
        end_lr=0.0,  # learning rate at the last step
        power=1.0,  # exponent of a "polynomial" schedule
        b1=0.9,  # Adam beta1
        b2=0.999,  # Adam beta2
        eps=1e-6,  # Adam epsilon (BERT's)
        clip_norm=1.0,  # global gradient-norm clipping, as google-research/bert
    )
    return config


# Every key above (dotted, as `--config.KEY`): its type, range and meaning, checked when
# `bertjax finetune` starts, before anything is read.
_MESH_AXIS = dict(low=-1, not_equal=(0,))  # an axis size, -1 = the remaining devices
SCHEMA = Schema(
    {
        "task": Str("the task (--task)"),
        "init": Str("pretraining workdir or HuggingFace folder (--init)"),
        "init_step": Int("checkpoint step of init (--init-step)", low=0, none=True),
        "data": Str("data directory (--data)", none=True),
        "tokenizer": Str("tokenizer (--tokenizer)", none=True),
        "max_seq_len": Int("tokens per example (--max-seq-len)", low=3),
        "length_buckets": Int("static batch lengths, 0 = all padded (--length-buckets)", low=0),
        "batch_size": Int("global batch size (--batch-size)", low=1),
        "grad_accum_steps": Int("micro-batches per step (--grad-accum-steps)", low=1),
        "epochs": Int("passes over the training split (--epochs)", low=1),
        "learning_rates": Tuple("peak learning rates (--lr, --lr-sweep)",
                                item=Float("a learning rate", above=0)),
        "warmup": Float("fraction of the steps warming up (--warmup)", low=0, high=1),
        "weight_decay": Float("decoupled weight decay (--weight-decay)", low=0),
        "seed": Int("seed (--seed)", low=0),
        "log_every": Int("steps between metrics lines (--log-every)", low=1),
        "compilation_cache_dir": Str("persistent compilation cache"),
        "mesh.data": Int("data-parallel axis (--mesh-data)", **_MESH_AXIS),
        "mesh.fsdp": Int("fully sharded axis (--mesh-fsdp)", **_MESH_AXIS),
        "mesh.tensor": Int("tensor-parallel axis (--mesh-tensor)", **_MESH_AXIS),
        "optim.name": Str("optimizer", choices=tuple(OPTIMIZERS)),
        "optim.schedule": Str("decay after warm-up", choices=tuple(SCHEDULES)),
        "optim.end_lr": Float("learning rate at the last step", low=0),
        "optim.power": Float("polynomial schedule's exponent", above=0),
        "optim.b1": Float("Adam beta1", low=0, below=1),
        "optim.b2": Float("Adam beta2", low=0, below=1),
        "optim.eps": Float("Adam epsilon", above=0),
        "optim.clip_norm": Float("global-norm clipping, 0 = off", low=0),
    },
    rules=(
        Rule(("learning_rates",), lambda rates: len(rates) == len(set(rates)) > 0,
             "learning_rates must list at least one rate, none twice"),
        Rule(("mesh.data", "mesh.fsdp", "mesh.tensor"), lambda *axes: axes.count(-1) <= 1,
             "only one mesh axis may be -1"),
    ),
    source="bertjax/configs/finetune_glue.py",
)
