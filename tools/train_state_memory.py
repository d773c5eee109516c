"""Per-device bytes of the SF-V train state under data-parallel and FSDP meshes, and the compiled memory
analysis of a small train step.

  python tools/train_state_memory.py                       # SVD-XT-size state on 8 and 64 devices
  python tools/train_state_memory.py --step-config configs/tiny_sfv.py --step-override unet.layers_per_block=1

The state sizes come from jax.eval_shape of the abstract state (nothing is allocated); sharding follows
config.sharding (FSDP on params of >= fsdp_min_size elements).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from sfv_jax.config import load_config  # noqa: E402
from sfv_jax.parallel.sharding import per_device_bytes, state_specs  # noqa: E402
from sfv_jax.train.state import SFVModels, abstract_state, tree_bytes  # noqa: E402

GIB = 2 ** 30


def state_table(config_spec: str, overrides: list[str], device_counts=(8, 64)) -> list[str]:
    config = load_config(config_spec, overrides)
    state = abstract_state(SFVModels(config))
    parts = {name: getattr(state, name) for name in ("g_params", "g_ema", "g_opt", "d_heads", "d_opt", "backbone")}
    lines = [f"state of {config_spec} {' '.join(overrides)}: total {tree_bytes(state) / GIB:.2f} GiB ("
             + ", ".join(f"{k} {tree_bytes(v) / GIB:.2f}" for k, v in parts.items()) + ")",
             "| devices | layout | per-device GiB | of which G params | fsdp-sharded leaves |", "|---|---|---|---|---|"]
    for n in device_counts:
        for layout, sizes in (("data-parallel", dict(data=n, fsdp=1, tensor=1)),
                              ("FSDP", dict(data=1, fsdp=n, tensor=1))):
            specs = state_specs(state, config.sharding, sizes)
            flat = jax.tree.leaves(specs, is_leaf=lambda s: isinstance(s, P))
            n_sharded = sum(1 for s in flat if "fsdp" in s) if sizes["fsdp"] > 1 else 0
            lines.append(f"| {n} | {layout} | {per_device_bytes(state, specs, sizes) / GIB:.2f} | "
                         f"{per_device_bytes(state.g_params, specs.g_params, sizes) / GIB:.2f} | "
                         f"{n_sharded}/{len(flat)} |")
    return lines


def step_memory(config_spec: str, overrides: list[str], height: int, width: int) -> list[str]:
    from sfv_jax.train.step import make_train_step
    import jax.numpy as jnp
    config = load_config(config_spec, overrides)
    models = SFVModels(config)
    state = abstract_state(models)
    b, t = config.global_batch_size, config.data.num_frames
    f32 = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)
    batch = dict(latents=f32(b, t, height, width, 4), image_latent=f32(b, height, width, 4),
                 clip=f32(b, 1, config.unet.cross_attention_dim), added_time_ids=f32(b, 3))
    compiled = jax.jit(make_train_step(config, models), donate_argnums=0).lower(state, batch).compile()
    mem = compiled.memory_analysis()
    fields = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes", "temp_size_in_bytes",
              "generated_code_size_in_bytes")
    return [f"compiled step of {config_spec} {' '.join(overrides)} (batch {b} = {config.grad_accum_steps} "
            f"micro-steps, {t} frames, latent {height}x{width}) on {jax.devices()[0].platform}:"] + \
           [f"  {name}: {getattr(mem, name) / 2 ** 20:.2f} MiB" for name in fields]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state-config", default="configs/sfv_svd.py")
    parser.add_argument("--state-override", action="append",
                        default=None, help="default: the SVD-XT UNet (25 frames)")
    parser.add_argument("--step-config", default="")
    parser.add_argument("--step-override", action="append", default=[])
    parser.add_argument("--height", type=int, default=8)
    parser.add_argument("--width", type=int, default=8)
    args = parser.parse_args()
    overrides = args.state_override if args.state_override is not None else ["unet.num_frames=25"]
    for line in state_table(args.state_config, overrides):
        print(line)
    if args.step_config:
        for line in step_memory(args.step_config, args.step_override, args.height, args.width):
            print(line)


if __name__ == "__main__":
    main()
