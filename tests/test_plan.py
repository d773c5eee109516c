"""`sfv-jax plan`: the real train step (and the one-step sampler) compiled ahead of time for a topology.

The default suite compiles the micro config's train step once for a TPU slice (v5p:2x2x2: 8 chips on 2 hosts,
compile-only devices from libtpu; ~115 s of one core) and checks it against the abstract state; a cpu:8 plan (8 fake
host devices in a subprocess, started first so it overlaps) plans the one-step sampler, which compiles in seconds.
The same train step compiled for cpu:8, to compare FLOPs with the TPU program, is a second ~60-160 s compile: `slow`.
The TPU tests skip only where libtpu is not installed. TPU plans run in this process (libtpu loads once).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from sfv_jax import cli
from sfv_jax.plan.topology import INSTALL_HINT, libtpu_available

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "tiny_sfv.py") + ":micro"
# 8 devices as data 2 x fsdp 2 x tensor 2: parameters really split (fsdp, tensor) and the batch of 8 clips as
# 2 micro-batches of 4 splits over the 4 batch devices.
OVERRIDES = ["--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2",
             "--config.global_batch_size=8", "--config.grad_accum_steps=2"]
FLOPS_TOLERANCE = 0.05  # TPU vs CPU programs of one step: same math, different fusions and conv paths

needs_libtpu = pytest.mark.skipif(not libtpu_available(), reason=f"libtpu is not installed: {INSTALL_HINT}")


def plan_in_process(tmp_path, *args) -> dict:
    out = tmp_path / "plan.json"
    assert cli.main(["plan", "--config", CONFIG, *args, "--json", str(out)]) == 0
    return json.loads(out.read_text())


def start_cpu8(folder, *args) -> subprocess.Popen:
    """`sfv-jax plan --topology cpu:8 ARGS` in a subprocess (JAX fixes the device count at import), with its own
    compilation cache under `folder`."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen([sys.executable, "-m", "sfv_jax", "plan", "--config", CONFIG, "--topology", "cpu:8",
                             *args, "--json", str(folder / "plan.json"), "--compilation-cache", str(folder / "cache")],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)


def finish(process: subprocess.Popen, folder) -> dict:
    stdout, stderr = process.communicate(timeout=900)
    assert process.returncode == 0, stderr[-3000:]
    return {"json": json.loads((folder / "plan.json").read_text()), "stdout": stdout, "cache": folder / "cache"}


@pytest.fixture(scope="module")
def cpu_sample_run(tmp_path_factory):
    """The cpu:8 sampler plan, started before the TPU train plan compiles so that the two overlap."""
    folder = tmp_path_factory.mktemp("cpu_sample")
    process = start_cpu8(folder, "--program", "sample", "--height", "64", "--width", "64", "--num-frames", "2")
    yield process, folder
    if process.poll() is None:
        process.kill()
        process.communicate()


@pytest.fixture(scope="module")
def tpu_plan(tmp_path_factory, cpu_sample_run):
    return plan_in_process(tmp_path_factory.mktemp("tpu"), "--topology", "v5p:2x2x2", *OVERRIDES)


@pytest.fixture(scope="module")
def cpu_sample_plan(cpu_sample_run):
    return finish(*cpu_sample_run)


@pytest.fixture(scope="module")
def cpu_train_plan(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cpu_train")
    return finish(start_cpu8(folder, *OVERRIDES), folder)


def independent_state_bytes(plan: dict) -> dict[str, int]:
    """Per-device bytes of the micro config's train state by group, from parallel.sharding's spec arithmetic."""
    from sfv_jax.config import load_config, split_overrides
    from sfv_jax.parallel.sharding import per_device_bytes, state_specs
    from sfv_jax.train.objectives import make_objective
    config = load_config(CONFIG, split_overrides(OVERRIDES))
    state = make_objective(config, ("data", "fsdp")).abstract_state()
    specs = state_specs(state, config.sharding, plan["mesh"])
    per_field = lambda *fields: sum(per_device_bytes(getattr(state, f), getattr(specs, f), plan["mesh"])
                                    for f in fields)
    from sfv_jax.train.state import tree_bytes
    return {"params": per_field("g_params", "g_ema", "d_heads"), "trained_params": per_field("g_params", "d_heads"),
            "optimizer": per_field("g_opt", "d_opt"),
            "frozen": per_field("backbone", "encoders"), "unsharded_params": tree_bytes(
                (state.g_params, state.g_ema, state.d_heads))}


def check_memory(plan: dict) -> None:
    """The step's two programs (config.step_programs "split"): the gradients read the state and keep it, the update
    takes it donated and returns it in place; each total is argument + output - alias + temporary; the peak is the
    larger program's, as they run one after the other."""
    gradients, apply = plan["programs"]
    assert [gradients["name"], apply["name"]] == ["train_step.gradients", "train_step.apply"]
    for program in (gradients, apply):
        for key in ("argument_bytes", "output_bytes", "temp_bytes"):
            assert program[key] > 0, (program["name"], key)
        assert program["total_bytes"] == (program["argument_bytes"] + program["output_bytes"]
                                          - program["alias_bytes"] + program["temp_bytes"])
    assert plan["peak_bytes"] == max(gradients["total_bytes"], apply["total_bytes"])
    # OVERRIDES' two micro-batches run in a scan whose body XLA counts once: the gradients run it twice a step
    assert gradients["runs_per_step"] == 2 and apply["runs_per_step"] == 1
    assert plan["flops"] == pytest.approx(2 * gradients["flops"] + apply["flops"])
    state = sum(plan["state_bytes"].values())
    assert gradients["argument_bytes"] >= state and gradients["alias_bytes"] == 0, (gradients, state)
    assert apply["argument_bytes"] >= state and apply["alias_bytes"] >= 0.9 * state, (apply, state)
    # what crosses between the programs: a gradient for each trained leaf (G's params and D's heads)
    trained = independent_state_bytes(plan)["trained_params"]
    assert gradients["output_bytes"] >= 0.9 * trained, (gradients, trained)


@needs_libtpu
def test_tpu_plan_memory_and_state_bytes(tpu_plan, measured):
    """Catches: a total that is not argument + output - alias + temporary, a peak that is not the larger of the
    step's two programs, FLOPs per step that count the micro-batch scan's body once or leave out the update, an
    update compiled without donation (no alias), per-device parameter / optimiser / frozen bytes that ignore the
    sharding (global sizes) or put a field in the wrong group, a multi-host slice seen as one host, headroom or step
    time not from the chip's facts."""
    assert tpu_plan["platform"] == "tpu" and tpu_plan["devices"] == 8 and tpu_plan["hosts"] == 2
    assert tpu_plan["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2}
    check_memory(tpu_plan)
    expected = independent_state_bytes(tpu_plan)
    for group in ("params", "optimizer", "frozen"):
        assert tpu_plan["state_bytes"][group] == expected[group], group
    assert tpu_plan["state_bytes"]["params"] < expected["unsharded_params"]  # really split over fsdp / tensor
    chip = tpu_plan["chip"]
    assert chip["name"] == "v5p" and chip["hbm_bytes"] == 95 * 2 ** 30
    assert tpu_plan["headroom_bytes"] == chip["hbm_bytes"] - tpu_plan["peak_bytes"]
    assert tpu_plan["step_seconds_at_40pct_mfu"] == pytest.approx(tpu_plan["flops"] / (chip["peak_bf16_flops"] * 0.4))
    measured(f"v5p:2x2x2 micro train step: {tpu_plan['peak_bytes'] / 2**20:.1f} MiB/device peak, "
             f"{tpu_plan['flops']:.4g} FLOPs/device, lowered in {tpu_plan['lower_s']:.0f} s, XLA compile "
             + ", ".join(f"{p['name']} {p['compile_s']:.0f} s" for p in tpu_plan["programs"]))


@pytest.mark.slow
@needs_libtpu
def test_tpu_flops_match_the_cpu_compiled_step(tpu_plan, cpu_train_plan, measured):
    """Catches: FLOPs of another program than the CPU's step (e.g. the encode step, a forward pass only, a program
    without the R1 or accumulation loop), FLOPs summed over devices on one side only, a cost analysis ignored; and
    a cpu:N train plan whose memory or state bytes are inconsistent."""
    cpu_plan = cpu_train_plan["json"]
    assert cpu_plan["platform"] == "cpu" and cpu_plan["devices"] == 8
    assert cpu_plan["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2}
    check_memory(cpu_plan)
    assert cpu_plan["state_bytes"]["params"] == independent_state_bytes(cpu_plan)["params"]
    tpu, cpu = tpu_plan["flops"], cpu_plan["flops"]
    assert tpu > 0 and cpu > 0
    difference = abs(tpu - cpu) / cpu
    measured(f"train-step FLOPs per device: v5p:2x2x2 {tpu:.4g}, cpu:8 {cpu:.4g}, difference {difference:.1%} "
             f"(bound {FLOPS_TOLERANCE:.0%}); cpu:8 {cpu_plan['peak_bytes'] / 2**20:.1f} MiB/device peak, XLA "
             f"compile {sum(p['compile_s'] for p in cpu_plan['programs']):.0f} s")
    assert difference < FLOPS_TOLERANCE


def test_cpu8_plan_and_its_compilation_cache(cpu_sample_plan, measured):
    """Catches: cpu:N not using N host devices, the clip batch not split one per device, a CPU plan that invents HBM
    or a step time, a report without the table, --compilation-cache ignored (nothing written to DIR)."""
    plan = cpu_sample_plan["json"]
    assert plan["platform"] == "cpu" and plan["devices"] == 8 and plan["hosts"] == 1
    assert plan["mesh"] == {"data": 8} and plan["shapes"]["clips"] == 8
    for p in plan["programs"]:
        assert p["total_bytes"] == p["argument_bytes"] + p["output_bytes"] - p["alias_bytes"] + p["temp_bytes"] > 0
        assert p["flops"] > 0
    assert plan["chip"]["hbm_bytes"] is None and plan["headroom_bytes"] is None
    assert plan["step_seconds_at_40pct_mfu"] is None
    for line in ("target: cpu:8 (cpu, 8 device(s), 1 host(s)); mesh data=8", "[unet]", "[vae_decode]", "temporary",
                 "FLOPs per step", "HBM (cpu)"):
        assert line in cpu_sample_plan["stdout"], line
    assert any(files for _, _, files in os.walk(cpu_sample_plan["cache"]))
    measured(f"cpu:8 micro one-step sample (2x64x64 per device): {plan['peak_bytes'] / 2**20:.1f} MiB/device peak, "
             f"XLA compile {sum(p['compile_s'] for p in plan['programs']):.1f} s")


@pytest.mark.parametrize("topology,clips", [
    ("cpu:1", 1),
    # On TPU the decoder alone compiles for ~27 s: outside the default suite's budget.
    pytest.param("v5p:2x2x1", 4, marks=[pytest.mark.slow, needs_libtpu]),
])
def test_sample_program(topology, clips, tmp_path, measured):
    """Catches: --program sample compiling anything but the pipeline's UNet and decoder calls, --height/--width/
    --num-frames ignored, the clip batch not one per device, weights sharded instead of replicated (arguments
    smaller than the UNet on every device), FLOPs or peak not combined over the two programs."""
    plan = plan_in_process(tmp_path, "--topology", topology, "--program", "sample", "--height", "64",
                           "--width", "96", "--num-frames", "2")
    assert [p["name"] for p in plan["programs"]] == ["unet", "vae_decode"]
    assert plan["shapes"] == {"clips": clips, "frames": 2, "height": 64, "width": 96}
    assert plan["state_bytes"] is None and plan["mesh"] == {"data": clips}
    from sfv_jax.config import load_config
    from sfv_jax.train.state import SFVModels, tree_bytes
    unet_bytes = tree_bytes(SFVModels(load_config(CONFIG)).abstract_g)
    unet, decode = plan["programs"]
    # The whole UNet on every device (jit drops the few parameters the one-step call never reads: 2.5% on micro).
    assert unet["argument_bytes"] >= 0.9 * unet_bytes, (unet["argument_bytes"], unet_bytes)
    assert plan["flops"] == pytest.approx(unet["flops"] + decode["flops"])
    assert plan["peak_bytes"] == max(unet["total_bytes"], decode["total_bytes"])
    # One 64x96 clip of 2 frames per device: the decoder's output alone is 2 x 64 x 96 x 3 float32.
    assert decode["output_bytes"] >= 2 * 64 * 96 * 3 * 4
    measured(f"{topology} micro one-step sample (2x64x96 per device): {plan['peak_bytes'] / 2**20:.1f} MiB/device "
             f"peak, {plan['flops']:.4g} FLOPs/device, compiled in {sum(p['compile_s'] for p in plan['programs']):.1f} "
             f"s + {plan['lower_s']:.1f} s lowering")


BAD_INPUTS = [
    (["--topology", "v9:2x2"], "unknown topology 'v9:2x2'"),
    (["--topology", "tpu"], "unknown topology 'tpu'"),
    (["--topology", "cpu:8"], "XLA_FLAGS=--xla_force_host_platform_device_count=8"),
    (["--topology", "v5p:2x2x1", "--config.mesh.data=3"], "needs 3 devices, 4 are available"),
    (["--topology", "v5p:2x2x1", "--config.global_batch_size=6"], "does not split over the 4 devices"),
    (["--topology", "v5p:3x3x3"], "not divisible"),
    (["--topology", "v5p:2x2x1", "--config.nope=1"], "unknown config key 'nope'"),
]


@pytest.mark.parametrize("args,message", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(args, message, tmp_path, capfd):
    """Catches: a traceback (or libtpu's setup warnings on file descriptor 2) instead of one line, an exit code other
    than 2, a bad topology, mesh or batch found only after compiling, a --json file written by a failed plan."""
    if "v5p" in args[1] and not libtpu_available():
        pytest.skip(f"libtpu is not installed: {INSTALL_HINT}")
    out = tmp_path / "plan.json"
    code = cli.main(["plan", "--config", CONFIG, *args, "--json", str(out)])
    err = capfd.readouterr().err.strip().splitlines()  # file descriptor 2: libtpu's C++ warnings would show here
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert err[0].startswith("sfv-jax plan: error: ")
    assert not out.exists()


def test_missing_libtpu_says_how_to_install_it(monkeypatch, tmp_path, capsys):
    """Catches: a TPU topology without libtpu failing with JAX's backend error instead of the install command."""
    from sfv_jax.plan import topology
    monkeypatch.setattr(topology, "libtpu_available", lambda: False)
    assert cli.main(["plan", "--config", CONFIG, "--topology", "v5e:2x4", "--json", str(tmp_path / "p.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and INSTALL_HINT in err[0], err


def test_convolutions_are_traced_for_the_target_platform():
    """Catches: plan tracing a TPU program with the host CPU's convolution rules (im2col matmuls, folded temporal
    convs), or a target that outlives its block."""
    from sfv_jax.models.conv_paths import conv_method, current_platform, target_platform
    bottleneck = ((2, 2), (3, 3), (1, 1), ((1, 1), (1, 1)))  # the CPU runs it as a matmul
    assert current_platform() == "cpu" and conv_method(*bottleneck) == "matmul"
    with target_platform("tpu"):
        assert current_platform() == "tpu" and conv_method(*bottleneck) == "direct"
        assert conv_method((3, 16, 16), (3, 1, 1), (1, 1, 1), ((1, 1), (0, 0), (0, 0))) == "direct"
    assert conv_method(*bottleneck) == "matmul"
