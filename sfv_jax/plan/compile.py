"""The programs `sfv-jax plan` compiles, ahead of time, for a topology's devices: never a weight in memory.

train: the abstract train state (the objective's jax.eval_shape) and batch (jax.eval_shape of the objective's
encode of uint8 clips), sharded by the config's mesh and rules exactly as sfv_jax.train.loop shards them, and the
step the loop jits (sfv_jax.parallel.sharding.jit_train_step of objective.step, state donated) lowered and compiled:
the gradients and the update as two programs (config.step_programs "split", run one after the other, so the
step's peak is the larger program's; the batch, held by the loop while the update runs, is counted in the first
only) or one ("fused").
sample: SF-V's one-step generation as SFVPipeline runs it (sfv_jax.pipeline.lower_one_step), one clip per device.

Convolutions are traced for the topology's platform (sfv_jax.models.conv_paths.target_platform), not the host's: a
TPU program planned on a CPU host must not carry the CPU's im2col rewrites.
"""

from __future__ import annotations

import dataclasses
import math
import time

import jax
import numpy as np

from sfv_jax.errors import SfvError
from sfv_jax.plan.report import ProgramFigures
from sfv_jax.plan.topology import Topology

# Train-state fields by what they hold (TrainState of sfv; ModelTrainState of denoise and vae). step and rng count
# as "other".
STATE_GROUPS = {"params": ("g_params", "g_ema", "d_heads", "params", "ema"),
                "optimizer": ("g_opt", "d_opt", "opt"),
                "frozen": ("backbone", "encoders")}


def build_mesh(config, topology: Topology) -> jax.sharding.Mesh:
    """config.mesh over the topology's devices; an SfvError when the sizes do not match its device count."""
    from sfv_jax.parallel.mesh import make_mesh
    try:
        return make_mesh(config.mesh, topology.devices)
    except ValueError as e:
        raise SfvError(f"{topology.name} ({len(topology.devices)} devices): {e}") from None


def check_batch(config, mesh: jax.sharding.Mesh) -> list[str]:
    """An SfvError when the global batch cannot be laid out on the mesh; the loop's warnings (as lines) otherwise."""
    from sfv_jax.parallel.rules import batch_device_count
    from sfv_jax.train.loop import micro_batch_warning
    devices = batch_device_count(mesh, config.sharding.rules)
    if config.global_batch_size % config.grad_accum_steps:
        raise SfvError(f"global_batch_size={config.global_batch_size} does not split into "
                       f"grad_accum_steps={config.grad_accum_steps} micro-batches")
    if config.global_batch_size % devices:
        raise SfvError(f"global_batch_size={config.global_batch_size} does not split over the {devices} devices of "
                       f"the batch axes ({dict(mesh.shape)}); use a multiple of {devices}")
    warning = micro_batch_warning(config.global_batch_size, config.grad_accum_steps, devices)
    return [warning] if warning else []


def abstract_train(config, mesh: jax.sharding.Mesh):
    """(objective, abstract state, abstract batch): shapes only, as the loop builds them (call under jax.set_mesh)."""
    from sfv_jax.parallel.rules import batch_axes
    from sfv_jax.train.objectives import make_objective
    objective = make_objective(config, batch_axes(config.sharding.rules))
    state = objective.abstract_state()
    frames = jax.ShapeDtypeStruct((config.global_batch_size, config.data.num_frames, config.data.height,
                                   config.data.width, 3), np.uint8)
    key = jax.ShapeDtypeStruct((2,), np.uint32)
    # data.latents="cache" feeds the step the same arrays (tools/encode_latents.py writes what encode computes).
    batch = jax.eval_shape(objective.encode, objective.frozen_encoders(state), frames, key)
    return objective, state, batch


def state_bytes(abstract_state, shardings) -> dict[str, int]:
    """Bytes one device holds of each STATE_GROUPS group (and "other"), from each leaf's shard shape."""
    totals = {group: 0 for group in (*STATE_GROUPS, "other")}
    for field in dataclasses.fields(abstract_state):
        group = next((g for g, names in STATE_GROUPS.items() if field.name in names), "other")
        leaves = jax.tree.leaves(getattr(abstract_state, field.name))
        specs = jax.tree.leaves(getattr(shardings, field.name))
        totals[group] += sum(math.prod(s.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize
                             for x, s in zip(leaves, specs))
    return totals


def figures(name: str, compiled, seconds: float) -> ProgramFigures:
    """memory_analysis() and cost_analysis() of one compiled program (None where the backend reports nothing), and
    the seconds XLA took to compile it."""
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax: one dict per device program
        cost = cost[0] if cost else None
    flops = (cost or {}).get("flops")
    get = lambda field: int(getattr(memory, field)) if memory is not None else None
    return ProgramFigures(name=name, argument_bytes=get("argument_size_in_bytes"),
                          output_bytes=get("output_size_in_bytes"), alias_bytes=get("alias_size_in_bytes"),
                          temp_bytes=get("temp_size_in_bytes"), code_bytes=get("generated_code_size_in_bytes"),
                          flops=float(flops) if flops is not None and flops >= 0 else None, compile_s=seconds)


def _compile(name: str, lowered) -> ProgramFigures:
    start = time.perf_counter()
    compiled = lowered.compile()
    return figures(name, compiled, time.perf_counter() - start)


def plan_train(config, topology: Topology, mesh: jax.sharding.Mesh, progress=None):
    """([figures of each program of the step], per-device state bytes by group, seconds to trace and lower) of
    config's real train step on `mesh`: "train_step.gradients" and "train_step.apply" (config.step_programs "split",
    the default), or "train_step" ("fused"). progress(line), when given, hears each program's start and end."""
    from sfv_jax.models.conv_paths import target_platform
    from sfv_jax.parallel.sharding import jit_train_step
    from sfv_jax.parallel.step_programs import step_programs
    from sfv_jax.train.accumulate import scanned_runs_per_step
    with jax.set_mesh(mesh), target_platform(topology.platform):
        objective, state, batch = abstract_train(config, mesh)
        step, shardings, _ = jit_train_step(objective.step, state, batch, mesh, config.sharding,
                                            step_programs(config))
        # One program's XLA compile at a time: the host's peak memory is the larger program's, not their sum.
        compiled = step.compile(state, batch, progress=progress, parallel=False)
    programs = [figures(f"train_step.{p.name}" if len(compiled) > 1 else p.name, p.compiled, p.compile_s)
                for p in compiled]
    # The micro-batches run in the first program (the fused step: its whole program, which then also counts the
    # update once per micro-batch when scanned, a small over-count).
    programs[0] = dataclasses.replace(programs[0], runs_per_step=scanned_runs_per_step(config))
    return programs, state_bytes(state, shardings), sum(p.lower_s for p in compiled)


def plan_sample(config, topology: Topology, height: int, width: int, num_frames: int):
    """([unet, vae_decode figures], seconds to trace and lower both) of SF-V's one-step generation, one clip per
    device, weights replicated."""
    from flax import nnx

    from sfv_jax.models.conv_paths import target_platform
    from sfv_jax.models.init_rngs import StaticRngs
    from sfv_jax.models.options import ModelOptions
    from sfv_jax.models.unet import UNetSpatioTemporalConditionModel
    from sfv_jax.models.unet_config import UNetConfig
    from sfv_jax.models.vae import AutoencoderKLTemporalDecoder, VAEConfig
    from sfv_jax.pipeline import lower_one_step

    if "vae" not in config:
        raise SfvError("--program sample needs a config with unet and vae sections (e.g. configs/sfv_svd.py)")
    from sfv_jax.models.vae import downsampling_factor
    scale = downsampling_factor(config.vae.block_out_channels)
    if height < scale or width < scale or height % scale or width % scale or num_frames < 1:
        raise SfvError(f"--height and --width must be positive multiples of {scale} (the VAE's scale) and "
                       f"--num-frames >= 1, got {height}x{width}x{num_frames}")
    options = ModelOptions(**{**config.model.to_dict(), "remat": "none"})  # inference: nothing to rematerialise
    unet = nnx.eval_shape(lambda: UNetSpatioTemporalConditionModel(UNetConfig.from_dict(config.unet.to_dict()),
                                                                   options, rngs=StaticRngs(0)))
    vae = nnx.eval_shape(lambda: AutoencoderKLTemporalDecoder(VAEConfig.from_dict(config.vae.to_dict()), options,
                                                              rngs=StaticRngs(0)))
    devices = list(topology.devices)
    mesh = jax.make_mesh((len(devices),), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=devices)
    start = time.perf_counter()
    with target_platform(topology.platform):
        lowered = lower_one_step(unet, vae, len(devices), num_frames, height, width, mesh)
    lower_s = time.perf_counter() - start
    return [_compile(name, program) for name, program in lowered.items()], lower_s
