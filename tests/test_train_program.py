"""`sfv-jax train` end to end, as a user runs it: separate processes, signals, resume, multi-host, export.

Every run uses configs/tiny_sfv.py:micro (a one-block UNet) on 64x64 synthetic clips,
4 CPU devices per process (data=4) and one compilation cache, so all single-process runs share one
compiled step. Run A (6 steps, uninterrupted) is the reference the other runs must reproduce.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from sfv_jax.train.metrics_log import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOTAL = 6
# Keys that are functions of the state and data alone (timings differ between runs).
DETERMINISTIC = ("g_loss", "d_loss", "recon", "g_adv", "hinge", "r1", "d_real_spatial", "d_fake_temporal",
                 "g_grad_norm", "d_grad_norm", "sigma_d_mean")


def train_cmd(workdir: str, cache: str, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "sfv_jax", "train", "--config", "configs/tiny_sfv.py:micro", "--workdir", workdir,
            "--compilation-cache", cache, f"--config.total_steps={TOTAL}", "--config.checkpoint_every=2",
            *[f"--config.{o}" for o in overrides]]


def env(devices: int = 4) -> dict:
    return {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}


def run(cmd, devices: int = 4, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=ROOT, env=env(devices), capture_output=True, text=True, timeout=1200)
    if check and result.returncode != 0:
        raise AssertionError(f"{cmd} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def losses(workdir: str) -> dict[int, tuple]:
    return {m["step"]: tuple(m[k] for k in DETERMINISTIC) for m in read_metrics(os.path.join(workdir, "metrics.jsonl"))}


def wait_for(predicate, proc: subprocess.Popen, what: str, timeout: float = 900) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the run exited ({proc.returncode}) before {what}:\n{proc.stderr.read()[-3000:]}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("xla_cache"))


@pytest.fixture(scope="module")
def run_a(tmp_path_factory, cache):
    workdir = str(tmp_path_factory.mktemp("run_a") / "wd")
    run(train_cmd(workdir, cache, f"sample_every={TOTAL}"))
    return workdir


def test_uninterrupted_run_logs_every_step(run_a):
    metrics = read_metrics(os.path.join(run_a, "metrics.jsonl"))
    assert [m["step"] for m in metrics] == list(range(1, TOTAL + 1))
    assert all(np.isfinite(m["g_loss"]) and np.isfinite(m["d_loss"]) for m in metrics)
    assert all(m["nonfinite_skipped"] == 0 and m["data_skipped"] == 0 for m in metrics)
    assert sorted(os.listdir(os.path.join(run_a, "checkpoints"))) == ["2", "4", "6"]
    events = [f for f in os.listdir(os.path.join(run_a, "tensorboard")) if f.startswith("events.out.tfevents")]
    assert events
    # The one-step sample of the EMA weights: a GIF of data.num_frames frames, also in TensorBoard.
    import imageio.v3 as iio
    sample = iio.imread(os.path.join(run_a, "samples", f"step_{TOTAL:07d}.gif"), index=None)
    assert sample.shape[:3] == (3, 64, 64) and sample.std() > 0
    event_bytes = open(os.path.join(run_a, "tensorboard", events[0]), "rb").read()
    assert b"GIF89a" in event_bytes or b"GIF87a" in event_bytes


def checkpoint_steps(workdir: str) -> list[int]:
    """The complete checkpoints (Orbax writes into a temporary folder and renames it to <step> when done)."""
    folder = os.path.join(workdir, "checkpoints")
    return sorted(int(n) for n in os.listdir(folder) if n.isdigit()) if os.path.isdir(folder) else []


_ABSTRACT = {}


def restore(workdir: str, step: int):
    """(TrainState, data position) of `workdir`'s checkpoint `step`, read in this process by the loop's own
    TrainCheckpoints, onto one device."""
    import jax

    from sfv_jax.train import workdir as wd
    from sfv_jax.train.checkpoints import TrainCheckpoints
    from sfv_jax.train.state import SFVModels, abstract_state
    if "target" not in _ABSTRACT:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        abstract = abstract_state(SFVModels(wd.read_config(workdir)), with_encoders=True)
        _ABSTRACT["target"] = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), abstract)
    checkpoints = TrainCheckpoints(os.path.join(workdir, "checkpoints"), keep=None, async_save=False)
    try:
        state, position, _ = checkpoints.restore(_ABSTRACT["target"], step)
    finally:
        checkpoints.close()
    return state, position


def assert_same_state(workdir: str, reference: str, step: int) -> None:
    """Checkpoint `step` of both workdirs: every leaf of the TrainState (g_params, g_ema, d_heads, backbone,
    g_opt, d_opt, rng, step, encoders) bit for bit, and the data iterator's position."""
    import jax
    (got, got_position), (want, want_position) = restore(workdir, step), restore(reference, step)
    got_leaves, got_tree = jax.tree.flatten_with_path(got)
    want_leaves, want_tree = jax.tree.flatten_with_path(want)
    assert got_tree == want_tree
    assert int(got.step) == step and got.encoders is not None
    differ = [jax.tree_util.keystr(path) for (path, a), (_, b) in zip(got_leaves, want_leaves)
              if np.asarray(a).dtype != np.asarray(b).dtype or np.asarray(a).tobytes() != np.asarray(b).tobytes()]
    assert not differ, f"step {step}: {len(differ)} of {len(got_leaves)} leaves differ, e.g. {differ[:5]}"
    assert got_position == want_position


@pytest.fixture(scope="module")
def stopped_then_killed(cache, tmp_path_factory):
    """One workdir through three processes: SIGTERM after the first step (a clean stop at step `stopped`),
    a resume SIGKILLed as soon as it completes a later checkpoint (`killed_at`), a resume to TOTAL."""
    workdir = str(tmp_path_factory.mktemp("stopped_then_killed") / "wd")
    popen = lambda cmd: subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         text=True)
    first = popen(train_cmd(workdir, cache, "total_steps=1000"))
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    wait_for(lambda: os.path.isfile(metrics_path) and len(read_metrics(metrics_path)) >= 1, first, "the first step")
    first.send_signal(signal.SIGTERM)
    first_out, first_err = first.communicate(timeout=600)
    assert first.returncode == 0, first_err[-3000:]
    stopped = max(checkpoint_steps(workdir))
    stopped_losses = losses(workdir)

    second = popen(train_cmd(workdir, cache, "total_steps=1000"))
    wait_for(lambda: max(checkpoint_steps(workdir)) > stopped, second, f"a checkpoint after step {stopped}")
    second.send_signal(signal.SIGKILL)
    second_out, _ = second.communicate()
    assert second.returncode == -signal.SIGKILL
    killed_at = max(checkpoint_steps(workdir))
    last = run(train_cmd(workdir, cache))
    return dict(workdir=workdir, first_out=first_out, stopped=stopped, stopped_losses=stopped_losses,
                second_out=second_out, killed_at=killed_at, last_out=last.stdout)


def test_sigterm_saves_the_last_step_and_exits_cleanly(stopped_then_killed):
    """Catches a SIGTERM that kills the run without a checkpoint, or saves a step other than the last one taken."""
    run = stopped_then_killed
    assert "stopped by SIGTERM" in run["first_out"]
    assert run["stopped"] == max(run["stopped_losses"])  # the checkpoint is of the last step taken
    assert 0 < run["stopped"] < TOTAL


def test_resumes_restore_the_whole_state_bit_exactly(stopped_then_killed, run_a):
    """A resume after SIGTERM, then one after SIGKILL, against run A (uninterrupted): the checkpoint the
    SIGKILLed run resumed from and the final one hold the same TrainState, every leaf bit for bit, and the
    same losses at every step. Catches a resume that restores the EMA from g_params (the logged losses do
    not depend on the EMA), resets the optimiser moments, the rng or the data position, or resumes from a
    step other than the latest complete checkpoint."""
    run = stopped_then_killed
    workdir, stopped, killed_at = run["workdir"], run["stopped"], run["killed_at"]
    assert f"resumed from step {stopped} (" in run["second_out"]
    assert 0 < stopped < killed_at < TOTAL
    assert f"resumed from step {killed_at} (" in run["last_out"]
    assert killed_at in checkpoint_steps(run_a) and TOTAL in checkpoint_steps(workdir)
    for step in (killed_at, TOTAL):
        assert_same_state(workdir, run_a, step)
    assert losses(workdir) == losses(run_a)  # bit for bit, every step


def snapshot(folder: str) -> dict:
    return {os.path.relpath(os.path.join(d, f), folder): (os.stat(os.path.join(d, f)).st_size,
                                                           os.stat(os.path.join(d, f)).st_mtime_ns)
            for d, _, files in os.walk(folder) for f in files}


def test_resume_with_a_changed_config_stops_unless_reconfigured(run_a, cache, tmp_path, capsys):
    """A copy of run A resumed with another optim.g_lr and seed. Catches a silently accepted change of
    optim.g_lr or seed, a refusal that is not one line with exit code 2 or that writes to the workdir, a
    --reconfigure that is not logged, one whose new learning rate the restored optimiser state overrides, and a
    finished run that compiles its step before finding nothing to do."""
    import shutil

    import jax

    from sfv_jax.cli import main
    from sfv_jax.train import config_diff
    from sfv_jax.train import workdir as wd
    workdir = str(tmp_path / "wd")
    shutil.copytree(run_a, workdir)
    changed = ["optim.g_lr=2e-5", "seed=1", f"total_steps={TOTAL + 1}"]
    before = snapshot(workdir)
    code = main(["train", "--config", "configs/tiny_sfv.py:micro", "--workdir", workdir,
                 *[f"--config.{c}" for c in changed]])  # in this process: it stops before any compile
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"sfv-jax train: error: {workdir} was trained with a different config: "
                             f"optim.g_lr 1e-05 -> 2e-05, seed 0 -> 1; "), err[0]
    assert snapshot(workdir) == before

    result = run(train_cmd(workdir, cache, *changed) + ["--reconfigure"])
    assert "--reconfigure: optim.g_lr 1e-05 -> 2e-05, seed 0 -> 1" in result.stdout
    assert f"resumed from step {TOTAL} (" in result.stdout
    log = open(os.path.join(workdir, config_diff.RECONFIGURE_LOG)).read().splitlines()
    assert len(log) == 1 and log[0].endswith(f"resumed at step {TOTAL} with --reconfigure: "
                                             f"optim.g_lr 1e-05 -> 2e-05, seed 0 -> 1"), log
    assert [m["step"] for m in read_metrics(os.path.join(workdir, "metrics.jsonl"))] == list(range(1, TOTAL + 2))
    state, _ = restore(workdir, TOTAL + 1)
    assert jax.device_get(state.g_opt.hyperparams["learning_rate"]) == np.float32(2e-5)
    assert jax.device_get(state.d_opt.hyperparams["learning_rate"]) == np.float32(1e-4)
    # config.json is the new config: the next plain resume with the same flags is accepted.
    saved = wd.read_config(workdir)
    assert saved.optim.g_lr == 2e-5 and saved.seed == 1
    # The step compiled ahead of time, its two programs named as they compiled; a finished run restores and stops
    # without compiling it (a rerun of a finished stage, as `make toy` does, costs seconds, not the compile).
    assert "train step gradients: compiled in" in result.stdout and "train step apply: compiled in" in result.stdout
    again = run(train_cmd(workdir, cache, *changed))
    assert f"resumed from step {TOTAL + 1} (" in again.stdout and "train step" not in again.stdout, again.stdout


@pytest.mark.slow  # two processes compile the step side by side: ~7 min on 2 cores
def test_two_processes_match_one(run_a, cache, tmp_path):
    """2 processes x 2 CPU devices (gloo) against run A's 1 process x 4 devices, same global batch: the logged
    losses, and every leaf of the state after step 2. Catches: a process that trains on its own half of the batch
    only (gradients not all-reduced across hosts), a host whose parameter shards drift from the other's."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = str(tmp_path / "wd")
    procs = [subprocess.Popen(train_cmd(workdir, cache, "total_steps=2") + [
        "--multihost", "--coordinator-address", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)],
        cwd=ROOT, env=env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=1200)
        assert p.returncode == 0, err[-3000:]
    got, want = losses(workdir), losses(run_a)
    assert sorted(got) == [1, 2]
    for step in got:
        np.testing.assert_allclose(got[step], want[step], rtol=1e-5, atol=1e-7)
    # Per tensor, as tests/test_parallel.py does on one host: each leaf's update (step-2 state minus the shared
    # initial state) within UPDATE_BOUND of run A's, relative to run A's update of that leaf.
    from sfv_jax.train import workdir as wd
    from sfv_jax.train.state import SFVModels, init_state
    from tests.train_helpers import UPDATE_BOUND, tree_equal, update_errors
    config = wd.read_config(run_a)
    models = SFVModels(config)
    init = init_state(models, models.random_generator_params(config.seed), models.random_head_params(config.seed + 1),
                      config.seed)
    (two, _), (one, _) = restore(workdir, 2), restore(run_a, 2)
    assert tree_equal(init.backbone, one.backbone)
    for tree in ("g_params", "g_ema", "d_heads", "g_opt", "d_opt"):
        errors = update_errors(getattr(init, tree), getattr(two, tree), getattr(one, tree))
        print(f"2 processes x 2 devices vs 1 x 4, {tree}: {len(errors)} leaves, worst update difference {errors[0]}")
        assert errors[0][0] <= UPDATE_BOUND, (tree, errors[:3])


def test_nonfinite_steps_are_skipped_then_stop_the_run(cache, tmp_path):
    """A learning rate that overflows the weights: every update is skipped, and K in a row stop the run."""
    workdir = str(tmp_path / "wd")
    result = run(train_cmd(workdir, cache, "optim.g_lr=1e38", "optim.d_lr=1e38", "max_consecutive_nonfinite=3",
                           "checkpoint_every=1"), check=False)
    assert result.returncode == 2, result.stderr[-3000:]
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("sfv-jax train: error: 3 consecutive steps had non-finite"), error
    metrics = read_metrics(os.path.join(workdir, "metrics.jsonl"))
    assert [m["nonfinite"] for m in metrics] == [1.0, 1.0, 1.0]
    assert [m["nonfinite_skipped"] for m in metrics] == [1, 2, 3]
    # Skipped steps left the weights as they were, so the checkpoints hold the (finite) initial state.
    from sfv_jax.pipeline import SFVPipeline
    pipe = SFVPipeline.from_pretrained(workdir)
    import jax
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(pipe._split["unet"][1]))


def test_folder_with_a_corrupt_video_trains_and_reports_it(cache, tmp_path):
    import imageio.v3 as iio
    folder = tmp_path / "videos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, ext in enumerate(("mp4", "gif", "mp4")):
        frames = rng.integers(0, 255, (8, 72, 96, 3), np.uint8)
        iio.imwrite(folder / f"clip{i}.{ext}", frames, **({"fps": 7} if ext == "mp4" else {"duration": 140}))
    (folder / "broken.mp4").write_bytes(rng.integers(0, 255, 4096, np.uint8).tobytes())
    workdir = str(tmp_path / "wd")
    result = run(train_cmd(workdir, cache, "data.source=folder", f"data.path={folder}", "total_steps=1"))
    assert "skipped 1" in result.stdout + result.stderr
    assert "broken.mp4" in result.stderr
    assert read_metrics(os.path.join(workdir, "metrics.jsonl"))[-1]["data_skipped"] == 1


@pytest.mark.parametrize("override, message", [
    ("no_such_key=1", "unknown config key 'no_such_key'"),
    ("data.source=folder", "data.path"),
    ("data.tfds_name=no_such_dataset_xyz", "no_such_dataset_xyz"),
])
def test_bad_input_fails_in_one_line_before_touching_the_workdir(override, message, tmp_path, capsys):
    from sfv_jax.cli import main
    workdir = tmp_path / "wd"
    overrides = [f"--config.{override}"]
    if override.startswith("data.tfds_name"):
        overrides.append("--config.data.source=tfds")
    code = main(["train", "--config", "configs/tiny_sfv.py:micro", "--workdir", str(workdir), *overrides])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not workdir.exists()


def test_missing_and_empty_data_folders(tmp_path, capsys):
    from sfv_jax.cli import main
    empty = tmp_path / "empty"
    empty.mkdir()
    for folder, message in ((tmp_path / "missing", "does not exist"), (empty, "no")):
        workdir = tmp_path / f"wd_{folder.name}"
        code = main(["train", "--config", "configs/tiny_sfv.py:micro", "--workdir", str(workdir),
                     "--config.data.source=folder", f"--config.data.path={folder}"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and str(folder) in err[0] and message in err[0], err
        assert not workdir.exists()


def test_exported_workdir_loads_in_diffusers_and_samples_like_sfv_pipeline(run_a, tmp_path):
    """`sfv-jax export` of run A -> diffusers' StableVideoDiffusionPipeline; one step from the same unit
    latents (no guidance, no noise augmentation) as SFVPipeline.from_pretrained(run A): rel L2 <= 1e-4."""
    import jax.numpy as jnp
    import torch
    from diffusers import StableVideoDiffusionPipeline
    from safetensors.numpy import load_file

    from sfv_jax.cli import main
    from sfv_jax.pipeline import SFVPipeline
    from tests.reference import rel_err
    from tests.test_sampling import random_image

    ema, raw = tmp_path / "ema", tmp_path / "raw"
    assert main(["export", "--checkpoint", run_a, "--out", str(ema)]) == 0
    assert main(["export", "--checkpoint", run_a, "--out", str(raw), "--no-ema"]) == 0
    weights = lambda d: load_file(str(d / "unet" / "diffusion_pytorch_model.safetensors"))
    ema_w, raw_w = weights(ema), weights(raw)
    assert ema_w.keys() == raw_w.keys() and any(not np.array_equal(ema_w[k], raw_w[k]) for k in ema_w)

    torch_pipe = StableVideoDiffusionPipeline.from_pretrained(str(ema))
    pipe = SFVPipeline.from_pretrained(run_a)
    image = random_image(80, 56, seed=3)
    unit = torch.randn(1, 3, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    kwargs = dict(num_frames=3, height=64, width=64, num_inference_steps=1, noise_aug_strength=0.0,
                  min_guidance_scale=1.0, max_guidance_scale=1.0, fps=7, motion_bucket_id=127)
    captured = {}

    def keep_latents(_pipe, _i, _t, tensors):
        captured["latents"] = tensors["latents"]
        return {}

    with torch.no_grad():
        torch_pipe(image, latents=unit.clone(), output_type="latent", callback_on_step_end=keep_latents, **kwargs)
    ref = captured["latents"][0].permute(0, 2, 3, 1).numpy()
    got = np.asarray(pipe(image, latents=jnp.asarray(unit[0].permute(0, 2, 3, 1).numpy()), output_type="latent",
                          **kwargs))
    err = rel_err(got, ref)
    print(f"exported workdir vs SFVPipeline(workdir), one step: latents rel err {err:.2e} (bound 1e-4)")
    assert err <= 1e-4


@pytest.mark.slow  # a second step program (double backward, bf16, remat): minutes to compile
def test_exact_r1_with_remat_and_bf16_compute_trains(cache, tmp_path):
    """The paper's configuration of the step: exact R1 (a gradient inside the loss), remat, bf16 compute."""
    workdir = str(tmp_path / "wd")
    run(train_cmd(workdir, cache, "total_steps=2", "sfv.r1_mode=exact", "model.remat=dots_no_batch",
                  "model.dtype=bfloat16"))
    metrics = read_metrics(os.path.join(workdir, "metrics.jsonl"))
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(np.isfinite(m["g_loss"]) and np.isfinite(m["d_loss"]) and m["r1"] > 0 for m in metrics)
    assert all(m["nonfinite"] == 0 for m in metrics)


def test_training_reads_a_pre_encoded_latent_cache(cache, tmp_path):
    """tools/encode_latents.py writes the table; data.latents=cache trains from it (same step program)."""
    latents = str(tmp_path / "latents")
    run([sys.executable, "tools/encode_latents.py", "--config", "configs/tiny_sfv.py:micro", "--out", latents,
         "--config.data.num_synthetic=6"])
    workdir = str(tmp_path / "wd")
    run(train_cmd(workdir, cache, "data.latents=cache", f"data.latent_cache={latents}", "data.num_synthetic=6",
                  "total_steps=2"))
    metrics = read_metrics(os.path.join(workdir, "metrics.jsonl"))
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(np.isfinite(m["g_loss"]) and np.isfinite(m["d_loss"]) and m["nonfinite"] == 0 for m in metrics)


def test_micro_batches_that_do_not_split_over_the_batch_devices_are_named():
    from sfv_jax.train.loop import micro_batch_warning
    assert micro_batch_warning(16, 2, 4) is None and micro_batch_warning(4, 1, 4) is None
    message = micro_batch_warning(4, 2, 4)  # the micro config on 4 data devices: micro-batches of 2
    assert "micro-batches of 2 clips" in message and "multiple of grad_accum_steps x 4" in message
