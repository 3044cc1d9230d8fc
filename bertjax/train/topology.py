"""TPU slices that are not here: `--topology v5p:2x2x2` -> the slice's devices, from the TPU
compiler of the `libtpu` wheel (`pip install 'bertjax[tpu]'`), for ahead-of-time compilation.

A topology is GENERATION:SHAPE, the shape in chips: v4 and v5p chips sit in a 3-D torus
(AxBxC), v5e and v6e in a 2-D one (AxB). The slice is described to libtpu as MaxText's
`accelerator_to_spec_map.py` describes it: v4 and v5p chips are one "megacore" device each
(their two TensorCores act as one, as on the real chips), four chips per host, and a
dimension wraps around (torus links) where the whole slice spans it: every dimension of a
v4/v5p slice whose sides are all multiples of 4, a side of 16 on v5e/v6e.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import re
import tempfile

from bertjax.errors import UserError

INSTALL_HINT = "pip install 'bertjax[tpu]'"


@dataclasses.dataclass(frozen=True)
class Generation:
    """How libtpu names and lays out one TPU generation."""

    libtpu_name: str  # the generation as libtpu's topology names spell it
    dims: int  # 3: AxBxC, 2: AxB
    megacore: bool  # two TensorCores per chip, one JAX device
    example: str  # a shape, and the Cloud TPU name of that slice

    def wraps(self, shape: tuple[int, ...]) -> tuple[bool, bool, bool]:
        """Which dimensions have wrap-around links (always three: libtpu's form)."""
        if self.dims == 3:
            torus = all(side % 4 == 0 for side in shape)
            return tuple(torus for _ in shape)
        return tuple(side == 16 for side in shape) + (False,)


GENERATIONS = {
    "v4": Generation("v4", 3, True, "v4:2x2x1 (a v4-8)"),
    "v5e": Generation("v5e", 2, False, "v5e:2x4 (a v5litepod-8)"),
    "v5p": Generation("v5p", 3, True, "v5p:2x2x2 (a v5p-16)"),
    "v6e": Generation("v6e", 2, False, "v6e:2x4 (a v6e-8)"),
}
ALIASES = {"v5litepod": "v5e"}  # Cloud TPU's name of the v5e slices
_TOPOLOGY = re.compile(r"^([a-z0-9]+):(\d+(?:x\d+)*)$")


@dataclasses.dataclass(frozen=True)
class Slice:
    """The devices of a TPU slice, compile-only: they take shardings and programs, not data."""

    name: str  # as the user gave it, e.g. "v5p:2x2x2"
    generation: str  # a GENERATIONS key
    shape: tuple[int, ...]  # chips per dimension
    devices: tuple  # jax Devices of the slice, one per chip
    hosts: int  # processes a run on the slice would have (four chips each)

    @property
    def chips(self) -> int:
        return len(self.devices)

    @property
    def device_kind(self) -> str:
        return self.devices[0].device_kind


def known_forms() -> str:
    """The accepted forms of --topology, for error messages and help."""
    forms = [f"{g}:{'AxBxC' if gen.dims == 3 else 'AxB'}" for g, gen in GENERATIONS.items()]
    examples = ", ".join(gen.example for gen in GENERATIONS.values())
    return f"{', '.join(forms)} in chips, e.g. {examples}"


def parse(name: str) -> tuple[str, tuple[int, ...]]:
    """(generation, shape) of `name`; UserError for an unknown generation or shape."""
    match = _TOPOLOGY.match(name.strip().lower())
    generation = match and ALIASES.get(match.group(1), match.group(1))
    if not match or generation not in GENERATIONS:
        raise UserError(f"--topology {name}: unknown topology; expected {known_forms()}")
    shape = tuple(int(side) for side in match.group(2).split("x"))
    if len(shape) != GENERATIONS[generation].dims or min(shape) < 1:
        raise UserError(
            f"--topology {name}: a {generation} slice has {GENERATIONS[generation].dims} "
            f"positive sides; expected {known_forms()}"
        )
    return generation, shape


def libtpu_installed() -> bool:
    """Whether the TPU compiler (the `libtpu` wheel) can be loaded."""
    return importlib.util.find_spec("libtpu") is not None


@contextlib.contextmanager
def _quiet_native_stderr():
    """libtpu prints warnings to the process's stderr when it loads on a host without a TPU
    ("could not determine TPU accelerator type", an E0000 line): expected here, and alarming.
    They are dropped; a failure still raises with libtpu's own message."""
    with tempfile.TemporaryFile() as sink:
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def tpu_slice(name: str) -> Slice:
    """The compile-only devices of TPU slice `name` (see the module docstring)."""
    generation, shape = parse(name)
    if not libtpu_installed():
        raise UserError(
            f"--topology {name} needs the TPU compiler, which is not installed: {INSTALL_HINT}"
        )
    import jax
    from jax.experimental import topologies

    gen = GENERATIONS[generation]
    # libtpu would otherwise ask the cloud metadata server what TPU this host has (as
    # axlearn's run_aot_compilation does, skip it: the topology is given).
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    # libtpu's /tmp/libtpu_lockfile keeps a second process off a TPU's chips; a compile-only
    # topology opens none, so another compile must not fail on the lock ("Internal error when
    # accessing libtpu multi-process lockfile").
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        with _quiet_native_stderr():
            devices = topologies.get_topology_desc(
                topology_name=f"{gen.libtpu_name}:{'x'.join(map(str, shape))}",
                platform="tpu",
                chip_config_name="megacore" if gen.megacore else "default",
                chips_per_host_bounds=(2, 2, 1),
                wrap=gen.wraps(shape),
            ).devices
    except jax.errors.JaxRuntimeError as e:
        reason = str(e).splitlines()[0]
        raise UserError(
            f"--topology {name}: libtpu does not accept it ({reason}); expected {known_forms()}"
        ) from None
    return Slice(
        name=name,
        generation=generation,
        shape=shape,
        devices=tuple(devices),
        hosts=len({d.process_index for d in devices}),
    )
