"""What every benchmark shares: timing runs, their summary, the machine, markdown tables and JSON files."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import time
from typing import Any, Callable, Sequence

from sfv_jax.errors import SfvError

MIN_REPEATS = 5  # the bar for published numbers; fewer is allowed but flagged in the output


def summarize(values: Sequence[float]) -> dict[str, float]:
    """{"median", "min", "max", "n"} of a non-empty list of measurements."""
    if not values:
        raise ValueError("no measurements to summarize")
    values = [float(v) for v in values]
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def time_calls(fn: Callable[[], Any], repeats: int, warmup: int) -> tuple[list[float], Any]:
    """Calls `fn` warmup times untimed, then `repeats` times timed; `fn` must block until its work is done.

    Returns (seconds of each timed call, the last call's result).
    """
    out = None
    for _ in range(warmup):
        out = fn()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        seconds.append(time.perf_counter() - start)
    return seconds, out


def load_average() -> float | None:
    """The 1-minute load average (how many runnable processes shared the CPUs), None where unknown."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def check_counts(repeats: int, warmup: int) -> None:
    if repeats < 1:
        raise SfvError(f"--repeats must be >= 1, got {repeats}")
    if warmup < 1:
        raise SfvError(f"--warmup must be >= 1 (the first call of a program is never timed), got {warmup}")


def fmt_seconds(stats: dict[str, float] | None) -> str:
    """'median (min-max)' with a precision that suits the magnitude; '-' when absent."""
    if not stats:
        return "-"
    scale = max(abs(stats["max"]), 1e-9)
    digits = 4 if scale < 0.1 else 3 if scale < 10 else 1
    return f"{stats['median']:.{digits}f} ({stats['min']:.{digits}f}-{stats['max']:.{digits}f})"


def fmt_number(value: float | None, digits: int = 3) -> str:
    """Engineering-style short number: 1.23e+12 -> '1.23 T'; None -> '-'."""
    if value is None:
        return "-"
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.{digits}g} {prefix}"
    return f"{value:.{digits}g}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def log(message: str) -> None:
    """Progress on stderr, with the time and the peak RSS so far (full-width phases take minutes)."""
    import sys
    print(f"[{time.strftime('%H:%M:%S')}] {message} (peak RSS so far {peak_rss_bytes() / 2 ** 30:.1f} GiB)",
          file=sys.stderr, flush=True)


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    """The SIMD extensions that matter for float32/bf16 kernels (AVX2/FMA/AVX-512/AMX)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    return sorted(f for f in flags if f.startswith(("avx", "amx", "fma")))
    except OSError:
        pass
    return []


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal"):
                    return round(int(line.split()[1]) / 2 ** 20, 1)
    except OSError:
        pass
    return None


def machine() -> dict[str, Any]:
    """The machine and software a result was measured on, and how busy the machine was at the start."""
    import jax
    info: dict[str, Any] = {
        "cpu": _cpu_model(), "cpu_flags": _cpu_flags(), "logical_cpus": os.cpu_count(),
        "memory_gib": _memory_gib(), "python": platform.python_version(), "jax": jax.__version__,
        "backend": jax.default_backend(), "devices": [str(d.device_kind) for d in jax.devices()],
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }
    try:
        info["load_average_1m_at_start"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    return info


def describe_machine(info: dict[str, Any]) -> str:
    """One line for the top of a printed report."""
    simd = "/".join(f for f in info.get("cpu_flags", []) if f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16"))
    parts = [f"{info['cpu']} ({info['logical_cpus']} logical CPUs{', ' + simd if simd else ''})",
             f"{info.get('memory_gib')} GiB RAM", f"jax {info['jax']} on {info['backend']} "
             f"({', '.join(sorted(set(info['devices'])))})"]
    if info.get("torch"):
        parts.append(f"torch {info['torch']} ({info.get('torch_threads')} threads)")
    if "load_average_1m_at_start" in info:
        parts.append(f"load average {info['load_average_1m_at_start']} at start")
    return "; ".join(parts)


def write_json(path: str | None, payload: dict[str, Any]) -> None:
    """Writes `payload` as indented JSON (through a temporary file, so a crash leaves no half file)."""
    if not path:
        return
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=False, default=float)
        f.write("\n")
    os.replace(tmp, path)


def repeats_note(repeats: int, warmup: int) -> str:
    note = f"median (min-max) of {repeats} timed run{'s' if repeats != 1 else ''} after {warmup} warm-up"
    if repeats < MIN_REPEATS:
        note += f" [fewer than {MIN_REPEATS} runs: not for publication]"
    return note
