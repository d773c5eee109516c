"""Where the time of one call goes, by kind of op: sfv-jax (XLA's executed HLO ops, from jax.profiler)
and PyTorch (torch.profiler), in the same categories so the two can be laid side by side.

Kinds: convolution, matmul (dot / linear / bmm / attention products), reduction (norm statistics,
softmax sums), elementwise (every other fusion or pointwise op), layout (copy / transpose / pad /
concatenate), other. An XLA fusion takes the kind of the heaviest op it contains (convolution >
matmul > reduction > layout > elementwise).

Times are summed over every thread's op events, so with ops running concurrently the sum may exceed
the wall time of the call: compare shares and the two frameworks' sums, not the sum and the wall.
"""

from __future__ import annotations

import glob
import re
import tempfile
import time
from collections import defaultdict
from typing import Any, Callable

KINDS = ("convolution", "matmul", "reduction", "elementwise", "layout", "other")
_RANK = {"convolution": 0, "matmul": 1, "reduction": 2, "layout": 3, "elementwise": 4, "other": 5}
_OPCODE_KIND = {"convolution": "convolution", "dot": "matmul", "reduce": "reduction", "reduce-window": "reduction",
                "copy": "layout", "transpose": "layout", "pad": "layout", "concatenate": "layout",
                "slice": "layout", "dynamic-slice": "layout", "dynamic-update-slice": "layout", "gather": "layout",
                "scatter": "layout", "reverse": "layout"}
_HEADER = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) \(.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = .*? ([a-z][\w\-]*)\(")
_CALLS = re.compile(r"(?:calls|to_apply|body|condition)=%([\w.\-]+)")


def hlo_op_kinds(hlo_text: str) -> dict[str, str]:
    """{instruction name: kind} for every instruction of an HLO module's text (compiled.as_text())."""
    ops_of: dict[str, list[tuple[str, str, list[str]]]] = defaultdict(list)
    current = None
    for line in hlo_text.splitlines():
        header = _HEADER.match(line)
        if header:
            current = header.group(1)
            continue
        match = _INSTRUCTION.match(line)
        if match and current is not None:
            ops_of[current].append((match.group(1), match.group(2), _CALLS.findall(line)))

    cache: dict[str, str] = {}

    def computation_kind(name: str, depth: int = 0) -> str:
        if name in cache:
            return cache[name]
        best = "elementwise"
        for _, opcode, called in ops_of.get(name, []):
            kinds = [_OPCODE_KIND.get(opcode, "elementwise")]
            if depth < 8:
                kinds += [computation_kind(c, depth + 1) for c in called if opcode in ("fusion", "call", "custom-call")]
            for k in kinds:
                if _RANK[k] < _RANK[best]:
                    best = k
        cache[name] = best
        return best

    kinds = {}
    for ops in ops_of.values():
        for name, opcode, called in ops:
            if opcode in ("fusion", "call", "custom-call") and called:
                kinds[name] = computation_kind(called[0])
            elif opcode == "custom-call":
                kinds[name] = "convolution" if "conv" in name else "matmul" if ("dot" in name or "matmul" in name) \
                    else "other"
            else:
                kinds[name] = _OPCODE_KIND.get(opcode, "other" if opcode in ("while", "conditional", "call")
                                               else "elementwise")
    return kinds


def _summary(by_op: dict[str, float], kind_of: Callable[[str], str], wall_s: float, top: int) -> dict[str, Any]:
    by_kind = {k: 0.0 for k in KINDS}
    for name, seconds in by_op.items():
        by_kind[kind_of(name)] += seconds
    ranked = sorted(by_op.items(), key=lambda kv: -kv[1])[:top]
    return {"wall_s": wall_s, "op_s": sum(by_op.values()), "by_kind_s": by_kind,
            "top_ops": [{"op": name, "kind": kind_of(name), "s": s} for name, s in ranked]}


def profile_jax(call: Callable[[], Any], hlo_text: str, top: int = 12) -> dict[str, Any]:
    """One traced call of a compiled JAX program: seconds per op kind and the heaviest ops."""
    import jax
    from jax.profiler import ProfileData
    kinds = hlo_op_kinds(hlo_text)
    with tempfile.TemporaryDirectory(prefix="sfv_bench_trace_") as folder:
        jax.profiler.start_trace(folder)
        start = time.perf_counter()
        try:
            jax.block_until_ready(call())
        finally:
            wall = time.perf_counter() - start
            jax.profiler.stop_trace()
        files = glob.glob(f"{folder}/**/*.xplane.pb", recursive=True)
        if not files:
            return {"error": "the profiler wrote no trace"}
        data = ProfileData.from_file(files[0])
    by_op: dict[str, float] = defaultdict(float)
    for plane in data.planes:
        for line in plane.lines:
            for event in line.events:
                stats = dict(event.stats)
                op = stats.get("hlo_op")
                if op is not None:
                    by_op[str(op)] += event.duration_ns * 1e-9
    return _summary(by_op, lambda name: kinds.get(name, "other"), wall, top)


_TORCH_KIND = (("convolution", ("conv", "mkldnn_convolution")),
               ("matmul", ("addmm", "::mm", "bmm", "matmul", "linear", "baddbmm", "scaled_dot_product", "einsum")),
               ("reduction", ("group_norm", "layer_norm", "softmax", "::mean", "::sum", "::var", "batch_norm")),
               ("layout", ("copy_", "contiguous", "clone", "permute", "transpose", "::cat", "pad", "reshape",
                           "upsample", "index", "slice", "_to_copy")),
               ("elementwise", ("add", "mul", "silu", "gelu", "sigmoid", "div", "sub", "exp", "tanh", "where",
                                "clamp", "rsqrt", "sqrt", "neg", "fill_", "zero_", "empty")))


def torch_op_kind(name: str) -> str:
    lowered = name.lower()
    for kind, needles in _TORCH_KIND:
        if any(n in lowered for n in needles):
            return kind
    return "other"


def profile_torch(call: Callable[[], Any], top: int = 12) -> dict[str, Any]:
    """One profiled PyTorch call: self CPU seconds per aten op, grouped by kind."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        call()
        wall = time.perf_counter() - start
    by_op = {e.key: e.self_cpu_time_total * 1e-6 for e in prof.key_averages() if e.self_cpu_time_total > 0}
    return _summary(by_op, torch_op_kind, wall, top)


def format_profiles(name: str, torch_profile: dict[str, Any] | None, jax_profile: dict[str, Any] | None) -> str:
    """Markdown: seconds and share per kind, side by side, then the heaviest ops of each."""
    from sfv_jax.bench.report import markdown_table

    def cell(p, kind):
        if not p or "by_kind_s" not in p:
            return "-"
        s = p["by_kind_s"][kind]
        return f"{s:.3g} ({s / max(p['op_s'], 1e-12):.0%})"

    rows = [[kind, cell(torch_profile, kind), cell(jax_profile, kind)] for kind in KINDS]
    rows.append(["sum of op times / wall of the profiled call",
                 f"{torch_profile['op_s']:.3g} / {torch_profile['wall_s']:.3g}" if torch_profile else "-",
                 f"{jax_profile['op_s']:.3g} / {jax_profile['wall_s']:.3g}" if jax_profile else "-"])
    lines = [f"profile of one {name} call, seconds by op kind (share):",
             markdown_table(["op kind", "diffusers s", "sfv-jax s"], rows)]
    for label, p in (("diffusers", torch_profile), ("sfv-jax", jax_profile)):
        if p and p.get("top_ops"):
            lines.append(f"{label} heaviest ops: " + ", ".join(f"{o['op']} [{o['kind']}] {o['s']:.3g}s"
                                                               for o in p["top_ops"][:8]))
    return "\n".join(lines)
