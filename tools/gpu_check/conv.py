"""Section "conv": which way of computing each convolution kind of SVD-XT is fastest on the device, in bf16
at SVD-XT's shapes (14 frames, the UNet's levels at a 72x128 latent and the VAE decoder's first levels).

The CPU-tuned paths of sfv_jax/models/layers.py against plain XLA convolution (tools/bench_conv.py's
measurement, here per layer kind):
- spatial 3x3: XLA's convolution vs one im2col matmul (conv_channels_last method="matmul");
- temporal 3x1x1 over (T, H, W): XLA's 3D convolution vs the fold of (H, W) into one axis followed by
  XLA's 2D convolution or by im2col;
- upsample 2x + 3x3: the 4x larger nearest-neighbour copy convolved by XLA vs Upsample2D's four phase
  convolutions of the small input.
`picked` names the path sfv-jax takes today (conv_method's choice, tuned on a CPU); `fastest` the one
that won here. FLOP/s are nominal: the plain convolution's multiply-adds over each path's time.
"""

from __future__ import annotations

import math

from tools.gpu_check.common import Plan, Recorder


def variants(kind: str, channels: int):
    """(layer, {path name: fn(layer, x)}, kernel) of one convolution kind at `channels` in and out."""
    import jax.numpy as jnp
    from flax import nnx
    from sfv_jax.models.layers import TORCH_DEFAULT_INIT, Conv, Upsample2D, conv_channels_last
    from sfv_jax.models.options import ModelOptions

    def forced(method):
        def fn(layer, x):
            kernel = layer.kernel[...].astype(x.dtype)
            strides = (1,) * len(layer.kernel_size)
            y = conv_channels_last(x, kernel, strides, layer.padding, method=method)
            return y + layer.bias[...].astype(x.dtype)
        return fn

    if kind == "upsample 2x + 3x3":
        up = Upsample2D(channels, ModelOptions(param_dtype="bfloat16", dtype="bfloat16"), nnx.Rngs(0))
        doubled = lambda x: jnp.repeat(jnp.repeat(x, 2, axis=-3), 2, axis=-2)
        return up, {"phase convs": lambda m, x: m(x),
                    "xla on 4x copy": lambda m, x: nnx.Conv.__call__(m.conv, doubled(x))}, (3, 3)
    kernel = (3, 3) if kind == "spatial 3x3" else (3, 1, 1)
    layer = Conv(channels, channels, kernel, padding=tuple((k // 2, k // 2) for k in kernel), dtype=jnp.bfloat16,
                 param_dtype=jnp.bfloat16, kernel_init=TORCH_DEFAULT_INIT, rngs=nnx.Rngs(0))
    paths = {"xla": lambda m, x: nnx.Conv.__call__(m, x)}
    if kind == "spatial 3x3":
        paths["im2col"] = forced("matmul")
    else:
        paths.update({"fold + xla 2D": forced("xla"), "fold + im2col": forced("matmul")})
    return layer, paths, kernel


def picked_path(kind: str, frames: int, h: int, w: int) -> str:
    """The path sfv-jax's layers take for this kind and shape (layers.conv_method's CPU-tuned rule)."""
    from sfv_jax.models.layers import conv_method
    if kind == "upsample 2x + 3x3":
        return "phase convs"
    if kind == "spatial 3x3":
        return {"xla": "xla", "matmul": "im2col"}[conv_method((h, w), (3, 3), (1, 1), ((1, 1), (1, 1)))]
    folded = conv_method((frames, h * w), (3, 1), (1, 1), ((1, 1), (0, 0)))
    return {"xla": "fold + xla 2D", "matmul": "fold + im2col"}[folded]


def run(plan: Plan, rec: Recorder) -> None:
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from tools.bench_conv import median_seconds, parse_shape

    rec.set("setup", {"frames": plan.conv_frames, "dtype": "bfloat16", "repeats": plan.conv_repeats})
    results: dict[str, list] = {}
    key = jax.random.key(0)
    for kind, shapes in plan.conv_shapes:
        results[kind] = []
        for text in shapes:
            h, w, c = parse_shape(text)
            layer, paths, kernel = variants(kind, c)
            graphdef, state = nnx.split(layer)
            shape = (plan.conv_frames, h, w, c) if len(kernel) == 2 else (1, plan.conv_frames, h, w, c)
            key, sub = jax.random.split(key)
            x = jax.random.normal(sub, shape, jnp.bfloat16)
            out_positions = plan.conv_frames * h * w * (4 if kind.startswith("upsample") else 1)
            flops = 2 * out_positions * c * c * math.prod(kernel)
            row = {"input": "x".join(map(str, shape)), "flops": flops,
                   "picked": picked_path(kind, plan.conv_frames, h, w), "seconds": {}}
            for name, fn in paths.items():
                jitted = jax.jit(lambda s, x, fn=fn: fn(nnx.merge(graphdef, s), x))
                row["seconds"][name] = median_seconds(jitted, state, x, repeats=plan.conv_repeats)
            row["fastest"] = min(row["seconds"], key=row["seconds"].get)
            row["picked_over_fastest"] = row["seconds"][row["picked"]] / row["seconds"][row["fastest"]]
            row["gflops_per_s"] = {name: flops / s / 1e9 for name, s in row["seconds"].items()}
            results[kind].append(row)
            rec.set("kinds", results)
            rec.set("summary", summarize(results))  # after every shape: a section killed at its budget keeps it
            del x


def summarize(results: dict[str, list]) -> dict[str, dict]:
    """Per layer kind: the paths that won, and whether (and by how much at worst) sfv-jax's pick lost."""
    return {kind: {"fastest": sorted({r["fastest"] for r in rows}),
                   "picked_is_fastest": all(r["picked"] == r["fastest"] for r in rows),
                   "worst_picked_over_fastest": max(r["picked_over_fastest"] for r in rows)}
            for kind, rows in results.items() if rows}
