"""The toy student's samples.png: for a few held-out first frames, rows of the real clip, the teacher at one step,
the student at one step and the teacher at 25 steps (Euler + CFG), frames left to right.

    python tools/toy_samples.py --teacher models/toy/teacher --student models/toy/student \
        --clips 0,1,2 --out models/toy/student/samples.png

The clips are `sfv-jax eval toy`'s held-out clips (seed 0); every model uses generation seed 0 for them.
"""

from __future__ import annotations

import argparse

import numpy as np
import PIL.Image


def sample_rows(teacher, student, real: np.ndarray) -> list[np.ndarray]:
    """uint8 rows (H, T * W, 3): for each real clip (T, H, W, 3), the clip, teacher 1, student 1, teacher 25."""
    first = [PIL.Image.fromarray(clip[0]) for clip in real]
    num_frames, height, width = real.shape[1:4]
    call = dict(num_frames=num_frames, height=height, width=width, seed=0, output_type="uint8")
    teacher1 = teacher(first, num_inference_steps=1, **call)
    student1 = student(first, num_inference_steps=1, sampler="sfv", **call)
    teacher25 = teacher(first, num_inference_steps=25, **call)
    rows = []
    for clips in zip(real, teacher1, student1, teacher25):
        rows += [np.concatenate(list(clip), axis=1) for clip in clips]
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True, metavar="CKPT_OR_WORKDIR")
    parser.add_argument("--student", required=True, metavar="CKPT_OR_WORKDIR")
    parser.add_argument("--clips", default="0,1,2", help="held-out clip indices, comma-separated")
    parser.add_argument("--out", required=True, metavar="FILE.png")
    args = parser.parse_args(argv)
    indices = [int(i) for i in args.clips.split(",")]

    from sfv_jax.eval.toy import heldout_synthetic
    from sfv_jax.pipeline import SFVPipeline

    teacher, student = (SFVPipeline.from_pretrained(p) for p in (args.teacher, args.student))
    num_frames, size = student.unet.config.num_frames, student.unet.config.sample_size * student.vae_scale_factor
    real = heldout_synthetic(max(indices) + 1, num_frames, size, size, seed=0)[indices]
    PIL.Image.fromarray(np.concatenate(sample_rows(teacher, student, real), axis=0)).save(args.out)
    print(f"wrote {args.out}: per clip, rows of real, teacher 1 step, student 1 step, teacher 25 steps")


if __name__ == "__main__":
    main()
