r"""BERT-base with LAMB at batch 32,768, phase 2 (seq 512): 1,563 steps (You et al. 2019; NVIDIA).

    bertjax train --config bert_base_lamb_phase2 --workdir $WORKDIR/lamb2 \
        --config.data.train_dir=data/wikibooks512 --init-from $WORKDIR/lamb1

NVIDIA's phase 2 (scripts/run_pretraining.sh): 8 GPUs x 4,096 = 32,768 sequences per step,
1,563 steps, lr 4e-3, warm-up 12.8% of the steps, polynomial decay with power 0.5. NVIDIA
starts phase 2 from phase 1's checkpoint with phase 1's LAMB moments carried over and the
step count, warm-up and schedule restarted (`--phase2 --resume_from_checkpoint`): start
from phase 1 with `--init-from`, carrying the optimizer state over. This run's steps count
from 0. Micro-batches of 32,768 / 128 = 256 sequences (32 per device on 8 devices).
"""

from bertjax.configs import bert_base_lamb_phase1

STEPS = 1_563  # NVIDIA phase 2
WARMUP_FRACTION = 0.128  # NVIDIA phase 2 warmup_proportion


def get_config():
    """LAMB phase 1 with NVIDIA's phase-2 values."""
    config = bert_base_lamb_phase1.get_config()

    config.data.max_predictions_per_seq = 80  # google-research/bert's value at length 512

    config.train.steps = STEPS  # optimizer steps of this phase
    config.train.global_batch_size = 32_768  # 8 GPUs x 4,096 in NVIDIA's script
    config.train.grad_accum_steps = 128  # micro-batches of 256 sequences per step
    config.train.eval_batch_size = 64  # sequences per evaluation batch at length 512
    config.train.init_opt_state = True  # with --init-from PHASE1_WORKDIR: carry the moments

    config.optim.peak_lr = 4e-3  # NVIDIA phase 2 learning_rate
    config.optim.warmup_steps = round(WARMUP_FRACTION * STEPS)  # 200 steps
    return config
