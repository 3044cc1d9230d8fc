r"""BERT-base with LAMB at batch 65,536, phase 1 (seq 128): 7,038 steps (You et al. 2019; NVIDIA).

    bertjax train --config bert_base_lamb_phase1 --workdir $WORKDIR/lamb1 \
        --config.data.train_dir=data/wikibooks128

NVIDIA DeepLearningExamples PyTorch/LanguageModeling/BERT scripts/run_pretraining.sh (phase 1):
8 GPUs x 8,192 = 65,536 sequences per step, 7,038 steps, lr 6e-3, warm-up 28.43% of the steps,
then polynomial decay with power 0.5 to 0 (PolyWarmUpScheduler, degree 0.5); LAMB with weight
decay 0.01, not on LayerNorm parameters or biases, gradient norm clipped at 1.0. NVIDIA ran
this recipe on BERT-large (bertjax/configs/bert_large_lamb_phase1.py); here it is applied unchanged
to BERT-base. One difference: NVIDIA's decay is peak * (1 - step/steps)^0.5, which jumps down
to 0.846 x peak when warm-up ends; ours decays from the peak itself over the remaining steps,
so after warm-up our learning rate is NVIDIA's times 1/sqrt(1 - 0.2843) = 1.18.

65,536 sequences do not fit on any device at once: each step accumulates the gradients of
`grad_accum_steps` micro-batches of 65,536 / 64 = 1,024 sequences (128 per device on 8
devices, 256 on a 4-chip v4-8). Compiled for TPU (`bertjax compile`, docs/REPRODUCE.md
section 7) that needs 8.30 GiB per chip of a v5e-8 (16 GiB), 15.02 of a v4-8 (32 GiB); on a
smaller device halve the micro-batch (double grad_accum_steps): the optimizer step is the same.
"""

from bertjax.configs import bert_base_phase1

STEPS = 7_038  # NVIDIA phase 1
WARMUP_FRACTION = 0.2843  # NVIDIA phase 1 warmup_proportion


def get_config():
    """BERT-base phase 1 with NVIDIA's LAMB phase-1 recipe."""
    config = bert_base_phase1.get_config()

    config.train.steps = STEPS  # optimizer steps of this phase
    config.train.global_batch_size = 65_536  # 8 GPUs x 8,192 in NVIDIA's script
    config.train.grad_accum_steps = 64  # micro-batches of 1,024 sequences per step
    config.train.log_every = 10  # each step is 65,536 sequences: log often
    config.train.eval_every = 500  # steps between held-out evaluations
    config.train.checkpoint_every = 100  # NVIDIA saves every 200; a step here is long

    config.optim.name = "lamb"  # layer-wise adaptive moments (You et al. 2019)
    config.optim.peak_lr = 6e-3  # NVIDIA phase 1 learning_rate
    config.optim.warmup_steps = round(WARMUP_FRACTION * STEPS)  # 2,001 steps
    config.optim.schedule = "polynomial"  # NVIDIA's PolyWarmUpScheduler
    config.optim.power = 0.5  # its degree
    config.optim.end_lr = 0.0  # decays to 0 at the last step
    config.optim.b1 = 0.9  # FusedLAMB's default betas
    config.optim.b2 = 0.999  # FusedLAMB's default betas
    config.optim.eps = 1e-6  # FusedLAMB's default eps
    config.optim.weight_decay = 0.01  # NVIDIA: 0.01, not on bias, gamma, beta, LayerNorm
    config.optim.clip_norm = 1.0  # FusedLAMB's max_grad_norm
    return config
