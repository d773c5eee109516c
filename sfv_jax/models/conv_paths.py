"""How a convolution is computed, per backend: never what it computes (tests/test_conv_paths.py holds every path
to XLA's plain convolution of the same layer).

Each backend gets only the rules measured on it (`tools/bench_conv.py`, numbers in BENCHMARKS.md): CPUs
(XLA:CPU) and NVIDIA GPUs (one H200) have their own table in CONV_RULES; any other backend (TPU) runs XLA's
convolution as written until a measurement there says otherwise. The phase upsampling (conv3x3_of_doubled) is
used on every backend: it computes the same result with 16 instead of 36 multiply-adds per input pixel and
channel pair, whatever the hardware.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from sfv_jax.models.options import at_least_float32

# The platform a program is traced FOR when that is not the process's default backend: `sfv-jax plan` traces a TPU
# program on a CPU host, and the CPU's rules (im2col matmuls) would otherwise end up in the TPU program.
_TARGET_PLATFORM: contextvars.ContextVar[str | None] = contextvars.ContextVar("conv_target_platform", default=None)


@contextlib.contextmanager
def target_platform(platform: str | None):
    """Within the block, convolutions traced without an explicit `platform` pick their path for `platform` (e.g.
    "tpu") instead of jax.default_backend(); None keeps the default. Only tracing inside the block is affected."""
    token = _TARGET_PLATFORM.set(platform)
    try:
        yield
    finally:
        _TARGET_PLATFORM.reset(token)


def current_platform() -> str:
    """The platform convolutions are being traced for: target_platform's, else jax.default_backend()."""
    return _TARGET_PLATFORM.get() or jax.default_backend()


@dataclasses.dataclass(frozen=True)
class ConvRules:
    """How one backend computes convolutions.

    Attributes:
      fold: merge trailing spatial axes the kernel does not span (size 1, stride 1, no padding) into one, so
        SVD's temporal (3, 1, 1) kernels over (T, H, W) run as a (3, 1) 2D conv over (T, H*W).
      matmul_max_positions: output positions per image (product of the output's spatial sizes) up to which a
        convolution runs as one matmul over its gathered windows (im2col).
      pointwise_matmul: 1x1 kernels run as a matmul too.
    """

    fold: bool
    matmul_max_positions: int
    pointwise_matmul: bool


# By jax.default_backend() name. Measurements: 14 frames, float32, one C -> C layer (BENCHMARKS.md, "the
# convolution paths per layer shape").
CONV_RULES = {
    # XLA:CPU rewrites a 3x3 conv whose input is smaller than the kernel into a kernel-as-input convolution: on
    # SVD's 14x2x2x1280 bottleneck 1 GFLOP/s, 1.46 s per call, against 0.015 s as one matmul; 14x4x4x1280:
    # 0.126 s against 0.040 s; from 14x8x8x640 on XLA's conv is as fast or faster (0.046 s vs 0.044 s) and
    # needs no k-fold copy of its input. Folding hands the temporal convs to XLA:CPU's 2D conv library instead
    # of a slower 3D kernel: 14x128x128x128 0.42 s -> 0.22 s, 14x64x64x256 0.24 s -> 0.20 s.
    "cpu": ConvRules(fold=True, matmul_max_positions=32, pointwise_matmul=True),
    # H200 (jax 0.11.2): at 14x2x2x1280 the 3x3 conv ran at 2.7 TFLOP/s, as one matmul at 13.3; from 4x4 on
    # XLA's conv is as fast or faster (4x4: 29.2 against 24.8 TFLOP/s; 64x64x256: 179 against 106). Folded
    # temporal (3, 1, 1) convs beat the 3D conv at every size measured (2x2x1280 4.4 against 2.7 TFLOP/s,
    # 16x16x320 16.5 against 13.2, 64x64x256 73 against 53, 128x128x128 72 against 38). 1x1 kernels were
    # not measured there, so they stay XLA's.
    "gpu": ConvRules(fold=True, matmul_max_positions=4, pointwise_matmul=False),
}

# The CPU table's threshold, by its historical name (tools/bench_conv.py measures it).
MATMUL_CONV_MAX_POSITIONS = CONV_RULES["cpu"].matmul_max_positions

CHANNELS_LAST_DIMS = {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC"), 3: ("NDHWC", "DHWIO", "NDHWC")}


def conv_channels_last(x: jax.Array, kernel: jax.Array, strides: tuple[int, ...], padding: tuple[tuple[int, int], ...],
                       precision=None, method: str | None = None, platform: str | None = None) -> jax.Array:
    """Zero-padded, undilated convolution of x (*batch, *spatial, C_in) with kernel (*k, C_in, C_out).

    method: "matmul" or "xla" forces that path after any folding (benchmarks and tests compare the paths this
      way); None picks by conv_method for `platform` (default: current_platform()).
    """
    if method not in (None, "matmul", "xla"):
        raise ValueError(f"conv_channels_last: method {method!r} is not one of None, 'matmul', 'xla'")
    spatial = kernel.ndim - 2
    batch_shape = x.shape[:x.ndim - spatial - 1]
    sizes = x.shape[x.ndim - spatial - 1:-1]
    window = kernel.shape[:spatial]
    choice = method or conv_method(sizes, window, strides, padding, platform)
    kept = _kept_axes(window, strides, padding)
    # A forced method applies after the folding, as the benchmarks compare the paths.
    if choice.startswith("fold:") or (method is not None and kept < spatial - 1):
        y = conv_channels_last(x.reshape(*batch_shape, *sizes[:kept], math.prod(sizes[kept:]), x.shape[-1]),
                               kernel.reshape(*window[:kept], 1, *kernel.shape[-2:]), (*strides[:kept], 1),
                               (*padding[:kept], (0, 0)), precision, method, platform)
        return y.reshape(*y.shape[:-2], *sizes[kept:], y.shape[-1])
    if choice == "matmul":
        return _conv_as_matmul(x, kernel, strides, padding, _out_sizes(sizes, window, strides, padding), precision)
    flat = x.reshape(-1, *sizes, x.shape[-1])
    y = jax.lax.conv_general_dilated(flat, kernel, strides, padding, dimension_numbers=CHANNELS_LAST_DIMS[spatial],
                                     precision=precision)
    return y.reshape(*batch_shape, *y.shape[1:])


def conv_method(sizes: tuple[int, ...], window: tuple[int, ...], strides: tuple[int, ...],
                padding: tuple[tuple[int, int], ...], platform: str | None = None) -> str:
    """How conv_channels_last computes a convolution over spatial `sizes` on `platform` (default: current_platform(),
    i.e. target_platform's or JAX's default backend), by CONV_RULES: "fold:K" (keep the first K axes, merge the rest
    into one, then decide again), "matmul", "xla", or "direct" (XLA's convolution as written, on a backend without
    rules)."""
    rules = CONV_RULES.get(platform or current_platform())
    if rules is None:
        return "direct"
    kept = _kept_axes(window, strides, padding)
    if rules.fold and kept < len(window) - 1:
        return f"fold:{kept}"
    pointwise = all(k == 1 for k in window) and all(tuple(p) == (0, 0) for p in padding)
    positions = math.prod(_out_sizes(sizes, window, strides, padding))
    if (pointwise and rules.pointwise_matmul) or positions <= rules.matmul_max_positions:
        return "matmul"
    return "xla"


def conv3x3_of_doubled(x: jax.Array, kernel: jax.Array, precision=None) -> jax.Array:
    """conv3x3(nearest_2x(x)), zero padding 1, without building the 4x larger input, no bias [every backend].

    x (N, H, W, C), kernel (3, 3, C, C') -> (N, 2H, 2W, C') in x's dtype. Output pixel (2i+a, 2j+b) sees input
    rows (i-1, i) when a = 0 and (i, i+1) when a = 1 (and the same for columns), so each of the four output
    phases is a 2x2 conv of x with a kernel whose taps are sums of the 3x3 kernel's: 16 multiply-adds per input
    pixel and channel pair instead of 36. On CPU the VAE decoder's FLOPs fell 2.58 T -> 2.24 T and its largest
    upsampling convs ran 1.53 s -> 0.84 s (14x32x32x512; BENCHMARKS.md).
    """
    dtype = x.dtype
    kernel = kernel.astype(at_least_float32(kernel.dtype))  # tap sums in float32 even for bf16 params

    def two_taps(k: jax.Array, axis: int) -> tuple[jax.Array, jax.Array]:
        k0, k1, k2 = jnp.split(k, 3, axis=axis)
        return jnp.concatenate([k0, k1 + k2], axis), jnp.concatenate([k0 + k1, k2], axis)

    pads = ((1, 0), (0, 1))  # phase 0 reaches one pixel back, phase 1 one pixel forward
    phases = []
    for a, row_kernel in enumerate(two_taps(kernel, 0)):
        phases.append([conv_channels_last(x, k.astype(dtype), (1, 1), (pads[a], pads[b]), precision)
                       for b, k in enumerate(two_taps(row_kernel, 1))])
    # (N, H, 2[a], W, 2[b], C') -> (N, 2H, 2W, C')
    y = jnp.stack([jnp.stack(row, axis=-2) for row in phases], axis=-4)
    return y.reshape(*x.shape[:-3], 2 * x.shape[-3], 2 * x.shape[-2], y.shape[-1])


def _kept_axes(window, strides, padding) -> int:
    """How many leading spatial axes remain once the trailing ones the kernel does not span
    (size 1, stride 1, no padding) are merged into one (at least 1)."""
    kept = len(window)
    while kept > 1 and window[kept - 1] == 1 and strides[kept - 1] == 1 and tuple(padding[kept - 1]) == (0, 0):
        kept -= 1
    return kept


def _out_sizes(sizes, window, strides, padding) -> tuple[int, ...]:
    return tuple((n + lo + hi - k) // s + 1 for n, (lo, hi), k, s in zip(sizes, padding, window, strides))


def _conv_as_matmul(x, kernel, strides, padding, out_sizes, precision) -> jax.Array:
    """im2col: the kernel's windows gathered along channels, then one matmul with the flat kernel."""
    spatial = kernel.ndim - 2
    lead = x.ndim - spatial - 1
    x = jnp.pad(x, ((0, 0),) * lead + tuple(tuple(p) for p in padding) + ((0, 0),))
    windows = []
    for offset in np.ndindex(*kernel.shape[:spatial]):
        start = (0,) * lead + offset + (0,)
        ends = tuple(o + s * (n - 1) + 1 for o, s, n in zip(offset, strides, out_sizes))
        limit = x.shape[:lead] + ends + x.shape[-1:]
        windows.append(jax.lax.slice(x, start, limit, (1,) * lead + tuple(strides) + (1,)))
    # Window-major, then input channel: the row order of kernel.reshape(prod(k) * C_in, C_out).
    patches = windows[0] if len(windows) == 1 else jnp.concatenate(windows, axis=-1)
    # Accumulated in float32 whatever the compute dtype: a bf16 sum of 9 x C_in products is too coarse.
    out = jnp.einsum("...c,co->...o", patches, kernel.reshape(-1, kernel.shape[-1]), precision=precision,
                     preferred_element_type=at_least_float32(x.dtype))
    return out.astype(x.dtype)
