"""Converts a diffusers unet/ folder and runs it once on saved inputs; reports time and peak RSS.

Used by the slow full-size test (in its own process, so the peak RSS is the converter's and the
forward pass's alone) and handy for checking a downloaded SVD UNet:
    python tools/convert_and_run_unet.py UNET_DIR INPUTS.npz OUT.npz
INPUTS.npz holds channels-first torch-layout arrays: sample (B,T,C,h,w), timestep, context, time_ids.
"""

import json
import resource
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sfv_jax.convert import unet_from_diffusers


def main(unet_dir: str, inputs_path: str, out_path: str) -> None:
    inputs = np.load(inputs_path)
    start = time.perf_counter()
    unet = unet_from_diffusers(unet_dir, progress=True)
    convert_s = time.perf_counter() - start
    convert_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    start = time.perf_counter()
    out = nnx.jit(lambda m, *a: m(*a))(
        unet, jnp.asarray(np.moveaxis(inputs["sample"], 2, -1)), jnp.asarray(inputs["timestep"]),
        jnp.asarray(inputs["context"]), jnp.asarray(inputs["time_ids"]))
    out = np.moveaxis(np.asarray(jax.block_until_ready(out)), -1, 2)
    forward_s = time.perf_counter() - start
    np.savez(out_path, out=out)
    print(json.dumps({"convert_s": round(convert_s, 1), "peak_rss_after_convert_gb": round(convert_rss, 2),
                      "first_forward_s": round(forward_s, 1),
                      "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
