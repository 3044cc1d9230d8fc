"""`train.init_from`: a new run's parameters (and optionally Adam moments) from a HuggingFace
folder or another run's checkpoint, as phase 2 of BERT starts from phase 1; and restoring a
train state written with either layer layout (`model.scan_layers`) into this run's."""

from bertjax.errors import UserError


def restore_state(ckpt, *, model_cfg, tx, mesh, rules, abstract_state, state_shardings,
                  step=None):
    """`ckpt.restore` (state, rng, loader state, config) into this run's `state_shardings`,
    whichever layer layout the checkpoint holds: one written with the other `scan_layers` is
    restored in its own layout, then converted (params and Adam moments alike) and resharded.

    `abstract_state` (boxed) and `state_shardings` describe this run's state; `tx`, `mesh` and
    `rules` rebuild the same for the checkpoint's layout when it differs.
    """
    import dataclasses

    import flax.linen as nn
    import jax

    from bertjax import encoder
    from bertjax.train import checkpoint
    from bertjax.train import step as step_lib

    try:
        saved = ckpt.restore_config(step).get(checkpoint.MODEL_CONFIG_KEY) or {}
    except Exception:  # unreadable: damage, which ckpt.restore names and steps past
        saved = {}
    saved_scan = bool(saved.get("scan_layers", False))
    if saved_scan == model_cfg.scan_layers:
        return ckpt.restore(nn.meta.unbox(abstract_state), state_shardings, step,
                            model_cfg=model_cfg)
    saved_cfg = dataclasses.replace(model_cfg, scan_layers=saved_scan)
    saved_abstract, saved_shardings = step_lib.state_shardings(saved_cfg, tx, mesh, rules)
    state, rng, loader_state, config = ckpt.restore(
        nn.meta.unbox(saved_abstract), saved_shardings, step, model_cfg=saved_cfg)
    # Both layouts are briefly in memory; a one-off at the start of a run.
    state = jax.device_put(encoder.to_layout(state, model_cfg.scan_layers), state_shardings)
    return state, rng, loader_state, config


def warm_start(state, path: str, *, model_cfg, abstract_state, state_shardings,
               init_opt_state: bool, tx, mesh, rules):
    """(state, source): `state` with the parameters of `path` (and, with `init_opt_state`, the
    Adam moments of its checkpoint); the step, schedule and data order start from zero.

    `abstract_state` and `state_shardings` describe this run's state, onto which the other
    run's checkpoint is restored (any mesh and either layer layout may have written it);
    `tx`, `mesh` and `rules` are this run's (see `restore_state`).
    """
    import jax
    import numpy as np

    from bertjax import encoder
    from bertjax.model_config import ARCHITECTURE_FIELDS
    from bertjax.train import checkpoint

    loaded = checkpoint.load_model(path)
    differ = [f"{k}: {getattr(loaded.model_cfg, k)} there, {getattr(model_cfg, k)} here"
              for k in ARCHITECTURE_FIELDS
              if getattr(loaded.model_cfg, k) != getattr(model_cfg, k)]
    if differ:
        raise UserError(
            f"--init-from {path}: its model differs from the config's ({'; '.join(differ)})"
        )
    params = encoder.to_layout(jax.device_get(loaded.params), model_cfg.scan_layers)
    params = jax.device_put(params, state_shardings.params)
    opt_state = state.opt_state
    if init_opt_state:
        if not checkpoint.is_checkpoint_dir(path):
            raise UserError(f"train.init_opt_state needs a training workdir to take the "
                            f"optimizer state from; {path} is a HuggingFace folder")
        other, _, _, _ = restore_state(
            checkpoint.Checkpointer(path, read_only=True), model_cfg=model_cfg, tx=tx,
            mesh=mesh, rules=rules, abstract_state=abstract_state,
            state_shardings=state_shardings)
        # Keep the moments, restart the step counters: phase 2 runs its own schedule.
        opt_state = jax.tree_util.tree_map_with_path(
            lambda p, x, sh: jax.device_put(np.zeros(x.shape, x.dtype), sh)
            if "count" in str(p[-1]) else x,
            other.opt_state, state_shardings.opt_state)
    return state.replace(params=params, opt_state=opt_state), loaded.source
