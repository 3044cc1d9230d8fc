"""Refusing to run on the CPU of a machine whose accelerator JAX did not bring up.

When JAX_PLATFORMS is unset, JAX tries every installed backend and falls back to the CPU when
the TPU or GPU one fails (a TPU held by another process, a driver or libtpu mismatch): a pod
job would then train for hours at a CPU's speed, with only libtpu's own log lines to say so.
At start-up `bertjax train` and `bertjax finetune` call `check_in_use`; a user who means the
CPU says so with JAX_PLATFORMS=cpu.
"""

import dataclasses

from bertjax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Facts:
    """What the check reads of this process and machine."""

    backend: str  # jax.default_backend()
    platforms_chosen: bool  # JAX_PLATFORMS (jax.config's jax_platforms) is set
    tpu_chips: int  # TPU chips on the PCI bus
    tpu_version: str  # their generation ("v5p"), "" when unknown or none
    nvidia_gpu: bool  # an NVIDIA GPU's device files exist
    backend_errors: dict  # platform -> what JAX's backend said when it failed to start


def facts() -> Facts:
    """This process's Facts (initialises JAX's backends, as any first JAX call does)."""
    import jax
    from jax._src import hardware_utils, xla_bridge

    backend = jax.default_backend()
    chips, version = hardware_utils.num_available_tpu_chips_and_device_id()
    return Facts(
        backend=backend,
        platforms_chosen=bool(jax.config.jax_platforms),
        tpu_chips=chips,
        tpu_version=version.name if version is not None else "",
        nvidia_gpu=hardware_utils.has_visible_nvidia_gpu(),
        backend_errors=dict(xla_bridge._backend_errors),
    )


def unused_accelerator(f: Facts) -> str | None:
    """A sentence naming the accelerator the machine has while JAX runs on its CPU without
    being told to: TPU chips (a TPU VM never means its CPU), or an NVIDIA GPU whose CUDA
    backend failed to start; None when JAX runs on an accelerator, none is attached, or the
    platforms were chosen."""
    if f.platforms_chosen or f.backend != "cpu":
        return None
    if f.tpu_chips:
        kind = f"{f.tpu_chips} TPU {f.tpu_version + ' ' if f.tpu_version else ''}chip(s)"
        return _sentence(kind, "tpu", f.backend_errors, "pip install 'bertjax[tpu]'")
    if f.nvidia_gpu and "cuda" in f.backend_errors:
        # Without a CUDA jaxlib JAX says itself that it falls back (a logged warning), and a
        # workstation's GPU is no reason to refuse the CPU install `make demo` makes; a CUDA
        # backend that is installed and fails is said at INFO level only: refused.
        return _sentence("an NVIDIA GPU", "cuda", f.backend_errors, "pip install 'jax[cuda12]'")
    return None


def _sentence(kind: str, platform: str, errors: dict, install: str) -> str:
    said = str(errors.get(platform, "")).strip()
    why = (
        f"JAX's {platform} backend failed: {said.splitlines()[0]}"
        if said
        else f"no {platform} backend is installed: {install}"
    )
    return f"this machine has {kind} but JAX runs on its CPU ({why})"


def check_in_use() -> None:
    """Raises UserError when `unused_accelerator` names one: the run would fall back to the
    CPU silently."""
    problem = unused_accelerator(facts())
    if problem:
        raise UserError(
            f"{problem}: fix the accelerator, or set JAX_PLATFORMS=cpu to run on the CPU anyway"
        )
