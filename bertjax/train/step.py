"""The train state, the pure train and eval steps, and their one-time jit with shardings."""

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from bertjax import model as model_lib
from bertjax.train import sharding
from bertjax.train.head import Objective, pretraining_objective


@flax.struct.dataclass
class TrainState:
    """Everything that changes from step to step (and goes into a checkpoint)."""

    step: jax.Array  # int32 scalar: optimizer steps taken so far
    params: Any  # float32 parameters (plain arrays; shardings kept separately)
    opt_state: Any  # optax state, float32


def init_state(
    rng: jax.Array,
    *,
    model_cfg: model_lib.BertConfig,
    tx: optax.GradientTransformation,
    init_params: Callable = model_lib.init_params,
) -> TrainState:
    """A fresh state whose parameters (and the optimizer moments that mirror them) are still
    boxed with their logical axis names; `nn.meta.unbox` it, or take its partition specs.

    `init_params(model_cfg, rng)` makes the boxed parameters: BertForPreTraining's by default,
    a fine-tuning head model's otherwise.
    """
    params = init_params(model_cfg, rng)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def state_shardings(model_cfg, tx, mesh, rules, init_params=model_lib.init_params):
    """(abstract boxed state, NamedShardings of the unboxed state), without allocating."""
    abstract = jax.eval_shape(
        functools.partial(init_state, model_cfg=model_cfg, tx=tx, init_params=init_params),
        jax.random.key(0),
    )
    return abstract, sharding.tree_shardings(abstract, mesh, rules)


def create_sharded_state(
    rng, *, model_cfg, tx, shardings, init_params=model_lib.init_params, given_params=None
) -> TrainState:
    """Initialises the state directly into its shardings: no device ever holds all of it.
    `given_params`: top-level parameter subtrees (a pretrained `bert`) that take the place of
    the initialised ones; the moments start at zero all the same, so the given subtrees'
    random initialisation is dead code that XLA drops (neither computed nor compiled)."""

    def init(rng, given):
        state = nn.meta.unbox(init_state(rng, model_cfg=model_cfg, tx=tx, init_params=init_params))
        return state.replace(params={**state.params, **given})

    return jax.jit(init, out_shardings=shardings)(rng, given_params or {})


def _split_micro_batches(batch, accum_steps: int, micro_sharding):
    """[B, ...] -> [K, B/K, ...], micro-batch k taking rows k, k+K, k+2K, ...

    Interleaving (rather than contiguous blocks) keeps every micro-batch spread over all
    data-parallel devices: each device splits its own rows, with no data movement.
    """

    def split(x):
        x = x.reshape(x.shape[0] // accum_steps, accum_steps, *x.shape[1:]).swapaxes(0, 1)
        if micro_sharding is not None:
            x = jax.lax.with_sharding_constraint(x, micro_sharding)
        return x

    return jax.tree.map(split, batch)


def train_step(
    state: TrainState,
    batch: dict,
    rng: jax.Array,
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    accum_steps: int = 1,
    nsp: bool = True,
    deterministic: bool = False,
    micro_sharding=None,
    objective: Objective | None = None,
) -> tuple[TrainState, dict]:
    """One optimizer step on `batch` (the global batch), in `accum_steps` micro-batches.

    The loss is `objective`'s, by default BERT's pretraining loss (`pretraining_objective(nsp)`).
    Its denominators are taken over the whole batch first, so the gradients of the K
    micro-batches add up to the gradient of the whole. Returns the new state and a dict of
    float32 scalars.
    """
    objective = objective or pretraining_objective(nsp)
    dropout_rng = jax.random.fold_in(rng, state.step)
    denominators = objective.denominators(batch)

    def loss_fn(params, micro_batch, micro_rng):
        sums = objective.sums(model, params, micro_batch, micro_rng, deterministic)
        return objective.loss(sums, denominators), sums

    grad_fn = jax.grad(loss_fn, has_aux=True)
    if accum_steps == 1:
        grads, sums = grad_fn(state.params, batch, dropout_rng)
    else:
        micro_batches = _split_micro_batches(batch, accum_steps, micro_sharding)

        def accumulate(carry, inputs):
            micro_batch, k = inputs
            grads, sums = grad_fn(state.params, micro_batch, jax.random.fold_in(dropout_rng, k))
            return jax.tree.map(jnp.add, carry, (grads, sums)), None

        first = jax.tree.map(lambda x: x[0], micro_batches)
        zeros = jax.tree.map(
            lambda s: jnp.zeros(s.shape, s.dtype),
            jax.eval_shape(grad_fn, state.params, first, dropout_rng),
        )
        (grads, sums), _ = jax.lax.scan(accumulate, zeros, (micro_batches, jnp.arange(accum_steps)))

    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = objective.metrics(sums)
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["learning_rate"] = jnp.asarray(schedule(state.step), jnp.float32)
    new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, metrics


def eval_step(
    params, batch: dict, *, model: nn.Module, nsp: bool = True, objective: Objective | None = None
) -> dict:
    """Loss and accuracy *sums* over one evaluation batch (dropout off); the caller adds
    them over the split and finishes with `objective.metrics` (`losses.metrics_from_sums`)."""
    objective = objective or pretraining_objective(nsp)
    return objective.sums(model, params, batch, None, True)


def _under_rules(fn, mesh, rules, constrain_activations: bool = True):
    """`fn` traced with the (abstract) mesh in scope, which the fused attention kernels run
    per shard over (attention.py), and the logical-axis rules, so that the model's activation
    constraints become real sharding constraints. Without them (`constrain_activations`
    False: only to build the program to compare against) XLA infers activation shardings from
    the parameters and the batch alone, and with FSDP it reshards the embedding gradient by
    replicating it ("involuntary full rematerialization")."""
    axis_rules = rules if constrain_activations else ()

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(axis_rules):
            return fn(*args, **kwargs)

    # Named after the step (a partial has no name): "jit_train_step" in profiles and dumps.
    base = fn.func if isinstance(fn, functools.partial) else fn
    wrapped.__name__ = wrapped.__qualname__ = base.__name__
    return wrapped


def jit_train_step(
    mesh,
    rules,
    shardings,
    *,
    model,
    tx,
    schedule,
    accum_steps=1,
    nsp=True,
    deterministic=False,
    objective=None,
    constrain_activations=True,
):
    """`train_step` compiled once for `mesh`: state in `shardings` (donated), batch split
    over the batch axes, rng and metrics replicated. `objective`: see `train_step`;
    `constrain_activations`: see `_under_rules`."""
    fn = functools.partial(
        train_step,
        model=model,
        tx=tx,
        schedule=schedule,
        accum_steps=accum_steps,
        nsp=nsp,
        deterministic=deterministic,
        micro_sharding=sharding.micro_batch_sharding(mesh),
        objective=objective,
    )
    fn = _under_rules(fn, mesh, rules, constrain_activations)
    repl = sharding.replicated(mesh)
    return jax.jit(
        fn,
        in_shardings=(shardings, sharding.batch_sharding(mesh), repl),
        out_shardings=(shardings, repl),
        donate_argnums=0,
    )


def jit_eval_step(mesh, rules, param_shardings, *, model, nsp=True, objective=None):
    """`eval_step` compiled for `mesh`: parameters as trained, batch split, sums replicated."""
    fn = functools.partial(eval_step, model=model, nsp=nsp, objective=objective)
    fn = _under_rules(fn, mesh, rules)
    return jax.jit(
        fn,
        in_shardings=(param_shardings, sharding.batch_sharding(mesh)),
        out_shardings=sharding.replicated(mesh),
    )
