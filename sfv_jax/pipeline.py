"""SFVPipeline: image -> video with SVD's pipeline (multi-step Euler + CFG ramp) or SF-V's one step.

Mirrors diffusers' StableVideoDiffusionPipeline (docs/reference/svd_architecture.md section 1.3):
CLIP branch on the ORIGINAL image, fps - 1 as the time id, noise augmentation drawn before the
latent noise, VAE mode of the augmented frame unscaled, CFG batch [uncond, cond] with zero
embedding and zero image latents, per-frame guidance linspace(min, max, T), latents / 0.18215
before the temporal VAE decoder.

Classifier-free guidance: with num_inference_steps > 1 it is used exactly when diffusers uses
it (max_guidance_scale > 1). With num_inference_steps = 1 (SF-V's generator) it is NOT used by
default, since SF-V is trained without it; pass do_classifier_free_guidance=True to get diffusers'
behaviour there (diffusers guides at one step too when max_guidance_scale > 1).

Every stage (sfv_jax.diffusion.image_to_video.STAGES) is one jitted program, compiled ahead of time once per
input shape and kept in the pipeline's own bounded cache; `self.last_timings` holds per-stage compile and run
seconds of the last call, `self.last_compiled` each stage's compiled program (its cost analysis, memory).

Batch sharding: `pipe.shard_batch(devices)` replicates the weights over `devices` and splits every call's batch
of images over them (the batch a multiple of the device count); each stage then compiles once to one SPMD program,
and the same seed gives the same clips as on one device (up to float summation order).
"""

from __future__ import annotations

import collections
import functools
import os
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from sfv_jax.diffusion import edm
from sfv_jax.diffusion import image_to_video as i2v
from sfv_jax.diffusion.sampler import euler_sample, guidance_ramp, pad_sigmas, sfv_levels, sfv_sample
from sfv_jax.errors import CheckpointError, SfvError
from sfv_jax.models.vae import downsampling_factor

COMPONENTS = ("unet", "vae", "image_encoder")
SCHEDULER_FILE = "scheduler/scheduler_config.json"
OUTPUT_TYPES = ("np", "uint8", "latent")
STAGES = i2v.STAGES
# Compiled programs one pipeline keeps (least recently used dropped first): 5 stages times a few input shapes.
MAX_COMPILED = 32


# ---------------------------------------------------------------- jitted stages (graphdef is static)

@functools.partial(jax.jit, static_argnums=0)
def _encode_image(graphdef, state, images):
    """images (B, H0, W0, 3) in [-1, 1], original size -> CLIP image embeddings (B, 1, D)."""
    return i2v.encode_image(nnx.merge(graphdef, state), images)


@functools.partial(jax.jit, static_argnums=0)
def _encode_vae(graphdef, state, images, noise, strength):
    """Noise-augmented conditioning frames (B, H, W, 3) -> VAE latent mean (B, h, w, 4), float32, unscaled."""
    return i2v.encode_condition(nnx.merge(graphdef, state), images, noise, strength)


@functools.partial(jax.jit, static_argnums=(0, 9, 10))
def _sample_euler(graphdef, state, latents, sigmas, num_steps, image_latents, embeds, time_ids, guidance, use_cfg,
                  progress):
    # The progress callback is always compiled in (a no-op without hooks; one host call per step) so that
    # calls with and without a progress bar share one program.
    unet = nnx.merge(graphdef, state)
    return euler_sample(unet, latents, sigmas, image_latents, embeds, time_ids, guidance if use_cfg else None,
                        on_step=progress, num_steps=num_steps)


@functools.partial(jax.jit, static_argnums=(0, 9))
def _sample_sfv(graphdef, state, latents, levels, renoise, image_latents, embeds, time_ids, guidance, use_cfg):
    unet = nnx.merge(graphdef, state)
    return sfv_sample(unet, latents, levels, renoise, image_latents, embeds, time_ids, guidance if use_cfg else None)


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def _decode(graphdef, state, latents, num_frames, chunk):
    """Final latents (N, h, w, 4) scaled -> frames (N, H, W, 3) in [0, 1] (diffusers' denormalize + clamp)."""
    return i2v.decode(nnx.merge(graphdef, state), latents, num_frames, chunk)


def lower_one_step(unet: nnx.Module, vae: nnx.Module, batch: int, num_frames: int, height: int, width: int,
                   mesh: jax.sharding.Mesh | None = None) -> dict[str, jax.stages.Lowered]:
    """SF-V's one-step programs as a pipeline call runs them, lowered for modules that may be abstract (nnx.eval_shape).

    {"unet": the sampler's one UNet call (sampler "sfv", one step, no guidance), "vae_decode": the decoder of its
    (batch * num_frames, h, w, 4) latents}: the same jitted functions SFVPipeline compiles, fed ShapeDtypeStructs, so
    `sfv-jax plan --program sample` sizes a generation without weights. With `mesh` (one axis "data"), weights are
    replicated and the clip batch split over it, as SFVPipeline.shard_batch does.
    """
    scale = downsampling_factor(vae.config.block_out_channels)
    h, w = height // scale, width // scale
    channels = unet.config.out_channels

    def spec(shape, dtype=jnp.float32, on_batch: int | None = 0):
        if mesh is None:
            return jax.ShapeDtypeStruct(shape, dtype)
        parts = P() if on_batch is None else P(*([None] * on_batch), "data")
        return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, parts))

    def placed(state):
        if mesh is None:
            return state
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, P())), state)

    shape = (batch, num_frames, h, w, channels)
    levels = spec(np.shape(sfv_levels(1)), on_batch=None)
    unet_graph, unet_state = nnx.split(unet)
    lowered = {"unet": _sample_sfv.lower(
        unet_graph, placed(unet_state), spec(shape), levels, spec((0, *shape), on_batch=1),
        spec((batch, num_frames, h, w, unet.config.in_channels - channels)),
        spec((batch, 1, unet.config.cross_attention_dim)), spec((batch, 3)), spec((batch, num_frames)), False)}
    vae_graph, vae_state = nnx.split(vae)
    lowered["vae_decode"] = _decode.lower(vae_graph, placed(vae_state), spec((batch * num_frames, h, w, channels)),
                                          num_frames, num_frames)
    return lowered


class ProgressHooks:
    """One pipeline's host-side progress: its sampler calls this after each step (jax.debug.callback).

    Owned by one SFVPipeline and compiled into its Euler program, so two pipelines never see each
    other's progress. Holds no reference to the pipeline (a compiled program may outlive it).
    """

    def __init__(self):
        self.hooks: list[Callable[[int], None]] = []

    def __call__(self, i) -> None:
        for hook in self.hooks:
            hook(int(i))


# ---------------------------------------------------------------- host-side image handling

def _as_pil_list(image) -> tuple[list, bool]:
    import PIL.Image
    if isinstance(image, PIL.Image.Image):
        return [image], False
    if isinstance(image, (list, tuple)) and image and all(isinstance(i, PIL.Image.Image) for i in image):
        if len({i.size for i in image}) != 1:
            raise SfvError(f"all images of a batch must have the same size, got {sorted({i.size for i in image})}")
        return list(image), True
    raise SfvError(f"image must be a PIL image or a non-empty list of PIL images, got {type(image).__name__}")


def _to_array(images) -> np.ndarray:
    """PIL images -> (B, H, W, 3) float32 in [-1, 1] (diffusers' pil_to_numpy, then * 2 - 1)."""
    return np.stack([np.asarray(i.convert("RGB")).astype(np.float32) / 255.0 for i in images]) * 2.0 - 1.0


def _resize(images, height: int, width: int) -> list:
    """diffusers' VaeImageProcessor.resize for PIL images (default resize_mode): PIL Lanczos to (width, height)."""
    import PIL.Image
    return [i.convert("RGB").resize((width, height), resample=PIL.Image.LANCZOS) for i in images]


def input_signature(*arrays) -> tuple:
    """Shapes, dtypes and placements: a program compiled for one placement refuses inputs of another."""
    return tuple((tuple(a.shape), str(a.dtype), getattr(a, "sharding", None)) for a in jax.tree.leaves(arrays))


class SFVPipeline:
    """Stable Video Diffusion / SF-V image-to-video in JAX. Components are channels-last Flax NNX modules."""

    def __init__(self, unet: nnx.Module, vae: nnx.Module, image_encoder: nnx.Module,
                 scheduler_config: dict | None = None):
        self.unet, self.vae, self.image_encoder = unet, vae, image_encoder
        self.scheduler_config = dict(scheduler_config or {})
        try:
            self.schedule = edm.NoiseSchedule.from_scheduler_config(self.scheduler_config)
        except ValueError as e:
            raise CheckpointError(str(e)) from None
        self._split = {name: nnx.split(getattr(self, name)) for name in COMPONENTS}
        self.last_timings: dict[str, dict[str, float]] = {}
        self.last_compiled: dict[str, Any] = {}
        self._compiled: collections.OrderedDict[tuple, Any] = collections.OrderedDict()
        self._progress = ProgressHooks()
        self.mesh: jax.sharding.Mesh | None = None

    def shard_batch(self, devices: Sequence[jax.Device] | None = None) -> "SFVPipeline":
        """Splits every call's batch over `devices` (default: this process's devices), weights replicated.

        Returns self. Calls then need a number of images divisible by len(devices)."""
        devices = list(jax.local_devices() if devices is None else devices)
        if not devices:
            raise SfvError("shard_batch needs at least one device")
        self.mesh = jax.make_mesh((len(devices),), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                                  devices=devices)
        replicated = NamedSharding(self.mesh, P())
        self._split = {name: (graphdef, jax.device_put(state, replicated))
                       for name, (graphdef, state) in self._split.items()}
        self._compiled.clear()
        return self

    def _on_batch(self, x, axis: int = 0):
        """x with its `axis` (the clip batch) split over the mesh's devices; x unchanged without a mesh."""
        if self.mesh is None:
            return x
        return jax.device_put(x, NamedSharding(self.mesh, P(*([None] * axis), "data")))

    def _replicated(self, x):
        return x if self.mesh is None else jax.device_put(x, NamedSharding(self.mesh, P()))

    # ------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(cls, path: str, options=None, ema: bool = True) -> "SFVPipeline":
        """From an sfv-jax checkpoint folder holding unet, vae and image_encoder (sfv-jax convert of a pipeline),
        or from a training workdir (`sfv-jax train` makes it an sfv-jax checkpoint too): its latest checkpoint's
        generator, EMA weights unless ema=False, with the run's frozen VAE and CLIP, computing with the run's
        ModelOptions unless `options` is given."""
        from sfv_jax.checkpoint import load_checkpoint, read_index
        index = read_index(path)
        missing = [n for n in COMPONENTS if n not in index.get("components", {})]
        if missing and index.get("extra", {}).get("objective") == "vae":
            raise CheckpointError(f"{path}: is a VAE training workdir (objective vae), not a pipeline; start a teacher "
                                  f"from it (configs/toy.py:teacher --config.init_checkpoint={path}) or export its VAE")
        if missing:
            raise CheckpointError(f"{path}: holds {sorted(index.get('components', {}))} but a pipeline needs "
                                  f"{', '.join(COMPONENTS)}; convert a whole pipeline folder with "
                                  f"sfv-jax convert --diffusers PIPELINE_DIR")
        modules = load_checkpoint(path, options, names=list(COMPONENTS), raw=not ema)
        extra = index.get("extra", {})
        scheduler = (extra.get("pipeline") or {}).get("files", {}).get(SCHEDULER_FILE) or extra.get("scheduler")
        return cls(**modules, scheduler_config=scheduler)

    @classmethod
    def from_diffusers(cls, folder: str, options=None, variant: str | None = None) -> "SFVPipeline":
        """From a diffusers StableVideoDiffusionPipeline folder (model_index.json, unet/, vae/, image_encoder/, ...)."""
        import json
        from sfv_jax.convert.pipeline import is_pipeline_folder, load_diffusers_folder
        from sfv_jax.models import ModelOptions
        if not os.path.isdir(folder) or not is_pipeline_folder(folder):
            raise CheckpointError(f"{folder}: not a diffusers pipeline folder (no model_index.json)")
        modules = load_diffusers_folder(folder, variant=variant, options=options or ModelOptions())
        scheduler_path = os.path.join(folder, *SCHEDULER_FILE.split("/"))
        scheduler = None
        if os.path.isfile(scheduler_path):
            with open(scheduler_path) as f:
                scheduler = json.load(f)
        return cls(**{n: modules[n] for n in COMPONENTS}, scheduler_config=scheduler)

    @property
    def vae_scale_factor(self) -> int:
        return downsampling_factor(self.vae.config.block_out_channels)

    # ------------------------------------------------------------ compiled stages

    def _run(self, stage: str, fn, statics: tuple, *args):
        """Runs jitted `fn(graphdef, state, *args, *statics)` through an AOT-compiled cache; times compile and run."""
        graphdef, state = self._split[i2v.STAGE_MODULE[stage]]
        key = (stage, fn.__name__, statics, input_signature(state, args))
        timing = self.last_timings.setdefault(stage, {"compile_s": 0.0, "run_s": 0.0})
        compiled = self._compiled.get(key)
        if compiled is None:
            start = time.perf_counter()
            compiled = fn.lower(graphdef, state, *args, *statics).compile()
            timing["compile_s"] += time.perf_counter() - start
            self._compiled[key] = compiled
            while len(self._compiled) > MAX_COMPILED:
                self._compiled.popitem(last=False)
        self._compiled.move_to_end(key)
        self.last_compiled[stage] = compiled
        start = time.perf_counter()
        out = jax.block_until_ready(compiled(state, *args))
        timing["run_s"] += time.perf_counter() - start
        return out

    # ------------------------------------------------------------ generation

    def __call__(self, image, num_frames: int | None = None, height: int = 576, width: int = 1024,
                 num_inference_steps: int = 1, fps: int = 7, motion_bucket_id: int = 127,
                 noise_aug_strength: float = 0.02, min_guidance_scale: float = 1.0, max_guidance_scale: float = 3.0,
                 decode_chunk_size: int | None = None, seed: int = 0, latents=None, output_type: str = "np",
                 *, do_classifier_free_guidance: bool | None = None, sampler: str = "euler",
                 progress: Callable[[int], None] | None = None):
        """Generates a clip per image.

        Args:
          image: a PIL image, or a list of same-size PIL images (then outputs get a leading batch axis).
          num_frames: frames T (default: the UNet config's num_frames).
          height, width: output size, multiples of the VAE's scale factor (8 for SVD).
          num_inference_steps: 1 = SF-V one step (x0 = D(x; sigma_max)); N > 1 = SVD's Euler sampler.
          fps, motion_bucket_id, noise_aug_strength: SVD's micro-conditioning (time ids [fps - 1, ...]).
          min_guidance_scale, max_guidance_scale: per-frame CFG ramp linspace(min, max, T).
          decode_chunk_size: frames per VAE decode chunk (default: all frames at once, as diffusers).
          seed: all randomness. Noise order: jax.random.split(jax.random.key(seed), 3) gives the keys of
            (1) the conditioning-image augmentation noise (B, H, W, 3), drawn first as in diffusers,
            (2) the initial latents (B, T, h, w, 4) (unused when `latents` is given), (3) the
            re-noising of SF-V's multi-step refinement. Same seed and inputs, same video.
          latents: unit noise (T, h, w, 4) or (B, T, h, w, 4); scaled by init_noise_sigma like diffusers.
          output_type: "np" float32 frames in [0, 1] (T, H, W, 3); "uint8"; "latent" final latents (T, h, w, 4).
          do_classifier_free_guidance: None = diffusers' rule for the Euler sampler's multi-step runs, none at one
            step or with sampler "sfv" (SF-V is trained without it); True/False force it (True still needs
            max_guidance_scale > 1 to have an effect, as in diffusers).
          sampler: "euler" (SVD) or "sfv" (SF-V's few-step refinement over the top Karras levels of a
            4-level schedule, 1 to 3 steps, re-noising x0_hat between steps).
          progress: called on the host with the step index after each sampler step.
        """
        images, batched = _as_pil_list(image)
        num_frames = self.unet.config.num_frames if num_frames is None else int(num_frames)
        self._check(num_frames, height, width, num_inference_steps, decode_chunk_size, output_type, sampler)
        batch = len(images)
        if self.mesh is not None and batch % self.mesh.size:
            raise SfvError(f"{batch} images do not split over the pipeline's {self.mesh.size} devices: pass a "
                           f"multiple of {self.mesh.size} images (or pad the batch)")
        self.last_timings, self.last_compiled = {}, {}
        key_aug, key_latents, key_renoise = jax.random.split(jax.random.key(seed), 3)

        # 1. CLIP on the original image.
        embeds = self._run("image_encoder", _encode_image, (), self._on_batch(jnp.asarray(_to_array(images))))

        # 2-3. conditioning frame: resize, noise augmentation (drawn before the latents), VAE mode.
        cond = self._on_batch(jnp.asarray(_to_array(_resize(images, height, width))))
        aug_noise = self._on_batch(jax.random.normal(key_aug, cond.shape, jnp.float32))
        image_latents = self._run("vae_encode", _encode_vae, (), cond, aug_noise, jnp.float32(noise_aug_strength))
        image_latents = jnp.repeat(image_latents[:, None], num_frames, axis=1)

        time_ids = self._on_batch(i2v.micro_conditioning(fps, motion_bucket_id, noise_aug_strength, batch))
        h, w = height // self.vae_scale_factor, width // self.vae_scale_factor
        shape = (batch, num_frames, h, w, self.unet.config.out_channels)
        if latents is None:
            noise = jax.random.normal(key_latents, shape, jnp.float32)
        else:
            noise = jnp.asarray(latents, jnp.float32)
            noise = noise[None] if noise.ndim == 4 else noise
            if noise.shape != shape:
                raise SfvError(f"latents must be shaped {shape[1:]} or {shape}, got {tuple(np.shape(latents))}")
        x = self._on_batch(noise) * jnp.float32(self.schedule.init_noise_sigma)

        # SF-V's generator (one step, or its refinement) is trained without guidance; SVD's Euler sampler guides.
        guide_by_default = num_inference_steps > 1 and sampler == "euler"
        use_cfg = max_guidance_scale > 1 and (guide_by_default if do_classifier_free_guidance is None
                                              else bool(do_classifier_free_guidance))
        guidance = self._on_batch(guidance_ramp(min_guidance_scale, max_guidance_scale, num_frames, batch))

        # 4. the sampler: one compiled program over all steps.
        if progress is not None:
            self._progress.hooks.append(progress)
        try:
            if sampler == "euler":
                # Padded schedule + traced step count: one compiled sampler for every step count up to 31.
                sigmas = self._replicated(jnp.asarray(pad_sigmas(self.schedule.sigmas(num_inference_steps))))
                x = self._run("unet", _sample_euler, (use_cfg, self._progress), x, sigmas,
                              jnp.int32(num_inference_steps), image_latents, embeds, time_ids, guidance)
            else:
                levels = self._replicated(jnp.asarray(sfv_levels(num_inference_steps, self.schedule)))
                renoise = self._on_batch(jax.random.normal(key_renoise, (num_inference_steps - 1, *shape),
                                                           jnp.float32), axis=1)
                x = self._run("unet", _sample_sfv, (use_cfg,), x, levels, renoise, image_latents, embeds,
                              time_ids, guidance)
        finally:
            if progress is not None:
                self._progress.hooks.remove(progress)
        self.last_timings["unet"]["steps"] = num_inference_steps

        if output_type == "latent":
            out = np.asarray(x)
        else:
            # 5. decode: all clips flattened, chunked as diffusers' decode_latents.
            chunk = num_frames if decode_chunk_size is None else int(decode_chunk_size)
            flat = x.reshape(batch * num_frames, h, w, -1)
            frames = self._run("vae_decode", _decode, (num_frames, chunk), flat)
            out = np.asarray(frames).reshape(batch, num_frames, height, width, -1)
            if output_type == "uint8":
                out = (out * 255).round().astype(np.uint8)
        return out if batched else out[0]

    def _check(self, num_frames, height, width, steps, decode_chunk_size, output_type, sampler):
        f = self.vae_scale_factor
        if num_frames < 1:
            raise SfvError(f"num_frames must be >= 1, got {num_frames}")
        if height < f or width < f or height % f or width % f:
            raise SfvError(f"height and width must be positive multiples of {f}, got {height}x{width}; "
                           f"round them to a multiple of {f}")
        if int(steps) < 1:
            raise SfvError(f"num_inference_steps must be >= 1, got {steps}")
        if decode_chunk_size is not None and int(decode_chunk_size) < 1:
            raise SfvError(f"decode_chunk_size must be >= 1, got {decode_chunk_size}")
        if output_type not in OUTPUT_TYPES:
            raise SfvError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if sampler not in ("euler", "sfv"):
            raise SfvError(f"sampler must be 'euler' or 'sfv', got {sampler!r}")
        if sampler == "sfv" and not 1 <= steps <= 3:
            raise SfvError(f"the sfv sampler runs 1 to 3 steps, got {steps}")
