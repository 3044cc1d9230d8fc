"""Length-bucketed fine-tuning (finetune/buckets.py): the bucket lengths, every example once per
epoch in an order that is a pure function of (seed, epoch), a few compiled shapes, bucketed
predictions equal to padded ones (GLUE, SQuAD, NER, SWAG), honest tokens/s, a bucketed run
through the CLI that learns, bad input, and `bertjax bench finetune-buckets`."""

import functools
import itertools
import json
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
import pytest

from bertjax import cli
from bertjax.data import load_tokenizer
from bertjax.finetune import batches, buckets, classifier_head, heads, kind_squad, span_head
from bertjax.finetune import train as ft
from bertjax.train import sharding
from bertjax.train.config import load_config
from bertjax.train.metrics_writer import read_metrics
from bertjax.train.step_metrics import StepMetrics
from helpers import assert_trees_close
from tests.test_finetune import WORDS, init_params, tiny_cfg, write_tsv, write_vocab
from tests.test_finetune_squad import squad_json

MESH = {"data": -1, "fsdp": 1, "tensor": 1}


def mask_split(lengths, max_seq_len: int = 64, name: str = "train") -> batches.Split:
    """A Split whose rows have the given real lengths (ids 5.. then padding)."""
    lengths = np.asarray(lengths)
    mask = (np.arange(max_seq_len)[None, :] < lengths[:, None]).astype(np.int32)
    ids = np.where(mask, 5 + np.arange(max_seq_len) % 30, 0).astype(np.int32)
    arrays = {"input_ids": ids, "input_mask": mask, "segment_ids": np.zeros_like(ids),
              "labels": np.arange(len(lengths)) % 2}  # fmt: skip
    return batches.Split(name, arrays, np.arange(len(lengths)))


def padded_tokens(lengths, chosen) -> int:
    return int(sum(min(b for b in chosen if b >= n) for n in lengths))


# --- bucket lengths ------------------------------------------------------------------------


def test_bucket_lengths_are_the_fewest_padded_tokens_multiples_of_8():
    rng = np.random.default_rng(0)
    lengths = np.concatenate([rng.integers(5, 20, 300), rng.integers(30, 50, 60), [97]])
    chosen = buckets.choose_lengths(lengths, 3, max_seq_len=128)
    assert len(chosen) == 3 and all(b % 8 == 0 for b in chosen), chosen
    assert chosen[-1] == 104  # the longest row (97), rounded up to a multiple of 8
    # The best of every choice of 3 multiples of 8 that hold the longest row:
    options = [(*c, 104) for c in itertools.combinations(range(8, 104, 8), 2)]
    assert padded_tokens(lengths, chosen) == min(padded_tokens(lengths, c) for c in options)
    # Capped at max_seq_len (which need not be a multiple of 8); 0 buckets: max_seq_len alone.
    assert buckets.choose_lengths(np.array([3, 99, 100]), 2, max_seq_len=100)[-1] == 100
    assert buckets.choose_lengths(lengths, 0, max_seq_len=128) == (128,)
    # No more buckets than distinct rounded lengths (a fifth would save nothing).
    assert buckets.choose_lengths(np.array([3, 9, 9, 20]), 5, max_seq_len=64) == (8, 16, 24)


def test_each_row_goes_into_the_smallest_bucket_that_holds_it():
    assert list(buckets.assign(np.array([1, 16, 17, 32, 33]), (16, 32))) == [0, 0, 1, 1, 2]
    # Dev rows longer than every training bucket have max_seq_len's bucket at prediction.
    assert buckets.prediction_lengths((16, 32), 64) == (16, 32, 64)
    assert buckets.prediction_lengths((16, 64), 64) == (16, 64)


# --- epoch order ---------------------------------------------------------------------------


def test_every_example_is_seen_once_per_epoch_in_an_order_of_seed_and_epoch():
    rng = np.random.default_rng(1)
    train = mask_split(rng.integers(3, 60, 203))
    plan = buckets.Plan.of(train, 3, 64)
    steps = plan.epoch(16, seed=5, epoch=0)
    assert len(steps) == plan.steps_per_epoch(16) == -(-203 // 16)  # as without buckets
    assert sum(plan.batches_per_bucket(16)) == len(steps)
    rows = np.concatenate([r for _, r in steps])
    assert sorted(rows[rows >= 0]) == list(range(203))  # each example exactly once
    lengths = buckets.row_lengths(train)
    for length, r in steps:
        real = r[r >= 0]
        assert length in plan.lengths and (lengths[real] <= length).all()
        # a bucket that holds the row (its own, or a longer one it was carried into);
        # padding (-1) only at a batch's end
        assert (plan.train_bucket[real] <= plan.lengths.index(length)).all()
        assert (r[len(real) :] == -1).all()
    assert len(set(np.diff([plan.lengths.index(n) for n, _ in steps]))) > 1  # buckets mixed
    again = plan.epoch(16, seed=5, epoch=0)
    assert all(a == c and (r == s).all() for (a, r), (c, s) in zip(steps, again))
    other = np.concatenate([r for _, r in plan.epoch(16, seed=5, epoch=1)])
    assert not (other == rows).all()
    # One bucket (--length-buckets 0): batches.epoch_rows' batches, in its order.
    single = buckets.Plan.of(train, 0, 64)
    assert single.lengths == (64,)
    one = np.stack([r for _, r in single.epoch(16, seed=5, epoch=2)])
    assert (one == batches.epoch_rows(203, 16, seed=5, epoch=2)).all()


def test_an_epoch_has_one_partial_batch_and_spreads_each_bucket_over_it():
    """Buckets of very different sizes: each bucket's leftover rows are carried into the next
    bucket, so only one batch of the epoch is partial (as without buckets); and each bucket's
    batches are spread evenly over the epoch, never bunched in a run (the cause of bucketed
    SQuAD training falling behind padded: a bucket's rows share a label distribution, and runs
    of one bucket skew the optimizer; docs/TRAINING.md)."""
    rng = np.random.default_rng(3)
    train = mask_split(
        np.concatenate(
            [
                rng.integers(3, 9, 45),
                rng.integers(17, 25, 300),
                rng.integers(33, 41, 1500),
                rng.integers(57, 65, 2700),
            ]
        )
    )
    plan = buckets.Plan.of(train, 4, 64)
    assert list(plan.rows_per_bucket()) == [45, 300, 1500, 2700]  # leftovers 13, 12, 28, 12
    for epoch in range(3):
        steps = plan.epoch(32, seed=0, epoch=epoch)
        partial = [r for _, r in steps if (r < 0).any()]
        assert len(partial) == 1 and (partial[0] < 0).sum() == -len(train) % 32
        index = np.array([plan.lengths.index(length) for length, _ in steps])
        for b, n in enumerate(plan.batches_per_bucket(32)):
            at = np.flatnonzero(index == b)
            assert len(at) == n
            if n > 1:  # evenly spaced: gaps of S / n, give or take one batch per other bucket
                bound = len(steps) / n + len(plan.lengths)  # (a shuffle's reach 2-4 x S / n)
                assert np.diff(at).max() <= bound, (b, np.diff(at))


def test_a_bucketed_span_step_equals_the_padded_one():
    """The same SQuAD rows cut to their bucket or padded to max_seq_len: the span loss (a
    softmax over each row's real tokens) and its gradients are the same. With padding in the
    softmax they were not (loss 3.70 vs 4.23 on the generated task's shortest bucket)."""
    cfg = tiny_cfg(max_position_embeddings=64)
    head = span_head.head(cfg)
    params = jax.jit(lambda k: nn.meta.unbox(head.init_params(cfg, k)))(jax.random.key(3))
    rng = np.random.default_rng(0)
    lengths = rng.integers(12, 40, 16)
    split = mask_split(lengths)
    split.arrays["start_positions"] = rng.integers(0, lengths).astype(np.int32)
    split.arrays["end_positions"] = np.minimum(
        split.arrays["start_positions"] + 2, lengths - 1
    ).astype(np.int32)
    rows = np.arange(16)

    def loss_and_grads(batch):
        def loss(p):
            sums = head.objective.sums(head.model, p, batch, None, True)
            return head.objective.loss(sums, head.objective.denominators(batch))

        return jax.jit(jax.value_and_grad(loss))(params)

    (padded, padded_grads), (cut, cut_grads) = (
        loss_and_grads(buckets.take(split, rows, length)) for length in (64, 40)
    )
    assert float(cut) == pytest.approx(float(padded), rel=1e-6)
    assert_trees_close(cut_grads, padded_grads, atol=1e-6)


def test_global_batches_do_not_depend_on_the_process_count():
    """Every process computes the same global batches; its slices put together are them."""
    train = mask_split(np.random.default_rng(2).integers(3, 60, 100))
    plan = buckets.Plan.of(train, 4, 64)
    for length, rows in plan.epoch(16, seed=0, epoch=0):
        whole = buckets.take(train, rows, length)
        for count in (2, 4):
            parts = [batches.local_slice(whole, p, count) for p in range(count)]
            for key, value in whole.items():
                assert (np.concatenate([part[key] for part in parts]) == value).all()


def test_a_batch_cuts_the_inputs_to_its_length_and_keeps_the_labels():
    train = mask_split([3, 10, 20])
    batch = buckets.take(train, np.array([1, 2, -1]), 24)
    assert {k: v.shape for k, v in batch.items()} == {
        "input_ids": (3, 24), "input_mask": (3, 24), "segment_ids": (3, 24), "labels": (3,),
        "weights": (3,)}  # fmt: skip
    assert list(batch["labels"]) == [1, 0, 0] and list(batch["weights"]) == [1, 1, 0]
    assert batch["input_mask"].sum() == 10 + 20 + 3  # nothing real is cut (row 0 pads)


# --- the loop: compiled shapes, honest throughput ----------------------------------------


class RecordingStep:
    """A train_fn that records the shapes it is called with (what jit would compile)."""

    def __init__(self):
        self.shapes = []

    def __call__(self, state, batch, rng):
        self.shapes.append(tuple(batch["input_ids"].shape))
        return state, {"loss": 0.0}


class RecordingMetrics:
    def __init__(self):
        self.tokens = []

    def dispatched(self, step, metrics, *, log, tokens=None):
        self.tokens.append(tokens)

    def flush(self):
        pass


def test_the_train_step_sees_at_most_k_shapes_and_logs_each_steps_tokens():
    train = mask_split(np.random.default_rng(3).integers(3, 60, 150))
    cfg = load_config(
        "finetune_glue",
        ["train.global_batch_size=16", "data.length_buckets=3", "data.max_seq_len=64"],
    )
    plan = buckets.Plan.of(train, 3, 64)
    run = ft.Prepared(cfg=cfg, kind=None, mesh=sharding.make_mesh(MESH), model_cfg=None,
                      bert_params=None, tokenizer=None, splits={"train": train}, plan=plan,
                      main_key="accuracy")  # fmt: skip
    step_fn, metrics = RecordingStep(), RecordingMetrics()
    session = ft.Session(None, step_fn, None, jax.random.key(0), 0)
    _, step = ft.train_epoch(run, session, None, 0, 0, metrics)
    _, step = ft.train_epoch(run, session, None, 1, step, metrics)
    assert step == 2 * plan.steps_per_epoch(16)
    assert set(step_fn.shapes) == {(16, n) for n in plan.lengths} and len(plan.lengths) == 3
    assert metrics.tokens == [16 * n for _, n in step_fn.shapes]


class ListWriter:
    def __init__(self):
        self.records = []

    def write(self, step, metrics):
        self.records.append((step, metrics))


def test_tokens_per_s_counts_the_padded_tokens_each_step_computed():
    writer = ListWriter()
    sm = StepMetrics(writer, 1000, 0, remedy="")
    for step, tokens in ((1, 160), (2, 320), (3, 640)):
        sm.dispatched(step, {"loss": 1.0, "real_tokens": tokens / 2}, log=step == 3, tokens=tokens)
    record = sm.flush()
    # (160 + 320 + 640) tokens over the same seconds as half as many real ones: not 3 x 1000.
    assert record["real_tokens_per_s"] / record["tokens_per_s"] == pytest.approx(0.5)
    sm.dispatched(4, {"loss": 1.0}, log=True)  # no count given: tokens_per_step, as before
    assert sm.flush()["tokens_per_s"] > 0


# --- predictions: bucketed == padded ----------------------------------------------------


def predictions_both_ways(predict_step, model, params, split, plan, max_seq_len, token_outputs):
    mesh = sharding.make_mesh(MESH)
    fn = jax.jit(functools.partial(predict_step, model=model))
    padded = buckets.predict(fn, params, split, 16, mesh, (max_seq_len,), max_seq_len,
                             token_outputs)  # fmt: skip
    lengths = buckets.prediction_lengths(plan.lengths, max_seq_len)
    bucketed = buckets.predict(fn, params, split, 16, mesh, lengths, max_seq_len, token_outputs)
    return padded, bucketed


def test_bucketed_glue_predictions_equal_padded_ones():
    cfg = tiny_cfg()
    model = classifier_head.BertForSequenceClassification(cfg, 2)
    bert = init_params(cfg)["bert"]
    init = classifier_head.head(cfg, 2, regression=False).init_params
    head = jax.jit(lambda k: init(cfg, k))(jax.random.key(1))
    params = {
        "bert": bert,
        "classifier": jax.tree.map(
            lambda x: x.unbox(), head["classifier"], is_leaf=lambda x: hasattr(x, "unbox")
        ),
    }
    rng = np.random.default_rng(4)
    train = mask_split(rng.integers(3, 30, 100))
    dev = mask_split(np.concatenate([rng.integers(3, 30, 37), [50, 64]]), name="dev")
    plan = buckets.Plan.of(train, 3, 64)
    assert plan.lengths[-1] < 50  # two dev rows need max_seq_len's bucket
    padded, bucketed = predictions_both_ways(heads.predict_step, model, params, dev, plan, 64,
                                             False)  # fmt: skip
    assert padded.shape == bucketed.shape == (39, 2)
    np.testing.assert_allclose(bucketed, padded, rtol=1e-5, atol=1e-5)
    assert (bucketed.argmax(-1) == padded.argmax(-1)).all()


def squad_split(folder: Path, cfg):
    """A SQuAD dev split of contexts of 3-40 words of the tiny vocabulary (windows of every
    length), decoded by SquadKind."""
    rng = np.random.default_rng(5)
    groups = []
    for _ in range(40):
        words = [WORDS[i] for i in rng.integers(0, 30, rng.integers(3, 40))]
        start = int(rng.integers(0, len(words)))
        sentence = " ".join(words)
        offset = len(" ".join(words[:start])) + (1 if start else 0)
        groups.append([(sentence, (offset, offset + len(words[start])))])
    data = folder / "data"
    data.mkdir()
    (data / "dev-v1.1.json").write_text(json.dumps(squad_json(groups)))
    from bertjax.finetune import squad_data

    examples = squad_data.read_squad_json(data / "dev-v1.1.json", "v1.1")
    kind = kind_squad.SquadKind(cfg, "squad")
    tokenizer = load_tokenizer(write_vocab(folder / "vocab"))
    return kind, kind.encode({"validation": examples}, tokenizer)["validation"]


def test_bucketed_squad_predictions_equal_padded_ones(tmp_path):
    """Same answers, n-best lists, EM/F1 and dev loss: the logits come back at max_seq_len
    (-inf past the bucket) and decoding leaves every row's padding out."""
    cfg = load_config(
        "finetune_squad", ["data.max_seq_len=32", "squad.doc_stride=8", "squad.max_query_length=8"]
    )
    kind, dev = squad_split(tmp_path, cfg)
    lengths = buckets.row_lengths(dev)
    assert lengths.min() < 16 and (lengths == 32).any()  # short windows and full ones
    # Answer positions fall inside each window's real tokens (0, [CLS], when not in it).
    for key in ("start_positions", "end_positions"):
        assert (dev.arrays[key] < lengths).all()
    mcfg = tiny_cfg(max_position_embeddings=32)
    model = span_head.BertForQuestionAnswering(mcfg)
    init = span_head.head(mcfg).init_params
    params = jax.jit(lambda k: jax.tree.map(lambda x: x.unbox(), init(mcfg, k),
                                            is_leaf=lambda x: hasattr(x, "unbox")))(
        jax.random.key(2))  # fmt: skip
    plan = buckets.Plan.of(dev, 3, 32)  # buckets from these windows' own lengths
    padded, bucketed = predictions_both_ways(heads.predict_step, model, params, dev, plan,
                                             32, True)  # fmt: skip
    assert [x.shape for x in bucketed] == [x.shape for x in padded] == [(len(dev), 32)] * 2
    real = dev.arrays["input_mask"].astype(bool)
    for b, p in zip(bucketed, padded):
        np.testing.assert_allclose(b[real], p[real], rtol=1e-5, atol=1e-5)
    got, want = kind.decode(dev, bucketed), kind.decode(dev, padded)
    assert got.answers == want.answers
    assert [[e["text"] for e in v] for v in got.nbest.values()] == [
        [e["text"] for e in v] for v in want.nbest.values()
    ]
    m_got, m_want = kind.metrics(dev, bucketed, got), kind.metrics(dev, padded, want)
    assert m_got.keys() == m_want.keys()
    for key in m_want:
        assert m_got[key] == pytest.approx(m_want[key], rel=1e-5), key


def head_params(head, cfg, seed: int):
    """A head's random parameters, unboxed (jitted)."""
    return jax.jit(lambda k: jax.tree.map(lambda x: x.unbox(), head.init_params(cfg, k),
                                          is_leaf=lambda x: hasattr(x, "unbox")))(
        jax.random.key(seed))  # fmt: skip


def test_bucketed_ner_predictions_equal_padded_ones(tmp_path):
    """Token logits [n, L, K] come back at max_seq_len: the same at every real position, so
    the same words' tags and conlleval scores; sentences longer than a window span several
    rows, and the label arrays are cut with the inputs."""
    from bertjax.finetune import conll_data, kind_ner

    cfg = load_config("finetune_ner", ["task=ner", "ner.labels=O,B-X,I-X",
                                       "data.max_seq_len=32"])  # fmt: skip
    kind = kind_ner.make(cfg, "ner")
    rng = np.random.default_rng(7)
    tags = ("O", "B-X", "I-X")
    sentences = [conll_data.Sentence(tuple(WORDS[i] for i in rng.integers(0, 30, n)),
                                     tuple(tags[i] for i in rng.integers(0, 3, n)))
                 for n in rng.integers(1, 45, 40)]  # fmt: skip
    tokenizer = load_tokenizer(write_vocab(tmp_path / "vocab"))
    dev = kind.encode({"validation": sentences}, tokenizer)["validation"]
    lengths = buckets.row_lengths(dev)
    assert len(dev) > len(sentences) and lengths.min() < 16 and (lengths == 32).any()
    batch = buckets.take(dev, np.arange(4), 16)
    assert batch["label_ids"].shape == batch["label_weights"].shape == (4, 16)
    mcfg = tiny_cfg(max_position_embeddings=32)
    head = kind.head(mcfg)
    params = head_params(head, mcfg, 3)
    plan = buckets.Plan.of(dev, 3, 32)
    padded, bucketed = predictions_both_ways(heads.predict_step, head.model, params, dev, plan,
                                             32, True)  # fmt: skip
    assert bucketed.shape == padded.shape == (len(dev), 32, 3)
    real = dev.arrays["input_mask"].astype(bool)
    np.testing.assert_allclose(bucketed[real], padded[real], rtol=1e-5, atol=1e-5)
    assert kind.decode(dev, bucketed) == kind.decode(dev, padded)
    m_got, m_want = (kind.metrics(dev, out, kind.decode(dev, out)) for out in (bucketed, padded))
    assert m_got.keys() == m_want.keys()
    for key in m_want:
        assert m_got[key] == pytest.approx(m_want[key], rel=1e-5), key


def test_bucketed_swag_predictions_equal_padded_ones(tmp_path):
    """Choices [n, 4, L] go into the bucket of their longest choice; the scores [n, 4] (and so
    the chosen endings and the accuracy) equal the padded ones; a batch cuts all four."""
    from bertjax.finetune import kind_swag
    from bertjax.finetune.swag_data import SwagExample

    cfg = load_config("finetune_swag", ["data.max_seq_len=32"])
    kind = kind_swag.make(cfg, "swag")
    rng = np.random.default_rng(8)
    text = lambda n: " ".join(WORDS[i] for i in rng.integers(0, 30, n))
    examples = [SwagExample(i, text(rng.integers(1, 8)), text(2),
                            tuple(text(rng.integers(1, 35)) for _ in range(4)), i % 4)
                for i in range(37)]  # fmt: skip
    tokenizer = load_tokenizer(write_vocab(tmp_path / "vocab"))
    dev = kind.encode({"validation": examples}, tokenizer)["validation"]
    per_choice = dev.arrays["input_mask"].sum(-1)
    assert (buckets.row_lengths(dev) == per_choice.max(1)).all()
    assert (per_choice.min(1) < per_choice.max(1)).any() and (per_choice == 32).any()
    batch = buckets.take(dev, np.array([0, 1, -1]), 24)
    assert batch["input_ids"].shape == (3, 4, 24) and batch["labels"].shape == (3,)
    mcfg = tiny_cfg(max_position_embeddings=32)
    head = kind.head(mcfg)
    params = head_params(head, mcfg, 4)
    plan = buckets.Plan.of(dev, 3, 32)
    assert len(plan.lengths) > 1
    padded, bucketed = predictions_both_ways(heads.predict_step, head.model, params, dev, plan,
                                             32, False)  # fmt: skip
    assert bucketed.shape == padded.shape == (37, 4)
    np.testing.assert_allclose(bucketed, padded, rtol=1e-5, atol=1e-5)
    assert (kind.decode(dev, bucketed) == kind.decode(dev, padded)).all()


# --- end to end and bad input -------------------------------------------------------------


def write_sst2_topics(folder: Path, n_train: int, n_dev: int) -> None:
    """SST-2 layout: sentences of 3-50 words of one topic (w0..w14 or w15..w29), the label."""
    rng = np.random.default_rng(6)
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", n_train), ("dev", n_dev)):
        topics = rng.integers(0, 2, n)
        rows = [(" ".join(WORDS[15 * t + j] for j in rng.integers(0, 15, rng.integers(3, 50))), t)
                for t in topics]  # fmt: skip
        write_tsv(folder / f"{name}.tsv", ["sentence", "label"], rows)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from bertjax import hf

    folder = tmp_path_factory.mktemp("tiny_model")
    vocab = write_vocab(folder)
    return hf.write_folder(init_params(tiny_cfg()), tiny_cfg(), folder, [vocab])


@pytest.mark.slow
def test_a_bucketed_fine_tune_learns_through_the_cli(tiny_model, tmp_path, capsys):
    write_sst2_topics(tmp_path / "sst2", 512, 96)
    workdir = tmp_path / "run"
    argv = ["finetune", "--task", "sst2", "--init", str(tiny_model), "--data",
            str(tmp_path / "sst2"), "--workdir", str(workdir), "--max-seq-len", "64",
            "--length-buckets", "3", "--epochs", "3", "--lr", "1e-3", "--batch-size", "32",
            "--log-every", "8"]  # fmt: skip
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    result = json.loads(out.strip().splitlines()[-1])
    assert result["accuracy"] >= 0.9, result
    assert result["examples"] == 96
    log = next(line for line in out.splitlines() if "length buckets" in line)
    lengths = [int(n) for n in log.split("length buckets ")[1].split()[0].split("/")]
    assert len(lengths) == 3 and lengths[-1] <= 56, log  # the longest row: 51 tokens
    train = [r for r in read_metrics(workdir) if r["split"] == "train"]
    assert all(0 < r["real_tokens_per_s"] < r["tokens_per_s"] for r in train)
    steps = result["step"] // 3
    # Leftover rows are carried into the next bucket (buckets.Plan.epoch): one partial batch
    # per epoch at most, as padded, so an epoch has exactly ceil(512 / 32) steps.
    assert steps == -(-512 // 32)
    assert f"3 epochs x {steps} steps of 32" in out


@pytest.mark.parametrize("value", ["-1", "2.5", "True"])
def test_a_bad_bucket_count_is_one_clear_error(tmp_path, capsys, value):
    argv = ["finetune", "--task", "sst2", "--init", str(tmp_path), "--workdir",
            str(tmp_path / "run"), f"--config.length_buckets={value}"]  # fmt: skip
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2 and "length_buckets" in err and "Traceback" not in err, err


@pytest.mark.slow
def test_bench_finetune_buckets_prints_the_side_by_side_table(capsys):
    argv = (
        "bench finetune-buckets --preset tiny --train 128 --dev 64 --epochs 2 "
        "--batch-size 16 --max-seq-len 24 --length-buckets 2 --seeds 2 --json"
    )
    assert cli.main(argv.split()) == 0
    out = capsys.readouterr().out
    result = json.loads(out.strip().splitlines()[-1])
    runs = result["runs"]
    assert [(r["length_buckets"], r["seed"]) for r in runs] == [(2, 0), (0, 0), (2, 1), (0, 1)]
    assert all(r["bucket_lengths"] == [24] for r in runs if r["length_buckets"] == 0)
    assert result["examples_per_s_ratio"] == pytest.approx(
        result["mean"]["bucketed"]["examples_per_s"] / result["mean"]["padded"]["examples_per_s"]
    )
    spread = [abs(runs[i]["dev_score"] - runs[i + 2]["dev_score"]) for i in (0, 1)]
    assert result["noise_band"] == pytest.approx(max(spread))  # seed to seed, within a side
    assert "bucketed / padded examples/s" in out and "noise band" in out
    assert "(epoch 1 is a warm-up); compilation, dev evaluation" in out


@pytest.mark.slow  # two tiny SQuAD-style runs: ~40 s
def test_bench_finetune_buckets_runs_the_squad_task(capsys):
    """--task squad: generated extractive questions on demo-corpus text, bucketed and padded,
    scored by dev F1 (the `first-half` rule of the sst2 task is refused with it)."""
    argv = (
        "bench finetune-buckets --task squad --train 96 --dev 24 --epochs 2 "
        "--batch-size 16 --length-buckets 2 --seeds 1 --json"
    )
    assert cli.main(argv.split()) == 0
    out = capsys.readouterr().out
    result = json.loads(out.strip().splitlines()[-1])
    assert result["task"] == "squad" and [r["length_buckets"] for r in result["runs"]] == [2, 0]
    assert all(0 <= r["dev_score"] <= 100 for r in result["runs"])
    assert "dev F1" in out and "SQuAD-style questions" in out
    assert cli.main(["bench", "finetune-buckets", "--task", "squad", "--rule", "first-half"]) == 2
