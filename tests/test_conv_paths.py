"""layers.Conv and Upsample2D choose how a convolution is computed (im2col matmul, folded 2D conv,
phase convolutions); each path must give what XLA's plain convolution of the same layer gives."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sfv_jax.models.layers import TORCH_DEFAULT_INIT, Conv, Upsample2D, conv_method
from sfv_jax.models.options import ModelOptions

# (input shape, kernel, strides, padding, the path conv_method must pick)
CASES = [
    ((2, 3, 3, 5), (3, 3), (1, 1), ((1, 1), (1, 1)), "matmul"),             # tiny image
    ((2, 4, 4, 5), (3, 3), (2, 2), ((0, 1), (0, 1)), "matmul"),             # the VAE's (0, 1)-padded downsample
    ((2, 5, 7, 5), (3, 3), (2, 2), ((1, 1), (1, 1)), "matmul"),             # odd sizes, stride 2
    ((2, 6, 6, 5), (1, 1), (1, 1), ((0, 0), (0, 0)), "matmul"),             # pointwise
    ((2, 3, 2, 2, 2, 5), (3, 3), (1, 1), ((1, 1), (1, 1)), "matmul"),       # two batch axes
    ((2, 16, 16, 5), (3, 3), (1, 1), ((1, 1), (1, 1)), "xla"),              # large enough for XLA's conv
    ((1, 3, 2, 2, 5), (3, 1, 1), (1, 1, 1), ((1, 1), (0, 0), (0, 0)), "fold:1"),   # SVD's temporal conv
    ((2, 7, 9, 10, 5), (3, 1, 1), (1, 1, 1), ((1, 1), (0, 0), (0, 0)), "fold:1"),
    ((3, 2, 7, 9, 10, 5), (3, 1, 1), (2, 1, 1), ((1, 1), (0, 0), (0, 0)), "fold:1"),  # strided in time
    ((2, 7, 9, 10, 5), (1, 1, 1), (1, 1, 1), ((0, 0), (0, 0), (0, 0)), "fold:1"),
    ((2, 7, 9, 10, 5), (3, 3, 3), (1, 1, 1), ((1, 1), (1, 1), (1, 1)), "xla"),
    ((2, 7, 9, 10, 5), (3, 3, 1), (1, 1, 1), ((1, 1), (1, 1), (0, 0)), "xla"),   # one unit axis: nothing to fold
]


@pytest.mark.parametrize("shape,kernel,strides,padding,method", CASES)
def test_conv_paths_match_xla_convolution(shape, kernel, strides, padding, method):
    layer = Conv(5, 7, kernel, strides=strides, padding=padding, kernel_init=TORCH_DEFAULT_INIT,
                 bias_init=nnx.initializers.normal(1.0), rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).standard_normal(shape, np.float32))
    assert conv_method(shape[-len(kernel) - 1:-1], kernel, strides, padding) == method
    out, reference = layer(x), nnx.Conv.__call__(layer, x)
    assert out.shape == reference.shape
    np.testing.assert_allclose(np.asarray(out), np.asarray(reference), rtol=0, atol=2e-6)


def test_matmul_path_in_bfloat16_stays_close():
    options = ModelOptions(dtype="bfloat16")
    layer = Conv(64, 64, (3, 3), padding=((1, 1), (1, 1)), dtype=options.compute_dtype,
                 kernel_init=TORCH_DEFAULT_INIT, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(1).standard_normal((3, 2, 2, 64), np.float32))
    out = layer(x)
    assert out.dtype == jnp.bfloat16
    reference = np.asarray(nnx.Conv.__call__(layer, x), np.float32)
    err = np.linalg.norm(np.asarray(out, np.float32) - reference) / np.linalg.norm(reference)
    assert err < 1e-2


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (3, 2, 1, 1, 5), (1, 5, 5, 5)])
def test_doubling_upsample_equals_conv_of_repeated_pixels(shape):
    up = Upsample2D(5, ModelOptions(), nnx.Rngs(0))
    up.conv.bias[...] = jnp.arange(5.0)
    x = jnp.asarray(np.random.default_rng(2).standard_normal(shape, np.float32))
    doubled = jnp.repeat(jnp.repeat(x, 2, axis=-3), 2, axis=-2)
    np.testing.assert_allclose(np.asarray(up(x)), np.asarray(nnx.Conv.__call__(up.conv, doubled)), rtol=0, atol=2e-6)


def test_upsample_to_a_given_size_keeps_the_nearest_resize():
    up = Upsample2D(5, ModelOptions(), nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(3).standard_normal((1, 5, 4, 5), np.float32))
    out = up(x, output_size=(11, 9))
    rows = np.floor(np.arange(11) * np.float32(5 / 11)).astype(int)
    cols = np.floor(np.arange(9) * np.float32(4 / 9)).astype(int)
    expected = nnx.Conv.__call__(up.conv, x[:, rows][:, :, cols])
    np.testing.assert_allclose(np.asarray(out), np.asarray(expected), rtol=0, atol=2e-6)


@pytest.mark.parametrize("method", ["matmul", "xla"])
def test_forced_method_computes_the_same_convolution(method):
    """conv_channels_last(method=...) overrides the size rule only: both paths give one answer,
    including after the temporal fold."""
    from sfv_jax.models.layers import conv_channels_last
    rng = np.random.default_rng(4)
    for shape, kernel, padding in (((2, 16, 16, 5), (3, 3, 5, 7), ((1, 1), (1, 1))),
                                   ((2, 3, 4, 4, 5), (3, 1, 1, 5, 7), ((1, 1), (0, 0), (0, 0)))):
        x = jnp.asarray(rng.standard_normal(shape, np.float32))
        k = jnp.asarray(rng.standard_normal(kernel, np.float32))
        strides = (1,) * (len(kernel) - 2)
        got = conv_channels_last(x, k, strides, padding, method=method)
        np.testing.assert_allclose(np.asarray(got), np.asarray(conv_channels_last(x, k, strides, padding)),
                                   rtol=0, atol=2e-5)
    with pytest.raises(ValueError, match="method 'winograd'"):
        conv_channels_last(x, k, strides, padding, method="winograd")
