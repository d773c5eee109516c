"""`sfv-jax bench vs-torch`: the same weights in diffusers/transformers (PyTorch) and in sfv-jax, same
machine, dtype and inputs: seconds per component, the ratio, and the outputs' relative L2 difference
(so that a fast wrong answer shows).

Weights: each component is built in PyTorch from the config's diffusers/transformers config
(torch's default init), written with save_pretrained, and read into sfv-jax by the real converter
(sfv_jax.convert.*_from_diffusers). This direction keeps one copy of the weights in memory at a time
(the exporter holds every exported tensor before writing, two copies of a 6 GB UNet).
The two frameworks run one after the other (PyTorch first, then JAX), never side by side, so the
full-width UNet fits in memory once.

Components: unet (one forward), vae_decode (one clip), vae_encode (one image), image_encoder (one
224x224 image). PyTorch runs under torch.inference_mode() with torch.set_num_threads(os.cpu_count());
JAX runs the AOT-compiled jitted forward (compile timed apart).
"""

from __future__ import annotations

import gc
import os
import tempfile
import time
from typing import Any, Callable

import numpy as np

from sfv_jax.bench import report
from sfv_jax.bench.inference import DTYPES, check_size, flops_of, latent_scale, model_options, vars_of
from sfv_jax.errors import SfvError

COMPONENTS = ("unet", "vae_decode", "vae_encode", "image_encoder")
FOLDER = {"unet": "unet", "vae_decode": "vae", "vae_encode": "vae", "image_encoder": "image_encoder"}


def add_arguments(p) -> None:
    p.add_argument("--config", default="configs/tiny.py", help="model widths: configs/tiny.py, configs/svd_xt.py, ...")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. unet.block_out_channels=(32,) (repeatable)")
    p.add_argument("--components", default=",".join(COMPONENTS),
                   help=f"comma-separated subset of {','.join(COMPONENTS)}")
    p.add_argument("--height", type=int, default=64,
                   help="image height (a multiple of the VAE's downsampling f; latent = height / f)")
    p.add_argument("--width", type=int, default=64, help="image width (a multiple of f)")
    p.add_argument("--num-frames", type=int, default=4)
    p.add_argument("--batch", type=int, default=1, help="clips per UNet forward / images per encode")
    p.add_argument("--dtype", default="float32", choices=DTYPES, help="params and compute dtype of both")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1, help="untimed calls after compiling (JAX) / before timing")
    p.add_argument("--profile", action="store_true",
                   help="after timing, profile one call of each (seconds per op kind: convolution, matmul, ...)")
    p.add_argument("--workdir", default=None, help="where the diffusers folders go (default: a temporary folder)")
    p.add_argument("--json", default=None, metavar="OUT.json")


def parse_components(text: str) -> list[str]:
    names = [c.strip() for c in text.split(",") if c.strip()]
    unknown = [c for c in names if c not in COMPONENTS]
    if unknown or not names:
        raise SfvError(f"--components: unknown {unknown or 'empty list'}; choose from {','.join(COMPONENTS)}")
    return names


# ---------------------------------------------------------------- inputs (numpy, channels-last)

def make_inputs(component: str, config, args) -> dict[str, np.ndarray]:
    """Random inputs of one component, channels-last float32, seeded per component."""
    rng = np.random.default_rng(COMPONENTS.index(component))
    scale = latent_scale(config)
    b, t, h, w = args.batch, args.num_frames, args.height // scale, args.width // scale
    if component == "unet":
        u = config.unet
        return dict(sample=rng.standard_normal((b, t, h, w, u.in_channels), np.float32),
                    timestep=np.full((b,), 0.25 * np.log(700.0), np.float32),  # c_noise at SVD's sigma_max
                    encoder_hidden_states=rng.standard_normal((b, 1, u.cross_attention_dim), np.float32),
                    added_time_ids=np.tile(np.array([[6.0, 127.0, 0.02]], np.float32), (b, 1)))
    if component == "vae_decode":
        return dict(latents=rng.standard_normal((b * t, h, w, config.vae.latent_channels), np.float32))
    if component == "vae_encode":
        return dict(images=rng.uniform(-1, 1, (b, args.height, args.width, 3)).astype(np.float32))
    size = config.image_encoder.image_size
    return dict(pixel_values=rng.standard_normal((b, size, size, config.image_encoder.num_channels), np.float32))


def _channels_first(x: np.ndarray, component: str) -> np.ndarray:
    """sfv-jax layout -> diffusers layout: (B,T,h,w,C) -> (B,T,C,h,w) for the UNet, (N,...,C) -> (N,C,...) else."""
    if x.ndim == 5:
        return np.ascontiguousarray(np.moveaxis(x, -1, 2))
    if x.ndim == 4:
        return np.ascontiguousarray(np.moveaxis(x, -1, 1))
    return x


def _channels_last(x: np.ndarray) -> np.ndarray:
    if x.ndim == 5:
        return np.moveaxis(x, 2, -1)
    if x.ndim == 4:
        return np.moveaxis(x, 1, -1)
    return x


# ---------------------------------------------------------------- PyTorch side

def build_torch(folder_name: str, config, folder: str, torch_dtype):
    """A torch-initialised diffusers/transformers model from the config, saved to `folder`."""
    import torch
    from sfv_jax.models import CLIPVisionConfig, UNetConfig, VAEConfig
    torch.manual_seed(config.seed)
    if folder_name == "unet":
        from diffusers import UNetSpatioTemporalConditionModel
        cfg = UNetConfig.from_dict(config.unet.to_dict()).to_diffusers_dict()
        model = UNetSpatioTemporalConditionModel.from_config(cfg)
    elif folder_name == "vae":
        from diffusers import AutoencoderKLTemporalDecoder
        cfg = VAEConfig.from_dict(config.vae.to_dict()).to_diffusers_dict()
        model = AutoencoderKLTemporalDecoder.from_config(cfg)
    else:
        from transformers import CLIPVisionConfig as TorchCLIPConfig, CLIPVisionModelWithProjection
        cfg = CLIPVisionConfig.from_dict(config.image_encoder.to_dict()).to_transformers_dict()
        model = CLIPVisionModelWithProjection(TorchCLIPConfig(**cfg))
    model = model.eval()
    model.save_pretrained(folder, safe_serialization=True)
    return model if torch_dtype == torch.float32 else model.to(torch_dtype)


def torch_call(component: str, model, inputs: dict[str, np.ndarray], torch_dtype, num_frames: int,
               device: str = "cpu") -> Callable[[], Any]:
    """A no-argument call of the diffusers/transformers model (already on `device`) on `inputs` moved to
    its layout and device; it returns once the work is done (CUDA kernels run asynchronously)."""
    import torch
    t = {k: torch.from_numpy(_channels_first(v, component)).to(device, torch_dtype if v.ndim > 1 else torch.float32)
         for k, v in inputs.items()}
    call = _torch_call(component, model, t, torch_dtype, num_frames)
    if device == "cpu":
        return call
    return lambda: (call(), torch.cuda.synchronize())[0]


def _torch_call(component: str, model, t: dict, torch_dtype, num_frames: int) -> Callable[[], Any]:
    """The model's call on the torch tensors `t` (channels-first)."""
    if component == "unet":
        t["timestep"] = t["timestep"].to(torch_dtype)
        t["added_time_ids"] = t["added_time_ids"].to(torch_dtype)
        return lambda: model(t["sample"], t["timestep"], t["encoder_hidden_states"], t["added_time_ids"],
                             return_dict=False)[0]
    if component == "vae_decode":
        return lambda: model.decode(t["latents"], num_frames=num_frames, return_dict=False)[0]
    if component == "vae_encode":
        return lambda: model.encode(t["images"]).latent_dist.mode()
    return lambda: model(pixel_values=t["pixel_values"]).image_embeds


def run_torch(component: str, model, inputs, args, torch_dtype, device: str = "cpu") -> tuple[dict, np.ndarray]:
    import torch
    call = torch_call(component, model, inputs, torch_dtype, args.num_frames, device)
    load = [report.load_average()]
    with torch.inference_mode():  # torch_call returns when the work is done
        seconds, out = report.time_calls(call, args.repeats, args.warmup)
    result = {"seconds": report.summarize(seconds), "runs": seconds, "load_average_1m": load + [report.load_average()]}
    if args.profile:
        from sfv_jax.bench.profile import profile_torch
        result["profile"] = profile_torch(call)
    return result, _channels_last(out.float().cpu().numpy())


# ---------------------------------------------------------------- JAX side

def load_jax(folder_name: str, folder: str, options):
    from sfv_jax.convert import image_encoder_from_diffusers, unet_from_diffusers, vae_from_diffusers
    load = {"unet": unet_from_diffusers, "vae": vae_from_diffusers, "image_encoder": image_encoder_from_diffusers}
    return load[folder_name](folder, options)


def jax_forward(component: str, num_frames: int) -> Callable:
    """fn(module, **inputs) -> output, the sfv-jax call that matches the diffusers call of torch_call."""
    if component == "unet":
        return lambda m, sample, timestep, encoder_hidden_states, added_time_ids: m(
            sample, timestep, encoder_hidden_states, added_time_ids)
    if component == "vae_decode":
        return lambda m, latents: m.decode(latents, num_frames)
    if component == "vae_encode":
        return lambda m, images: m.encode(images)
    return lambda m, pixel_values: m(pixel_values)


def run_jax(component: str, module, inputs, args, dtype: str) -> tuple[dict, np.ndarray]:
    import jax
    import jax.numpy as jnp
    from flax import nnx
    graphdef, state = nnx.split(module)
    forward = jax_forward(component, args.num_frames)
    cast = lambda v: jnp.asarray(v, dtype if v.ndim > 1 else jnp.float32)
    arrays = {k: cast(v) for k, v in inputs.items()}
    if component == "unet":
        arrays["timestep"] = arrays["timestep"].astype(dtype)
        arrays["added_time_ids"] = arrays["added_time_ids"].astype(dtype)
    jitted = jax.jit(lambda state, arrays: forward(nnx.merge(graphdef, state), **arrays))
    start = time.perf_counter()
    compiled = jitted.lower(state, arrays).compile()
    compile_s = time.perf_counter() - start
    load = [report.load_average()]
    seconds, out = report.time_calls(lambda: jax.block_until_ready(compiled(state, arrays)), args.repeats,
                                     args.warmup)
    load.append(report.load_average())
    profile = None
    if args.profile:
        from sfv_jax.bench.profile import profile_jax
        profile = profile_jax(lambda: compiled(state, arrays), compiled.as_text())
    flops = flops_of(compiled)
    if component == "vae_decode":  # the decoder scans over clips: XLA counts the scan body once
        flops = flops * args.batch if flops is not None else None
    result = {"seconds": report.summarize(seconds), "runs": seconds, "compile_s": compile_s, "flops": flops,
              "load_average_1m": load}
    if profile is not None:
        result["profile"] = profile
    return result, np.asarray(out, np.float32)


# ---------------------------------------------------------------- driver

def rel_l2(out: np.ndarray, ref: np.ndarray) -> float:
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-300))


def run(args) -> dict[str, Any]:
    import torch
    from sfv_jax.config import load_config

    components = parse_components(args.components)
    report.check_counts(args.repeats, args.warmup)
    if args.batch < 1:
        raise SfvError(f"--batch must be >= 1, got {args.batch}")
    config = load_config(args.config, args.override)
    check_size(args.height, args.width, args.num_frames, latent_scale(config))
    options = model_options(config, args.dtype)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    torch.set_num_threads(os.cpu_count() or 1)
    machine = {**report.machine(), "torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    import diffusers
    import transformers
    machine.update(diffusers=diffusers.__version__, transformers=transformers.__version__)

    results = {}
    with tempfile.TemporaryDirectory(prefix="sfv_bench_vs_torch_", dir=args.workdir) as workdir:
        # Components sharing a model (vae_decode, vae_encode) share one build and one folder.
        for folder_name in dict.fromkeys(FOLDER[c] for c in components):
            names = [c for c in components if FOLDER[c] == folder_name]
            folder = os.path.join(workdir, folder_name)
            report.log(f"{folder_name}: building the PyTorch model and saving it")
            start = time.perf_counter()
            model = build_torch(folder_name, config, folder, torch_dtype)
            build_s = time.perf_counter() - start
            inputs = {c: make_inputs(c, config, args) for c in names}
            torch_out = {}
            for c in names:
                report.log(f"{c}: timing PyTorch")
                results[c] = {"torch": None, "jax": None}
                results[c]["torch"], torch_out[c] = run_torch(c, model, inputs[c], args, torch_dtype)
            del model
            gc.collect()
            report.log(f"{folder_name}: converting to sfv-jax")
            start = time.perf_counter()
            module = load_jax(folder_name, folder, options)
            convert_s = time.perf_counter() - start
            for c in names:
                report.log(f"{c}: compiling and timing sfv-jax")
                results[c]["jax"], out = run_jax(c, module, inputs[c], args, args.dtype)
                results[c]["shape"] = list(out.shape)
                results[c]["rel_l2"] = rel_l2(out, torch_out[c])
                results[c]["ratio"] = (results[c]["jax"]["seconds"]["median"]
                                       / results[c]["torch"]["seconds"]["median"])
                results[c]["torch_build_s"], results[c]["convert_s"] = build_s, convert_s
            del module
            gc.collect()
    scale = latent_scale(config)
    payload = {"benchmark": "vs-torch", "machine": machine, "args": vars_of(args), "results": results,
               "latent": [args.num_frames, args.height // scale, args.width // scale],
               "peak_rss_bytes": report.peak_rss_bytes()}
    print(format_report(payload))
    report.write_json(args.json, payload)
    return payload


def format_report(payload: dict[str, Any]) -> str:
    a = payload["args"]
    lines = [f"sfv-jax bench vs-torch: {a['config']} {' '.join(a['override'])}".rstrip()
             + f", {a['num_frames']} frames x {a['height']}x{a['width']} (latent {payload['latent'][1]}x"
             f"{payload['latent'][2]}),"
             f" batch {a['batch']}, {a['dtype']}, same weights (torch init -> save_pretrained -> sfv-jax converter)",
             "machine: " + report.describe_machine(payload["machine"]),
             f"diffusers {payload['machine'].get('diffusers')}, transformers {payload['machine'].get('transformers')}",
             "seconds: " + report.repeats_note(a["repeats"], a["warmup"]), ""]
    rows = []
    for name, r in payload["results"].items():
        j, t = r["jax"], r["torch"]
        rows.append([name, "x".join(map(str, r["shape"])), report.fmt_seconds(t["seconds"]),
                     report.fmt_seconds(j["seconds"]), f"{j['compile_s']:.1f}", f"{r['ratio']:.2f}",
                     f"{r['rel_l2']:.2e}", report.fmt_number(j["flops"]),
                     report.fmt_number(j["flops"] / j["seconds"]["median"] if j["flops"] else None)])
    lines.append(report.markdown_table(
        ["component", "output (channels-last)", "diffusers s", "sfv-jax s", "sfv-jax compile s",
         "sfv-jax / diffusers", "rel L2 diff", "FLOPs (XLA)", "sfv-jax FLOP/s"], rows))
    lines.append("ratio of the fastest runs: " + ", ".join(
        f"{name} {r['jax']['seconds']['min'] / r['torch']['seconds']['min']:.2f}"
        for name, r in payload["results"].items()) + "; 1-minute load average while timing (diffusers, sfv-jax): "
        + ", ".join(f"{name} {r['torch'].get('load_average_1m')}, {r['jax'].get('load_average_1m')}"
                    for name, r in payload["results"].items()))
    for name, r in payload["results"].items():
        if "profile" in r["jax"] or "profile" in r["torch"]:
            from sfv_jax.bench.profile import format_profiles
            lines.append("\n" + format_profiles(name, r["torch"].get("profile"), r["jax"].get("profile")))
    lines.append(f"\npeak RSS {payload['peak_rss_bytes'] / 2 ** 30:.2f} GiB")
    return "\n".join(lines)
