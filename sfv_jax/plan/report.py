"""What `sfv-jax plan` reports: per-device bytes and FLOPs of each compiled program, against the chip's HBM and peak.

A program's peak is XLA's memory_analysis() figures combined as the buffers are live at once: arguments, plus
outputs that do not reuse a donated argument's buffer (output - alias), plus temporaries. A plan of several programs
(the sampler: UNet, then decoder; the train step as two programs) runs them one after another, so its peak is the
largest and its FLOPs the sum of each program's FLOPs per step (a micro-batch scan's body, which XLA counts once,
times grad_accum_steps).
"""

from __future__ import annotations

import dataclasses
import json

from sfv_jax.plan.topology import Chip

MFU = 0.4  # the model-FLOPs utilisation the step-time estimate assumes
MIB = 2 ** 20


@dataclasses.dataclass(frozen=True)
class ProgramFigures:
    """One compiled program, per device: XLA's buffer sizes (bytes) and FLOP count; seconds XLA took to compile it."""

    name: str
    argument_bytes: int | None
    output_bytes: int | None
    alias_bytes: int | None
    temp_bytes: int | None
    code_bytes: int | None
    flops: float | None
    compile_s: float
    # XLA's cost analysis counts a loop body once; a program whose work is a lax.scan over the step's micro-batches
    # runs it this many times a step (grad_accum_steps), so its FLOPs per step are flops x runs_per_step.
    runs_per_step: int = 1

    @property
    def flops_per_step(self) -> float | None:
        return None if self.flops is None else self.flops * self.runs_per_step

    @property
    def total_bytes(self) -> int | None:
        """Live at once: argument + output - alias + temporary (donated state buffers are reused by the outputs)."""
        parts = (self.argument_bytes, self.output_bytes, self.alias_bytes, self.temp_bytes)
        if any(p is None for p in parts):
            return None
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes


@dataclasses.dataclass(frozen=True)
class Plan:
    """A plan: what was compiled, for which devices, and the figures.

    Attributes:
      program: "train" or "sample".
      config: the config spec (FILE[:VARIANT]) and its overrides, as given.
      topology, platform, devices, hosts: the target (hosts: processes a multi-host slice runs on).
      mesh: {axis: size}.
      chip: the chip's facts (HBM and peak None on CPU).
      state_bytes: per-device bytes of the train state by group (params, optimizer, frozen, other); None for sample.
      programs: each compiled program's figures.
      warnings: lines the training loop would also log (e.g. micro-batches that do not split over the batch axes).
      shapes: what the program consumes (global batch, frames, height, width).
      lower_s: seconds to trace and lower the programs (Python and JAX; XLA's compile is each program's compile_s).
    """

    program: str
    config: str
    topology: str
    platform: str
    devices: int
    hosts: int
    mesh: dict
    chip: Chip
    state_bytes: dict | None
    programs: list
    warnings: list
    shapes: dict
    lower_s: float

    @property
    def peak_bytes(self) -> int | None:
        totals = [p.total_bytes for p in self.programs]
        return None if any(t is None for t in totals) else max(totals)

    @property
    def flops(self) -> float | None:
        values = [p.flops_per_step for p in self.programs]
        return None if any(v is None for v in values) else sum(values)

    @property
    def headroom_bytes(self) -> int | None:
        if self.chip.hbm_bytes is None or self.peak_bytes is None:
            return None
        return self.chip.hbm_bytes - self.peak_bytes

    @property
    def step_seconds(self) -> float | None:
        """FLOPs per device / (peak bf16 FLOP/s x MFU): the step time at 40% MFU."""
        if self.chip.peak_bf16_flops is None or self.flops is None:
            return None
        return self.flops / (self.chip.peak_bf16_flops * MFU)

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["programs"] = [{**dataclasses.asdict(p), "total_bytes": p.total_bytes, "flops_per_step": p.flops_per_step}
                         for p in self.programs]
        d.update(peak_bytes=self.peak_bytes, flops=self.flops, headroom_bytes=self.headroom_bytes,
                 step_seconds_at_40pct_mfu=self.step_seconds, mfu_assumed=MFU)
        return d


def _mib(value: int | None) -> str:
    """Bytes as MiB, or GiB from 10 GiB on (a chip's HBM)."""
    if value is None:
        return "n/a"
    return f"{value / 2 ** 30:,.1f} GiB" if abs(value) >= 10 * 2 ** 30 else f"{value / MIB:,.1f} MiB"


def format_plan(plan: Plan) -> str:
    """The plan as a short text table (per device)."""
    mesh = " x ".join(f"{k}={v}" for k, v in plan.mesh.items())
    shapes = ", ".join(f"{k} {v}" for k, v in plan.shapes.items())
    lines = [f"sfv-jax plan: {plan.program} program of {plan.config}",
             f"target: {plan.topology} ({plan.platform}, {plan.devices} device(s), {plan.hosts} host(s)); mesh {mesh}",
             f"shapes: {shapes}",
             f"traced and lowered in {plan.lower_s:.1f} s; XLA compile "
             + ", ".join(f"{p.name} {p.compile_s:.1f} s" for p in plan.programs), "", "per device:"]
    if plan.state_bytes is not None:
        for group, label in (("params", "parameters (trained + EMA)"), ("optimizer", "optimiser state"),
                             ("frozen", "frozen weights"), ("other", "other state")):
            lines.append(f"  {label:<28}{_mib(plan.state_bytes[group]):>16}")
    for p in plan.programs:
        lines.append(f"  [{p.name}]")
        for label, value in (("argument", p.argument_bytes), ("output", p.output_bytes), ("alias (donated)",
                             p.alias_bytes), ("temporary", p.temp_bytes), ("total (arg+out-alias+temp)",
                             p.total_bytes)):
            lines.append(f"    {label:<26}{_mib(value):>16}")
        scan = f"   x {p.runs_per_step} micro-batches (XLA counts the scan body once)" if p.runs_per_step > 1 else ""
        lines.append(f"    {'FLOPs':<26}{'n/a' if p.flops is None else f'{p.flops:.4g}':>16}{scan}")
    hbm = plan.chip.hbm_bytes
    lines += [f"  {'peak':<28}{_mib(plan.peak_bytes):>16}",
              f"  {'HBM (' + plan.chip.name + ')':<28}{_mib(hbm):>16}",
              f"  {'headroom':<28}{_mib(plan.headroom_bytes):>16}"
              + ("   DOES NOT FIT" if plan.headroom_bytes is not None and plan.headroom_bytes < 0 else ""),
              f"  {'FLOPs per step':<28}{'n/a' if plan.flops is None else f'{plan.flops:.4g}':>16}"]
    if plan.step_seconds is not None:
        lines.append(f"  {'step time at 40% MFU':<28}{plan.step_seconds * 1e3:>13.3g} ms   "
                     f"({plan.chip.peak_bf16_flops / 1e12:.0f} TFLOP/s bf16 peak)")
    else:
        lines.append(f"  {'step time at 40% MFU':<28}{'n/a':>16}   (no peak FLOP/s for {plan.chip.name})")
    lines += [f"warning: {w}" for w in plan.warnings]
    return "\n".join(lines)


def write_json(plan: Plan, path: str) -> None:
    """The plan as JSON at `path`, written atomically (never half a file)."""
    from sfv_jax.fileio import write_text_atomically

    write_text_atomically(path, json.dumps(plan.to_json(), indent=2) + "\n")
