"""The per-stage timings line the demos print."""

from __future__ import annotations

from sfv_jax.diffusion.image_to_video import STAGES


def describe_timings(timings: dict[str, dict[str, float]]) -> str:
    """SFVPipeline.last_timings -> "image_encoder 12 ms, ..., unet 310 ms (+4.1s compile), ..." in stage order."""
    return ", ".join(f"{s} {timings[s]['run_s'] * 1e3:.0f} ms"
                     + (f" (+{timings[s]['compile_s']:.1f}s compile)" if timings[s]["compile_s"] > 0.05 else "")
                     for s in STAGES if s in timings)
