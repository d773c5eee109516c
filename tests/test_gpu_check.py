"""tools/gpu_check: the GPU check's dry run on the CPU (every section measures, parity bounds hold, goals are
judged), its guard (a section past its budget is recorded and the others still run), the train section's
micro-batch fallback, and its small parts (peak table, OOM wording, attention switch, bad arguments)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.test_bench import FAST_COMPILE
from tools.gpu_check import __main__ as gpu_check
from tools.gpu_check.common import SECTIONS, is_oom, peak_bf16_tflops
from tools.gpu_check.summary import format_summary, goals

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = ("image_encoder", "vae_encode", "unet", "vae_decode")


def run_check(out, *argv) -> tuple[subprocess.CompletedProcess, dict]:
    env = {**os.environ, "XLA_FLAGS": FAST_COMPILE, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
    proc = subprocess.run([sys.executable, "-m", "tools.gpu_check", "--dry-run", "--out", str(out), *argv],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    with open(out / "gpu_check.json") as f:
        return proc, json.load(f)


def test_dry_run_measures_every_section(tmp_path):
    """Catches a section that errors or records no numbers, parity out of bounds, goals judged on a dry run."""
    proc, payload = run_check(tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = (tmp_path / "gpu_check.log").read_text()
    assert all(f"==== {name}" in log for name in SECTIONS)
    assert "| section | status | s / budget | numbers |" in proc.stdout
    assert "| goal | value | target | met |" in proc.stdout
    sections = payload["sections"]
    assert list(sections) == list(SECTIONS)
    for name, section in sections.items():
        assert section["status"] == "ok" and section["error"] is None, (name, section)
        assert 0 < section["seconds"] <= section["budget_s"]
        assert section["result"]["done"] and section["result"]["machine"]["backend"] == "cpu"

    parity = sections["parity"]["result"]
    assert set(parity["components"]) == set(STAGES)
    for name, entry in parity["components"].items():
        assert 0 < entry["rel_l2_float32"] <= 1e-4, (name, entry)
        assert 0 < entry["rel_l2_bf16_vs_float32"] <= 2e-2, (name, entry)  # bf16 differs, within the bound
        assert entry["ok"] and entry["jax_float32_s"] > 0 and entry["jax_bf16_s"] > 0
    assert parity["components"]["unet"]["shape"] == [1, 3, 8, 12, 4]  # a two-block VAE: latent = image / 2

    conv = sections["conv"]["result"]
    assert set(conv["kinds"]) == {"spatial 3x3", "temporal 3x1x1", "upsample 2x + 3x3"}
    for kind, rows in conv["kinds"].items():
        for row in rows:
            assert len(row["seconds"]) >= 2 and all(s > 0 for s in row["seconds"].values()), (kind, row)
            assert row["picked"] in row["seconds"] and row["picked_over_fastest"] >= 1
    assert set(conv["summary"]) == set(conv["kinds"])

    inference = sections["inference"]["result"]
    xla = inference["unet_attention"]["xla"]
    assert inference["best_attention"] == "xla" and "skipped" in inference["unet_attention"]["cudnn"]
    assert xla["end_to_end_s"] > 0 and xla["unet_s"] > 0
    for stage in STAGES:
        assert xla["stages"][stage]["steady_s"] > 0 and xla["stages"][stage]["compile_s"] > 0, stage
        assert xla["stages"][stage]["flops"] > 0

    train = sections["train"]["result"]
    assert train["attempts"] == [{"micro_batch": 1, "status": "ok", "seconds": sections["train"]["seconds"],
                                  "error": None, "out_of_memory": False}]
    step = train["result"]
    assert step["step_s"] > 0 and step["flops_per_step"] > 0 and step["flops_per_s"] > 0
    assert step["mfu"] is None  # no bf16 peak for a CPU in the table

    goals = {g["goal"].split(",")[0]: g for g in payload["goals"]}
    assert len(goals) == 5 and all(g["value"] is not None or "MFU" in name for name, g in goals.items())
    speed = [g for g in payload["goals"] if g["target"].endswith("s") or "MFU" in g["goal"]]
    assert len(speed) == 3 and all(g["met"] is None for g in speed)  # tiny sizes judge no speed goal
    assert [g["met"] for g in payload["goals"] if g not in speed] == [True, True]


def test_a_section_past_its_budget_is_recorded_and_the_rest_run(tmp_path):
    """Catches a driver that waits for a stuck section, loses it from the JSON, or stops at the first failure."""
    proc, payload = run_check(tmp_path, "--sections", "parity,conv", "--budget", "parity=0.5")
    assert proc.returncode == 1
    parity, conv = payload["sections"]["parity"], payload["sections"]["conv"]
    assert parity["status"] == "timeout" and "budget of 0.5 s" in parity["error"] and parity["seconds"] < 30
    assert conv["status"] == "ok" and conv["result"]["summary"]
    assert payload["goals"][3]["met"] is None  # parity measured nothing: not judged


def test_train_tries_smaller_micro_batches_only_after_running_out_of_memory(monkeypatch, tmp_path):
    """Catches a train section that gives up after an OOM, or retries after an error a smaller batch won't fix."""
    outcomes = {}

    def fake_section(name, budget, extra, args, log, workdir):
        status, error = outcomes[int(extra[1])]
        return {"status": status, "seconds": 1.0, "budget_s": budget, "error": error, "result": {}}

    monkeypatch.setattr(gpu_check, "run_section", fake_section)
    args = gpu_check.parse_args(["--micro-batches", "4,2,1", "--out", str(tmp_path)])
    oom = "XlaRuntimeError: RESOURCE_EXHAUSTED: Out of memory while trying to allocate 92.5GiB."
    outcomes.update({4: ("error", oom), 2: ("ok", None), 1: ("ok", None)})
    section = gpu_check.run_train(100.0, args, None, str(tmp_path))
    assert [(a["micro_batch"], a["out_of_memory"]) for a in section["result"]["attempts"]] == [(4, True), (2, False)]
    assert section["status"] == "ok" and section["seconds"] == 2.0
    outcomes.update({4: ("error", "TypeError: bad argument"), 2: ("ok", None)})
    section = gpu_check.run_train(100.0, args, None, str(tmp_path))
    assert [a["micro_batch"] for a in section["result"]["attempts"]] == [4] and section["status"] == "error"
    section = gpu_check.run_train(2.0, args, None, str(tmp_path))  # too little time to start a try
    assert section["status"] == "timeout" and section["result"]["attempts"] == []


def test_each_section_gets_its_own_process_settings(monkeypatch, tmp_path):
    """Catches autotuning switched off for a timed section, or jax's memory share raised where torch shares the GPU."""
    seen = {}

    def fake_run(cmd, env, **kwargs):
        seen[cmd[cmd.index("--child") + 1]] = (cmd, env)
        return subprocess.CompletedProcess(cmd, 1)

    monkeypatch.setattr(gpu_check.shutil, "which", lambda name: "/usr/bin/" + name)  # as on a GPU machine
    monkeypatch.setattr(gpu_check.subprocess, "run", fake_run)
    monkeypatch.delenv("XLA_PYTHON_CLIENT_MEM_FRACTION", raising=False)
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x")
    args = gpu_check.parse_args(["--dry-run", "--out", str(tmp_path)])
    with open(tmp_path / "log", "w") as log:
        for name in SECTIONS:
            section = gpu_check.run_section(name, 10.0, [], args, log, str(tmp_path))
            assert section["status"] == "error" and section["error"] == "exit code 1"
    for name, (cmd, env) in seen.items():
        assert cmd[-1] == "--dry-run" and env["CUDA_VISIBLE_DEVICES"] == "0" and env["PYTHONUNBUFFERED"] == "1"
        assert env["XLA_FLAGS"].startswith("--xla_dump_to=/tmp/x")
        assert ("autotune_level=0" in env["XLA_FLAGS"]) == (name == "parity"), name
        assert ("XLA_PYTHON_CLIENT_MEM_FRACTION" in env) == (name != "parity"), name


def test_goals_are_judged_only_on_finished_full_size_sections():
    """Catches a goal called met from a section cut short (parity of the UNet alone), or a target compared the
    wrong way round."""
    def section(status, result):
        return {"status": status, "seconds": 1.0, "budget_s": 9.0, "error": None, "result": result}

    payload = {"dry_run": False, "sections": {
        "parity": section("timeout", {"components": {"unet": {"rel_l2_float32": 1e-6,
                                                              "rel_l2_bf16_vs_float32": 1e-2}}}),
        "inference": section("ok", {"best": {"end_to_end_s": 0.5, "unet_s": 0.09}}),
        "train": section("ok", {"result": {"mfu": 0.41}})}}
    rows = goals(payload)
    assert [g["met"] for g in rows] == [False, True, True, None, None]
    assert [g["value"] for g in rows] == [0.5, 0.09, 0.41, 1e-6, 1e-2]
    assert rows[3]["note"] == "section parity: timeout" and "note" not in rows[0]
    assert "- (section parity: timeout)" in format_summary({**payload, "goals": rows})


def test_peak_table_and_out_of_memory_wording():
    """Catches an MFU against the wrong chip's peak (or a made-up one for a CPU) and a missed OOM."""
    assert peak_bf16_tflops("NVIDIA H200") == 989.0
    assert peak_bf16_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert peak_bf16_tflops("cpu") is None
    assert is_oom("XlaRuntimeError: RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.2GiB")
    assert is_oom("torch.OutOfMemoryError: CUDA out of memory.")
    assert not is_oom("ValueError: bad shape") and not is_oom(None)


def test_set_attention_switches_every_attention_of_the_unet():
    """Catches an attention switch that misses layers, or one the pipeline's compiled programs would not see."""
    from flax import nnx
    from sfv_jax.config import load_config
    from sfv_jax.models.nnx_state import AbstractModel
    from sfv_jax.models import ModelOptions, UNetConfig
    from sfv_jax.models.attention import Attention
    from sfv_jax.models.unet import UNetSpatioTemporalConditionModel
    from tools.gpu_check.inference import set_attention

    config = UNetConfig.from_dict(load_config("configs/tiny.py").unet.to_dict())
    model = AbstractModel(lambda rngs: UNetSpatioTemporalConditionModel(config, ModelOptions(), rngs=rngs))
    unet = nnx.merge(model.graphdef, model.params_state, model.rest_state)
    before = nnx.graphdef(unet)
    set_attention(unet, "cudnn")
    kinds = [node.implementation for _, node in nnx.iter_graph(unet) if isinstance(node, Attention)]
    assert len(kinds) > 10 and set(kinds) == {"cudnn"}
    assert nnx.graphdef(unet) != before


@pytest.mark.parametrize("argv,message", [
    (["--sections", "parity,speed"], "unknown ['speed']"),
    (["--budget", "train=-3"], "SECONDS > 0"),
    (["--budget", "inference"], "SECTION=SECONDS"),
    (["--micro-batches", "2,0"], "positive integers"),
])
def test_bad_arguments_are_named(capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        gpu_check.parse_args(argv)
    assert info.value.code == 2 and message in capsys.readouterr().err
