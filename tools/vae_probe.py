"""Short toy-VAE training probes: held-out L1 after N steps for a config change, and the reference baselines.

    python tools/vae_probe.py --steps 150 [--posterior mean] [--groups 8] [--config.k=v ...]
    python tools/vae_probe.py --checkpoint runs/toy/vae     # score a trained VAE (EMA weights) on the same clips
    python tools/vae_probe.py --checkpoint runs/toy/vae --motion-clips 64   # + the motion report of its
                                                            # reconstructions of `sfv-jax eval toy`'s held-out clips

Trains configs/toy.py:vae from random weights on random clips of the built-in synthetic videos (the training
range [0, data.num_synthetic)) and prints, every 25 steps, the training reconstruction and the held-out L1 of 8
clips the training never sees (decoded from posterior means, whole 64x64 frames). `--baselines` prints what a
per-frame constant colour and the 8x8 patch means score on the same clips. Diagnosis only:
`--groups G` swaps every GroupNorm to G groups (0: no normalisation) and `--posterior mean` trains on posterior
means instead of draws; such a VAE no longer has SVD's architecture and cannot be exported. BENCHMARKS.md "Toy SVD
stack" holds what these probes found.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from sfv_jax.config import load_config
from sfv_jax.data.synthetic import SyntheticVideos
from sfv_jax.models import layers
from sfv_jax.models.vae import downsampling_factor
from sfv_jax.train.encode import frames_to_unit_range

HELDOUT_FIRST, HELDOUT_CLIPS = 2900, 8  # beyond the toy config's 2048 training clips


def patch_group_norm(groups: int) -> None:
    """Every GroupNorm built from now on uses min(groups, its groups) groups; groups 0: y = x * scale + bias."""
    init, call = layers.GroupNorm.__init__, layers.GroupNorm.__call__

    def patched_init(self, num_channels, num_groups, epsilon, options):
        init(self, num_channels, min(groups, num_groups) if groups else num_groups, epsilon, options)

    def affine_only(self, x):
        return (x.astype(jnp.float32) * self.scale[...] + self.bias[...]).astype(self.out_dtype)

    layers.GroupNorm.__init__ = patched_init
    layers.GroupNorm.__call__ = affine_only if groups == 0 else call


def clips(videos: SyntheticVideos, indices) -> jax.Array:
    """(B, T, H, W, 3) float32 in [-1, 1]."""
    return frames_to_unit_range(jnp.asarray(np.stack([videos.video(int(i)) for i in indices])))


def baselines(heldout: np.ndarray, grid: int) -> dict:
    """L1 of a per-frame constant colour and of the grid x grid patch means, upsampled by repetition."""
    b, t, h, w, c = heldout.shape
    patches = heldout.reshape(b, t, grid, h // grid, grid, w // grid, c).mean(axis=(3, 5))
    upsampled = np.repeat(np.repeat(patches, h // grid, axis=2), w // grid, axis=3)
    return {"frame_mean": float(np.abs(heldout - heldout.mean(axis=(2, 3), keepdims=True)).mean()),
            f"patch_means_{grid}x{grid}": float(np.abs(heldout - upsampled).mean())}


def chroma(x: jax.Array) -> jax.Array:
    """Each pixel's deviation from its own grey level (the mean of its channels): what a grey image lacks."""
    return x - x.mean(axis=-1, keepdims=True)


def chroma_error(images: jax.Array, decoded: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(mean |chroma(decoded) - chroma(images)|, mean |chroma(images)|): the first equals the second for a VAE
    whose output is grey, 0 for exact colour."""
    return jnp.mean(jnp.abs(chroma(decoded) - chroma(images))), jnp.mean(jnp.abs(chroma(images)))


def reconstruct(vae, video: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(frames (B T, H, W, 3), the VAE's decoding of their posterior means) of clips video (B, T, H, W, 3)."""
    images = video.reshape(-1, *video.shape[2:])
    return images, vae.decoder(vae.latent_dist(images)[0], video.shape[1])


def score_checkpoint(path: str, video: jax.Array) -> None:
    """Prints the held-out L1 and chroma error of the VAE stored at `path` (decoded from posterior means)."""
    from sfv_jax.checkpoint import load_checkpoint
    vae = load_checkpoint(path, names=["vae"])["vae"]
    images, decoded = jax.jit(lambda v: reconstruct(vae, v))(video)
    error, grey = chroma_error(images, decoded)
    print(f"{path}: held-out L1 {float(jnp.mean(jnp.abs(decoded - images))):.4f}, chroma error {float(error):.4f} "
          f"(grey: {float(grey):.4f}), {video.shape[0]} clips")


def reconstruction_motion(path: str, num_clips: int, config) -> None:
    """Prints the motion report of the VAE's reconstructions of `sfv-jax eval toy`'s first K held-out clips."""
    from sfv_jax.checkpoint import load_checkpoint
    from sfv_jax.eval.motion import motion_report
    from sfv_jax.eval.toy import heldout_synthetic
    vae = load_checkpoint(path, names=["vae"])["vae"]
    t, h, w = config.data.num_frames, config.data.height, config.data.width
    real = heldout_synthetic(num_clips, t, h, w, seed=0)
    decode = jax.jit(lambda video: reconstruct(vae, video)[1])
    decoded = []
    for first in range(0, num_clips, 8):
        out = np.asarray(decode(frames_to_unit_range(jnp.asarray(real[first:first + 8])))).reshape(-1, t, h, w, 3)
        decoded.append(np.clip(np.round((out + 1) * 127.5), 0, 255).astype(np.uint8))
    report = motion_report(np.concatenate(decoded), real)
    keys = ("num_shapes", "clips_not_judged", "coherent_share", "keeps_colour_share", "keeps_size_share",
            "constant_velocity_share", "median_centroid_error_px")
    print("reconstructions:", {k: report[k] for k in keys})
    print("held-out clips: ", {k: report["real"][k] for k in keys})


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--posterior", choices=("sample", "mean"), default="sample")
    parser.add_argument("--groups", type=int, default=32, help="GroupNorm groups (32: SVD's; 0: none)")
    parser.add_argument("--baselines", action="store_true")
    parser.add_argument("--checkpoint", metavar="CKPT_OR_WORKDIR",
                        help="score this VAE (a vae run's workdir or any sfv-jax checkpoint holding a vae) and stop")
    parser.add_argument("--motion-clips", type=int, default=0, metavar="K",
                        help="with --checkpoint: the motion report of the VAE's reconstructions of K held-out clips "
                             "(the ceiling of any generator decoding through it) next to the clips' own")
    args, overrides = parser.parse_known_args(argv)
    if args.groups != 32:
        patch_group_norm(args.groups)
    from sfv_jax.train.objectives import make_objective  # after the patch: the models are built from here on
    config = load_config("configs/toy.py:vae", [o.removeprefix("--config.") for o in overrides])
    videos = SyntheticVideos(HELDOUT_FIRST + HELDOUT_CLIPS, config.data.num_frames, config.data.height,
                             config.data.width, seed=config.seed)
    heldout = {"video": clips(videos, range(HELDOUT_FIRST, HELDOUT_FIRST + HELDOUT_CLIPS))}
    if args.baselines:
        grid = config.data.height // downsampling_factor(config.vae.block_out_channels)
        print(baselines(np.asarray(heldout["video"]), grid))
    if args.checkpoint:
        score_checkpoint(args.checkpoint, heldout["video"])
        if args.motion_clips:
            reconstruction_motion(args.checkpoint, args.motion_clips, config)
        return
    objective = make_objective(config)
    if args.posterior == "mean":
        draw = objective.step.loss_parts
        objective.step.loss_parts = lambda params, video, key: draw(params, video, None)
    weights, _, _ = objective.initial_weights()
    state = jax.jit(objective.init_state)(weights)
    step, eval_loss = jax.jit(objective.step), jax.jit(objective.eval_loss)
    colour = jax.jit(lambda params, video: chroma_error(*reconstruct(objective.models.vae(params), video)))
    rng, start = np.random.default_rng(0), time.time()
    for i in range(1, args.steps + 1):
        batch = {"video": clips(videos, rng.integers(0, config.data.num_synthetic, config.global_batch_size))}
        state, metrics = step(state, batch)
        if i % 25 == 0 or i == args.steps:
            error, grey = colour(state.params, heldout["video"])
            print(f"step {i}: recon {float(metrics['recon']):.4f}, held-out eval_loss "
                  f"{float(eval_loss(state, heldout)):.4f}, chroma error {float(error):.4f} (grey: {float(grey):.4f}), "
                  f"{time.time() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
