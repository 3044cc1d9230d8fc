r"""SQuAD fine-tuning (v1.1 `squad`, v2.0 `squad_v2`): google-research/bert's run_squad.py
recipe for the BERT paper's SQuAD v1.1 result: 2 epochs, lr 3e-5, batch 32, windows of 384
tokens with a stride of 128, questions cut to 64 tokens; n-best 20, answers of at most 30
tokens. The finetune_glue recipe otherwise (AdamW, 10% warm-up, linear decay, clipping at 1).

    bertjax finetune --task squad --init bert-base-ours --data squad/ --workdir runs/squad
    bertjax finetune --task squad_v2 --init bert-base-ours --data squad/ --workdir runs/squad2 \
        [--null-score-diff-threshold T] [--config.KEY=VALUE ...]

(`--config finetune_squad` is the default for SQuAD tasks.) `data.dir` holds the official
train-v1.1.json and dev-v1.1.json (or train-v2.0.json and dev-v2.0.json); without it the
`datasets` hub's rajpurkar/squad (rajpurkar/squad_v2) is read. The `squad` section's keys
have flags of `bertjax finetune` too (`--doc-stride`, `--n-best-size`, ...).
"""

from bertjax.configs import finetune_glue
from bertjax.train.config_schema import Float, Int, Schema


def get_config():
    """The config: the run_squad.py recipe on finetune_glue's sections, plus `squad`."""
    config = finetune_glue.get_config()
    config.task = "squad"  # squad (v1.1) or squad_v2 (v2.0)
    config.data.max_seq_len = 384  # tokens per window: [CLS] question [SEP] context [SEP]
    config.data.length_buckets = 0  # every window padded to max_seq_len
    config.train.epochs = 2
    config.train.log_every = 100
    config.optim.learning_rates = (3e-5,)
    config.squad = dict(
        doc_stride=128,  # tokens between the starts of a context's windows
        max_query_length=64,  # question tokens kept, the rest cut
        n_best_size=20,  # start and end candidates per window in decoding
        max_answer_length=30,  # longest answer in tokens
        # v2.0: answer "" where null score - best non-null score exceeds it (the best value on
        # dev is in eval_results.json as best_f1_thresh).
        null_score_diff_threshold=0.0,
    )
    return config


# finetune_glue's keys and SQuAD's own (the window sizes' rule across keys is the SQuAD
# kind's: squad_features.check_window_sizes).
SCHEMA = Schema(
    finetune_glue.SCHEMA.keys
    | {
        "squad.doc_stride": Int("tokens between windows (--doc-stride)", low=1),
        "squad.max_query_length": Int("question tokens kept (--max-query-length)", low=1),
        "squad.n_best_size": Int("start and end candidates per window (--n-best-size)", low=1),
        "squad.max_answer_length": Int("longest answer in tokens (--max-answer-length)", low=1),
        "squad.null_score_diff_threshold": Float(
            "v2.0: null-answer threshold (--null-score-diff-threshold)"
        ),
    },
    rules=finetune_glue.SCHEMA.rules,
    source="bertjax/configs/finetune_squad.py",
)
