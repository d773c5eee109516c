"""Multi-head attention and the GEGLU feed-forward of diffusers' transformer blocks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from sfv_jax.models.layers import linear
from sfv_jax.models.options import ModelOptions, at_least_float32


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, implementation: str) -> jax.Array:
    """Softmax attention over (N, L, heads, head_dim) tensors, scale 1/sqrt(head_dim).

    "xla" computes the logits and the softmax in float32 whatever the compute dtype;
    "cudnn" calls the fused kernel of jax.nn.dot_product_attention (NVIDIA GPUs).
    """
    if implementation == "cudnn":
        return jax.nn.dot_product_attention(q, k, v, implementation="cudnn")
    scale = q.shape[-1] ** -0.5
    # Head-major operands make both products plain batched matmuls over (N, heads); contracting the
    # (N, L, heads, D) layout directly let XLA:CPU pick a transposed output layout that ran the
    # weights @ values product 2-3x slower (SVD's 16x16-latent spatial attention: 60 ms vs 18 ms).
    q, k, v = (jnp.swapaxes(t, 1, 2) for t in (q, k, v))
    logits = jnp.einsum("nhqd,nhkd->nhqk", q, k, preferred_element_type=at_least_float32(q.dtype)) * scale
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.swapaxes(jnp.einsum("nhqk,nhkd->nhqd", weights, v), 1, 2)


class Attention(nnx.Module):
    """diffusers' Attention (to_q, to_k, to_v, to_out.0) for self- or cross-attention."""

    def __init__(self, query_dim: int, heads: int, dim_head: int, options: ModelOptions, rngs: nnx.Rngs,
                 cross_attention_dim: int | None = None, qkv_bias: bool = False, out_bias: bool = True):
        inner_dim = heads * dim_head
        context_dim = cross_attention_dim or query_dim
        self.heads = heads
        self.implementation = options.attention
        self.to_q = linear(query_dim, inner_dim, options, rngs, use_bias=qkv_bias)
        self.to_k = linear(context_dim, inner_dim, options, rngs, use_bias=qkv_bias)
        self.to_v = linear(context_dim, inner_dim, options, rngs, use_bias=qkv_bias)
        self.to_out = linear(inner_dim, query_dim, options, rngs, use_bias=out_bias)

    def __call__(self, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
        """x: (N, L, query_dim), context: (N, S, context_dim) or None -> (N, L, query_dim)."""
        context = x if context is None else context
        n, length, _ = x.shape
        v = self.to_v(context)
        if context.shape[1] == 1:
            # A softmax over a single key is exactly 1: the output is that key's value for every
            # query. SVD's cross-attention always has one CLIP token, so this skips q, k and the
            # softmax without changing a bit of the result (to_q/to_k still exist and round-trip).
            out = jnp.broadcast_to(v, (n, length, v.shape[-1]))
            return self.to_out(out)
        q = self.to_q(x).reshape(n, length, self.heads, -1)
        k = self.to_k(context).reshape(n, context.shape[1], self.heads, -1)
        v = v.reshape(n, context.shape[1], self.heads, -1)
        out = dot_product_attention(q, k, v, self.implementation)
        return self.to_out(out.reshape(n, length, -1))


class GEGLU(nnx.Module):
    """proj to 2*inner, then hidden * gelu(gate) with the exact (erf) GELU."""

    def __init__(self, dim: int, inner_dim: int, options: ModelOptions, rngs: nnx.Rngs):
        self.proj = linear(dim, 2 * inner_dim, options, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        hidden, gate = jnp.split(self.proj(x), 2, axis=-1)
        return hidden * jax.nn.gelu(gate.astype(at_least_float32(gate.dtype)), approximate=False).astype(hidden.dtype)


class FeedForward(nnx.Module):
    """diffusers' FeedForward with activation "geglu": net.0 (GEGLU), net.1 (dropout 0), net.2."""

    def __init__(self, dim: int, options: ModelOptions, rngs: nnx.Rngs, dim_out: int | None = None, mult: int = 4):
        inner_dim = dim * mult
        self.net_0 = GEGLU(dim, inner_dim, options, rngs)
        self.net_2 = linear(inner_dim, dim_out or dim, options, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.net_2(self.net_0(x))
