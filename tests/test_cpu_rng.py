"""cpu_rng: the unrolled threefry lowering gives JAX's own bits (and so the same dropout masks),
as one program without the rolled loop; step_setup.build turns it on."""

import jax
import numpy as np

from bertjax.train import cpu_rng


def _bits_and_hlo(shape):
    # A new function each time: jit's caches would otherwise return the earlier lowering.
    fn = jax.jit(lambda key: jax.random.bits(key, shape, np.uint32))
    key = jax.random.key(7)
    return np.asarray(fn(key)), fn.lower(key).as_text()


def test_unrolled_threefry_gives_the_rolled_loops_bits_without_the_loop():
    try:
        assert cpu_rng.unroll_threefry_on_cpu(False)
        rolled_bits, rolled_hlo = _bits_and_hlo((3, 1001))
        assert cpu_rng.unroll_threefry_on_cpu(True)
        unrolled_bits, unrolled_hlo = _bits_and_hlo((3, 1001))
    finally:
        cpu_rng.unroll_threefry_on_cpu(True)  # as every run's step set-up leaves it
    np.testing.assert_array_equal(unrolled_bits, rolled_bits)
    assert "while" in rolled_hlo and "while" not in unrolled_hlo


def test_step_setup_lowers_dropout_masks_unrolled():
    from bertjax.model_config import preset_config
    from bertjax.train import sharding, step_setup
    from bertjax.train.config import load_config
    from bertjax.train.head import pretraining_head

    cpu_rng.unroll_threefry_on_cpu(False)
    config = load_config("bert_tiny", [])
    mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
    step_setup.build(config, pretraining_head(preset_config("tiny", vocab_size=64)), mesh)
    bernoulli = jax.jit(lambda key: jax.random.bernoulli(key, 0.9, (8, 8)))
    assert "while" not in bernoulli.lower(jax.random.key(0)).as_text()
