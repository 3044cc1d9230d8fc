"""Length-bucketed fine-tuning (finetune/buckets.py): the bucket lengths, every example once per
epoch in an order that is a pure function of (seed, epoch), a few compiled shapes, bucketed
predictions equal to padded ones (GLUE and SQuAD), honest tokens/s, a bucketed run through the
CLI that learns, bad input, and `bertjax bench finetune-buckets`."""

import functools
import itertools
import json
from pathlib import Path

import jax
import numpy as np
import pytest

from bertjax import cli
from bertjax.data import load_tokenizer
from bertjax.finetune import batches, buckets, heads, kind_squad, span_head
from bertjax.finetune import train as ft
from bertjax.train import sharding
from bertjax.train.config import load_config
from bertjax.train.metrics_writer import read_metrics
from bertjax.train.step_metrics import StepMetrics
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
    per_bucket = sum(-(-n // 16) for n in plan.rows_per_bucket())
    assert len(steps) == plan.steps_per_epoch(16) == per_bucket
    rows = np.concatenate([r for _, r in steps])
    assert sorted(rows[rows >= 0]) == list(range(203))  # each example exactly once
    lengths = buckets.row_lengths(train)
    for length, r in steps:
        real = r[r >= 0]
        assert length in plan.lengths and (lengths[real] <= length).all()
        # the smallest bucket that holds the row; padding (-1) only at a batch's end
        assert (plan.train_bucket[real] == plan.lengths.index(length)).all()
        assert (r[len(real):] == -1).all()
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
    cfg = load_config("finetune_glue", ["batch_size=16", "length_buckets=3", "max_seq_len=64"])
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
    model = heads.BertForSequenceClassification(cfg, 2)
    bert = init_params(cfg)["bert"]
    head = jax.jit(lambda k: heads.init_params(cfg, k, num_labels=2))(jax.random.key(1))
    params = {"bert": bert, "classifier": jax.tree.map(lambda x: x.unbox(), head["classifier"],
                                                       is_leaf=lambda x: hasattr(x, "unbox"))}
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
    cfg = load_config("finetune_squad", ["max_seq_len=32", "doc_stride=8", "max_query_length=8"])
    kind, dev = squad_split(tmp_path, cfg)
    lengths = buckets.row_lengths(dev)
    assert lengths.min() < 16 and (lengths == 32).any()  # short windows and full ones
    # Answer positions fall inside each window's real tokens (0, [CLS], when not in it).
    for key in ("start_positions", "end_positions"):
        assert (dev.arrays[key] < lengths).all()
    mcfg = tiny_cfg(max_position_embeddings=32)
    model = span_head.BertForQuestionAnswering(mcfg)
    params = jax.jit(lambda k: jax.tree.map(lambda x: x.unbox(), span_head.init_params(mcfg, k),
                                            is_leaf=lambda x: hasattr(x, "unbox")))(
        jax.random.key(2))  # fmt: skip
    plan = buckets.Plan.of(dev, 3, 32)  # buckets from these windows' own lengths
    padded, bucketed = predictions_both_ways(span_head.predict_step, model, params, dev, plan,
                                             32, True)  # fmt: skip
    assert [x.shape for x in bucketed] == [x.shape for x in padded] == [(len(dev), 32)] * 2
    real = dev.arrays["input_mask"].astype(bool)
    for b, p in zip(bucketed, padded):
        np.testing.assert_allclose(b[real], p[real], rtol=1e-5, atol=1e-5)
    got, want = kind.decode(dev, bucketed), kind.decode(dev, padded)
    assert got.answers == want.answers
    assert [[e["text"] for e in v] for v in got.nbest.values()] == \
        [[e["text"] for e in v] for v in want.nbest.values()]
    m_got, m_want = kind.metrics(dev, bucketed, got), kind.metrics(dev, padded, want)
    assert m_got.keys() == m_want.keys()
    for key in m_want:
        assert m_got[key] == pytest.approx(m_want[key], rel=1e-5), key


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
    assert steps > 512 // 32  # each bucket's last batch is padded
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
    argv = ("bench finetune-buckets --preset tiny --train 128 --dev 64 --epochs 2 "
            "--batch-size 16 --max-seq-len 24 --length-buckets 2 --seeds 2 --json")
    assert cli.main(argv.split()) == 0
    out = capsys.readouterr().out
    result = json.loads(out.strip().splitlines()[-1])
    runs = result["runs"]
    assert [(r["length_buckets"], r["seed"]) for r in runs] == [(2, 0), (0, 0), (2, 1), (0, 1)]
    assert all(r["bucket_lengths"] == [24] for r in runs if r["length_buckets"] == 0)
    assert result["examples_per_s_ratio"] == pytest.approx(
        result["mean"]["bucketed"]["examples_per_s"] / result["mean"]["padded"]["examples_per_s"])
    spread = [abs(runs[i]["dev_accuracy"] - runs[i + 2]["dev_accuracy"]) for i in (0, 1)]
    assert result["noise_band"] == pytest.approx(max(spread))  # seed to seed, within a side
    assert "bucketed / padded examples/s" in out and "noise band" in out
    assert "epoch 1 compiles every batch shape" in out
