"""How a run resumes: its newest checkpoint restored into this run's state shardings, from
either layer layout (`model.scan_layers`) and any mesh."""


def restore_state(ckpt, setup, step=None):
    """`ckpt.restore` (state, rng, loader state, config) into the state shardings of `setup`
    (step_setup.StepSetup), whichever layer layout the checkpoint holds: one written with the
    other `scan_layers` is restored in its own layout, then converted (params and Adam moments
    alike) and resharded."""
    import dataclasses

    import flax.linen as nn
    import jax

    from bertjax import encoder
    from bertjax.train import checkpoint
    from bertjax.train import step as step_lib

    model_cfg, state_shardings = setup.model_cfg, setup.state_shardings
    try:
        saved = ckpt.restore_config(step).get(checkpoint.MODEL_CONFIG_KEY) or {}
    except Exception:  # unreadable: damage, which ckpt.restore names and steps past
        saved = {}
    saved_scan = bool(saved.get("scan_layers", False))
    if saved_scan == model_cfg.scan_layers:
        return ckpt.restore(
            nn.meta.unbox(setup.abstract_state), state_shardings, step, model_cfg=model_cfg
        )
    saved_cfg = dataclasses.replace(model_cfg, scan_layers=saved_scan)
    saved_abstract, saved_shardings = step_lib.state_shardings(
        saved_cfg, setup.tx, setup.mesh, setup.rules, setup.head.init_params
    )
    state, rng, loader_state, config = ckpt.restore(
        nn.meta.unbox(saved_abstract), saved_shardings, step, model_cfg=saved_cfg
    )
    # Both layouts are briefly in memory; a one-off at the start of a run.
    state = jax.device_put(encoder.to_layout(state, model_cfg.scan_layers), state_shardings)
    return state, rng, loader_state, config
