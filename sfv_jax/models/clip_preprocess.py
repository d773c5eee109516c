"""The CLIP input of SVD's pipeline: diffusers' `_resize_with_antialiasing` to 224x224, then CLIP normalisation.

diffusers (a port of kornia) blurs with a Gaussian (reflect padding) whose sigma grows with the
downscale factor, then resizes bicubically with align_corners=True (torch's A = -0.75), no crop,
aspect ratio not kept. Blur and resize are both linear and separable, so each axis becomes one
(out, in) matrix built in numpy from the static input size; the image is hit by two matmuls.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_SIZE = (224, 224)
BICUBIC_A = -0.75  # torch's cubic convolution coefficient


def antialias_sigma_and_size(in_size: int, out_size: int) -> tuple[float, int]:
    """diffusers' (kornia's) blur sigma = max((in/out - 1) / 2, 0.001) and odd kernel size int(max(4 sigma, 3))."""
    sigma = max((in_size / out_size - 1.0) / 2.0, 0.001)
    size = int(max(2.0 * 2 * sigma, 3))
    return sigma, size + 1 if size % 2 == 0 else size


def gaussian_kernel(size: int, sigma: float) -> np.ndarray:
    """The normalised 1-D Gaussian of diffusers' _gaussian, computed in float32 as there."""
    x = np.arange(size, dtype=np.float32) - np.float32(size // 2)
    if size % 2 == 0:
        x = x + np.float32(0.5)
    gauss = np.exp(-np.square(x) / (np.float32(2.0) * np.square(np.float32(sigma))))
    return gauss / gauss.sum()


def blur_matrix(n: int, kernel: np.ndarray) -> np.ndarray:
    """(n, n) matrix of a 'same' cross-correlation with `kernel` under torch's reflect padding."""
    size = len(kernel)
    front = (size - 1) // 2
    if max(front, size - 1 - front) >= n:
        raise ValueError(f"an image side of {n} pixels is too small for reflect padding of a {size}-tap blur")
    matrix = np.zeros((n, n), np.float64)
    for out in range(n):
        for tap, weight in enumerate(kernel):
            src = out + tap - front
            src = -src if src < 0 else (2 * (n - 1) - src if src >= n else src)
            matrix[out, src] += weight
    return matrix


def _cubic_weights(t: np.ndarray) -> np.ndarray:
    """torch's get_cubic_upsample_coefficients: weights of taps idx-1..idx+2 for fractions t, (m, 4)."""
    a = BICUBIC_A
    near = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1
    far = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) matrix of torch's F.interpolate(mode="bicubic", align_corners=True) along one axis.

    Source coordinates are computed in float32 as torch does; taps outside the image are clamped
    to the border, so their weights add onto the edge pixels.
    """
    scale = np.float32(in_size - 1) / np.float32(out_size - 1) if out_size > 1 else np.float32(0)
    real = scale * np.arange(out_size, dtype=np.float32)
    index = np.floor(real).astype(np.int64)
    index = np.minimum(index, in_size - 1)
    t = np.clip(real - index.astype(np.float32), 0, 1).astype(np.float64)
    weights = _cubic_weights(t)
    matrix = np.zeros((out_size, in_size), np.float64)
    for tap in range(4):
        src = np.clip(index + tap - 1, 0, in_size - 1)
        np.add.at(matrix, (np.arange(out_size), src), weights[:, tap])
    return matrix


def resize_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) float32 matrix: antialiasing blur, then bicubic resize, along one axis."""
    sigma, size = antialias_sigma_and_size(in_size, out_size)
    return (bicubic_matrix(in_size, out_size) @ blur_matrix(in_size, gaussian_kernel(size, sigma))).astype(np.float32)


def resize_with_antialiasing(images: jax.Array, size: tuple[int, int] = CLIP_SIZE) -> jax.Array:
    """diffusers' _resize_with_antialiasing on channels-last images: (B, H, W, C) -> (B, size[0], size[1], C)."""
    _, height, width, _ = images.shape
    rows = jnp.asarray(resize_matrix(height, size[0]))
    cols = jnp.asarray(resize_matrix(width, size[1]))
    # HIGHEST keeps the matmuls in full float32 on accelerators (TF32 would cost ~1e-3).
    x = jnp.einsum("oh,bhwc->bowc", rows, images.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST)
    return jnp.einsum("pw,bowc->bopc", cols, x, precision=jax.lax.Precision.HIGHEST)


def preprocess_for_clip(images: jax.Array, size: tuple[int, int] = CLIP_SIZE) -> jax.Array:
    """images (B, H, W, 3) in [-1, 1] -> CLIP pixel_values (B, 224, 224, 3), float32.

    The SVD pipeline's CLIP branch: resize with antialiasing in [-1, 1], back to [0, 1], then
    normalise with the OpenAI CLIP mean/std of SVD's feature_extractor (no crop, no rescale).
    """
    x = (resize_with_antialiasing(images, size) + 1.0) / 2.0
    return (x - jnp.asarray(CLIP_MEAN, jnp.float32)) / jnp.asarray(CLIP_STD, jnp.float32)
