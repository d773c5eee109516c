"""The convolution rules are per backend: the CPU-measured paths (fold, im2col matmul) on CPUs only, XLA's plain
convolution on GPUs and TPUs, the phase upsampling everywhere (sfv_jax.models.conv_paths)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from sfv_jax.models.conv_paths import conv3x3_of_doubled, conv_channels_last, conv_method
from tests.test_conv_paths import CASES


@pytest.mark.parametrize("platform", ["gpu", "tpu"])
def test_accelerators_run_xla_convolution_as_written(platform):
    """Catches: CPU-only rules (im2col below 32 positions, temporal folding) applied on accelerators, where
    nobody measured them."""
    for shape, kernel, strides, padding, cpu_method in CASES:
        sizes = shape[-len(kernel) - 1:-1]
        assert conv_method(sizes, kernel, strides, padding, platform) == "direct"
        assert conv_method(sizes, kernel, strides, padding, "cpu") == cpu_method


def test_direct_path_computes_the_same_convolution():
    """Catches: a 'direct' path that drops padding or strides (it runs here on CPU with the GPU rule)."""
    rng = np.random.default_rng(0)
    for shape, kernel, strides, padding, _ in CASES[:4] + CASES[6:8]:
        x = jnp.asarray(rng.standard_normal(shape, np.float32))
        k = jnp.asarray(rng.standard_normal((*kernel, shape[-1], 3), np.float32))
        got = conv_channels_last(x, k, strides, padding, platform="gpu")
        want = conv_channels_last(x, k, strides, padding, method="xla")
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=2e-5)


def test_phase_upsampling_equals_the_conv_of_repeated_pixels():
    """Catches: a phase kernel with the wrong tap sums or padding (used on every backend)."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((2, 5, 3, 4), np.float32))
    k = jnp.asarray(rng.standard_normal((3, 3, 4, 6), np.float32))
    doubled = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    want = conv_channels_last(doubled, k, (1, 1), ((1, 1), (1, 1)), method="xla")
    np.testing.assert_allclose(np.asarray(conv3x3_of_doubled(x, k)), np.asarray(want), rtol=0, atol=2e-5)
