"""Threefry random bits on CPU lowered as on GPU and TPU: one unrolled hash that XLA fuses
into a single pass, instead of JAX's CPU default, a rolled loop of 5 passes over the arrays
(chosen upstream to compile faster, jax/_src/random/threefry2x32.py). The bits are the
same; dropout's masks (attention probabilities [B, N, L, L] above all) cost about 15x less,
over a tenth of a CPU train step of dropout-trained BERT."""

import warnings


def unroll_threefry_on_cpu(unrolled: bool = True) -> bool:
    """Makes programs lowered from now on hash threefry unrolled on CPU (`unrolled` False:
    JAX's rolled loop again). Returns whether it could: the lowering rules are JAX-internal,
    and where a JAX release renames them this warns and keeps JAX's (same bits, slower)."""
    try:
        from jax._src.random import threefry2x32 as threefry
        from jax.interpreters import mlir

        rule = (threefry._threefry2x32_lowering_rule if unrolled
                else threefry._threefry2x32_cpu_lowering_rule)  # fmt: skip
        primitive = threefry.threefry2x32_p
    except (ImportError, AttributeError) as e:
        warnings.warn(
            f"threefry stays rolled on CPU (dropout masks slower, same bits): this "
            f"JAX has no {e.name if isinstance(e, ImportError) else e}",
            stacklevel=2,
        )
        return False
    mlir.register_lowering(primitive, rule, platform="cpu")
    return True
