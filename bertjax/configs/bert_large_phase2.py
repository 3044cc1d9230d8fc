r"""BERT-large, phase 2 of the paper's recipe (seq 512), from BERT-large phase 1.

    bertjax train --config bert_large_phase2 --workdir $WORKDIR/large2 \
        --config.data.train_dir=data/wikibooks512 --init-from $WORKDIR/large1

Same schedule as bertjax/configs/bert_base_phase2.py (the last 100,000 steps of one 1,000,000-step
linear decay), with the large model; layers are recomputed in the backward pass so that 32
sequences of 512 tokens per device fit in 16-32 GB (set --config.model.remat_policy=none on 80 GB).
"""

from bertjax.configs import bert_base_phase2


def get_config():
    """BERT-base phase 2 with the large model."""
    config = bert_base_phase2.get_config()
    config.model.preset = "large"  # 24 layers, hidden 1024, 16 heads: 336,226,108 parameters
    config.model.remat_policy = "full"  # ~30 GB of activations per device otherwise; ~1/3 compute
    return config
