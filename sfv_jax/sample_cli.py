"""`sfv-jax sample`: one image -> one video (.mp4 or .gif) plus a PNG contact sheet, with per-stage timings."""

from __future__ import annotations

import os
import time

from sfv_jax.errors import SfvError


def add_sample_parser(subparsers) -> None:
    p = subparsers.add_parser("sample", help="image -> video with a converted SVD / SF-V checkpoint")
    p.add_argument("--checkpoint", required=True, metavar="CKPT_OR_WORKDIR",
                   help="sfv-jax checkpoint (sfv-jax convert of a pipeline) or training workdir (G's EMA weights)")
    p.add_argument("--image", required=True, metavar="IMG", help="conditioning image (any format Pillow reads)")
    p.add_argument("--out", required=True, metavar="OUT", help="output video, .mp4 or .gif (a .contact.png is written next to it)")
    p.add_argument("--steps", type=int, default=1,
                   help="1: SF-V one step (no guidance); >1: the --sampler's steps")
    p.add_argument("--sampler", default="euler", choices=("euler", "sfv"),
                   help="euler: SVD's Euler sampler, with CFG when --steps > 1; sfv: SF-V's few-step refinement over "
                        "the top noise levels (1 to 3 steps, re-noising between them, no guidance)")
    p.add_argument("--num-frames", type=int, default=None, help="frames (default: the UNet's num_frames)")
    p.add_argument("--height", type=int, default=576, help="a multiple of the VAE's downsampling (8 for SVD)")
    p.add_argument("--width", type=int, default=1024, help="a multiple of the VAE's downsampling (8 for SVD)")
    p.add_argument("--fps", type=int, default=7, help="conditioning fps (the UNet sees fps - 1) and the video's frame rate")
    p.add_argument("--motion-bucket-id", type=int, default=127)
    p.add_argument("--noise-aug-strength", type=float, default=0.02)
    p.add_argument("--min-guidance", type=float, default=1.0, help="guidance of the first frame (multi-step only)")
    p.add_argument("--max-guidance", type=float, default=3.0, help="guidance of the last frame (multi-step only)")
    p.add_argument("--decode-chunk-size", type=int, default=None, help="frames per VAE decode chunk (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compilation-cache", metavar="DIR", default=None,
                   help="persistent JAX compilation cache (default: $SFV_JAX_COMPILATION_CACHE, else off)")
    p.set_defaults(run=run_sample)


def _check_args(args) -> None:
    """Every check that needs no model, so bad input fails in milliseconds and writes nothing."""
    from sfv_jax.video_io import check_video_path
    check_video_path(args.out)
    if args.height < 8 or args.width < 8 or args.height % 8 or args.width % 8:
        raise SfvError(f"--height and --width must be positive multiples of 8, got {args.height}x{args.width}")
    if args.num_frames is not None and args.num_frames < 1:
        raise SfvError(f"--num-frames must be >= 1, got {args.num_frames}")
    if args.decode_chunk_size is not None and args.decode_chunk_size < 1:
        raise SfvError(f"--decode-chunk-size must be >= 1, got {args.decode_chunk_size}")
    if args.steps < 1:
        raise SfvError(f"--steps must be >= 1, got {args.steps}")
    if args.sampler == "sfv" and args.steps > 3:
        raise SfvError(f"--sampler sfv runs 1 to 3 steps, got --steps {args.steps}; use --sampler euler for more")
    if args.fps < 1:
        raise SfvError(f"--fps must be >= 1, got {args.fps}")
    if not os.path.isdir(args.checkpoint):
        raise SfvError(f"{args.checkpoint}: checkpoint folder not found; create one with sfv-jax convert")


def load_image(path: str):
    """The image at `path` as an RGB PIL image, or SfvError saying why not."""
    from PIL import Image, UnidentifiedImageError
    if not os.path.isfile(path):
        raise SfvError(f"{path}: image file not found")
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except UnidentifiedImageError:
        raise SfvError(f"{path}: not an image Pillow can read (use PNG, JPEG, WebP, ...)") from None
    except OSError as e:
        raise SfvError(f"{path}: unreadable image ({e})") from None


def run_sample(args) -> None:
    _check_args(args)
    image = load_image(args.image)

    from tqdm import tqdm

    from sfv_jax.compilation_cache import enable_compilation_cache
    from sfv_jax.pipeline import SFVPipeline
    from sfv_jax.video_io import contact_sheet_path, write_contact_sheet, write_video

    enable_compilation_cache(args.compilation_cache)

    start = time.perf_counter()
    pipe = SFVPipeline.from_pretrained(args.checkpoint)
    load_s = time.perf_counter() - start
    # The sfv sampler's refinement is one compiled loop without per-step ticks: no bar for it.
    bar = tqdm(total=args.steps, desc="sampling", unit="step", disable=args.steps == 1 or args.sampler == "sfv")
    try:
        frames = pipe(image, num_frames=args.num_frames, height=args.height, width=args.width,
                      num_inference_steps=args.steps, fps=args.fps, motion_bucket_id=args.motion_bucket_id,
                      noise_aug_strength=args.noise_aug_strength, min_guidance_scale=args.min_guidance,
                      max_guidance_scale=args.max_guidance, decode_chunk_size=args.decode_chunk_size,
                      seed=args.seed, output_type="uint8", sampler=args.sampler,
                      # SF-V is trained without classifier-free guidance; its refinement steps run without it too.
                      do_classifier_free_guidance=False if args.sampler == "sfv" else None,
                      progress=lambda i: bar.update(max(0, i + 1 - bar.n)))
    finally:
        bar.close()
    write_video(frames, args.out, fps=args.fps)
    sheet = contact_sheet_path(args.out)
    write_contact_sheet(frames, sheet)

    print(f"wrote {args.out} ({frames.shape[0]} frames {args.width}x{args.height}, {args.steps} step"
          f"{'s' if args.steps > 1 else ''}, {args.sampler} sampler) and {sheet}")
    print(f"  {'load checkpoint':<22} {load_s:8.2f}s")
    names = {"image_encoder": "image encoder", "vae_encode": "VAE encode", "unet": f"UNet x {args.steps} steps",
             "vae_decode": "VAE decode"}
    for stage, label in names.items():
        t = pipe.last_timings.get(stage, {})
        per_step = f" ({t['run_s'] / args.steps:.3f}s/step)" if stage == "unet" and args.steps > 1 else ""
        print(f"  {label:<22} compile {t.get('compile_s', 0):8.2f}s  run {t.get('run_s', 0):8.3f}s{per_step}")
