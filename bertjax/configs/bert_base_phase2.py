r"""BERT-base, phase 2 of the paper's recipe: 100,000 steps of 256 sequences of 512 tokens.

    bertjax train --config bert_base_phase2 --workdir $WORKDIR/phase2 \
        --config.data.train_dir=data/wikibooks512 --init-from $WORKDIR/phase1

Starts from phase 1's parameters (`--init-from`, the checkpointing feature; carry phase 1's
optimizer state over, as one continuous run would) and finishes the paper's single schedule:
it starts at the learning rate phase 1 ended with (1.0101e-5, no warm-up) and decays linearly
to 0, so that phases 1 + 2 are the 1,000,000-step schedule of Devlin et al. 2018. This run's
steps count from 0. The dataset is the same corpus prepared at --max-seq-len 512.
"""

from bertjax.configs import bert_base_phase1

PHASE2_STEPS = 100_000  # the last 10% of the paper's 1,000,000 steps


def get_config():
    """Phase 1's config with the sequence-512 values."""
    config = bert_base_phase1.get_config()
    phase1_end_lr = config.optim.end_lr

    config.data.max_predictions_per_seq = 80  # google-research/bert's value at length 512

    config.train.steps = PHASE2_STEPS  # optimizer steps of this phase
    config.train.global_batch_size = 256  # the paper keeps the batch at 256 sequences
    config.train.grad_accum_steps = 1  # compiled: 10.01 GiB at 32 x 512 per v5e chip, 24.03 on v4
    config.train.eval_batch_size = 64  # sequences per evaluation batch at length 512
    config.train.init_opt_state = True  # with --init-from PHASE1_WORKDIR: carry the moments

    config.optim.peak_lr = phase1_end_lr  # continue where phase 1 stopped: 1.0101e-5
    config.optim.warmup_steps = 0  # no second warm-up in a continuous schedule
    config.optim.end_lr = 0.0  # the paper's decay ends at 0 at step 1,000,000
    return config
