r"""Every key of a pretraining config with its default: the base of every recipe.

Defaults are BERT-base's values from Devlin et al. 2018 where the paper gives one (batch 256,
1,000,000 steps, Adam at 1e-4 with 10,000 warm-up steps, dropout 0.1); the recipes
(`bert_base_phase1`, `bert_tiny`, ...) derive from this file and change what they need.

    bertjax train --config base --workdir $WORKDIR --config.data.train_dir=$DATA
"""

import ml_collections

from bertjax.train.sharding import DEFAULT_LOGICAL_AXIS_RULES


def get_config():
    """The config: every key, BERT-base's values."""
    config = ml_collections.ConfigDict()

    config.model = dict(
        preset="base",  # bertjax.model.PRESETS: tiny mini small medium base large
        compute_dtype="float32",  # "bfloat16": bf16 matmuls/activations, params stay float32
        vocab_size=0,  # 0 = the dataset tokenizer's vocabulary size
        num_hidden_layers=0,  # 0 = the preset's
        hidden_size=0,  # 0 = the preset's
        num_attention_heads=0,  # 0 = the preset's
        intermediate_size=0,  # 0 = 4 x hidden_size
        max_position_embeddings=512,  # longest sequence the model accepts
        attention_impl="xla",  # xla | cudnn (GPU) | splash (TPU) | auto: docs/TRAINING.md
        scan_layers=False,  # nn.scan over the layers: compile time independent of depth
        remat_policy="none",  # what the backward pass recomputes: full, minimal, ... TRAINING.md
        hidden_dropout_prob=0.1,  # dropout after embeddings, attention output and feed-forward
        attention_probs_dropout_prob=0.1,  # on the attention probabilities; fused kernels: 0
    )

    config.data = dict(
        train_dir="",  # dataset directory written by `bertjax prepare` (required)
        eval_dir="",  # held-out dataset; "" = TRAIN_DIR/eval
        masked_lm_prob=0.15,  # fraction of tokens masked (BERT: 0.15)
        max_predictions_per_seq=0,  # masked positions per sequence; 0 = the loader's default
        whole_word_masking=False,  # mask all pieces of a word together
        workers=0,  # loader worker processes; 0 = background threads
        threads=2,  # loader threads when workers=0
        prefetch=4,  # batches built ahead of the device
        verify_checksums=True,  # sha256 + token ids of every shard at start; false: huge data
    )

    config.train = dict(
        steps=1_000_000,  # optimizer steps
        global_batch_size=256,  # sequences per step over all devices and processes
        grad_accum_steps=1,  # micro-batches per step (each global_batch_size / this)
        seed=0,  # parameters, data order, masks and dropout all derive from it
        nsp=True,  # add the next-sentence loss; False = MLM alone
        log_every=100,  # steps between metrics.jsonl lines (and NaN/Inf checks)
        eval_every=10_000,  # steps between evaluations on the whole eval split; 0 = never
        eval_batch_size=256,  # sequences per evaluation batch over all devices
        checkpoint_every=5_000,  # steps between checkpoints (and one at the end)
        keep_checkpoints=3,  # most recent checkpoints kept
        keep_checkpoints_every=0,  # also keep every checkpoint at a multiple of this; 0 = none
        async_checkpointing=True,  # write checkpoints in the background while training goes on
        init_from="",  # warm start: a HuggingFace folder or a training workdir (--init-from)
        init_opt_state=False,  # with a workdir init_from: carry its Adam moments (phase 2)
        eval_at_start=False,  # evaluate the initial parameters too (logged as step 0)
        profile_steps="",  # "A:B": jax.profiler trace of steps A..B into WORKDIR/profile
        peer_timeout_s=120,  # several processes: exit when another is silent this long
        # JAX's persistent compilation cache, so a restart loads its compiled step: "auto" =
        # ~/.cache/bertjax/jax_cache ($XDG_CACHE_HOME), or WORKDIR/jax_cache with several
        # processes; "" = off; or a folder of your own (a gs:// URL too)
        compilation_cache_dir="auto",
    )

    config.optim = dict(
        name="adamw",  # "adamw" or "lamb" (large batches)
        peak_lr=1e-4,  # learning rate at the end of warm-up
        warmup_steps=10_000,  # linear warm-up from 0
        schedule="linear",  # decay after warm-up: "linear" (BERT), "polynomial", "cosine"
        end_lr=0.0,  # learning rate at the last step
        power=1.0,  # exponent of the "polynomial" schedule
        b1=0.9,  # Adam beta1
        b2=0.999,  # Adam beta2
        eps=1e-6,  # Adam epsilon (BERT: 1e-6)
        weight_decay=0.01,  # decoupled, not on LayerNorm parameters or biases
        clip_norm=1.0,  # global gradient-norm clipping; 0 = off
    )

    config.mesh = dict(
        data=-1,  # replicated parameters, split batch (pmap-style); -1 = remaining devices
        fsdp=1,  # split batch and split parameters/optimizer state (ZeRO-3)
        tensor=1,  # split heads, MLP and vocabulary dimensions of each matmul
    )

    # Logical axis -> mesh axes, first match wins (bertjax/train/sharding.py explains them).
    config.logical_axis_rules = DEFAULT_LOGICAL_AXIS_RULES
    return config
