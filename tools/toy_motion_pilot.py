"""A quick motion-only pilot of a toy model (no I3D, so seconds instead of minutes): the motion report of K
one-per-clip generations from the first frames of `sfv-jax eval toy`'s held-out clips (seed 0), against the clips.

    python tools/toy_motion_pilot.py --checkpoint models/toy/student --steps 1 --num-clips 32
    python tools/toy_motion_pilot.py --checkpoint models/toy/teacher --steps 25 --num-clips 32 [--save fake.npy]

Batches of 8; batch b uses generation seed 8 b. The table's numbers (FVD included) come from `sfv-jax eval toy`;
this is for watching a run (BENCHMARKS.md "Toy SVD stack" lists what it printed).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import PIL.Image

KEYS = ("num_shapes", "clips_not_judged", "coherent_share", "keeps_colour_share", "keeps_size_share",
        "constant_velocity_share", "median_centroid_error_px", "speed_wasserstein_px_per_frame")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, metavar="CKPT_OR_WORKDIR")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--sampler", choices=("euler", "sfv"), default="euler")
    parser.add_argument("--num-clips", type=int, default=32)
    parser.add_argument("--min-guidance", type=float, default=1.0, help="SVD's CFG ramp, first frame")
    parser.add_argument("--max-guidance", type=float, default=3.0, help="SVD's CFG ramp, last frame (1: no CFG)")
    parser.add_argument("--save", metavar="FILE.npy", help="also save the generated clips (K, T, H, W, 3) uint8")
    args = parser.parse_args(argv)

    from sfv_jax.eval.motion import motion_report
    from sfv_jax.eval.toy import heldout_synthetic
    from sfv_jax.pipeline import SFVPipeline

    pipe = SFVPipeline.from_pretrained(args.checkpoint)
    frames, size = pipe.unet.config.num_frames, pipe.unet.config.sample_size * pipe.vae_scale_factor
    real = heldout_synthetic(args.num_clips, frames, size, size, seed=0)
    start, fake = time.perf_counter(), []
    for first in range(0, args.num_clips, 8):
        images = [PIL.Image.fromarray(clip[0]) for clip in real[first:first + 8]]
        fake.append(pipe(images, num_frames=frames, height=size, width=size, num_inference_steps=args.steps,
                         sampler=args.sampler, seed=first, output_type="uint8", min_guidance_scale=args.min_guidance,
                         max_guidance_scale=args.max_guidance))
    fake = np.concatenate(fake)
    report = motion_report(fake, real)
    row = {k: round(report[k], 3) if isinstance(report[k], float) else report[k] for k in KEYS}
    row["speed_px_per_frame_median"] = round(report["speed_px_per_frame"]["median"], 2)
    print(json.dumps({"checkpoint": args.checkpoint, "steps": args.steps, "sampler": args.sampler,
                      "guidance": [args.min_guidance, args.max_guidance], **row,
                      "seconds": round(time.perf_counter() - start, 1)}))
    if args.save:
        np.save(args.save, fake)


if __name__ == "__main__":
    main()
