r"""Every key of a pretraining config with its default, and (SCHEMA) its type, range and meaning:
the base of every recipe.

Defaults are BERT-base's values from Devlin et al. 2018 where the paper gives one (batch 256,
1,000,000 steps, Adam at 1e-4 with 10,000 warm-up steps, dropout 0.1); the recipes
(`bert_base_phase1`, `bert_tiny`, ...) derive from this file and change what they need.

    bertjax train --config base --workdir $WORKDIR --config.data.train_dir=$DATA
"""

import ml_collections

from bertjax.model_config import ATTENTION_IMPLS as IMPLS
from bertjax.model_config import COMPUTE_DTYPES, PRESETS
from bertjax.model_config import REMAT_POLICY_NAMES as REMAT_POLICIES
from bertjax.train.config_schema import Bool, Float, Int, Rule, Schema, Str, Tuple
from bertjax.train.optim import OPTIMIZERS, SCHEDULES
from bertjax.train.sharding import DEFAULT_LOGICAL_AXIS_RULES


def get_config():
    """The config: every key, BERT-base's values."""
    config = ml_collections.ConfigDict()

    config.model = dict(
        preset="base",  # bertjax.model.PRESETS: tiny mini minilm small medium base large
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


# Every key above: its type, range and meaning, checked when `bertjax train` starts (before any
# data is read or anything compiled). fixed=True: the key changes the objective, the data or
# the saved state's layout, so a resumed run may not change it.
_SIZE = dict(low=0, fixed_on_resume=True)  # model sizes: 0 = the preset's
_MESH_AXIS = dict(low=-1, not_equal=(0,))  # an axis size, -1 = the remaining devices
SCHEMA = Schema(
    {
        "model.preset": Str("model size", choices=tuple(PRESETS), fixed_on_resume=True),
        "model.compute_dtype": Str("matmul/activation dtype", choices=tuple(COMPUTE_DTYPES)),
        "model.vocab_size": Int("vocabulary size, 0 = the dataset's", **_SIZE),
        "model.num_hidden_layers": Int("encoder layers, 0 = the preset's", **_SIZE),
        "model.hidden_size": Int("hidden size, 0 = the preset's", **_SIZE),
        "model.num_attention_heads": Int("attention heads, 0 = the preset's", **_SIZE),
        "model.intermediate_size": Int("feed-forward size, 0 = 4 x hidden", **_SIZE),
        "model.max_position_embeddings": Int("longest sequence", low=1, fixed_on_resume=True),
        "model.attention_impl": Str("attention kernel", choices=IMPLS),
        "model.scan_layers": Bool("scanned layers"),
        "model.remat_policy": Str("what the backward pass recomputes", choices=REMAT_POLICIES),
        "model.hidden_dropout_prob": Float("dropout", low=0, below=1, fixed_on_resume=True),
        "model.attention_probs_dropout_prob": Float(
            "attention dropout", low=0, below=1, fixed_on_resume=True
        ),
        "data.train_dir": Str("training dataset"),
        "data.eval_dir": Str("held-out dataset, empty = TRAIN_DIR/eval"),
        "data.masked_lm_prob": Float("fraction masked", above=0, high=1, fixed_on_resume=True),
        "data.max_predictions_per_seq": Int(
            "masked positions per sequence, 0 = the default", low=0, fixed_on_resume=True
        ),
        "data.whole_word_masking": Bool("mask whole words", fixed_on_resume=True),
        "data.workers": Int("loader processes, 0 = threads", low=0),
        "data.threads": Int("loader threads", low=0),
        "data.prefetch": Int("batches built ahead", low=1),
        "data.verify_checksums": Bool("verify every shard at start"),
        "train.steps": Int("optimizer steps", low=1),
        "train.global_batch_size": Int("sequences per step", low=1, fixed_on_resume=True),
        "train.grad_accum_steps": Int("micro-batches per step", low=1),
        "train.seed": Int(
            "seed of parameters, data order, masks, dropout", low=0, fixed_on_resume=True
        ),
        "train.nsp": Bool("next-sentence loss", fixed_on_resume=True),
        "train.log_every": Int("steps between logged steps", low=1),
        "train.eval_every": Int("steps between evaluations, 0 = never", low=0),
        "train.eval_batch_size": Int("sequences per evaluation batch", low=1),
        "train.checkpoint_every": Int("steps between checkpoints", low=1),
        "train.keep_checkpoints": Int("recent checkpoints kept", low=1),
        "train.keep_checkpoints_every": Int("also keep multiples of this, 0 = none", low=0),
        "train.async_checkpointing": Bool("save in the background"),
        "train.init_from": Str("warm start: HF folder or workdir"),
        "train.init_opt_state": Bool("warm start the Adam moments too"),
        "train.eval_at_start": Bool("evaluate before the first step"),
        "train.profile_steps": Str("profiled steps A:B", pattern=r"(\s*\d+\s*:\s*\d+\s*)?"),
        "train.peer_timeout_s": Float(
            "seconds before a silent process counts as lost, 0 = never", low=0
        ),
        "train.compilation_cache_dir": Str("persistent compilation cache"),
        "optim.name": Str("optimizer", choices=tuple(OPTIMIZERS), fixed_on_resume=True),
        "optim.peak_lr": Float("learning rate after warm-up", above=0),
        "optim.warmup_steps": Int("linear warm-up steps", low=0),
        "optim.schedule": Str("decay after warm-up", choices=tuple(SCHEDULES)),
        "optim.end_lr": Float("learning rate at the last step", low=0),
        "optim.power": Float("polynomial schedule's exponent", above=0),
        "optim.b1": Float("Adam beta1", low=0, below=1),
        "optim.b2": Float("Adam beta2", low=0, below=1),
        "optim.eps": Float("Adam epsilon", above=0),
        "optim.weight_decay": Float("decoupled weight decay", low=0, fixed_on_resume=True),
        "optim.clip_norm": Float("global-norm clipping, 0 = off", low=0, fixed_on_resume=True),
        "mesh.data": Int("data-parallel axis", **_MESH_AXIS),
        "mesh.fsdp": Int("fully sharded data-parallel axis", **_MESH_AXIS),
        "mesh.tensor": Int("tensor-parallel axis", **_MESH_AXIS),
        "logical_axis_rules": Tuple("logical axis -> mesh axes"),
    },
    rules=(
        Rule(
            ("optim.warmup_steps", "train.steps"),
            lambda warmup, steps: warmup <= steps,
            "the warm-up is longer than the run, so the learning rate never reaches "
            "optim.peak_lr: lower optim.warmup_steps",
        ),
        Rule(
            ("optim.end_lr", "optim.peak_lr"),
            lambda end, peak: end <= peak,
            "optim.end_lr is above optim.peak_lr",
        ),
        Rule(
            ("train.global_batch_size", "train.grad_accum_steps"),
            lambda b, k: b % k == 0,
            "train.global_batch_size is not divisible by train.grad_accum_steps",
        ),
        Rule(
            ("mesh.data", "mesh.fsdp", "mesh.tensor"),
            lambda *axes: axes.count(-1) <= 1,
            "only one mesh axis may be -1",
        ),
    ),
    source="bertjax/configs/base.py",
)
