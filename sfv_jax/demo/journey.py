"""`sfv-jax demo --journey`: the whole user journey on a tiny random SVD, no downloads.

1. builds the config's tiny pipeline (UNet, temporal VAE, CLIP) with random weights and writes it
   as a diffusers StableVideoDiffusionPipeline folder (standing in for the downloaded SVD);
2. converts that folder into an sfv-jax (Orbax) checkpoint (what `sfv-jax convert` does);
3. trains SF-V from it on synthetic moving-shape videos for a few steps (what `sfv-jax train` does);
4. loads the training workdir with SFVPipeline.from_pretrained (G's EMA weights) and makes a clip
   from an image in ONE UNet call, printing per-stage timings; writes it as a GIF with a contact sheet;
5. exports the workdir back to a diffusers pipeline folder (what `sfv-jax export` does).
With random weights and a few steps the videos are noise; the demo shows the machinery, not a model.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

import jax
import numpy as np
from flax import nnx

from sfv_jax.checkpoint import load_checkpoint, read_index, save_checkpoint
from sfv_jax.config import load_config
from sfv_jax.convert.pipeline import load_diffusers_folder, read_pipeline_configs, write_diffusers_folder
from sfv_jax.convert.svd_pipeline_files import svd_pipeline_files
from sfv_jax.demo.images import synthetic_image
from sfv_jax.demo.timings import describe_timings
from sfv_jax.models.factory import random_components
from sfv_jax.video_io import contact_sheet_path, write_contact_sheet, write_video


def run(config_spec: str = "configs/tiny_sfv.py:micro", workdir: str | None = None, train_steps: int = 8) -> None:
    from sfv_jax.pipeline import SFVPipeline
    from sfv_jax.train.loop import train

    config = load_config(config_spec)
    workdir = workdir or tempfile.mkdtemp(prefix="sfv_jax_demo_")
    os.makedirs(workdir, exist_ok=True)
    print(f"sfv-jax demo: {config_spec}, jax {jax.__version__} on {jax.devices()[0].platform}, files in {workdir}")

    demo_start = start = time.perf_counter()
    modules = random_components(config, seed=config.seed)
    diffusers_dir = os.path.join(workdir, "diffusers_pipeline")
    shutil.rmtree(diffusers_dir, ignore_errors=True)  # the demo's own output of an earlier run
    write_diffusers_folder(modules, diffusers_dir, pipeline=svd_pipeline_files())
    n_params = ", ".join(f"{name} {sum(p.size for p in jax.tree.leaves(nnx.state(m, nnx.Param))):,}"
                         for name, m in modules.items())
    print(f"1. random pipeline (params: {n_params}) written as a diffusers folder ({time.perf_counter() - start:.1f}s)")

    checkpoint = os.path.join(workdir, "checkpoint")
    start = time.perf_counter()
    save_checkpoint(checkpoint, load_diffusers_folder(diffusers_dir), overwrite=True,
                    extra={"source": diffusers_dir, "pipeline": read_pipeline_configs(diffusers_dir)})
    print(f"2. converted (sfv-jax convert) -> {checkpoint} ({time.perf_counter() - start:.1f}s)")

    train_dir = os.path.join(workdir, "train")
    shutil.rmtree(train_dir, ignore_errors=True)
    start = time.perf_counter()
    steps = train_steps
    overrides = [f"init_checkpoint={checkpoint}", f"checkpoint_every={steps}", f"total_steps={steps}"]
    print(f"3. training (sfv-jax train --config {config_spec} --workdir {train_dir} "
          f"{' '.join('--config.' + o for o in overrides)})")
    train(load_config(config_spec, overrides), train_dir)
    print(f"   trained {steps} steps in {time.perf_counter() - start:.1f}s (most of it compiling the step); "
          f"metrics in {os.path.join(train_dir, 'metrics.jsonl')}, TensorBoard in {os.path.join(train_dir, 'tensorboard')}")

    start = time.perf_counter()
    pipe = SFVPipeline.from_pretrained(train_dir)
    size = config.data.height
    image = synthetic_image(size + 13, size + 29, config.seed)  # any input size: it is resized
    for call in ("first call", "second call"):
        start = time.perf_counter()
        frames = pipe(image, num_frames=config.data.num_frames, height=config.data.height, width=config.data.width,
                      num_inference_steps=1, seed=config.seed)
        total = time.perf_counter() - start
        print(f"4. one-step SF-V from the workdir's EMA weights, {call}: frames {frames.shape} in "
              f"[{frames.min():.2f}, {frames.max():.2f}], {total:.2f}s: {describe_timings(pipe.last_timings)}")
    video = os.path.join(workdir, "video_1step.gif")
    frames_uint8 = np.round(frames * 255).astype(np.uint8)
    write_video(frames_uint8, video, fps=7)
    write_contact_sheet(frames_uint8, contact_sheet_path(video))
    print(f"   wrote {video} and {contact_sheet_path(video)}")

    exported = os.path.join(workdir, "exported_pipeline")
    shutil.rmtree(exported, ignore_errors=True)
    start = time.perf_counter()
    write_diffusers_folder(load_checkpoint(train_dir), exported, pipeline=read_index(train_dir)["extra"]["pipeline"])
    print(f"5. exported (sfv-jax export) -> {exported}: a diffusers StableVideoDiffusionPipeline folder "
          f"({time.perf_counter() - start:.1f}s)")
    print(f"demo done in {time.perf_counter() - demo_start:.0f}s; outputs in {workdir}")
