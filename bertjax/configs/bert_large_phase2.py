r"""BERT-large, phase 2 of the paper's recipe (seq 512), from BERT-large phase 1.

    bertjax train --config bert_large_phase2 --workdir $WORKDIR/large2 \
        --config.data.train_dir=data/wikibooks512 --init-from $WORKDIR/large1

Same schedule as bertjax/configs/bert_base_phase2.py (the last 100,000 steps of one 1,000,000-step
linear decay), with the large model. Each layer keeps its matmul outputs and recomputes the
rest in the backward pass (remat_policy "minimal"): compiled for TPU (`bertjax compile`,
docs/REPRODUCE.md section 7), 32 sequences of 512 per chip need 19.83 GiB without it, more
than a v5e's 16, and 13.89 GiB with it, at 2% more matmul FLOPs ("full", whole layers
recomputed: 7.06 GiB, 32% more). On a v4-8 (4 chips, 64 sequences per chip) "minimal" needs
23.30 GiB of 32 and "none" 39.92; on a 64-chip v5p slice the compiler's roofline step is 30.7 ms
with "minimal", 34.6 ms with "full".
"""

from bertjax.configs import bert_base_phase2


def get_config():
    """BERT-base phase 2 with the large model."""
    config = bert_base_phase2.get_config()
    config.model.preset = "large"  # 24 layers, hidden 1024, 16 heads: 336,226,108 parameters
    # 32 x 512 per chip (v5e-8): none 19.83 GiB (does not fit), minimal 13.89, full 7.06.
    config.model.remat_policy = "minimal"  # the least recomputation that fits 16 GiB chips
    return config
