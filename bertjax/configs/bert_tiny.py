r"""BERT-tiny (2 layers, hidden 128) pretraining, MLM + NSP: small enough for a laptop CPU.

    bertjax train --config bert_tiny --workdir $WORKDIR \
        --config.data.train_dir=$DATA [--config.train.steps=20 ...]

`base` holds every key; this changes what a small model on a CPU wants. `get_config("mini")`
(`--config bert_tiny:mini`) swaps in another preset.
"""

from bertjax.configs import base


def get_config(preset=None):
    """The config; `preset` overrides model.preset (e.g. "mini")."""
    config = base.get_config()
    config.model.preset = preset or "tiny"  # bertjax.model.PRESETS: tiny ... large

    config.train.steps = 1000  # optimizer steps
    config.train.global_batch_size = 64  # sequences per step over all devices and processes
    config.train.log_every = 10  # steps between metrics.jsonl lines (and NaN/Inf checks)
    config.train.eval_every = 200  # steps between evaluations on the whole eval split
    config.train.eval_batch_size = 64  # sequences per evaluation batch over all devices
    config.train.checkpoint_every = 500  # steps between checkpoints (and one at the end)

    config.optim.peak_lr = 1e-3  # tiny models take a large learning rate
    config.optim.warmup_steps = 100  # linear warm-up from 0
    return config
