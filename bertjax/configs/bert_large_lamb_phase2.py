r"""BERT-large with LAMB at batch 32,768, phase 2 (seq 512): NVIDIA's recipe as published.

    bertjax train --config bert_large_lamb_phase2 --workdir $WORKDIR/large_lamb2 \
        --config.data.train_dir=data/wikibooks512 --init-from $WORKDIR/large_lamb1

The schedule and optimizer of bertjax/configs/bert_base_lamb_phase2.py on BERT-large. Micro-batches
of 32,768 / 512 = 64 sequences: 8 per device on 8 devices, NVIDIA's per-GPU micro-batch.
No recomputation: compiled for TPU (`bertjax compile`, docs/REPRODUCE.md section 7) that
needs 12.48 GiB per chip of a v5e-8 (16 GiB), 22.20 of a v4-8 (32 GiB, 16 x 512 per chip);
recomputing whole layers (remat_policy "full", which this recipe set until the compiler was
asked) needs 7.16 GiB per v5e chip at 32% more matmul FLOPs.
"""

from bertjax.configs import bert_base_lamb_phase2


def get_config():
    """BERT-base LAMB phase 2 with the large model."""
    config = bert_base_lamb_phase2.get_config()
    config.model.preset = "large"  # 24 layers, hidden 1024, 16 heads: 336,226,108 parameters
    config.train.grad_accum_steps = 512  # NVIDIA's gradient_accumulation_steps for phase 2
    return config
