"""One step set-up for every run: config -> optimizer and schedule, logical rules, the
state's abstract shape and shardings (checked), the jitted train step, and on demand the
sharded initial state, the jitted predict step, or abstract arguments to compile ahead of
time. Pretraining, fine-tuning, `bertjax compile` and every benchmark build their step here.
"""

import dataclasses
import functools

import flax.linen as nn
import jax

from bertjax.train import cpu_rng, optim, sharding
from bertjax.train import step as step_lib
from bertjax.train.head import Head


@dataclasses.dataclass(frozen=True)
class StepSetup:
    """What `build` makes; nothing is allocated on a device until `init_state`."""

    mesh: jax.sharding.Mesh
    rules: tuple  # logical axis -> mesh axes (the config's logical_axis_rules)
    head: Head  # the model, its objective, predict step and HF declaration
    tx: object  # optax.GradientTransformation
    schedule: object  # optax.Schedule
    abstract_state: step_lib.TrainState  # boxed shapes with logical axis names
    state_shardings: step_lib.TrainState  # NamedShardings of the unboxed state
    train_fn: object  # jitted (state, batch, rng) -> (state, metrics); the state is donated

    @property
    def model(self) -> nn.Module:
        return self.head.model

    @property
    def model_cfg(self):
        return self.head.model.cfg

    def init_state(self, rng: jax.Array, given_params: dict | None = None) -> step_lib.TrainState:
        """A fresh state, initialised directly into its shardings; `given_params` (say a
        pretrained {"bert": ...}) replace those subtrees, which are then never initialised."""
        return step_lib.create_sharded_state(
            rng,
            model_cfg=self.model_cfg,
            tx=self.tx,
            shardings=self.state_shardings,
            init_params=self.head.init_params,
            given_params=given_params,
        )

    def predict_fn(self):
        """The head's predict step jitted for the mesh: (params, batch) -> outputs, replicated."""
        fn = functools.partial(self.head.predict_step, model=self.model)
        return jax.jit(
            fn,
            in_shardings=(self.state_shardings.params, sharding.batch_sharding(self.mesh)),
            out_shardings=sharding.replicated(self.mesh),
        )

    def abstract_train_args(self, batch_shapes: dict):
        """(state, batch, rng) as ShapeDtypeStructs with their shardings, for
        `train_fn.trace(...).lower().compile()` without allocating anything; `batch_shapes`
        maps each batch key to an array (or anything with .shape and .dtype) of the global
        batch."""
        state = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            nn.meta.unbox(self.abstract_state),
            self.state_shardings,
        )
        rng = jax.ShapeDtypeStruct(
            (), jax.random.key(0).dtype, sharding=sharding.replicated(self.mesh)
        )
        return state, self.abstract_batch(batch_shapes), rng

    def abstract_batch(self, batch_shapes: dict) -> dict:
        """A global batch as ShapeDtypeStructs split over the batch axes: `batch_shapes`'
        keys, each an array (or anything with .shape and .dtype) of the global batch."""
        batch_sharding = sharding.batch_sharding(self.mesh)
        return {
            k: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=batch_sharding)
            for k, x in batch_shapes.items()
        }


def build(
    config, head: Head, mesh: jax.sharding.Mesh, *, optim_cfg=None, total_steps: int | None = None
) -> StepSetup:
    """The step of `head` on `mesh` as `config` says: `optim_cfg` (default config.optim) over
    `total_steps` (default config.train.steps), config.train.grad_accum_steps micro-batches,
    the config's logical_axis_rules."""
    cpu_rng.unroll_threefry_on_cpu()  # dropout's random bits: the same, far cheaper on CPU
    rules = sharding.logical_rules(config)
    optim_cfg = config.optim if optim_cfg is None else optim_cfg
    total_steps = config.train.steps if total_steps is None else total_steps
    tx, schedule = optim.make_optimizer(optim_cfg, total_steps)
    model_cfg = head.model.cfg
    abstract, shardings = step_lib.state_shardings(model_cfg, tx, mesh, rules, head.init_params)
    sharding.check_divisible(abstract, shardings)
    train_fn = step_lib.jit_train_step(
        mesh,
        rules,
        shardings,
        model=head.model,
        tx=tx,
        schedule=schedule,
        accum_steps=config.train.grad_accum_steps,
        objective=head.objective,
    )
    return StepSetup(mesh, rules, head, tx, schedule, abstract, shardings, train_fn)
