"""`train.init_from`: a new run's parameters (and optionally Adam moments) from a HuggingFace
folder or another run's checkpoint, as phase 2 of BERT starts from phase 1."""

from bertjax.errors import UserError


def warm_start(state, path: str, setup, *, init_opt_state: bool):
    """(state, source): `state` with the parameters of `path` (and, with `init_opt_state`, the
    Adam moments of its checkpoint); the step, schedule and data order start from zero.

    `setup` (step_setup.StepSetup) is this run's, onto whose state shardings the other run's
    checkpoint is restored (any mesh and either layer layout may have written it).
    """
    import jax
    import numpy as np

    from bertjax import encoder
    from bertjax.model_config import ARCHITECTURE_FIELDS
    from bertjax.train import checkpoint
    from bertjax.train.resume import restore_state

    model_cfg, state_shardings = setup.model_cfg, setup.state_shardings

    loaded = checkpoint.load_model(path)
    differ = [
        f"{k}: {getattr(loaded.model_cfg, k)} there, {getattr(model_cfg, k)} here"
        for k in ARCHITECTURE_FIELDS
        if getattr(loaded.model_cfg, k) != getattr(model_cfg, k)
    ]
    if differ:
        raise UserError(
            f"--init-from {path}: its model differs from the config's ({'; '.join(differ)})"
        )
    params = encoder.to_layout(jax.device_get(loaded.params), model_cfg.scan_layers)
    params = jax.device_put(params, state_shardings.params)
    opt_state = state.opt_state
    if init_opt_state:
        if not checkpoint.is_checkpoint_dir(path):
            raise UserError(
                f"train.init_opt_state needs a training workdir to take the "
                f"optimizer state from; {path} is a HuggingFace folder"
            )
        other, _, _, _ = restore_state(checkpoint.Checkpointer(path, read_only=True), setup)
        # Keep the moments, restart the step counters: phase 2 runs its own schedule.
        opt_state = jax.tree_util.tree_map_with_path(
            lambda p, x, sh: (
                jax.device_put(np.zeros(x.shape, x.dtype), sh) if "count" in str(p[-1]) else x
            ),
            other.opt_state,
            state_shardings.opt_state,
        )
    return state.replace(params=params, opt_state=opt_state), loaded.source
