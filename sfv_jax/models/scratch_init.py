"""Starting weights for training from scratch [ours]: every residual branch and every mixing layer begins as the
identity.

random_init draws torch's default init, which is what diffusers builds and what every parity test compares. Trained
from it, the toy temporal VAE learnt colour very slowly (BENCHMARKS.md, "Toy SVD stack"): its decoder alone, given
the 8x8 patch means of the frames as latents, still could not reproduce them after 100 steps, because the
colour of a pixel is set by layers whose torch init is a random mixing that Adam at lr 2e-4 undoes only slowly:
  - the last conv of each resnet's branch (`conv2`) adds random texture on top of the residual stream (a
    branch that starts at zero leaves the stream intact, as guided-diffusion's `zero_module` does);
  - the temporal output conv (kernel (3, 1, 1), 3 channels, init bound 1/3) mixes the colours of neighbouring
    frames at random;
  - quant_conv (1x1, 8 channels, bound 0.35) mixes the encoder's means with its log-variances at random.
`identity_start` zeroes the first and makes the others the identity (the centre tap of a kernel is the unit
matrix, every other tap zero); biases are already zero. The architecture is unchanged (export and parity do not
see the difference), and weights read from a checkpoint are never touched.
"""

from __future__ import annotations

from typing import Mapping

import jax.numpy as jnp
import numpy as np

from sfv_jax.models.nnx_state import flatten, unflatten_into

SCRATCH_INITS = ("torch", "identity")

# Dotted-key suffixes. Every `conv2` of the SVD models is the last conv of a resnet branch (ResnetBlock2D and
# TemporalResnetBlock, in the UNet and in the VAE); the identity convs map C channels to C.
RESIDUAL_BRANCH_OUT = ".conv2.kernel"
IDENTITY_CONVS = ("time_conv_out.kernel", "quant_conv.kernel")


def identity_kernel(shape: tuple[int, ...]) -> np.ndarray:
    """A conv kernel (*window, C, C) that copies its input: the unit matrix at the window's centre, zero elsewhere."""
    *window, c_in, c_out = shape
    if c_in != c_out or any(k % 2 == 0 for k in window):
        raise ValueError(f"an identity conv needs an odd window and as many inputs as outputs, not {shape}")
    kernel = np.zeros(shape, np.float32)
    kernel[tuple(k // 2 for k in window)] = np.eye(c_in, dtype=np.float32)
    return kernel


def identity_start(params: Mapping) -> dict:
    """params (an nnx pure dict of a UNet or a VAE, e.g. from random_init) -> the same tree with every resnet
    branch's last conv zero and the VAE's frame and moment mixers (time_conv_out, quant_conv) the identity."""
    flat = flatten(params)
    for key, value in flat.items():
        if key.endswith(RESIDUAL_BRANCH_OUT):
            flat[key] = jnp.zeros_like(value)
        elif key.endswith(IDENTITY_CONVS):
            flat[key] = jnp.asarray(identity_kernel(value.shape), value.dtype)
    return unflatten_into(params, flat)


def scratch_params(params: Mapping, kind: str) -> dict:
    """Random params as config.scratch_init names: "torch" (as drawn) or "identity" (identity_start)."""
    if kind not in SCRATCH_INITS:
        raise ValueError(f"scratch_init={kind!r}: use one of {', '.join(SCRATCH_INITS)}")
    return identity_start(params) if kind == "identity" else dict(params)
