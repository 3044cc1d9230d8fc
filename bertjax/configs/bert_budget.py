r"""BERT-base on one GPU in a fixed time budget (the academic-budget and cramming recipes).

    bertjax train --config bert_budget --workdir $WORKDIR/budget \
        --config.data.train_dir=data/wikibooks128_nonsp
    # after measuring this GPU's tokens/s (metrics.jsonl), size the run to its budget:
    bertjax train --config bert_budget:hours=24,tokens_per_s=230000 ...

In the spirit of Izsak et al. 2021 ("How to Train BERT with an Academic Budget") and Geiping &
Goldstein 2022 ("Cramming"): sequences of 128 tokens only, no next-sentence prediction (the
dataset is prepared with --no-nsp), 25% of tokens masked, no dropout, a large batch (4,096)
reached by accumulating 32 micro-batches of 128, and a learning rate that warms up over 6%
of the run and decays linearly to 0 exactly when the time budget runs out.

The trainer has no clock-based stopping, so the budget is expressed in steps:
    steps = hours x 3600 x tokens_per_s / (128 x 4096)
The default tokens_per_s is an assumption, not a measurement: one A100 (312 TFLOP/s bf16) at
40% model-FLOPs utilisation, 0.4 x 312e12 / 552.8e6 FLOPs per token = 225,000 tokens/s,
giving 37,078 steps in 24 hours (docs/REPRODUCE.md). Measure yours in the first minutes and
pass it as above, so the schedule ends on time.
"""

from bertjax.configs import bert_base_phase1
from bertjax.errors import UserError

SEQ_LEN = 128  # the dataset's --max-seq-len (no key for it: the dataset decides)
GLOBAL_BATCH = 4_096  # Izsak et al. 2021
DEFAULTS = {
    "hours": 24.0,  # cramming: one GPU, one day
    "tokens_per_s": 225_000.0,  # ASSUMED (one A100 at 40% MFU), not measured: pass your own
}


def parse_arg(arg: str | None) -> dict:
    """`hours=H,tokens_per_s=T` (either or both) -> DEFAULTS updated."""
    values = dict(DEFAULTS)
    for item in filter(None, (arg or "").split(",")):
        key, eq, text = item.partition("=")
        if not eq or key not in values:
            raise UserError(f"bert_budget:{arg}: expected hours=H,tokens_per_s=T, got {item!r}")
        try:
            values[key] = float(text)
        except ValueError:
            raise UserError(f"bert_budget: {key}={text!r} is not a number") from None
        if values[key] <= 0:
            raise UserError(f"bert_budget: {key}={text} must be positive")
    return values


def budget_steps(hours: float, tokens_per_s: float) -> int:
    """Optimizer steps of GLOBAL_BATCH x SEQ_LEN tokens that fit in `hours` at `tokens_per_s`."""
    return int(hours * 3600 * tokens_per_s // (SEQ_LEN * GLOBAL_BATCH))


def get_config(arg=None):
    """BERT-base phase 1's keys with the one-GPU budget recipe; `arg` = hours=H,tokens_per_s=T."""
    budget = parse_arg(arg)
    steps = budget_steps(budget["hours"], budget["tokens_per_s"])
    config = bert_base_phase1.get_config()

    config.model.preset = "base"  # BERT-base shape (cramming keeps a base-sized model too)
    config.model.compute_dtype = "bfloat16"  # bf16 tensor cores
    config.model.hidden_dropout_prob = 0.0  # cramming: no dropout when data is never repeated
    config.model.attention_probs_dropout_prob = 0.0  # none either (cramming, MosaicBERT)
    config.model.attention_impl = "auto"  # so a fused kernel runs: cuDNN on GPU, splash on TPU

    config.data.masked_lm_prob = 0.25  # cramming's rate (Wettig et al. 2022: >15% helps)
    config.data.max_predictions_per_seq = 32  # 0.25 x 128

    config.train.steps = steps  # the time budget in steps (see the docstring)
    config.train.global_batch_size = GLOBAL_BATCH  # sequences per optimizer step
    config.train.grad_accum_steps = 32  # micro-batches of 128 sequences on the one GPU
    config.train.nsp = False  # MLM alone (RoBERTa, academic budget, cramming)
    config.train.log_every = 20  # ~1 minute at the assumed speed
    config.train.eval_every = 1_000  # steps between held-out evaluations
    config.train.eval_batch_size = 256  # sequences per evaluation batch
    config.train.checkpoint_every = 500  # ~25 minutes at the assumed speed

    config.optim.name = "adamw"  # AdamW, decoupled weight decay
    config.optim.peak_lr = 7e-4  # RoBERTa (post-LN BERT-base): 7e-4 at batch 2k, 1e-3 at 8k
    config.optim.warmup_steps = round(0.06 * steps)  # Izsak et al.: 6% of the budget
    config.optim.schedule = "linear"  # to 0 when the budget ends
    config.optim.end_lr = 0.0  # the last step has learning rate 0
    config.optim.b1 = 0.9  # Adam beta1
    config.optim.b2 = 0.98  # RoBERTa / Izsak et al.: steadier than 0.999 at large batch
    config.optim.eps = 1e-6  # Adam epsilon
    config.optim.weight_decay = 0.01  # not on LayerNorm parameters or biases
    config.optim.clip_norm = 1.0  # global gradient-norm clipping

    config.mesh.data = -1  # the one GPU (or every device, if there are more)
    return config
