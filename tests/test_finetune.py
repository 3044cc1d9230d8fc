"""`bertjax finetune`: a tiny BERT learns a generated sentence-pair task, a transformers
checkpoint fine-tunes through the CLI (MNLI, fsdp), STS-B regression with an lr sweep,
GLUE submission files, the head and its loss on the shared train step, and bad input."""

import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from bertjax import cli, hf
from bertjax import model as model_lib
from bertjax.data.synthetic import synthetic_dataset
from bertjax.finetune import batches, classifier_head, heads
from bertjax.finetune import train as ft
from bertjax.train import checkpoint, optim, sharding
from bertjax.train import config as config_lib
from bertjax.train import step as step_lib
from bertjax.train.checkpoint import Checkpointer
from bertjax.train.config import load_config
from bertjax.train.metrics_writer import read_metrics
from bertjax.train.step_metrics import PRETRAINING_REMEDY, check_finite

CONFIG = "bert_tiny"
WORDS = [f"w{i}" for i in range(30)]  # two topics: w0..w14 and w15..w29
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
ENTAILMENT = ("not_entailment", "entailment")


def write_vocab(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(SPECIALS + WORDS) + "\n")
    return folder / "vocab.txt"


def sentence(rng, topic: int) -> str:
    return " ".join(WORDS[j] for j in 15 * topic + rng.choice(15, rng.integers(3, 6)))


def topic_pairs(seed: int, n: int) -> list[tuple[str, str, int]]:
    """(A, B, 1 if both sentences are about the same topic): needs both sentences (an XOR
    of their topics), learnable by a small BERT from scratch in a few hundred steps."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        ta, tb = rng.integers(0, 2, 2)
        out.append((sentence(rng, ta), sentence(rng, tb), int(ta == tb)))
    return out


def write_tsv(path: Path, header: list[str], rows) -> None:
    path.write_text("".join("\t".join(map(str, r)) + "\n" for r in [header, *rows]))


def write_rte(folder: Path, n_train: int, n_dev: int, n_test: int) -> list[int]:
    """RTE-layout files of the topic task; returns the (unwritten) test labels."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 0), ("dev", n_dev, 1)):
        rows = [(i, a, b, ENTAILMENT[y]) for i, (a, b, y) in enumerate(topic_pairs(seed, n))]
        write_tsv(folder / f"{split}.tsv", ["index", "sentence1", "sentence2", "label"], rows)
    test = topic_pairs(2, n_test)
    write_tsv(
        folder / "test.tsv",
        ["index", "sentence1", "sentence2"],
        [(i, a, b) for i, (a, b, _) in enumerate(test)],
    )
    return [y for _, _, y in test]


VOCAB_SIZE = len(SPECIALS) + len(WORDS)


def tiny_cfg(**overrides):
    fields = {
        "vocab_size": VOCAB_SIZE,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 256,
        "max_position_embeddings": 64,
    }
    return model_lib.BertConfig(**(fields | overrides))


def init_params(cfg) -> dict:
    """Random BertForPreTraining parameters (jitted: much faster than op by op)."""
    return jax.jit(lambda key: nn.meta.unbox(model_lib.init_params(cfg, key)))(jax.random.key(0))


def write_tiny_model(folder: Path) -> Path:
    """A randomly initialised 2-layer, hidden-64 BERT as a HuggingFace folder with vocab.txt."""
    vocab = write_vocab(folder)
    params = init_params(tiny_cfg())
    return hf.write_folder(params, tiny_cfg(), folder, [vocab])


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny_model"))


def read_submission(path: Path) -> tuple[list[int], list[str]]:
    lines = path.read_text().splitlines()
    assert lines[0] == "index\tprediction"
    rows = [line.split("\t") for line in lines[1:]]
    assert all(len(r) == 2 for r in rows)
    return [int(i) for i, _ in rows], [p for _, p in rows]


# --- pieces -----------------------------------------------------------------------------


def test_rules_are_the_pretraining_configs():
    config = config_lib.load_config(CONFIG)
    assert sharding.logical_rules(config) == sharding.DEFAULT_LOGICAL_AXIS_RULES


def test_head_reuses_bert_and_names_its_axes():
    cfg = tiny_cfg()
    head = classifier_head.head(cfg, 3, regression=False)
    ours = jax.eval_shape(lambda: head.init_params(cfg, jax.random.key(0)))
    pre = model_lib.abstract_params(cfg)
    assert set(ours) == {"bert", "classifier"}
    assert jax.tree.structure(ours["bert"]) == jax.tree.structure(pre["bert"])
    assert nn.get_partition_spec(ours["bert"]) == nn.get_partition_spec(pre["bert"])
    specs = nn.get_partition_spec(ours["classifier"])
    assert tuple(specs["kernel"]) == ("embed", None) and tuple(specs["bias"]) == (None,)
    assert nn.meta.unbox(ours)["classifier"]["kernel"].shape == (64, 3)


def test_epoch_rows_cover_each_example_once_and_pad_the_last_batch():
    rows = batches.epoch_rows(70, 32, seed=3, epoch=0)
    assert rows.shape == (3, 32)
    real = rows[rows >= 0]
    assert sorted(real) == list(range(70)) and (rows[-1, 6:] == -1).all()
    # A function of (seed, epoch):
    assert (rows == batches.epoch_rows(70, 32, seed=3, epoch=0)).all()
    assert not (rows == batches.epoch_rows(70, 32, seed=3, epoch=1)).all()
    split = batches.Split(
        "x", {"labels": np.arange(70), "input_ids": np.arange(70)[:, None]}, np.arange(70)
    )
    batch = batches.take(split, rows[-1], keys=("input_ids", "labels"))
    assert batch["weights"].sum() == 6 and (batch["labels"][:6] == rows[-1, :6]).all()


def test_loss_sums_ignore_padding_rows_even_with_nan_labels():
    logits = jnp.array([[2.0, 0.0], [0.0, 1.0], [5.0, -5.0]])
    weights = jnp.array([1.0, 1.0, 0.0])  # row 2 only pads the batch
    sums = classifier_head.classification_sums(
        logits, jnp.array([0, 0, -1]), weights, regression=False
    )
    m = classifier_head.metrics_from_sums(sums)
    expected = -np.mean([jax.nn.log_softmax(logits[0])[0], jax.nn.log_softmax(logits[1])[0]])
    assert float(m["loss"]) == pytest.approx(expected) and float(m["accuracy"]) == 0.5
    scores = jnp.array([1.0, 3.0, jnp.nan])  # a padding row copied from a test row: NaN label
    sums = classifier_head.classification_sums(logits[:, :1], scores, weights, regression=True)
    assert float(classifier_head.metrics_from_sums(sums)["loss"]) == pytest.approx((1 + 9) / 2)
    assert set(sums) == {"loss_sum", "weight_sum"}


def test_the_shared_train_step_accumulates_the_head_loss_exactly():
    """The classifier head's objective on step.train_step in 2 micro-batches: the loss,
    accuracy and gradient of the mean over the real rows of the whole batch (padding rows
    weigh nothing)."""
    cfg = tiny_cfg(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    tx, schedule = optim.make_optimizer(config_lib.load_config(CONFIG).optim, 10)
    head = classifier_head.head(cfg, 3, regression=False)
    state = jax.jit(  # faster than initialising op by op
        lambda key: nn.meta.unbox(
            step_lib.init_state(key, model_cfg=cfg, tx=tx, init_params=head.init_params)
        )
    )(jax.random.key(0))
    model = head.model
    rng = np.random.default_rng(0)
    ids = rng.integers(5, cfg.vocab_size, (8, 12)).astype(np.int32)
    labels = rng.integers(0, 3, 8).astype(np.int32)
    # Rows 3 and 7 pad the batch; micro-batches take rows 0,2,4,6 and 1,3,5,7 (3 real rows each,
    # so a per-micro-batch denominator would double the loss).
    weights = np.array([1, 1, 1, 0, 1, 1, 1, 0], np.float32)
    real = weights > 0
    batch = {"input_ids": ids, "segment_ids": np.zeros_like(ids), "input_mask": np.ones_like(ids),
             "labels": labels, "weights": weights}  # fmt: skip

    def reference_loss(params):  # the mean cross-entropy over the real rows, plainly
        logits = heads.predict_step(params, batch, model=model)
        return -jnp.mean(jax.nn.log_softmax(logits)[real, labels[real]]), logits

    step = functools.partial(step_lib.train_step, model=model, tx=tx, schedule=schedule,
                             deterministic=True, objective=head.objective,
                             accum_steps=2)  # fmt: skip
    _, metrics = jax.jit(step)(state, batch, jax.random.key(1))
    (loss, logits), grads = jax.jit(jax.value_and_grad(reference_loss, has_aux=True))(state.params)
    assert float(metrics["loss"]) == pytest.approx(float(loss), rel=1e-5)
    accuracy = np.mean(np.asarray(logits)[real].argmax(-1) == labels[real])
    assert float(metrics["accuracy"]) == pytest.approx(accuracy)
    assert float(metrics["grad_norm"]) == pytest.approx(float(optax.tree.norm(grads)), rel=1e-4)


# --- end to end --------------------------------------------------------------------------


@pytest.mark.slow
def test_tiny_bert_learns_a_sentence_pair_task(tiny_model, tmp_path, capsys):
    data = tmp_path / "rte"
    test_labels = write_rte(data, n_train=1024, n_dev=100, n_test=40)
    cfg = load_config(
        "finetune_glue",
        [
            "task=rte",
            f"init={tiny_model}",
            f"data.dir={data}",
            "data.max_seq_len=16",
            "train.epochs=8",
            "optim.learning_rates=(1e-3,)",
            "train.log_every=32",
        ],
    )
    workdir = tmp_path / "run"
    result = ft.finetune(cfg, workdir)

    with capsys.disabled():
        print(
            f"\n(rte, topic pairs) dev accuracy {result['accuracy']:.3f}, loss {result['loss']:.4f}"
        )
    assert result["accuracy"] >= 0.9, result
    assert result["examples"] == 100  # the padded last dev batch counts each example once
    assert (result["epoch"], result["step"]) == (8, 8 * 32)
    assert json.loads((workdir / "eval_results.json").read_text()) == result
    evals = [r for r in read_metrics(workdir) if r["split"] == "eval"]
    assert [r["eval_epoch"] for r in evals] == list(range(1, 9))
    assert [r["step"] for r in evals] == [32 * e for e in range(1, 9)]
    indices, predictions = read_submission(workdir / "predictions" / "RTE.tsv")
    assert indices == list(range(40)) and set(predictions) <= set(ENTAILMENT)
    assert np.mean([ENTAILMENT[y] == p for y, p in zip(test_labels, predictions)]) >= 0.9
    assert Checkpointer(workdir, read_only=True).latest_step() == 8 * 32


@pytest.fixture(scope="module")
def transformers_model(tmp_path_factory) -> Path:
    """transformers' BertForPreTraining (random, seed 0) saved with save_pretrained."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("hf_model")
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
    )
    transformers.BertForPreTraining(config).save_pretrained(folder)
    write_vocab(folder)
    return folder


def write_mnli(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    names = ("entailment", "neutral", "contradiction")
    head = ["index", "sentence1", "sentence2"]
    for split, n, seed in (("train", 40, 0), ("dev_matched", 21, 1), ("dev_mismatched", 13, 2)):
        rows = [(i, a, b, names[(y + i) % 3]) for i, (a, b, y) in enumerate(topic_pairs(seed, n))]
        write_tsv(folder / f"{split}.tsv", [*head, "gold_label"], rows)
    for split, n, seed in (("test_matched", 9, 3), ("test_mismatched", 7, 4)):
        rows = [(100 + i, a, b) for i, (a, b, _) in enumerate(topic_pairs(seed, n))]
        write_tsv(folder / f"{split}.tsv", head, rows)


@pytest.mark.slow
def test_transformers_checkpoint_fine_tunes_through_the_cli(transformers_model, tmp_path, capsys):
    data, workdir = tmp_path / "mnli", tmp_path / "run"
    write_mnli(data)
    paths = ["--init", str(transformers_model), "--data", str(data), "--workdir", str(workdir)]
    options = "--max-seq-len 16 --batch-size 16 --grad-accum-steps 2 --epochs 1 --mesh-fsdp 2"
    code = cli.main(["finetune", "--task", "MNLI", *paths, *options.split()])
    out = capsys.readouterr().out
    assert code == 0
    result = json.loads(out.strip().splitlines()[-1])  # the last stdout line is the JSON
    assert result == json.loads((workdir / "eval_results.json").read_text())
    assert (result["matched_examples"], result["mismatched_examples"]) == (21, 13)
    with capsys.disabled():
        print(f"\n(mnli, transformers model, 3 steps) dev {json.dumps(result)}")
    for key in ("matched_accuracy", "mismatched_accuracy", "matched_loss"):
        assert 0 <= result[key] < 10
    assert "mesh data=4, fsdp=2, tensor=1" in out
    # Started from the transformers weights: 3 steps at lr <= 2e-5 move no weight far.
    pretrained = hf.load_pretrained(transformers_model).params["bert"]
    tuned = checkpoint.load_model(workdir).params
    assert tuned["classifier"]["kernel"].shape == (32, 3)
    diffs = jax.tree.map(
        lambda a, b: float(np.max(np.abs(np.asarray(a) - b))), pretrained, tuned["bert"]
    )
    assert 0 < max(jax.tree.leaves(diffs)) < 1e-3
    for name, count, first in (("MNLI-m.tsv", 9, 100), ("MNLI-mm.tsv", 7, 100)):
        indices, predictions = read_submission(workdir / "predictions" / name)
        assert indices == list(range(first, first + count))
        assert set(predictions) <= {"entailment", "neutral", "contradiction"}


def write_stsb(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    head = ["index", "sentence1", "sentence2"]
    for split, n, seed in (("train", 48, 0), ("dev", 30, 1)):
        rows = [(i, a, b, f"{5.0 * y:.2f}") for i, (a, b, y) in enumerate(topic_pairs(seed, n))]
        write_tsv(folder / f"{split}.tsv", [*head, "score"], rows)
    write_tsv(
        folder / "test.tsv", head, [(i, a, b) for i, (a, b, _) in enumerate(topic_pairs(2, 11))]
    )


@pytest.mark.slow
def test_stsb_regression_with_an_lr_sweep_keeps_the_best_spearman(
    transformers_model, tmp_path, capsys
):
    data, workdir = tmp_path / "stsb", tmp_path / "sweep"
    write_stsb(data)
    paths = ["--init", str(transformers_model), "--data", str(data), "--workdir", str(workdir)]
    options = "--max-seq-len 16 --batch-size 16 --epochs 2 --lr-sweep 1e-6 1e-3"
    code = cli.main(["finetune", "--task", "stsb", *paths, *options.split()])
    assert code == 0, capsys.readouterr().err
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    runs = {
        lr: json.loads((workdir / f"lr_{lr}" / "eval_results.json").read_text())
        for lr in ("1e-06", "0.001")
    }
    for run in runs.values():
        assert {"pearson", "spearmanr", "combined_score", "loss"} <= set(run)
        assert -1 <= run["spearmanr"] <= 1 and run["examples"] == 30
    best = max(runs, key=lambda lr: runs[lr]["spearmanr"])
    assert runs["1e-06"]["spearmanr"] != runs["0.001"]["spearmanr"]
    with capsys.disabled():
        print(f"\n(stsb sweep) dev {json.dumps(result)}")
    assert result["learning_rate"] == float(best)
    assert result == {**runs[best], "lr_sweep": {k: v["spearmanr"] for k, v in runs.items()}}
    assert result == json.loads((workdir / "eval_results.json").read_text())
    indices, scores = read_submission(workdir / "predictions" / "STS-B.tsv")
    assert indices == list(range(11)) and all(np.isfinite(float(s)) for s in scores)
    assert (workdir / "predictions" / "STS-B.tsv").read_text() == (
        workdir / f"lr_{best}" / "predictions" / "STS-B.tsv"
    ).read_text()


@pytest.fixture(scope="module")
def pretrained_workdir(tmp_path_factory) -> Path:
    """A `bertjax train` workdir of 4 steps of configs/bert_tiny.py (1 layer) on generated
    data, with orbax checkpoints at steps 2 and 4 (and the dataset's tokenizer recorded)."""
    root = tmp_path_factory.mktemp("pretrained")
    data = synthetic_dataset(root / "data", 64, 32, vocab_size=64)
    workdir = root / "run"
    overrides = ("train.steps=4 train.checkpoint_every=2 train.keep_checkpoints=2 "
                 "train.global_batch_size=16 train.eval_every=0 model.num_hidden_layers=1 "
                 "optim.warmup_steps=1 train.async_checkpointing=false")  # fmt: skip
    argv = ["train", "--config", CONFIG, "--workdir", str(workdir)]
    argv += [f"--config.{o}" for o in [f"data.train_dir={data}", *overrides.split()]]
    assert cli.main(argv) == 0
    return workdir


@pytest.mark.slow
@pytest.mark.parametrize("init_step", [None, 2])
def test_a_pretraining_workdir_fine_tunes_through_the_cli(
    pretrained_workdir, rte_dir, tmp_path, capsys, init_step
):
    """--init WORKDIR starts from the newest checkpoint's encoder (or --init-step's): the
    tuned `bert` weights stay within one small step of it, and far from the other one."""
    workdir = tmp_path / "run"
    argv = ["finetune", "--task", "rte", "--init", str(pretrained_workdir), "--data",
            str(rte_dir), "--workdir", str(workdir), "--max-seq-len", "16", "--batch-size", "8",
            "--epochs", "1", "--lr", "1e-5"]  # fmt: skip
    if init_step is not None:
        argv += ["--init-step", str(init_step)]
    code = cli.main(argv)
    out = capsys.readouterr().out
    assert code == 0, out
    step = 4 if init_step is None else 2
    assert f"model {pretrained_workdir} step {step} (1 layers, hidden 128)" in out
    result = json.loads(out.strip().splitlines()[-1])
    assert (result["step"], result["examples"]) == (1, 4)
    tuned = checkpoint.load_model(workdir).params
    assert tuned["classifier"]["kernel"].shape == (128, 2)

    def max_diff(step):
        pretrained = checkpoint.load_model(pretrained_workdir, step).params["bert"]
        diffs = jax.tree.map(lambda a, b: np.max(np.abs(np.asarray(a) - b)), pretrained,
                             tuned["bert"])  # fmt: skip
        return float(max(jax.tree.leaves(diffs)))

    # One AdamW step at lr 1e-5 moves a weight by about 1e-5; pretraining at lr ~1e-3 moved
    # them by ~1e-3 between checkpoints 2 and 4.
    assert 0 < max_diff(step) < 1e-4
    assert max_diff(6 - step) > 1e-4


# --- bad input ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rte_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("rte_small")
    write_rte(folder, n_train=8, n_dev=4, n_test=2)
    return folder


@pytest.fixture(scope="module")
def small_vocab_model(tmp_path_factory) -> Path:
    """A model with 10 fewer embeddings than its vocab.txt has tokens."""
    folder = tmp_path_factory.mktemp("small_vocab")
    cfg = tiny_cfg(
        vocab_size=VOCAB_SIZE - 10,
        hidden_size=32,
        num_attention_heads=2,
        num_hidden_layers=1,
        intermediate_size=64,
    )
    params = init_params(cfg)
    return hf.write_folder(params, cfg, folder, [write_vocab(folder)])


@pytest.mark.parametrize(
    "options, extra, message",
    [
        ({"--task": "squad3"}, [], "unknown task 'squad3'; choose one of cola, sst2"),
        ({"--data": "/nonexistent"}, [], "GLUE data directory /nonexistent does not exist"),
        ({"--data": "EMPTY_DIR"}, [], "has no rte train file: expected train.tsv"),
        ({"--data": None}, [], "cannot load GLUE rte (train) with datasets"),
        ({"--init": "SMALL_VOCAB"}, [], "has 35 tokens, but the model"),
        ({"--init": "/nonexistent"}, [], "neither a training workdir with checkpoints"),
        ({"--batch-size": "12"}, [], "--batch-size=12 is not divisible by the data-parallel"),
        ({"--max-seq-len": "100"}, [], "--max-seq-len=100 exceeds the model's max_position"),
        ({"--lr": "1e-4"}, ["--lr-sweep"], "--lr and --lr-sweep exclude each other"),
        (
            {"--warmup": "1.5"},
            [],
            "optim.warmup_fraction=1.5 must be >= 0 and <= 1 (fraction of "
            "the steps "
            "warming up (--warmup))",
        ),
    ],
)
def test_bad_input_is_one_clear_error(
    tiny_model, small_vocab_model, rte_dir, tmp_path, capsys, options, extra, message
):
    values = {"EMPTY_DIR": str(tmp_path), "SMALL_VOCAB": str(small_vocab_model)}
    options = {"--task": "rte", "--init": str(tiny_model), "--data": str(rte_dir)} | options
    argv = ["finetune", "--workdir", str(tmp_path / "run"), *extra]
    for flag, value in options.items():
        if value is not None:
            argv += [flag, values.get(value, value)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_check_finite_ends_with_the_callers_remedy():
    check_finite(3, {"loss": 0.5}, 2, remedy=PRETRAINING_REMEDY)  # a finite loss passes
    with pytest.raises(
        FloatingPointError,
        match=r"loss is nan at step 3 .*Check the data first.*lower optim\.peak_lr",
    ):
        check_finite(3, {"loss": float("nan")}, 2, remedy=PRETRAINING_REMEDY)  # `bertjax train`
    with pytest.raises(
        FloatingPointError, match=r"loss is inf at step 3 .*Check the data first.*lower --lr"
    ) as e:
        check_finite(3, {"loss": float("inf")}, 2, remedy=ft.NAN_REMEDY)
    assert str(e.value).endswith(ft.NAN_REMEDY) and "optim." not in str(e.value)


def test_a_diverging_fine_tune_names_the_step_and_its_own_flags(
    tiny_model, rte_dir, tmp_path, capsys
):
    """--lr 1e30 blows the weights up at the first update: step 2's loss is not finite, and
    the advice names `bertjax finetune`'s flags, not the pretraining config keys."""
    workdir = tmp_path / "run"
    paths = ["--init", str(tiny_model), "--data", str(rte_dir), "--workdir", str(workdir)]
    options = "--lr 1e30 --batch-size 8 --epochs 2 --log-every 1 --max-seq-len 16"
    assert cli.main(["finetune", "--task", "rte", *paths, *options.split()]) == 1
    err = capsys.readouterr().err
    assert "error: loss is nan at step 2" in err or "error: loss is inf at step 2" in err, err
    assert ft.NAN_REMEDY in err and "--lr" in err and "--warmup" in err
    assert "optim." not in err and "Traceback" not in err
    assert Checkpointer(workdir, read_only=True).latest_step() is None  # nothing saved
