"""`train.init_from`: a new run's parameters (and optionally Adam moments) from a HuggingFace
folder or another run's checkpoint, as phase 2 of BERT starts from phase 1."""

from bertjax.errors import UserError


def warm_start(state, path: str, *, model_cfg, abstract_state, state_shardings,
               init_opt_state: bool):
    """(state, source): `state` with the parameters of `path` (and, with `init_opt_state`, the
    Adam moments of its checkpoint); the step, schedule and data order start from zero.

    `abstract_state` and `state_shardings` describe this run's state, onto which the other
    run's checkpoint is restored (any mesh may have written it).
    """
    import flax.linen as nn
    import jax
    import numpy as np

    from bertjax.model import ARCHITECTURE_FIELDS
    from bertjax.train import checkpoint

    loaded = checkpoint.load_model(path)
    differ = [f"{k}: {getattr(loaded.model_cfg, k)} there, {getattr(model_cfg, k)} here"
              for k in ARCHITECTURE_FIELDS
              if getattr(loaded.model_cfg, k) != getattr(model_cfg, k)]
    if differ:
        raise UserError(
            f"--init-from {path}: its model differs from the config's ({'; '.join(differ)})"
        )
    params = jax.device_put(jax.device_get(loaded.params), state_shardings.params)
    opt_state = state.opt_state
    if init_opt_state:
        if not checkpoint.is_checkpoint_dir(path):
            raise UserError(f"train.init_opt_state needs a training workdir to take the "
                            f"optimizer state from; {path} is a HuggingFace folder")
        other, _, _, _ = checkpoint.Checkpointer(path, read_only=True).restore(
            nn.meta.unbox(abstract_state), state_shardings)
        # Keep the moments, restart the step counters: phase 2 runs its own schedule.
        opt_state = jax.tree_util.tree_map_with_path(
            lambda p, x, sh: jax.device_put(np.zeros(x.shape, x.dtype), sh)
            if "count" in str(p[-1]) else x,
            other.opt_state, state_shardings.opt_state)
    return state.replace(params=params, opt_state=opt_state), loaded.source
