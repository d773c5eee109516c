"""`make demo`: a model shipped in this repository turns one image into a video, no downloads.

The default checkpoint is the toy SF-V student (models/toy/student, trained by `make toy` on the built-in moving
shapes; its model card says how): one UNet call makes the whole clip. Any sfv-jax pipeline checkpoint or training
workdir can stand in (`--checkpoint`, with `--steps` for a multi-step teacher). The input is the first frame of a
held-out synthetic clip (or `--image`); the output a GIF and a contact sheet, the time of each stage (first call
with compilation, then a second call), and what the motion report sees: each shape tracked by its colour, whether
it keeps colour and size and moves at a constant velocity, and at what speed.
"""

from __future__ import annotations

import os
import time

import numpy as np
import PIL.Image

from sfv_jax.demo.timings import describe_timings
from sfv_jax.errors import SfvError
from sfv_jax.sample_cli import load_image

SHIPPED = os.path.join("models", "toy", "student")


def default_checkpoint() -> str:
    """models/toy/student of the clone this package runs from, else of the working directory."""
    clone = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    in_clone = os.path.join(clone, SHIPPED)
    return in_clone if os.path.isdir(in_clone) else SHIPPED


def _motion_lines(clip: np.ndarray) -> list[str]:
    """One line per shape of the clip's first frame: colour, speed, and the three checks of the motion report."""
    from sfv_jax.eval.motion import Tolerances, judge_shape, track_shapes
    tol = Tolerances()
    lines = []
    for track in track_shapes(clip, tol):
        colour = "rgb(" + ", ".join(f"{c:.0f}" for c in track.colour) + ")"
        verdict = judge_shape(track, tol)
        if verdict is None:
            lines.append(f"{colour}: too often touching another shape to judge")
            continue
        checks = ", ".join(f"{k} {'ok' if verdict[k] else 'FAILS'}" for k in ("colour", "size", "velocity"))
        lines.append(f"{colour}: {verdict['speed']:.2f} px/frame, {verdict['centroid_error']:.2f} px off a "
                     f"straight line; {checks}")
    return lines or ["no shape found in the first frame (the motion report tracks the built-in data's shapes)"]


def run(checkpoint: str | None, image_path: str | None, workdir: str, steps: int, sampler: str, seed: int) -> None:
    from sfv_jax.pipeline import SFVPipeline
    from sfv_jax.video_io import contact_sheet_path, write_contact_sheet, write_video

    checkpoint = checkpoint or default_checkpoint()
    if not os.path.isdir(checkpoint):
        raise SfvError(f"{checkpoint}: no such checkpoint; run from a clone of sfv-jax (it ships models/toy/), pass "
                       f"--checkpoint DIR, or run `sfv-jax demo --journey` (random weights, no checkpoint)")
    image = load_image(image_path) if image_path else None  # bad input fails before the slow part
    start = time.perf_counter()
    pipe = SFVPipeline.from_pretrained(checkpoint)
    num_frames = pipe.unet.config.num_frames
    size = (pipe.unet.config.sample_size * pipe.vae_scale_factor,) * 2
    print(f"sfv-jax demo: {checkpoint} loaded in {time.perf_counter() - start:.1f}s; {num_frames} frames of "
          f"{size[0]}x{size[1]}, " + ("1 step (one UNet call)" if steps == 1 else f"{steps} {sampler} steps"))
    real = None
    if image is None:
        from sfv_jax.eval.toy import heldout_synthetic
        real = heldout_synthetic(1, num_frames, *size, seed=seed)[0]
        image = PIL.Image.fromarray(real[0])
    os.makedirs(workdir, exist_ok=True)
    image.save(os.path.join(workdir, "input.png"))
    print(f"input: {image_path or f'the first frame of held-out synthetic clip (seed {seed})'}")
    for call in ("first call", "second call"):
        start = time.perf_counter()
        frames = pipe(image, num_frames=num_frames, height=size[0], width=size[1], num_inference_steps=steps,
                      sampler=sampler, seed=seed, output_type="uint8")
        print(f"{call}: {time.perf_counter() - start:.2f}s ({describe_timings(pipe.last_timings)})")
    video = os.path.join(workdir, f"video_{steps}step.gif")
    write_video(frames, video, fps=7)
    write_contact_sheet(frames, contact_sheet_path(video))
    print(f"wrote {video} and {contact_sheet_path(video)}")
    print("motion of the generated clip (shapes tracked by colour):")
    print("\n".join(f"  {line}" for line in _motion_lines(frames)))
    if real is not None:
        print("the held-out clip this frame starts (what the data does):")
        print("\n".join(f"  {line}" for line in _motion_lines(real)))
