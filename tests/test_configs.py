"""Every config in bertjax/configs/: loads, has the shared keys, builds abstractly with the paper's
parameter counts, and has the published recipes' batch sizes, step counts and schedules."""

import ast
import functools
import math
import re

import flax.linen as nn
import jax
import pytest

from bertjax.errors import UserError
from bertjax.model import abstract_params, count_params
from bertjax.train import optim
from bertjax.train.config import (
    PACKAGED_CONFIGS,
    REQUIRED_KEYS,
    config_names,
    flat_keys,
    load_config,
    model_config,
    validate,
)

# The pretraining recipes (finetune_* configs have the keys of `bertjax finetune`).
CONFIGS = sorted(
    p for p in PACKAGED_CONFIGS.glob("*.py") if not p.name.startswith(("_", "finetune_"))
)
VOCAB = 30522  # bert-base-uncased's vocab.txt

# BertForPreTraining with vocab 30522 (the same count as HF's); the paper rounds to 110M/340M.
PAPER_PARAMS = {"base": 110_106_428, "large": 336_226_108}


def load(name: str):
    return load_config(name.removesuffix(".py"))


def lr(config, step: int) -> float:
    """The config's learning rate at `step`, from the schedule `bertjax train` builds."""
    return float(optim.learning_rate_schedule(config.optim, config.train.steps)(step))


@functools.cache
def abstract_counts(model_cfg) -> tuple[int, object]:
    """(parameter count, unboxed abstract parameters) of a BertConfig: shapes only."""
    params = abstract_params(model_cfg)
    return count_params(params), nn.meta.unbox(params)


def test_configs_are_found():
    names = {p.name for p in CONFIGS}
    assert {
        "bert_tiny.py",
        "bert_base_phase1.py",
        "bert_base_phase2.py",
        "bert_large_phase1.py",
        "bert_large_phase2.py",
        "bert_base_lamb_phase1.py",
        "bert_base_lamb_phase2.py",
        "bert_large_lamb_phase1.py",
        "bert_large_lamb_phase2.py",
        "bert_budget.py",
    } <= names


def test_a_packaged_config_loads_by_name_as_by_path_and_a_wrong_name_lists_them(tmp_path):
    """`--config NAME[:arg]` finds the recipe inside the package (installed from a wheel there
    is no configs/ folder beside the working directory); a path still loads a user's file."""
    assert "base" in config_names() and "bert_tiny" in config_names()
    by_name = load_config("bert_tiny:mini", ["train.steps=7"])
    by_path = load_config(f"{PACKAGED_CONFIGS / 'bert_tiny.py'}:mini", ["train.steps=7"])
    assert by_name.to_dict() == by_path.to_dict()
    assert by_name.model.preset == "mini" and by_name.train.steps == 7
    with pytest.raises(
        UserError,
        match=r"no config named 'bert_tinyy'; the packaged ones are "
        r"base, .*bert_tiny",
    ):
        load_config("bert_tinyy")
    with pytest.raises(UserError, match=r"config file .*nope.py does not exist"):
        load_config(str(tmp_path / "nope.py"))


def test_recipes_derive_from_base_not_from_the_tiny_test_config():
    """The paper recipes build on `base`, whose keys every config shares; none imports
    bert_tiny (a test config), so changing it cannot change a recipe."""
    for path in CONFIGS:
        imported = {
            alias.name
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.ImportFrom)
            for alias in node.names
        }
        assert "bert_tiny" not in imported, path.name
        if path.stem not in ("base", "bert_tiny"):
            assert imported & {p.stem for p in CONFIGS}, f"{path.name} derives from no recipe"
    assert set(flat_keys(load("base"))) == set(flat_keys(load("bert_tiny")))


def test_a_config_without_a_required_key_is_named_before_anything_runs():
    config = load("bert_tiny.py")
    with config.unlocked():
        del config.train["eval_every"]
        del config.mesh["fsdp"]
    with pytest.raises(UserError, match=r"lacks train.eval_every, mesh.fsdp: every pretraining"):
        validate(config, num_devices=1)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads_with_the_shared_keys_and_valid_layouts(path):
    config = load_config(str(path))
    keys = set(flat_keys(config))
    assert not [k for k in REQUIRED_KEYS if k not in keys]
    # Same schema as bert_tiny: one set of keys drives every config.
    assert keys == set(flat_keys(load("bert_tiny.py")))
    assert config.train.global_batch_size % config.train.grad_accum_steps == 0
    for devices in (1, 4, 8):  # one GPU, a v4-8 (4 chips), 8 GPUs or a v5e-8
        validate(config, num_devices=devices)
    # Locked: a typo in an override is an error, not a new key.
    with pytest.raises(UserError, match="did you mean --config.optim.peak_lr"):
        load_config(str(path), ["optim.peak_lrr=1e-3"])


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_docstring_runs_it_and_every_field_is_commented(path):
    source = path.read_text()
    assert f"bertjax train --config {path.stem}" in ast.get_docstring(ast.parse(source))
    for line in source.splitlines():
        if re.match(r"\s+config\.\w+\.\w+ = ", line):
            assert "  # " in line, f"{path.name}: field without a trailing comment: {line.strip()}"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_builds_abstractly_with_the_paper_parameter_count(path):
    config = load_config(str(path))
    model_cfg = model_config(config.model, dataset_vocab_size=VOCAB)  # as `bertjax train` does
    n_params, params = abstract_counts(model_cfg)
    if config.model.preset in PAPER_PARAMS:
        assert n_params == PAPER_PARAMS[config.model.preset]
    # The optimizer and its state build from shapes too: Adam/LAMB keep two moments per weight.
    tx, _ = optim.make_optimizer(config.optim, config.train.steps)
    opt_state = jax.eval_shape(tx.init, params)
    moments = sum(x.size for x in jax.tree.leaves(opt_state) if x.ndim > 0)
    assert moments == 2 * n_params


def paper_lr(step: int) -> float:
    """Devlin et al.'s one schedule over both phases: 10k warm-up steps to 1e-4, then linear
    decay to 0 at step 1,000,000 (in the warm-up-then-decay form of optax/Megatron)."""
    return 1e-4 * min(step / 10_000, (1_000_000 - step) / 990_000)


@pytest.mark.parametrize("model", ["base", "large"])
def test_paper_recipe_two_phases_are_one_schedule(model):
    p1, p2 = load(f"bert_{model}_phase1.py"), load(f"bert_{model}_phase2.py")
    assert p1.model.preset == p2.model.preset == model
    assert (p1.train.steps, p2.train.steps) == (900_000, 100_000)
    assert p1.train.global_batch_size == p2.train.global_batch_size == 256
    assert p1.train.grad_accum_steps == p2.train.grad_accum_steps == 1
    assert (p1.data.max_predictions_per_seq, p2.data.max_predictions_per_seq) == (20, 80)
    assert p1.data.masked_lm_prob == p2.data.masked_lm_prob == 0.15
    assert p1.train.nsp and p2.train.nsp
    for c in (p1, p2):
        assert (c.optim.name, c.optim.schedule) == ("adamw", "linear")
        assert (c.optim.b1, c.optim.b2, c.optim.eps, c.optim.weight_decay) == (
            0.9,
            0.999,
            1e-6,
            0.01,
        )
        assert c.model.hidden_dropout_prob == c.model.attention_probs_dropout_prob == 0.1
    assert p1.optim.warmup_steps == 10_000 and p1.optim.peak_lr == 1e-4
    # Key steps: start, end of warm-up (peak), middle of the decay, phase boundary, end.
    for step in (0, 5_000, 10_000, 505_000, 899_999, 900_000):
        assert lr(p1, step) == pytest.approx(paper_lr(step), rel=1e-6, abs=1e-12)
    assert lr(p1, 10_000) == pytest.approx(1e-4)
    assert lr(p1, 505_000) == pytest.approx(5e-5)
    for step in (0, 1, 50_000, 99_999, 100_000):
        assert lr(p2, step) == pytest.approx(paper_lr(900_000 + step), rel=1e-5, abs=1e-12)
    assert lr(p2, 100_000) == 0.0


@pytest.mark.parametrize("phase", [1, 2])
def test_large_configs_differ_from_base_only_in_model(phase):
    for kind in ("", "lamb_"):
        base = load(f"bert_base_{kind}phase{phase}.py").to_dict()
        large = load(f"bert_large_{kind}phase{phase}.py").to_dict()
        assert large["model"].pop("preset") == "large" and base["model"].pop("preset") == "base"
        for config in (base, large):  # memory settings may differ with the model's size
            del config["model"]["remat_policy"], config["train"]["grad_accum_steps"]
        assert large == base


def nvidia_poly_lr(step: int, peak: float, steps: int) -> float:
    """NVIDIA's PolyWarmUpScheduler (degree 0.5) after warm-up: peak * (1 - step/steps)^0.5."""
    return peak * (1 - step / steps) ** 0.5


# (config, batch, steps, warm-up fraction, peak lr, micro-batch per step)
LAMB = [
    ("bert_base_lamb_phase1.py", 65_536, 7_038, 0.2843, 6e-3, 1_024),
    ("bert_base_lamb_phase2.py", 32_768, 1_563, 0.128, 4e-3, 256),
    ("bert_large_lamb_phase1.py", 65_536, 7_038, 0.2843, 6e-3, 512),  # 64 per GPU x 8: NVIDIA's
    ("bert_large_lamb_phase2.py", 32_768, 1_563, 0.128, 4e-3, 64),  # 8 per GPU x 8: NVIDIA's
]


@pytest.mark.parametrize(
    "name,batch,steps,warmup_fraction,peak,micro", LAMB, ids=[row[0] for row in LAMB]
)
def test_lamb_recipe_matches_nvidia(name, batch, steps, warmup_fraction, peak, micro):
    c = load(name)
    assert (c.train.global_batch_size, c.train.steps) == (batch, steps)
    assert c.train.global_batch_size // c.train.grad_accum_steps == micro
    assert (c.optim.name, c.optim.schedule, c.optim.power) == ("lamb", "polynomial", 0.5)
    assert c.optim.weight_decay == 0.01 and c.optim.clip_norm == 1.0
    warmup = c.optim.warmup_steps
    assert warmup == round(warmup_fraction * steps)
    assert lr(c, 0) == 0.0
    assert lr(c, warmup // 2) == pytest.approx(peak * (warmup // 2) / warmup, rel=1e-5)
    assert lr(c, warmup) == pytest.approx(peak, rel=1e-6)
    assert lr(c, (warmup + steps) // 2) == pytest.approx(peak * 0.5**0.5, rel=1e-3)
    assert lr(c, steps) == 0.0
    # After warm-up, the same power-0.5 curve as NVIDIA's, scaled by 1/sqrt(1 - warmup/steps)
    # because ours starts its decay at the peak (docs/REPRODUCE.md, the configs' docstrings).
    scale = (1 - warmup / steps) ** -0.5
    for step in (warmup, warmup + 100, (warmup + steps) // 2, steps - 1):
        expected = scale * nvidia_poly_lr(step, peak, steps)
        assert lr(c, step) == pytest.approx(expected, rel=1e-4)


def test_budget_recipe_is_sized_by_its_time_budget():
    c = load("bert_budget.py")
    # Default: 24 h at an assumed 225,000 tokens/s (one A100 at 40% MFU), 4,096 x 128 per step.
    assert c.train.steps == 24 * 3600 * 225_000 // (4_096 * 128) == 37_078
    assert c.train.global_batch_size == 4_096 and c.train.grad_accum_steps == 32
    assert not c.train.nsp and 0.15 <= c.data.masked_lm_prob <= 0.25
    assert c.data.max_predictions_per_seq >= math.ceil(c.data.masked_lm_prob * 128)
    assert c.model.hidden_dropout_prob == c.model.attention_probs_dropout_prob == 0.0
    assert c.optim.warmup_steps == round(0.06 * c.train.steps)
    assert lr(c, c.optim.warmup_steps) == pytest.approx(c.optim.peak_lr)
    assert lr(c, c.train.steps) == 0.0  # the schedule ends with the budget
    # A measured throughput and another budget resize the run and its warm-up.
    small = load("bert_budget:hours=2,tokens_per_s=65536")
    assert small.train.steps == 2 * 3600 * 65_536 // (4_096 * 128) == 900
    assert small.optim.warmup_steps == 54
    for bad in ("hour=2", "hours=two", "tokens_per_s=-5"):
        with pytest.raises(UserError, match="bert_budget"):
            load(f"bert_budget:{bad}")
