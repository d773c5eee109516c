"""The train step as the programs XLA compiles: two (the gradients, then the update) or one fused program.

Every objective's step is `apply(state, *gradients(state, batch))` (sfv_jax.train.step, denoise_step, vae_step).
Compiled as one program, XLA:CPU spends far longer than on the two halves apart: its per-kernel passes (buffer
assignment, the runtime's conflict checks between kernels, scheduling) grow faster than linearly with a program's
size. Measured on the tiny SF-V step (BENCHMARKS.md "Compile cost by structure"): 183 s split against 346 s fused,
while a step ran 12% slower split on the 2-core CPU (the fused program starts updating leaves whose gradients are
done while the backward pass goes on, on the other core). So `config.step_programs = "split"` (the default) jits
the halves separately, for tests, demos, benchmarks, plans and every run whose compile is a large share of its
time; "fused" keeps one program, for long CPU runs. (On a GPU the step's kernels mostly run in one stream, so less
should be lost to the split there; not measured yet.) The gradients cross from one program to the other in device
memory, as they are live between the backward pass and the update in the fused program too.

Both give the same state and metrics (tests/test_parallel.py: its sharded runs jit two programs, its single-device
runs one); the state is donated to the update either way.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import jax

from sfv_jax.errors import ConfigError

STEP_PROGRAMS = ("split", "fused")


def step_programs(config) -> str:
    """config.step_programs ("split" where a config predates the field); a ConfigError for an unknown value."""
    value = config.get("step_programs", "split")
    if value not in STEP_PROGRAMS:
        raise ConfigError(f"step_programs={value!r}: use {' or '.join(map(repr, STEP_PROGRAMS))} "
                          f"(--config.step_programs=split)")
    return value


@dataclasses.dataclass(frozen=True)
class CompiledProgram:
    """One program of a step compiled ahead of time: its name, XLA's executable, seconds to lower and to compile."""

    name: str
    compiled: Any
    lower_s: float
    compile_s: float


def _with_shardings(abstract, shardings):
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


Progress = Callable[[str], None] | None  # told a line before and after each program's XLA compile


def _lower_and_compile(name: str, jitted, *args, progress: Progress = None) -> CompiledProgram:
    start = time.perf_counter()
    lowered = jitted.lower(*args)
    lowered_at = time.perf_counter()
    if progress:
        progress(f"{name}: lowered in {lowered_at - start:.1f} s; XLA compiling...")
    compiled = lowered.compile()
    program = CompiledProgram(name, compiled, lowered_at - start, time.perf_counter() - lowered_at)
    if progress:
        progress(f"{name}: compiled in {program.compile_s:.1f} s")
    return program


class FusedStep:
    """train_step(state, batch) -> (state, metrics) as one program; the state (argument 0) is donated."""

    def __init__(self, train_step: Callable, state_sh, batch_sh, metrics_sh):
        self.step = jax.jit(train_step, in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, metrics_sh),
                            donate_argnums=(0,))

    def __call__(self, state, batch):
        return self.step(state, batch)

    def compile(self, abstract_state, abstract_batch, progress: Progress = None) -> list[CompiledProgram]:
        return [_lower_and_compile("train_step", self.step, abstract_state, abstract_batch, progress=progress)]


class SplitStep:
    """train_step(state, batch) -> (state, metrics) as two programs: outputs = gradients(state, batch), then
    apply(state, *outputs) with the state donated. train_step has both methods (every objective's step does)."""

    def __init__(self, train_step, state_sh, batch_sh, metrics_sh):
        self.train_step, self.state_sh = train_step, state_sh
        # keep_unused: the whole state stays in device memory while the gradients are computed (the EMA and the
        # optimiser state too, which they do not read), so the program's memory analysis counts it as arguments.
        self.gradients = jax.jit(train_step.gradients, in_shardings=(state_sh, batch_sh), keep_unused=True)
        # The gradients' shardings are what the first program made of them (the params' shardings, by GSPMD's
        # propagation); the update takes them as they come.
        self.apply = jax.jit(lambda state, outputs: train_step.apply(state, *outputs),
                             out_shardings=(state_sh, metrics_sh), donate_argnums=(0,))

    def __call__(self, state, batch):
        return self.apply(state, self.gradients(state, batch))

    def compile(self, abstract_state, abstract_batch, progress: Progress = None) -> list[CompiledProgram]:
        """Both programs ahead of time (no devices needed): the update's inputs take the first program's output
        shardings."""
        gradients = _lower_and_compile("gradients", self.gradients, abstract_state, abstract_batch,
                                       progress=progress)
        outputs = _with_shardings(jax.eval_shape(self.train_step.gradients, abstract_state, abstract_batch),
                                  gradients.compiled.output_shardings)
        apply = _lower_and_compile("apply", self.apply, _with_shardings(abstract_state, self.state_sh), outputs,
                                   progress=progress)
        return [gradients, apply]


def run_compiled(programs: list[CompiledProgram]) -> Callable:
    """step(state, batch) -> (state, metrics) from compile()'s programs (one fused, or gradients then apply)."""
    if len(programs) == 1:
        return programs[0].compiled
    gradients, apply = (p.compiled for p in programs)
    return lambda state, batch: apply(state, gradients(state, batch))
