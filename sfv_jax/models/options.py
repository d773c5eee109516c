"""Numerical and memory options shared by every sfv-jax model."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

ATTENTION_IMPLEMENTATIONS = ("xla", "cudnn")
FLOAT_DTYPES = ("float32", "bfloat16", "float16", "float64")


def at_least_float32(dtype) -> jnp.dtype:
    """The dtype norms, softmax and the residual stream compute in: float32, or a wider input dtype
    (float64, for numerical checks under jax_enable_x64) kept as it is."""
    return jnp.promote_types(dtype, jnp.float32)

# Names accepted for `remat`; each maps to a jax.checkpoint policy (None: save nothing).
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@dataclasses.dataclass(frozen=True)
class ModelOptions:
    """How a model stores and computes, independent of its architecture.

    Attributes:
      param_dtype: dtype the parameters are stored in ("float32" or "bfloat16"; "float64" for
        numerical checks, which need jax_enable_x64).
      dtype: compute dtype of convolutions and matmuls. Norms and softmax always run in
        float32 (or float64 when dtype is float64), as SVD's own GroupNorm32 does.
      attention: "xla" (portable einsum attention) or "cudnn" (fused kernel through
        jax.nn.dot_product_attention; NVIDIA GPUs, bf16/fp16 compute only).
      remat: rematerialisation policy applied to every resnet and transformer block:
        "none", "full" (recompute everything), "dots" or "dots_no_batch".
      activation_batch_axes: mesh axes the leading (batch x frames) axis of activations is sharded
        over at UNet block boundaries, e.g. ("data", "fsdp") in training; () adds no constraint.
        Needs an active mesh (jax.set_mesh) when non-empty.
    """

    param_dtype: str = "float32"
    dtype: str = "float32"
    attention: str = "xla"
    remat: str = "none"
    activation_batch_axes: tuple[str, ...] = ()

    def __post_init__(self):
        for field in ("param_dtype", "dtype"):
            value = getattr(self, field)
            if value not in FLOAT_DTYPES:
                raise ValueError(f"{field}={value!r}: use one of {FLOAT_DTYPES}")
        if self.attention not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"attention={self.attention!r}: use one of {ATTENTION_IMPLEMENTATIONS}")
        object.__setattr__(self, "activation_batch_axes", tuple(self.activation_batch_axes))
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"remat={self.remat!r}: use one of {tuple(REMAT_POLICIES)}")

    def constrain_activation(self, x: jax.Array) -> jax.Array:
        """Pins x's leading axis to activation_batch_axes (GSPMD would otherwise be free to
        replicate activations between blocks); the identity when no axes are set."""
        if not self.activation_batch_axes:
            return x
        return jax.lax.with_sharding_constraint(x, jax.sharding.PartitionSpec(tuple(self.activation_batch_axes)))

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @property
    def params_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.param_dtype)


def remat_call(remat: str, module: nnx.Module, *arrays, **static):
    """module(*arrays, **static), rematerialised under the named policy (REMAT_POLICIES; "none": a plain call).

    `arrays` are traced (arrays or None); `static` values such as num_frames are closed over, so they stay
    Python ints inside the rematerialised function.
    """
    call = lambda m, *a: m(*a, **static)
    if remat == "none":
        return call(module, *arrays)
    return nnx.remat(call, policy=REMAT_POLICIES[remat])(module, *arrays)
