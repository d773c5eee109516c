"""`make demo`: the whole available path on a tiny random model, no downloads.

Builds the tiny SVD UNet from the config with random weights, writes it in diffusers format,
converts that folder back through the strict converter into an sfv-jax checkpoint, restores
it, and runs the jitted UNet on random inputs, printing shapes and compile/run timings.
"""

from __future__ import annotations

import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sfv_jax.checkpoint import load_checkpoint, save_checkpoint
from sfv_jax.config import load_config
from sfv_jax.convert import unet_from_diffusers, unet_to_diffusers
from sfv_jax.convert.module_state import flat_params
from sfv_jax.models import ModelOptions, UNetConfig, UNetSpatioTemporalConditionModel
from sfv_jax.models.random_init import random_module


def _timed(fn, *args):
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - start


def run(config_spec: str = "configs/tiny.py", workdir: str | None = None) -> None:
    config = load_config(config_spec)
    unet_config = UNetConfig.from_dict(config.unet.to_dict())
    options = ModelOptions(**config.model.to_dict())
    workdir = workdir or tempfile.mkdtemp(prefix="sfv_jax_demo_")
    os.makedirs(workdir, exist_ok=True)
    print(f"sfv-jax demo: {config_spec}, jax {jax.__version__} on {jax.devices()[0].platform}, files in {workdir}")

    unet = random_module(lambda rngs: UNetSpatioTemporalConditionModel(unet_config, options, rngs=rngs), config.seed)
    n_params = sum(int(np.prod(p.shape)) for p in flat_params(unet).values())
    diffusers_dir = os.path.join(workdir, "unet")
    start = time.perf_counter()
    unet_to_diffusers(unet, diffusers_dir)
    print(f"1. random UNet ({n_params:,} params) written in diffusers format to {diffusers_dir} "
          f"({time.perf_counter() - start:.2f}s)")

    start = time.perf_counter()
    converted = unet_from_diffusers(diffusers_dir, options)
    checkpoint_dir = os.path.join(workdir, "checkpoint")
    save_checkpoint(checkpoint_dir, {"unet": converted}, overwrite=True)
    restored = load_checkpoint(checkpoint_dir, options)["unet"]
    same = all(np.array_equal(a, b) for a, b in zip(flat_params(unet).values(), flat_params(restored).values()))
    print(f"2. converted -> Orbax checkpoint {checkpoint_dir} -> restored, params identical: {same} "
          f"({time.perf_counter() - start:.2f}s)")

    batch, frames, height, width = 1, unet_config.num_frames, 2 * unet_config.sample_size, unet_config.sample_size + 3
    keys = jax.random.split(jax.random.key(config.seed), 3)
    sample = jax.random.normal(keys[0], (batch, frames, height, width, unet_config.in_channels))
    context = jax.random.normal(keys[1], (batch, 1, unet_config.per_block("cross_attention_dim")[0]))
    sigma = 700.0
    timestep = jnp.full((batch,), 0.25 * np.log(sigma))
    added_time_ids = jnp.array([[6.0, 127.0, 0.02]] * batch)

    forward = nnx.jit(lambda model, *inputs: model(*inputs))
    out, compile_s = _timed(forward, restored, sample, timestep, context, added_time_ids)
    runs = [_timed(forward, restored, sample, timestep, context, added_time_ids)[1] for _ in range(3)]
    print(f"3. unet(sample {tuple(sample.shape)}, timestep {tuple(timestep.shape)}, "
          f"encoder_hidden_states {tuple(context.shape)}, added_time_ids {tuple(added_time_ids.shape)}) "
          f"-> {tuple(out.shape)} {out.dtype}")
    print(f"   first call (compile + run) {compile_s:.2f}s, then median {np.median(runs) * 1e3:.1f} ms per call; "
          f"output finite: {bool(jnp.isfinite(out).all())}")
