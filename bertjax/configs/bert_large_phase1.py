r"""BERT-large, phase 1 of the paper's recipe (24 layers, hidden 1024, 16 heads; seq 128).

    bertjax train --config bert_large_phase1 --workdir $WORKDIR/large1 \
        --config.data.train_dir=data/wikibooks128

The paper trains BERT-large with the same recipe as BERT-base (bertjax/configs/bert_base_phase1.py:
batch 256, 900,000 of 1,000,000 steps at length 128, AdamW 1e-4, 10,000 warm-up steps).
"""

from bertjax.configs import bert_base_phase1


def get_config():
    """BERT-base phase 1 with the large model."""
    config = bert_base_phase1.get_config()
    config.model.preset = "large"  # 24 layers, hidden 1024, 16 heads: 336,226,108 parameters
    return config
