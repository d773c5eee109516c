"""The GPU check: proves and times sfv-jax on the device it runs on, in one call of a few minutes.

    tools/gpu_check.sh                       # on the lent GPU machine (installs .whl/ first), ~7 minutes
    python -m tools.gpu_check --dry-run      # the same code paths on the CPU at tiny sizes, ~1-2 minutes
    python -m tools.gpu_check --sections inference,train --budget train=300

Sections (tools/gpu_check/<section>.py): parity (tiny models vs diffusers/transformers on the same
device, float32 and bf16), conv (the convolution paths per layer kind), inference (one-step SVD-XT
at 14x576x1024 in bf16, per stage, XLA vs cuDNN attention), train (the paper config's train step at
the largest micro-batch that fits: time, FLOP/s, MFU, memory). Each runs in its own process, killed
at its time budget: a section that fails, runs out of memory or out of time is recorded as such in
the JSON and the others still run. Writes OUT/gpu_check.json (every number, the goals met or not)
and OUT/gpu_check.log (every section's output); OUT is --out, else $OUT, else ./gpu_check_out.
Exit status 0 when every section ran, 1 otherwise.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

from sfv_jax.bench import report
from tools.gpu_check.common import PEAK_BF16_TFLOPS, SECTIONS, Recorder, is_oom, plan_for
from tools.gpu_check.summary import format_summary, goals

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
JSON_NAME, LOG_NAME = "gpu_check.json", "gpu_check.log"
PACKAGES = ("jax", "jaxlib", "jax-cuda13-plugin", "flax", "optax", "orbax-checkpoint", "ml-collections", "numpy",
            "torch", "diffusers", "transformers", "safetensors", "huggingface-hub")
# Share of the GPU's memory jax may take in the sections without torch (jax's default is 75%): the
# train section looks for the largest micro-batch that fits.
MEM_FRACTION = "0.92"
PARITY_XLA_FLAGS = "--xla_gpu_autotune_level=0"


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m tools.gpu_check", description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="tiny sizes, meant for the CPU (tests/test_gpu_check.py)")
    p.add_argument("--out", default=os.environ.get("OUT") or "gpu_check_out", help="folder for the JSON and the log")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--budget", action="append", default=[], metavar="SECTION=SECONDS",
                   help="a section's time budget (repeatable); defaults in tools/gpu_check/common.py")
    p.add_argument("--micro-batches", default=None, metavar="N,N,...",
                   help="train: per-device micro-batches to try, largest first (default: the plan's)")
    p.add_argument("--train-override", action="append", default=[], metavar="KEY=VALUE",
                   help="train: a config override on top of the plan's, e.g. model.attention=cudnn (repeatable)")
    p.add_argument("--child", choices=SECTIONS, help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--micro-batch", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown or not sections:
        p.error(f"--sections: unknown {unknown or 'empty list'}; choose from {','.join(SECTIONS)}")
    args.sections = sections
    budgets = dict(plan_for(args.dry_run).budgets)
    for item in args.budget:
        name, _, seconds = item.partition("=")
        try:
            value = float(seconds)
        except ValueError:
            value = -1.0
        if name not in SECTIONS or value <= 0:
            p.error(f"--budget {item!r}: use SECTION=SECONDS with SECTION in {','.join(SECTIONS)} and SECONDS > 0")
        budgets[name] = value
    args.budgets = budgets
    try:
        micro = [int(n) for n in args.micro_batches.split(",")] if args.micro_batches else None
    except ValueError:
        micro = [0]
    if micro is not None and (not micro or min(micro) < 1):
        p.error(f"--micro-batches {args.micro_batches!r}: use positive integers such as 4,2,1")
    args.micro_batches = micro or list(plan_for(args.dry_run).train_micro_batches)
    return args


def run_child(args) -> int:
    """One section in this process; its results go to args.result as they come."""
    from sfv_jax.compilation_cache import enable_compilation_cache
    enable_compilation_cache(None)
    rec = Recorder(args.result)
    try:
        rec.set("machine", report.machine())
        section = importlib.import_module(f"tools.gpu_check.{args.child}")
        extra = (args.micro_batch, args.train_override) if args.child == "train" else ()
        section.run(plan_for(args.dry_run), rec, *extra)
    except Exception as e:  # noqa: BLE001 - recorded for the driver; the traceback goes to the log
        traceback.print_exc()
        rec.set("error", f"{type(e).__name__}: {e}"[:4000])
        return 1
    rec.set("done", True)
    return 0


def run_section(name: str, budget: float, extra: list[str], args, log, workdir: str) -> dict:
    """Runs one section in a child process, killed at `budget` seconds; its status and results."""
    result_path = os.path.join(workdir, f"{name}-{time.monotonic_ns()}.json")
    cmd = [sys.executable, "-m", "tools.gpu_check", "--child", name, "--result", result_path, *extra]
    cmd += ["--dry-run"] if args.dry_run else []
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.setdefault("CUDA_VISIBLE_DEVICES", "0")  # one chip: the MFU peak and the micro-batch are per device
    if name != "parity":  # parity shares the GPU with torch: jax keeps its default share there
        env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", MEM_FRACTION)
    elif shutil.which("nvidia-smi"):  # parity's times are incidental: spare its many small kernels autotuning
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {PARITY_XLA_FLAGS}".strip()
    say(log, f"==== {name} {' '.join(extra)} (budget {budget:.0f} s)")
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, timeout=budget)
        status = "ok" if proc.returncode == 0 else "error"
        error = None if proc.returncode == 0 else f"exit code {proc.returncode}"
    except subprocess.TimeoutExpired:
        status, error = "timeout", f"killed at its budget of {budget:.1f} s"
    seconds = time.perf_counter() - start
    result = {}
    if os.path.isfile(result_path):
        with open(result_path) as f:
            result = json.load(f)
    if status == "ok" and not result.get("done"):
        status, error = "error", "exited without finishing"
    error = result.pop("error", None) or error
    say(log, f"==== {name} {' '.join(extra)}: {status} in {seconds:.1f} s" + (f" ({error[:300]})" if error else ""))
    return {"status": status, "seconds": round(seconds, 2), "budget_s": budget, "error": error, "result": result}


def run_train(budget: float, args, log, workdir: str) -> dict:
    """The train section at each micro-batch of the plan, largest first, until one fits in memory."""
    attempts = []
    section = {"status": "timeout", "error": "no time left for a try", "result": {}}
    deadline = time.perf_counter() + budget
    for micro_batch in args.micro_batches:
        remaining = deadline - time.perf_counter()
        if remaining < 5:
            break
        extra = ["--micro-batch", str(micro_batch)]
        extra += [a for kv in args.train_override for a in ("--train-override", kv)]
        section = run_section("train", remaining, extra, args, log, workdir)
        attempts.append({"micro_batch": micro_batch, "status": section["status"], "seconds": section["seconds"],
                         "error": section["error"], "out_of_memory": is_oom(section["error"])})
        if section["status"] == "ok" or not attempts[-1]["out_of_memory"]:
            break  # fitted, or failed for a reason a smaller micro-batch would not cure
    section["budget_s"] = budget
    section["seconds"] = round(sum(a["seconds"] for a in attempts), 2)
    section["result"]["attempts"] = attempts
    return section


def versions() -> dict[str, str | None]:
    """The installed versions the check ran with (the device's own jax; carried wheels where given)."""
    out = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def nvidia_smi() -> str | None:
    """The GPU, its memory, driver and clocks as nvidia-smi reads them; None without nvidia-smi."""
    query = "name,memory.total,driver_version,clocks.sm,clocks.max.sm,clocks.mem,temperature.gpu,power.draw"
    try:
        proc = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv"], capture_output=True,
                              text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (proc.stdout or proc.stderr).strip()


def say(log, message: str) -> None:
    line = f"[{time.strftime('%H:%M:%S')}] {message}"
    print(line, flush=True)
    log.write(line + "\n")
    log.flush()


def drive(args) -> int:
    os.makedirs(args.out, exist_ok=True)
    json_path, log_path = os.path.join(args.out, JSON_NAME), os.path.join(args.out, LOG_NAME)
    payload = {"check": "sfv-jax gpu check", "dry_run": args.dry_run,
               "started_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "versions": versions(), "nvidia_smi": nvidia_smi(), "peak_bf16_tflops_table": PEAK_BF16_TFLOPS,
               "budgets_s": args.budgets, "sections": {}}
    start = time.perf_counter()
    with open(log_path, "w") as log, tempfile.TemporaryDirectory(prefix="sfv_gpu_check_") as workdir:
        say(log, f"sfv-jax gpu check{' (dry run)' if args.dry_run else ''}: sections {', '.join(args.sections)}; "
                 f"versions {payload['versions']}")
        unused = 0.0  # seconds earlier sections left of their budgets: the next section may use them
        for name in args.sections:
            budget = args.budgets[name] + unused
            section = (run_train(budget, args, log, workdir) if name == "train"
                       else run_section(name, budget, [], args, log, workdir))
            unused = max(0.0, budget - section["seconds"])
            payload["sections"][name] = section
            report.write_json(json_path, payload)
        payload["goals"] = goals(payload)
        payload["total_s"] = round(time.perf_counter() - start, 1)
        report.write_json(json_path, payload)
        summary = format_summary(payload)
        say(log, f"done in {payload['total_s']} s; {json_path}, {log_path}\n{summary}")
    return 0 if all(s["status"] == "ok" for s in payload["sections"].values()) else 1


def main(argv=None) -> int:
    args = parse_args(argv)
    return run_child(args) if args.child else drive(args)


if __name__ == "__main__":
    sys.exit(main())
