r"""BERT-large with LAMB at batch 65,536, phase 1 (seq 128): NVIDIA's recipe as published.

    bertjax train --config bert_large_lamb_phase1 --workdir $WORKDIR/large_lamb1 \
        --config.data.train_dir=data/wikibooks128

The schedule and optimizer of bertjax/configs/bert_base_lamb_phase1.py, on the model NVIDIA trained
(bert-large-uncased). Micro-batches of 65,536 / 128 = 512 sequences: 64 per device on 8
devices, NVIDIA's per-GPU micro-batch.
"""

from bertjax.configs import bert_base_lamb_phase1


def get_config():
    """BERT-base LAMB phase 1 with the large model."""
    config = bert_base_lamb_phase1.get_config()
    config.model.preset = "large"  # 24 layers, hidden 1024, 16 heads: 336,226,108 parameters
    config.train.grad_accum_steps = 128  # NVIDIA's gradient_accumulation_steps for phase 1
    return config
