"""Gradient accumulation shared by every objective's step: micro-batches and the mean gradient over them.

A global batch of B rows splits into M micro-batches of B / M rows taken strided (micro-batch m holds rows
m, m + M, ...), so each micro-batch keeps the batch axis' sharding; a lax.scan runs one forward and backward
pass per micro-batch and sums the gradients, so only one micro-batch's activations are live at a time.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P


def micro_batches(batch: dict, num_micro: int, batch_axes: tuple[str, ...] | None = None) -> dict:
    """{key: (M, B / M, ...)} of every array in `batch` (each (B, ...)); micro-batch m holds rows m, m + M, ...

    batch_axes: the mesh axes the batch is sharded over; when given, micro-batches are constrained to that
    sharding on their row axis (needs jax.set_mesh around tracing).
    """
    def split(x):
        if x.shape[0] % num_micro:
            raise ValueError(f"batch of {x.shape[0]} does not split into {num_micro} micro-batches")
        return x.reshape(x.shape[0] // num_micro, num_micro, *x.shape[1:]).swapaxes(0, 1)

    micro = {k: split(v) for k, v in batch.items()}
    if batch_axes is None:
        return micro
    return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, P(None, batch_axes)), micro)


LOOPS = ("auto", "scan", "unroll")


def micro_batch_loop(config) -> str:
    """"scan" or "unroll" from config.micro_batch_loop ("auto": no loop for one micro-batch, else a scan).

    XLA:CPU runs a loop body's convolutions and their gradients far slower than the same ops outside a loop
    (measured, BENCHMARKS.md "Micro-batch loop": the toy VAE's gradient 42.6 s inside a one-iteration lax.scan vs
    2.1 s without; the micro SF-V step with 2 micro-batches 1.6 s scanned vs 0.41 s unrolled, but 263 s to
    compile unrolled vs 128 s). So one micro-batch never runs in a loop; several are scanned (one micro-batch's
    activations live at a time, one compiled body) unless "unroll" is asked for: on CPU, a long run's better choice.
    """
    loop = config.get("micro_batch_loop", "auto")
    if loop not in LOOPS:
        raise ValueError(f"micro_batch_loop={loop!r}: use one of {LOOPS}")
    if loop == "auto":
        return "unroll" if config.grad_accum_steps == 1 else "scan"
    return loop


def scanned_runs_per_step(config) -> int:
    """How many times a step runs the gradient program's once-counted loop body: XLA's cost analysis counts a loop
    body once, so FLOPs of the program holding the micro-batch scan are this many times its count (grad_accum_steps
    when scanned; 1 when unrolled, whose count already covers every micro-batch)."""
    return config.grad_accum_steps if micro_batch_loop(config) == "scan" else 1


def mean_gradient(loss_fn: Callable, params, xs, num_micro: int, loop: str = "scan"):
    """(mean gradient, stacked losses (M,), stacked aux) of loss_fn(params, *x) -> (loss, aux) over xs.

    xs: a tuple of pytrees whose leaves have the micro-batch index as leading axis (M, ...).
    loop: "scan" (a lax.scan over the micro-batches) or "unroll" (a traced Python loop); the same sums in the same
    order either way.
    """
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    zeros = jax.tree.map(jnp.zeros_like, params)
    if loop == "unroll":
        acc, outs = zeros, []
        for m in range(num_micro):
            (loss, aux), grads = grad_fn(params, *jax.tree.map(lambda a: a[m], xs))
            acc = jax.tree.map(jnp.add, acc, grads)
            outs.append((loss, aux))
        grads, (loss, aux) = acc, jax.tree.map(lambda *a: jnp.stack(a), *outs)
    else:
        def body(acc, x):
            (loss, aux), grads = grad_fn(params, *x)
            return jax.tree.map(jnp.add, acc, grads), (loss, aux)

        grads, (loss, aux) = jax.lax.scan(body, zeros, xs)
    return jax.tree.map(lambda g: g / num_micro, grads), loss, aux
