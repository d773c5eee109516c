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

SCRATCH_INITS = ("torch", "identity", "pooling")

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
    """Random params as config.scratch_init names: "torch" (as drawn), "identity" (identity_start) or "pooling"
    (identity_start, then pooling_encoder: a VAE's only)."""
    if kind not in SCRATCH_INITS:
        raise ValueError(f"scratch_init={kind!r}: use one of {', '.join(SCRATCH_INITS)}")
    if kind == "torch":
        return dict(params)
    params = identity_start(params)
    return pooling_encoder(params) if kind == "pooling" else params


# The pooling start of the VAE encoder. GroupNorm (32 groups, as in the VAE) normalises each group per image, which
# would rescale a colour carried alone in its group by that image's contrast; a group holding (x, -x, K, -K) has
# mean 0 and variance (mean(x^2) + K^2) * 2 / group_size, the same for every image to within x^2 / K^2 (< 0.4%
# for x in [-1, 1]), so the colour comes through the encoder's last norm linear, and SiLU(n) - SiLU(-n) = n
# undoes the SiLU after it exactly.
VAE_GROUPS = 32
POOLING_CARRIER = 16.0  # K above
POOLING_LOGVAR = -6.0  # the posterior starts narrow (std 0.05), well below the colours' spread (~0.4)


def _colour_lanes(num_colours: int, group_size: int) -> np.ndarray:
    """(num_colours, 4) channel indices of (x, -x, K, -K) per colour: the first 4 channels of group c."""
    return np.arange(num_colours)[:, None] * group_size + np.arange(4)[None, :]


def pooling_encoder(params: Mapping) -> dict:
    """params of an AutoencoderKLTemporalDecoder (after identity_start) -> the same tree whose encoder maps frames
    (N, H, W, 3) in [-1, 1] to posterior means equal to their f x f patch means (f = 2 ** downsamplers), one colour
    per latent channel (a 4th latent channel starts at zero), and log-variances POOLING_LOGVAR.

    The main path is conv_in (colour lanes), the resnets' shortcuts (identity: their branches are already zero),
    the stride-2 downsamplers (2x2 means), the mid attention (output zeroed, so only its residual passes) and
    conv_norm_out -> SiLU -> conv_out (read as above). The encoder keeps SVD's architecture and trains as usual
    from there; the decoder is untouched.
    """
    flat = flatten(params)
    last_width, moments = flat["encoder.conv_out.kernel"].shape[-2:]
    latent_channels, group_size = moments // 2, last_width // VAE_GROUPS
    colours = min(3, latent_channels)
    if group_size < 4:
        raise ValueError(f"the pooling start needs >= 4 channels per GroupNorm group in the encoder's last level, "
                         f"not {last_width} channels / {VAE_GROUPS} groups: widen it to >= {4 * VAE_GROUPS}")
    lanes = _colour_lanes(colours, group_size)
    if lanes.max() >= flat["encoder.conv_in.kernel"].shape[-1]:
        raise ValueError(f"the pooling start needs {lanes.max() + 1} channels in the encoder's first level")
    for key, value in flat.items():
        if not key.startswith("encoder."):
            continue
        shape, new = value.shape, None
        if key == "encoder.conv_in.kernel":
            new = np.zeros(shape, np.float32)
            new[1, 1, np.arange(colours), lanes[:, 0]] = 1.0
            new[1, 1, np.arange(colours), lanes[:, 1]] = -1.0
        elif key == "encoder.conv_in.bias":
            new = np.zeros(shape, np.float32)
            new[lanes[:, 2]], new[lanes[:, 3]] = POOLING_CARRIER, -POOLING_CARRIER
        elif key.endswith("downsamplers.0.conv.kernel"):
            new = np.zeros(shape, np.float32)
            new[:2, :2] = 0.25 * np.eye(shape[-1], dtype=np.float32)  # the window's first 2x2: (0, 1) padding
        elif key.endswith("conv_shortcut.kernel"):
            new = np.eye(*shape[-2:], dtype=np.float32).reshape(shape)
        elif key.endswith(("attentions.0.to_out.kernel", "attentions.0.to_out.bias", "conv_out.bias")):
            new = np.zeros(shape, np.float32)
        elif key == "encoder.conv_out.kernel":
            scale = POOLING_CARRIER * np.sqrt(2.0 / group_size)  # the group's std, up to x^2 / K^2
            new = np.zeros(shape, np.float32)
            new[1, 1, lanes[:, 0], np.arange(colours)] = scale
            new[1, 1, lanes[:, 1], np.arange(colours)] = -scale
        if new is not None:
            flat[key] = jnp.asarray(new, value.dtype)
    flat["quant_conv.bias"] = flat["quant_conv.bias"].at[latent_channels:].set(POOLING_LOGVAR)
    return unflatten_into(params, flat)
