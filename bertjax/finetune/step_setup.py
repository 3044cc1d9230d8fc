"""One fine-tuning run's optimizer settings, sharded state and jitted train step: what
`bertjax finetune` and `bertjax bench finetune` both run."""

from typing import NamedTuple

import ml_collections

from bertjax.train import optim, sharding
from bertjax.train import step as step_lib


def optim_config(config, lr: float, total_steps: int):
    """The optimizer settings of one fine-tuning run: the config's `optim` section (BERT's
    AdamWeightDecay, clipping at 1, linear decay) at peak rate `lr`, warming up over the
    config's `warmup` fraction of `total_steps`, with its `weight_decay`."""
    return ml_collections.ConfigDict({
        **config.optim.to_dict(), "peak_lr": float(lr),
        "warmup_steps": int(config.warmup * total_steps), "weight_decay": config.weight_decay})


class StepSetup(NamedTuple):
    """What `setup_step` builds."""

    state: object  # step.TrainState, sharded; every weight random
    shardings: object  # the state's NamedShardings
    model: object  # the head's model (BertForSequenceClassification, BertForQuestionAnswering)
    train_fn: object  # the jitted step: (state, batch, rng) -> (state, metrics)


def setup_step(model_cfg, head, optim_cfg, total_steps: int, mesh, rng, accum_steps: int = 1):
    """A freshly initialised head model's sharded train state and its jitted train step (the
    shared pretraining step with the head's objective): what a fine-tuning run and
    `bertjax bench finetune` both run. `head` is a heads.Head."""
    rules = sharding.DEFAULT_LOGICAL_AXIS_RULES
    tx, schedule = optim.make_optimizer(optim_cfg, total_steps)
    abstract, shardings = step_lib.state_shardings(model_cfg, tx, mesh, rules, head.init_params)
    sharding.check_divisible(abstract, shardings)
    state = step_lib.create_sharded_state(
        rng, model_cfg=model_cfg, tx=tx, shardings=shardings, init_params=head.init_params
    )
    train_fn = step_lib.jit_train_step(
        mesh,
        rules,
        shardings,
        model=head.model,
        tx=tx,
        schedule=schedule,
        accum_steps=accum_steps,
        objective=head.objective,
    )
    return StepSetup(state, shardings, head.model, train_fn)
