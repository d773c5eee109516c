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

The gradients leave the first program in their params' shardings and the rest of its outputs replicated (each
step's `gradients_shardings`), so the update's inputs are known before either program is compiled: `compile`
lowers both, then compiles them at once on two threads (XLA:CPU's compile of one program leaves much of a
second core idle), or one after the other where host memory is the limit (`parallel=False`, what `sfv-jax plan`
does).

Both give the same state and metrics (tests/test_parallel.py: its sharded runs jit two programs, its single-device
runs one); the state is donated to the update either way.
"""

from __future__ import annotations

import concurrent.futures
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


Progress = Callable[[str], None] | None  # told a line before and after each program's XLA compile


def _lower(name: str, jitted, *args, progress: Progress = None):
    """(lowered, seconds to trace and lower)."""
    start = time.perf_counter()
    lowered = jitted.lower(*args)
    seconds = time.perf_counter() - start
    if progress:
        progress(f"{name}: lowered in {seconds:.1f} s; XLA compiling...")
    return lowered, seconds


def _compile(name: str, lowered, lower_s: float, progress: Progress = None) -> CompiledProgram:
    start = time.perf_counter()
    program = CompiledProgram(name, lowered.compile(), lower_s, time.perf_counter() - start)
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

    def compile(self, abstract_state, abstract_batch, progress: Progress = None,
                parallel: bool = True) -> list[CompiledProgram]:
        del parallel  # one program
        lowered, lower_s = _lower("train_step", self.step, abstract_state, abstract_batch, progress=progress)
        return [_compile("train_step", lowered, lower_s, progress)]


class SplitStep:
    """train_step(state, batch) -> (state, metrics) as two programs: outputs = gradients(state, batch), then
    apply(state, *outputs) with the state donated. train_step has both methods (every objective's step does) and
    gradients_shardings(state shardings, replicated), the shardings of the gradients' outputs."""

    def __init__(self, train_step, state_sh, batch_sh, metrics_sh):
        self.train_step = train_step
        outputs_sh = train_step.gradients_shardings(state_sh, metrics_sh)
        # keep_unused: the whole state stays in device memory while the gradients are computed (the EMA and the
        # optimiser state too, which they do not read), so the program's memory analysis counts it as arguments.
        self.gradients = jax.jit(train_step.gradients, in_shardings=(state_sh, batch_sh), out_shardings=outputs_sh,
                                 keep_unused=True)
        self.apply = jax.jit(lambda state, outputs: train_step.apply(state, *outputs),
                             in_shardings=(state_sh, outputs_sh), out_shardings=(state_sh, metrics_sh),
                             donate_argnums=(0,))

    def __call__(self, state, batch):
        return self.apply(state, self.gradients(state, batch))

    def compile(self, abstract_state, abstract_batch, progress: Progress = None,
                parallel: bool = True) -> list[CompiledProgram]:
        """Both programs ahead of time (no devices needed): lowered one after the other, then compiled on two
        threads (parallel) or in turn."""
        gradients = _lower("gradients", self.gradients, abstract_state, abstract_batch, progress=progress)
        apply = _lower("apply", self.apply, abstract_state, gradients[0].out_info, progress=progress)
        jobs = (("gradients", *gradients), ("apply", *apply))
        if not parallel:
            return [_compile(*job, progress) for job in jobs]
        with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
            return list(pool.map(lambda job: _compile(*job, progress), jobs))


def run_compiled(programs: list[CompiledProgram]) -> Callable:
    """step(state, batch) -> (state, metrics) from compile()'s programs (one fused, or gradients then apply)."""
    if len(programs) == 1:
        return programs[0].compiled
    gradients, apply = (p.compiled for p in programs)
    return lambda state, batch: apply(state, gradients(state, batch))
