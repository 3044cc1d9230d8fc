r"""BERT-large, phase 2 of the paper's recipe (seq 512), from BERT-large phase 1.

    bertjax train --config bert_large_phase2 --workdir $WORKDIR/large2 \
        --config.data.train_dir=data/wikibooks512 --init-from $WORKDIR/large1

Same schedule as bertjax/configs/bert_base_phase2.py (the last 100,000 steps of one 1,000,000-step
linear decay), with the large model; layers are recomputed in the backward pass: 32 sequences
of 512 tokens per chip need 19.83 GiB without (compiled for v5e), so 16 GiB chips need it
(--config.model.remat_policy=none on 32 GiB and larger chips).
"""

from bertjax.configs import bert_base_phase2


def get_config():
    """BERT-base phase 2 with the large model."""
    config = bert_base_phase2.get_config()
    config.model.preset = "large"  # 24 layers, hidden 1024, 16 heads: 336,226,108 parameters
    # Without recomputation 32 x 512 per chip needs 19.83 GiB (`bertjax compile`, v5e-8).
    config.model.remat_policy = "full"  # fits 16 GiB chips; about 1/3 more compute
    return config
