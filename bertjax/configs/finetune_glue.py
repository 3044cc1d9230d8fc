r"""GLUE fine-tuning, the BERT paper's recipe (appendix A.3): batch 32, 3 epochs, AdamW with
10% linear warm-up then linear decay, the best of lr 2e-5 / 3e-5 / 5e-5 on dev.

    bertjax finetune --config finetune_glue --task sst2 --init bert-base-ours \
        --data glue/SST-2 --workdir runs/sst2 [--config.KEY=VALUE ...]

Every field has a flag of `bertjax finetune` as a shorthand (`--lr`, `--lr-sweep`, `--epochs`,
`--batch-size`, `--max-seq-len`, ...: see `bertjax finetune --help`); `--config.KEY=VALUE`
sets any key, the flags win where both are given.
"""

import ml_collections

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
