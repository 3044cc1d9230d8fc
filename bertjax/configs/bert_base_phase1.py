r"""BERT-base, phase 1 of the paper's recipe: 900,000 steps of 256 sequences of 128 tokens.

    bertjax train --config bert_base_phase1 --workdir $WORKDIR/phase1 \
        --config.data.train_dir=data/wikibooks128

Devlin et al. 2018, section 3.1 and appendix A.2: Adam (lr 1e-4, b1 0.9, b2 0.999, L2 weight
decay 0.01), warm-up over the first 10,000 steps then linear decay, dropout 0.1, gelu, batch
256, 1,000,000 steps in all: 90% at sequence length 128, then 10% at 512
(bertjax/configs/bert_base_phase2.py). The two phases share one schedule: this run decays linearly
towards 0 at step 1,000,000 and stops at step 900,000, where phase 2 takes over at the same
learning rate. The dataset is Wikipedia + BookCorpus prepared at --max-seq-len 128; see
docs/REPRODUCE.md. Every value not set here comes from bertjax/configs/base.py, which holds the
full list of keys.
"""

from bertjax.configs import base

TOTAL_STEPS = 1_000_000  # both phases (paper: 1M steps at batch 256)
PHASE1_STEPS = 900_000  # 90% of them at sequence length 128
WARMUP_STEPS = 10_000  # linear warm-up (paper, appendix A.2)
PEAK_LR = 1e-4  # Adam learning rate (paper, appendix A.2)


def get_config():
    """The config (base's keys, the paper's BERT-base phase-1 values)."""
    config = base.get_config()

    config.model.preset = "base"  # 12 layers, hidden 768, 12 heads: 110,106,428 parameters
    config.model.compute_dtype = "bfloat16"  # bf16 matmuls on TPU/GPU; parameters stay float32
    config.model.hidden_dropout_prob = 0.1  # the paper's dropout on every layer
    config.model.attention_probs_dropout_prob = 0.1  # and on the attention probabilities
    config.model.attention_impl = "xla"  # the one kernel that drops attention probabilities

    config.data.masked_lm_prob = 0.15  # 15% of tokens are prediction targets
    config.data.max_predictions_per_seq = 20  # google-research/bert's value at length 128

    config.train.steps = PHASE1_STEPS  # optimizer steps of this phase
    config.train.global_batch_size = 256  # sequences per step, all devices together
    config.train.grad_accum_steps = 1  # 32 x 128 per chip: 2.70 GiB compiled for a v5e-8
    config.train.nsp = True  # masked LM + next-sentence prediction, as in the paper
    config.train.log_every = 100  # steps between metrics.jsonl lines
    config.train.eval_every = 10_000  # steps between held-out evaluations
    config.train.eval_batch_size = 256  # sequences per evaluation batch
    config.train.checkpoint_every = 5_000  # steps between checkpoints

    config.optim.name = "adamw"  # BERT's AdamWeightDecayOptimizer: Adam + decoupled decay
    config.optim.peak_lr = PEAK_LR  # reached at the end of warm-up
    config.optim.warmup_steps = WARMUP_STEPS  # linear warm-up from 0
    config.optim.schedule = "linear"  # linear decay after warm-up
    # Where the 1M-step linear decay stands after 900k steps, 1e-4 x 100k / 990k: ending phase
    # 1 there makes phases 1 + 2 exactly one schedule.
    config.optim.end_lr = (  # 1.0101e-5
        PEAK_LR * (TOTAL_STEPS - PHASE1_STEPS) / (TOTAL_STEPS - WARMUP_STEPS)
    )
    config.optim.b1 = 0.9  # Adam beta1
    config.optim.b2 = 0.999  # Adam beta2
    config.optim.eps = 1e-6  # Adam epsilon, google-research/bert's value
    config.optim.weight_decay = 0.01  # not on LayerNorm parameters or biases
    config.optim.clip_norm = 1.0  # google-research/bert clips the global norm at 1.0

    config.mesh.data = -1  # every device data-parallel (the pmap layout)
    config.mesh.fsdp = 1  # base fits on one device: no parameter sharding needed
    config.mesh.tensor = 1  # no tensor parallelism
    return config
