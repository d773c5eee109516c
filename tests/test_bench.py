"""`sfv-jax bench`: each subcommand at micro size (1 timed run), its table and JSON; the statistics helpers;
the cost-analysis loop rule the FLOP counts rely on; bad arguments. No timing assertions."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sfv_jax.bench import report
from sfv_jax.bench.profile import KINDS, hlo_op_kinds, profile_jax, torch_op_kind
from sfv_jax.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Attention-free one-block UNet, two-block VAE, one-layer CLIP: every stage, in the fewest XLA kernels.
MICRO_PIPELINE = ["unet.layers_per_block=1", "unet.block_out_channels=(32,)",
                  "unet.down_block_types=('DownBlockSpatioTemporal',)", "unet.up_block_types=('UpBlockSpatioTemporal',)",
                  "unet.num_attention_heads=(2,)", "vae.block_out_channels=(32,32)",
                  "vae.down_block_types=('DownEncoderBlock2D','DownEncoderBlock2D')", "image_encoder.num_hidden_layers=1"]
# The two-block VAE downsamples 2x, not SVD's 8x: the train bench must size its latents from the config.
MICRO_TRAIN = MICRO_PIPELINE[:7] + ["sfv.r1_mode=off"]
# The subprocesses compile with LLVM's cheap settings: these tests check fields, not speed.
FAST_COMPILE = ("--xla_cpu_use_fusion_emitters=false --xla_backend_optimization_level=0 "
                "--xla_llvm_disable_expensive_passes=true --xla_cpu_parallel_codegen_split_count=1")


def _overrides(keys):
    return [arg for key in keys for arg in ("--override", key)]


def run_bench(tmp_path, *argv) -> tuple[str, dict]:
    out = tmp_path / "bench.json"
    env = {**os.environ, "XLA_FLAGS": FAST_COMPILE, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "sfv_jax", "bench", *argv, "--repeats", "1", "--json", str(out)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout, json.loads(out.read_text())


def _sane(stats):
    assert stats["n"] >= 1 and 0 < stats["min"] <= stats["median"] <= stats["max"] < 600, stats


# ---------------------------------------------------------------- subcommands

def test_inference_one_step_vs_three_steps_with_cfg(tmp_path):
    stdout, payload = run_bench(tmp_path, "inference", "--config", "configs/tiny.py", *_overrides(MICRO_PIPELINE),
                                "--height", "24", "--width", "32", "--num-frames", "3", "--steps", "1,3")
    assert "| steps | CFG | stage | compile s | steady s | share | FLOPs | FLOP/s |" in stdout
    assert "UNet stage, 1 step vs 3 steps with CFG" in stdout and "of the end-to-end time" in stdout
    assert payload["latent"] == [3, 12, 16]  # a two-block VAE halves once
    one, many = payload["results"]
    assert (one["steps"], one["cfg"], one["unet_evaluations"]) == (1, False, 1)
    assert (many["steps"], many["cfg"], many["unet_evaluations"]) == (3, True, 6)
    for r in (one, many):
        for key in ("image_encoder", "vae_encode", "unet", "vae_decode", "total"):
            _sane(r["seconds"][key])
            assert r["flops"][key] > 0
        assert r["compile_s"]["unet"] > 0 and r["first_call_s"] > 0
    assert many["compile_s"]["vae_decode"] == 0  # the same program as the one-step call's
    s = payload["summary"]
    # 6 evaluations at batch 2 (CFG) vs 1 at batch 1: about 6x the FLOPs (batch-independent parts differ)
    assert 5 < s["unet_flop_ratio"] < 7
    assert s["flop_bound"] > 1 and s["end_to_end_speedup"] > 0 and s["unet_speedup"] > 0
    assert math.isclose(s["fraction_of_flop_bound"], s["end_to_end_speedup"] / s["flop_bound"])
    assert 0 < s["one_step_decoder_share"] < 1
    assert payload["machine"]["logical_cpus"] >= 1 and payload["peak_rss_bytes"] > 0


def test_vs_torch_same_weights_same_answer(tmp_path):
    stdout, payload = run_bench(tmp_path, "vs-torch", "--config", "configs/tiny.py", *_overrides(MICRO_PIPELINE),
                                "--height", "24", "--width", "32", "--num-frames", "3", "--profile")
    assert "| component |" in stdout and "sfv-jax / diffusers" in stdout and "rel L2 diff" in stdout
    assert "profile of one unet call" in stdout and "| op kind | diffusers s | sfv-jax s |" in stdout
    results = payload["results"]
    assert list(results) == ["unet", "vae_decode", "vae_encode", "image_encoder"]
    assert results["unet"]["shape"] == [1, 3, 12, 16, 4] and results["vae_decode"]["shape"] == [3, 24, 32, 3]
    for name, r in results.items():
        _sane(r["torch"]["seconds"])
        _sane(r["jax"]["seconds"])
        assert r["ratio"] == pytest.approx(r["jax"]["seconds"]["median"] / r["torch"]["seconds"]["median"])
        assert r["jax"]["flops"] > 0
        assert r["rel_l2"] <= 1e-4, (name, r["rel_l2"])  # float32 port bound (tests/test_*_parity)
        for side in ("torch", "jax"):
            profile = r[side]["profile"]
            assert set(profile["by_kind_s"]) == set(KINDS) and profile["op_s"] > 0 and profile["top_ops"]
    # The UNet's work is convolutions and matmuls in both frameworks, and the profiles say so.
    for side in ("torch", "jax"):
        kinds = results["unet"][side]["profile"]["by_kind_s"]
        assert kinds["convolution"] + kinds["matmul"] > 0
    assert payload["machine"]["torch_threads"] == os.cpu_count()


@pytest.mark.parametrize("programs", ["split", "fused"])
def test_train_step(tmp_path, programs):
    """The train bench's fields at micro size, with a VAE that downsamples 2x, for the step as two programs and as
    one. Catches a wrong FLOP or MFU sum (split: the two programs' FLOPs not added), a peak that is not the larger
    program's, a state not donated, and latents sized for SVD's 8x VAE whatever the config's (32x32 clips gave 4x4
    latents)."""
    stdout, payload = run_bench(tmp_path, "train", "--config", "configs/tiny_sfv.py", *_overrides(MICRO_TRAIN),
                                "--override", f"step_programs={programs}", "--batch", "2", "--grad-accum", "1",
                                "--num-frames", "2", "--height", "32", "--width", "32", "--peak-tflops", "0.5")
    assert "| measure | value |" in stdout and "MFU" in stdout
    r = payload["result"]
    _sane(r["step_seconds"])
    assert r["flops_per_step"] > 0 and r["flops_per_step"] == r["program_flops"]  # one micro-batch: exact
    assert r["flops_per_step"] == pytest.approx(sum(p["flops"] for p in r["programs"]))
    assert r["clips_per_s"] == pytest.approx(2 / r["step_seconds"]["median"])
    assert r["mfu"] == pytest.approx(r["flops_per_s"] / 0.5e12)
    mem = r["memory"]
    assert mem["estimated_peak_bytes"] == max(p["memory"]["estimated_peak_bytes"] for p in r["programs"])
    assert mem["estimated_peak_bytes"] >= mem["argument_size_in_bytes"] > 0
    assert [p["name"] for p in r["programs"]] == (["gradients", "apply"] if programs == "split" else ["train_step"])
    assert r["programs"][-1]["memory"]["alias_size_in_bytes"] > 0  # the state is donated to the update
    assert payload["config"]["global_batch_size"] == 2 and payload["config"]["latent"] == [16, 16]
    assert all(math.isfinite(v) for v in r["final_metrics"].values())


# ---------------------------------------------------------------- helpers and rules

def test_cost_analysis_counts_a_loop_body_once():
    """The FLOP counts multiply loop programs by their trip count; this is the XLA behaviour they rely on."""
    def loop(x, n):
        return jax.lax.fori_loop(0, n, lambda i, x: jnp.tanh(x @ x), x)
    x = jnp.ones((64, 64), jnp.float32)
    from sfv_jax.bench.inference import flops_of
    one_body = flops_of(jax.jit(lambda x: jnp.tanh(x @ x)).lower(x).compile())
    for n in (1, 5):
        assert flops_of(jax.jit(loop).lower(x, jnp.int32(n)).compile()) == pytest.approx(one_body, rel=0.05)
    assert one_body >= 2 * 64 ** 3


def test_profile_kinds_of_xla_ops_and_torch_ops():
    w, m = jnp.ones((3, 3, 8, 8)), jnp.ones((8, 4))

    def f(x):
        y = jax.nn.silu(jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
        z = y @ m
        return z - z.mean(axis=(1, 2), keepdims=True)
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 8))
    compiled = jax.jit(f).lower(x).compile()
    kinds = hlo_op_kinds(compiled.as_text())
    assert {"convolution", "matmul", "reduction"} <= set(kinds.values()), kinds
    profile = profile_jax(lambda: compiled(x), compiled.as_text())
    assert profile["op_s"] > 0 and profile["by_kind_s"]["convolution"] > 0, profile
    assert profile["wall_s"] > 0 and all(o["kind"] in KINDS for o in profile["top_ops"])
    assert [torch_op_kind(n) for n in ("aten::mkldnn_convolution", "aten::addmm", "aten::native_group_norm",
                                       "aten::silu", "aten::copy_", "aten::foo")] == \
        ["convolution", "matmul", "reduction", "elementwise", "layout", "other"]


def test_summary_table_and_json(tmp_path):
    stats = report.summarize([3.0, 1.0, 2.0, 10.0, 2.5])
    assert stats == {"median": 2.5, "min": 1.0, "max": 10.0, "n": 5}
    assert report.fmt_seconds(stats) == "2.5 (1.0-10.0)"
    assert report.fmt_number(1.5e12) == "1.5 T" and report.fmt_number(None) == "-"
    table = report.markdown_table(["a", "b"], [[1, "x"]])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 1 | x |"]
    assert "not for publication" in report.repeats_note(1, 1) and "not for" not in report.repeats_note(5, 1)
    calls = []
    seconds, last = report.time_calls(lambda: calls.append(1) or len(calls), repeats=3, warmup=2)
    assert len(seconds) == 3 and last == 5 and all(s >= 0 for s in seconds)
    path = tmp_path / "sub" / "r.json"
    report.write_json(str(path), {"x": np.float32(1.5)})
    assert json.loads(path.read_text()) == {"x": 1.5} and os.listdir(path.parent) == ["r.json"]


@pytest.mark.parametrize("argv,message", [
    (["inference", "--steps", "0,25"], "--steps must list step counts >= 1"),
    (["inference", "--steps", "one"], "comma-separated integers"),
    (["inference", "--height", "60"], "multiples of 8"),
    (["inference", "--repeats", "0"], "--repeats must be >= 1"),
    (["inference", "--warmup", "0"], "--warmup must be >= 1"),
    (["vs-torch", "--components", "unet,vea_decode"], "unknown ['vea_decode']"),
    (["train", "--config", "configs/tiny.py"], "not an SF-V train config"),
    (["train", "--batch", "3", "--grad-accum", "2"], "does not split into 2 micro-batches"),
    (["inference", "--override", "unet.no_such_key=1"], "unknown config key"),
])
def test_bad_arguments_are_named(argv, message, tmp_path, capsys):
    out = tmp_path / "never.json"
    assert main(["bench", *argv, "--json", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
