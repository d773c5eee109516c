"""The FVD protocol's preprocessing and the sharded I3D feature extractor.

StyleGAN-V's protocol (the one most video papers report): every frame resized to 224x224 by bilinear
interpolation with half-pixel centres and no antialiasing (torch `F.interpolate(mode="bilinear",
align_corners=False)`), uint8 values mapped to [-1, 1], features = I3D's 400 Kinetics logits before softmax.
Clips are 16 frames (the common setting) or their full length; I3D averages its logits over time either way.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from sfv_jax.eval.i3d import check_input_shape

SIZE = 224
FEATURES = 400


def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) float32 weights of torch's bilinear resize along one axis (align_corners=False).

    Output pixel i samples the input at src = (i + 0.5) * in/out - 0.5, clamped below at 0 (torch's rule), and
    mixes pixels floor(src) and floor(src) + 1 (the last one repeated at the edge). Two taps whatever the scale:
    no antialiasing, as in the protocol.
    """
    # torch's CPU kernel computes the source position in float32 from a float32 scale, rounding once (a fused
    # multiply-add): done the same way, the weights equal torch's bit for bit, where float64 positions would
    # differ by up to 1.5e-5 at 501 pixels.
    f32 = np.float32
    scale = np.float64(f32(in_size) / f32(out_size))
    src = np.maximum((scale * (np.arange(out_size) + 0.5) - 0.5).astype(f32), f32(0.0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    frac = src - i0.astype(f32)
    weights = np.zeros((out_size, in_size), np.float32)
    np.add.at(weights, (np.arange(out_size), i0), f32(1.0) - frac)
    np.add.at(weights, (np.arange(out_size), i1), frac)
    return weights


def preprocess(clips: jax.Array, size: int = SIZE) -> jax.Array:
    """uint8 clips (B, T, H, W, 3) -> float32 (B, T, size, size, 3) in [-1, 1], resized bilinearly as torch does.

    The resize is two small matrix products (rows, then columns), exact to float32 rounding; scaling to [-1, 1]
    first is the same maths as after (bilinear weights sum to 1).
    """
    x = clips.astype(jnp.float32) / 127.5 - 1.0
    _, _, h, w, _ = clips.shape
    if (h, w) == (size, size):
        return x
    rows, cols = jnp.asarray(bilinear_matrix(h, size)), jnp.asarray(bilinear_matrix(w, size))
    highest = jax.lax.Precision.HIGHEST
    x = jnp.einsum("oh,bthwc->btowc", rows, x, precision=highest)
    return jnp.einsum("pw,btowc->btopc", cols, x, precision=highest)


@functools.partial(jax.jit, static_argnums=0)
def _logits(graphdef, state, clips):
    """uint8 clips (B, T, H, W, 3) -> I3D logits (B, 400) float32 under the protocol."""
    return nnx.merge(graphdef, state)(preprocess(clips))


class I3DFeatures:
    """Batched, sharded I3D features: `extractor(clips uint8 (n, T, H, W, 3))` -> float64 (n, 400).

    Every call runs `batch_size` clips (a short last batch is padded, its padding dropped), so one program is
    compiled per clip shape. The batch is split over this process's devices (default: jax.local_devices(); each
    process of a multi-host job scores its own videos) on a 1-D "data" mesh; the weights are replicated.
    batch_size is rounded up to a multiple of the device count.
    """

    def __init__(self, model=None, batch_size: int = 8, devices=None, weights: str | None = None):
        from sfv_jax.eval.weights import load_i3d

        devices = jax.local_devices() if devices is None else list(devices)
        self.mesh = jax.make_mesh((len(devices),), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                                  devices=devices)
        self.batch_size = -(-max(1, int(batch_size)) // len(devices)) * len(devices)
        model = load_i3d(weights) if model is None else model
        self.graphdef, state = nnx.split(model)
        self.state = jax.device_put(state, NamedSharding(self.mesh, P()))
        self.clip_sharding = NamedSharding(self.mesh, P("data"))

    def __call__(self, clips: np.ndarray) -> np.ndarray:
        clips = np.asarray(clips)
        n = clips.shape[0]
        check_input_shape((n, clips.shape[1], SIZE, SIZE, clips.shape[-1]))
        out = []
        for start in range(0, n, self.batch_size):
            chunk = clips[start:start + self.batch_size]
            pad = self.batch_size - chunk.shape[0]
            if pad:
                chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
            logits = _logits(self.graphdef, self.state, jax.device_put(chunk, self.clip_sharding))
            out.append(np.asarray(logits, np.float64)[:self.batch_size - pad])
        return np.concatenate(out) if out else np.zeros((0, FEATURES))
