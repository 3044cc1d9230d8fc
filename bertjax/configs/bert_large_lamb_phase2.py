r"""BERT-large with LAMB at batch 32,768, phase 2 (seq 512): NVIDIA's recipe as published.

    bertjax train --config bert_large_lamb_phase2 --workdir $WORKDIR/large_lamb2 \
        --config.data.train_dir=data/wikibooks512 --init-from $WORKDIR/large_lamb1

The schedule and optimizer of bertjax/configs/bert_base_lamb_phase2.py on BERT-large. Micro-batches
of 32,768 / 512 = 64 sequences: 8 per device on 8 devices, NVIDIA's per-GPU micro-batch;
layers are recomputed in the backward pass so that this fits in 16 GB per device.
"""

from bertjax.configs import bert_base_lamb_phase2


def get_config():
    """BERT-base LAMB phase 2 with the large model."""
    config = bert_base_lamb_phase2.get_config()
    config.model.preset = "large"  # 24 layers, hidden 1024, 16 heads: 336,226,108 parameters
    config.model.remat_policy = "full"  # recompute activations: fits 16 GB devices; ~1/3 compute
    config.train.grad_accum_steps = 512  # NVIDIA's gradient_accumulation_steps for phase 2
    return config
