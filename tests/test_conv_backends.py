"""The convolution rules are per backend (sfv_jax.models.conv_paths.CONV_RULES): each backend takes only the paths
measured on it, a backend without measurements (TPU) XLA's plain convolution, the phase upsampling everywhere."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from sfv_jax.models.conv_paths import conv3x3_of_doubled, conv_channels_last, conv_method
from tests.test_conv_paths import CASES


# The path each case of tests/test_conv_paths.py takes on an H200: folds, a matmul only for the 2x2-sized outputs
# (<= 4 positions, pointwise kernels excluded), else XLA's convolution.
GPU_METHODS = ["xla", "matmul", "xla", "xla", "matmul", "xla", "fold:1", "fold:1", "fold:1", "fold:1", "xla", "xla"]


def test_each_backend_takes_only_its_measured_paths():
    """Catches: CPU-only rules (im2col up to 32 positions, pointwise matmuls) applied on GPUs, where the H200
    measurement put the crossover at 4 positions, and any rule applied on TPUs, where nothing was measured."""
    for (shape, kernel, strides, padding, cpu_method), gpu_method in zip(CASES, GPU_METHODS, strict=True):
        sizes = shape[-len(kernel) - 1:-1]
        assert conv_method(sizes, kernel, strides, padding, "cpu") == cpu_method
        assert conv_method(sizes, kernel, strides, padding, "gpu") == gpu_method, (shape, kernel)
        assert conv_method(sizes, kernel, strides, padding, "tpu") == "direct"
    assert conv_method((2, 2), (3, 3), (1, 1), ((1, 1), (1, 1)), "gpu") == "matmul"  # SVD's 2x2 bottleneck


@pytest.mark.parametrize("platform", ["gpu", "tpu"])
def test_every_backends_path_computes_the_same_convolution(platform):
    """Catches: a GPU or TPU path that drops padding or strides (run here on CPU with that backend's rules)."""
    rng = np.random.default_rng(0)
    for shape, kernel, strides, padding, _ in CASES:
        x = jnp.asarray(rng.standard_normal(shape, np.float32))
        k = jnp.asarray(rng.standard_normal((*kernel, shape[-1], 3), np.float32))
        got = conv_channels_last(x, k, strides, padding, platform=platform)
        want = conv_channels_last(x, k, strides, padding, method="xla")
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=3e-5)


def test_phase_upsampling_equals_the_conv_of_repeated_pixels():
    """Catches: a phase kernel with the wrong tap sums or padding (used on every backend)."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((2, 5, 3, 4), np.float32))
    k = jnp.asarray(rng.standard_normal((3, 3, 4, 6), np.float32))
    doubled = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    want = conv_channels_last(doubled, k, (1, 1), ((1, 1), (1, 1)), method="xla")
    np.testing.assert_allclose(np.asarray(conv3x3_of_doubled(x, k)), np.asarray(want), rtol=0, atol=2e-5)
