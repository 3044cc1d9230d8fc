"""The SQuAD task kind: span extraction for the shared fine-tuning loop (train.py): the official
JSON files or the hub, run_squad.py's windows, the span head, n-best decoding with the v2.0
null-score threshold, the official EM/F1, predictions.json (+ null_odds.json) and an export
that transformers' BertForQuestionAnswering loads."""

import dataclasses
import math
from pathlib import Path

import numpy as np

from bertjax.errors import UserError
from bertjax.finetune import batches, heads, span_head, squad_data, squad_decode, squad_features

DEFAULT_CONFIG = "finetune_squad"
VERSIONS = {"squad": "v1.1", "squad_v2": "v2.0"}  # task name -> SQuAD version
# Training questions of train-v1.1.json / train-v2.0.json (bench estimates count one window
# per question; contexts longer than a window add about 1%).
TRAIN_EXAMPLES = {"squad": 87_599, "squad_v2": 130_319}

# Other spellings of the two task names, after lower-casing and dropping "-", "_" and ".".
_ALIASES = {"squad": "squad", "squadv1": "squad", "squadv11": "squad", "squadv2": "squad_v2",
            "squadv20": "squad_v2"}  # fmt: skip
# The `squad` section's keys (configs/finetune_squad.py) with the flags that set them.
FLAGS = {
    "doc_stride": "--doc-stride",
    "max_query_length": "--max-query-length",
    "n_best_size": "--n-best-size",
    "max_answer_length": "--max-answer-length",
    "null_score_diff_threshold": "--null-score-diff-threshold",
}
FILES = {  # the official file names, in the --data directory
    "v1.1": {"train": "train-v1.1.json", "validation": "dev-v1.1.json"},
    "v2.0": {"train": "train-v2.0.json", "validation": "dev-v2.0.json"},
}
HUB_NAMES = {"v1.1": "rajpurkar/squad", "v2.0": "rajpurkar/squad_v2"}


@dataclasses.dataclass(frozen=True)
class Windows:
    """What decoding a split's logits needs: its questions and their windows."""

    examples: list  # squad_data.SquadExample, in the file's order
    features: squad_features.SquadFeatures  # the split's rows, in order


def task_names() -> tuple[str, ...]:
    """squad (v1.1) and squad_v2 (v2.0)."""
    return tuple(VERSIONS)


def canonical_name(task: str) -> str | None:
    """ "squad" or "squad_v2" for any spelling of a SQuAD task ("SQuAD", "squad-v2.0"), else
    None."""
    return _ALIASES.get(task.lower().replace("-", "").replace("_", "").replace(".", ""))


def make(cfg, name: str) -> "SquadKind":
    """The SQuAD kind of task `name` for the run's config `cfg`."""
    return SquadKind(cfg, name)


def check_config(cfg, name: str) -> None:
    """Raises a UserError naming the flag when a SQuAD setting cannot work."""
    if "squad" not in cfg:
        raise UserError(
            f"--task {name} needs the config key(s) {', '.join('squad.' + k for k in FLAGS)}: "
            "use --config finetune_squad (the default for SQuAD tasks) or a config derived "
            "from it"
        )
    # Each key's type and range are the config schema's (configs/finetune_squad.py); what
    # the keys allow together is checked here.
    squad = cfg.squad
    squad_features.check_window_sizes(
        cfg.data.max_seq_len, squad.doc_stride, squad.max_query_length
    )
    threshold = squad.null_score_diff_threshold
    if VERSIONS[name] == "v1.1" and threshold != 0:
        raise UserError(
            f"--null-score-diff-threshold={threshold} applies to SQuAD v2.0 (--task squad_v2) "
            "only: every v1.1 question has an answer"
        )


class SquadKind:
    """SQuAD v1.1 (`squad`) or v2.0 (`squad_v2`) of a run's config (see train.TaskKind)."""

    exports_model = True
    token_outputs = True  # start and end logits [n, max_seq_len]
    dev_splits = ("validation",)
    output_splits = ("validation",)  # predictions.json is of the dev set
    main_metric = "f1"
    min_seq_len = 5  # check_config has already made sure windows hold context

    def __init__(self, cfg, name: str):
        check_config(cfg, name)
        self.cfg, self.name, self.version = cfg, name, VERSIONS[name]
        self.train_examples = TRAIN_EXAMPLES[name]

    def load_examples(self) -> dict[str, list]:
        """split -> validated SquadExamples: the official files in cfg.data, or the hub."""
        if self.cfg.data.dir is None:
            hub = HUB_NAMES[self.version]
            return {s: squad_data.load_squad_hub(hub, s, self.version) for s in FILES[self.version]}
        data = Path(self.cfg.data.dir)
        if not data.is_dir():
            raise UserError(f"SQuAD data directory {data} does not exist")
        examples = {}
        for split, filename in FILES[self.version].items():
            if not (data / filename).is_file():
                other = next(v for v in FILES if v != self.version)
                hint = (
                    f"; it holds {FILES[other][split]}, a SQuAD {other} file: choose "
                    f"--task {'squad' if other == 'v1.1' else 'squad_v2'}"
                    if (data / FILES[other][split]).is_file()
                    else ""
                )
                raise UserError(
                    f"SQuAD data directory {data} has no {filename} (the {split} "
                    f"file of SQuAD {self.version}){hint}"
                )
            examples[split] = squad_data.read_squad_json(data / filename, self.version)
        return examples

    def encode(self, examples: dict, tokenizer) -> dict[str, batches.Split]:
        """split -> Split of run_squad.py's windows; dev splits keep what decoding needs."""
        data, squad, splits = self.cfg.data, self.cfg.squad, {}
        for name, rows in examples.items():
            features = squad_features.build_features(
                rows, tokenizer, data.max_seq_len, squad.doc_stride, squad.max_query_length
            )
            source = None if name == "train" else Windows(rows, features)
            splits[name] = batches.Split(
                name, features.model_inputs(), features.example_index.astype(np.int64), source
            )
        return splits

    def head(self, model_cfg):
        """BertForQuestionAnswering: start and end logits from the last hidden state."""
        return span_head.head(model_cfg)

    def synthetic_batch(
        self, batch_size: int, seq_len: int, vocab_size: int, seed: int = 0
    ) -> dict:
        """Full-length two-segment rows, random answer start/end positions in the second
        segment (end >= start) and weights of 1."""
        batch = batches.synthetic_inputs(batch_size, seq_len, vocab_size, seed)
        rng = np.random.default_rng(seed)
        context = np.argmax(batch["segment_ids"], axis=1)  # first position of segment B
        batch["start_positions"] = rng.integers(context, seq_len).astype(np.int32)
        batch["end_positions"] = rng.integers(batch["start_positions"], seq_len).astype(np.int32)
        return batch

    def decode(self, split: batches.Split, outputs) -> squad_decode.SquadPredictions:
        """Each question's best non-null answer and n-best list, and for v2.0 its null-score
        difference (the threshold is applied when scoring and writing)."""
        start_logits, end_logits = real_positions(split, outputs)
        return squad_decode.decode_predictions(
            split.source.examples,
            split.source.features,
            start_logits,
            end_logits,
            version_2=self.version == "v2.0",
            n_best_size=self.cfg.squad.n_best_size,
            max_answer_length=self.cfg.squad.max_answer_length,
            null_score_diff_threshold=math.inf,
        )

    def answers(self, predictions: squad_decode.SquadPredictions) -> dict[str, str]:
        """predictions.json: v2.0 answers "" where null minus best non-null score exceeds
        --null-score-diff-threshold (run_squad.py's rule)."""
        if predictions.null_odds is None:
            return predictions.answers
        threshold = self.cfg.squad.null_score_diff_threshold
        return {qid: "" if predictions.null_odds[qid] > threshold else text
                for qid, text in predictions.answers.items()}  # fmt: skip

    def metrics(self, split: batches.Split, outputs, predictions) -> dict:
        """The official EM/F1 of the answers predictions.json holds; v2.0: what `evaluate-v2.0.py
        DEV predictions.json --na-prob-file null_odds.json --na-prob-thresh T` prints for the
        run's threshold T (HasAns/NoAns, the best thresholds found on this split); the mean
        span loss and the counts."""
        from bertjax.finetune import squad_metrics
        from bertjax.finetune.metrics import mean_cross_entropy

        gold = squad_data.gold_answers(split.source.examples)
        if self.version == "v1.1":
            scores = squad_metrics.squad_v1_scores(gold, predictions.answers)
        else:
            threshold = self.cfg.squad.null_score_diff_threshold
            scores = squad_metrics.squad_v2_scores(
                gold, self.answers(predictions), predictions.null_odds, threshold
            )
            scores["null_score_diff_threshold"] = threshold
        start_logits, end_logits = real_positions(split, outputs)
        loss = (
            mean_cross_entropy(start_logits, split.arrays["start_positions"])
            + mean_cross_entropy(end_logits, split.arrays["end_positions"])
        ) / 2
        return {**scores, "loss": loss, "examples": len(gold), "features": len(split)}

    def write_predictions(self, out_dir: Path, split: batches.Split, predictions) -> list[Path]:
        """predictions.json, nbest_predictions.json and (v2.0) null_odds.json, as the
        official evaluate-v1.1.py / evaluate-v2.0.py read them."""
        final = dataclasses.replace(predictions, answers=self.answers(predictions))
        return list(squad_decode.write_predictions(final, out_dir).values())

    def checkpoint_info(self) -> dict:
        """What the checkpoint records of the task beside the model."""
        return {"task": self.name, "version": self.version, **self.cfg.squad.to_dict()}

    def export(self, out: Path, params, model_cfg, tokenizer) -> None:
        """`out`: a folder transformers.BertForQuestionAnswering (and, for WordPiece,
        BertTokenizer) loads (heads.export_folder)."""
        heads.export_folder(out, params, model_cfg, tokenizer, span_head.HF_SPEC)


def real_positions(split: batches.Split, outputs):
    """(start, end) logits with -inf beyond each row's real tokens: padding is never an answer,
    and ranked among a window's n best (as run_squad.py ranks it) it would make predictions
    depend on how far a row was padded (max_seq_len, or a length bucket: buckets.predict);
    the dev loss is then the softmax over the real tokens."""
    real_NxL = split.arrays["input_mask"].astype(bool)
    return tuple(np.where(real_NxL, logits_NxL, -np.inf) for logits_NxL in outputs)
