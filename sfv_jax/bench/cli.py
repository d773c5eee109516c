"""`sfv-jax bench {inference,vs-torch,train}`: the benchmark harness's command line.

Each subcommand prints a markdown table (medians over --repeats runs after --warmup calls, with min
and max) and writes its numbers, the arguments and the machine to --json.
"""

from __future__ import annotations


def add_bench_parser(subparsers) -> None:
    from sfv_jax.bench import inference, train, vs_torch

    bench = subparsers.add_parser("bench", help="benchmarks: inference stages, vs diffusers (PyTorch), train step")
    sub = bench.add_subparsers(dest="bench_command", required=True)

    p = sub.add_parser("inference", help="one-step SF-V vs multi-step SVD with CFG, per stage, random weights")
    inference.add_arguments(p)
    p.set_defaults(run=_runner("inference"))

    p = sub.add_parser("vs-torch", help="the same weights in diffusers (PyTorch) and sfv-jax: time and difference")
    vs_torch.add_arguments(p)
    p.set_defaults(run=_runner("vs_torch"))

    p = sub.add_parser("train", help="SF-V train step: time, clips/s, FLOP/s, MFU, memory")
    train.add_arguments(p)
    p.set_defaults(run=_runner("train"))


def _runner(module: str):
    def run(args):
        import importlib
        importlib.import_module(f"sfv_jax.bench.{module}").run(args)
    return run
