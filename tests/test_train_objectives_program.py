"""`sfv-jax train` with the vae and denoise objectives, as a user chains them (configs/toy.py at micro sizes):
a VAE run, a teacher started from its workdir, SIGKILL and exact resume, export to diffusers, bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from sfv_jax.train.metrics_log import read_metrics
from tests.test_train_program import checkpoint_steps, env, run, wait_for
from tests.train_helpers import MICRO_TOY, micro_toy_overrides

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOTAL = 6


def toy_cmd(variant: str, workdir: str, cache: str, *overrides: str) -> list[str]:
    options = (*micro_toy_overrides(variant), f"total_steps={TOTAL}", "checkpoint_every=2", "eval.every=3",
               "eval.clips=4", *overrides)
    return [sys.executable, "-m", "sfv_jax", "train", "--config", f"configs/toy.py:{variant}", "--workdir", workdir,
            "--compilation-cache", cache, *[f"--config.{o}" for o in options]]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("xla_cache"))


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory, cache):
    workdir = str(tmp_path_factory.mktemp("vae") / "wd")
    run(toy_cmd("vae", workdir, cache), devices=2)
    return workdir


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory, cache, vae_run):
    workdir = str(tmp_path_factory.mktemp("teacher") / "wd")
    result = run(toy_cmd("teacher", workdir, cache, f"init_checkpoint={vae_run}", f"sample_every={TOTAL}"), devices=2)
    return workdir, result.stdout


def test_vae_run_logs_its_loss_and_heldout_eval_loss(vae_run):
    """Every step logs `loss` (= recon_weight * recon + kl_weight * kl) and steps 3 and 6 `eval_loss`. Catches a
    loop that logs no held-out loss for a non-SF-V objective, or a `loss` that is not the objective's."""
    metrics = read_metrics(os.path.join(vae_run, "metrics.jsonl"))
    assert [m["step"] for m in metrics] == list(range(1, TOTAL + 1))
    assert [m["step"] for m in metrics if "eval_loss" in m] == [3, 6]
    for m in metrics:
        assert np.isclose(m["loss"], m["recon"] + 1e-3 * m["kl"], rtol=1e-5), m
    assert all(np.isfinite(m["eval_loss"]) for m in metrics if "eval_loss" in m)


def test_teacher_starts_from_the_vae_workdir_and_resumes_after_sigkill_exactly(teacher_run, vae_run, cache,
                                                                              tmp_path):
    """The teacher's frozen VAE is the VAE run's EMA weights (read through the workdir's checkpoint index); a second
    teacher run SIGKILLed after a checkpoint and resumed reaches step 6 with every leaf of its state and every
    logged loss (eval_loss too) bit-identical to the uninterrupted run. Catches a teacher that silently draws
    a random VAE, a resume that re-initialises the EMA, the optimiser or the rng, or an eval batch that changes
    across a resume."""
    from sfv_jax.checkpoint import load_checkpoint
    from sfv_jax.config import load_config
    from sfv_jax.models.nnx_state import flatten
    from sfv_jax.train.checkpoints import TrainCheckpoints
    from sfv_jax.train.objectives import make_objective
    from flax import nnx

    reference, out = teacher_run
    assert "unet from random, vae from checkpoint, image_encoder from random" in out
    vae_trained = flatten(nnx.to_pure_dict(nnx.state(load_checkpoint(vae_run, names=["vae"])["vae"], nnx.Param)))

    workdir = str(tmp_path / "wd")
    cmd = toy_cmd("teacher", workdir, cache, f"init_checkpoint={vae_run}", f"sample_every={TOTAL}")
    proc = subprocess.Popen([*cmd, "--config.total_steps=1000"], cwd=ROOT, env=env(2), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_for(lambda: any(s >= 2 for s in checkpoint_steps(workdir)), proc, "checkpoint 2")
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    killed_at = max(checkpoint_steps(workdir))
    assert 2 <= killed_at < TOTAL
    last = run(cmd, devices=2)
    assert f"resumed from step {killed_at} (" in last.stdout

    config = load_config("configs/toy.py:teacher", [*MICRO_TOY])
    abstract = make_objective(config).abstract_state()
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), abstract)
    states = []
    for folder in (reference, workdir):
        checkpoints = TrainCheckpoints(os.path.join(folder, "checkpoints"), keep=None, async_save=False)
        states.append(checkpoints.restore(target, TOTAL)[0])
        checkpoints.close()
    got, want = states
    differ = [jax.tree_util.keystr(p) for (p, a), b in zip(jax.tree_util.tree_flatten_with_path(got)[0],
                                                           jax.tree.leaves(want)) if not np.array_equal(a, b)]
    assert not differ, differ[:5]
    assert int(got.step) == TOTAL
    vae_in_state = flatten(jax.tree.map(np.asarray, got.encoders["vae"]))
    assert vae_in_state.keys() == vae_trained.keys()
    assert all(np.array_equal(vae_in_state[k], np.asarray(vae_trained[k])) for k in vae_trained)
    keys = ("loss", "grad_norm", "sigma_mean")
    logged = lambda d: [(m["step"], *(m[k] for k in keys), m.get("eval_loss")) for m in
                        read_metrics(os.path.join(d, "metrics.jsonl"))]
    assert logged(workdir) == logged(reference)
    assert [m["step"] for m in read_metrics(os.path.join(workdir, "metrics.jsonl")) if "eval_loss" in m] == [3, 6]


def test_exported_teacher_samples_25_steps_like_sfv_pipeline_in_diffusers(teacher_run, tmp_path):
    """`sfv-jax export` of the teacher workdir -> diffusers' StableVideoDiffusionPipeline: 25 Euler steps with its
    guidance ramp (1 -> 3) from the same initial latents give the same final latents as
    SFVPipeline.from_pretrained(workdir) (rel L2 <= 1e-4, float32). Catches an export that writes the raw weights
    for EMA ones, a wrong tree for the denoise state's UNet, or a pipeline folder missing a component."""
    import jax.numpy as jnp
    import torch
    from diffusers import StableVideoDiffusionPipeline

    from sfv_jax.cli import main
    from sfv_jax.pipeline import SFVPipeline
    from tests.reference import rel_err
    from tests.test_sampling import random_image

    workdir, _ = teacher_run
    out = tmp_path / "teacher_diffusers"
    assert main(["export", "--checkpoint", workdir, "--out", str(out)]) == 0
    torch_pipe = StableVideoDiffusionPipeline.from_pretrained(str(out))
    pipe = SFVPipeline.from_pretrained(workdir)
    image = random_image(40, 32, seed=3)
    unit = torch.randn(1, 3, 4, 16, 16, generator=torch.Generator().manual_seed(5))  # the micro VAE halves 32x32
    kwargs = dict(num_frames=3, height=32, width=32, num_inference_steps=25, noise_aug_strength=0.0,
                  min_guidance_scale=1.0, max_guidance_scale=3.0, fps=7, motion_bucket_id=127)
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
    print(f"exported teacher vs SFVPipeline(workdir), 25 steps + CFG: latents rel err {err:.2e} (bound 1e-4)")
    assert err <= 1e-4


def test_a_teacher_workdir_converts_to_a_standalone_checkpoint(teacher_run, tmp_path):
    """`sfv-jax convert --workdir` (how the toy models ship): in float32 the standalone copy holds exactly the
    pipeline SFVPipeline.from_pretrained(workdir) loads (EMA generator, the run's VAE and CLIP), with no reference
    to the workdir's train states; in bfloat16 every stored array is bfloat16 and the loaded pipeline stays within
    bf16 rounding (rel L2 <= 1e-2). Catches a copy of the raw weights for EMA ones, a copy that still reads from the
    workdir, or a --dtype that is not applied."""
    import json

    import ml_dtypes
    import orbax.checkpoint as ocp

    from sfv_jax.cli import main
    from sfv_jax.models.nnx_state import flat_params
    from sfv_jax.pipeline import COMPONENTS, SFVPipeline
    from tests.reference import rel_err

    workdir, _ = teacher_run
    exact, half = tmp_path / "f32", tmp_path / "bf16"
    assert main(["convert", "--workdir", workdir, "--out", str(exact)]) == 0
    assert main(["convert", "--workdir", workdir, "--out", str(half), "--dtype", "bfloat16"]) == 0
    index = json.loads((exact / "sfv_jax.json").read_text())
    assert "params_from" not in index and index["extra"]["step"] == TOTAL
    source, copy = SFVPipeline.from_pretrained(workdir), SFVPipeline.from_pretrained(str(exact))
    raw = SFVPipeline.from_pretrained(workdir, ema=False)
    for name in COMPONENTS:
        want, got = flat_params(getattr(source, name)), flat_params(getattr(copy, name))
        assert want.keys() == got.keys()
        assert all(np.array_equal(want[k], got[k]) for k in want), name
    raw_unet, copy_unet = flat_params(raw.unet), flat_params(copy.unet)
    assert any(not np.array_equal(raw_unet[k], copy_unet[k]) for k in raw_unet), "the copy holds the raw weights"
    stored = ocp.PyTreeCheckpointer().restore(str(half / "params"))
    assert {np.asarray(a).dtype for tree in stored.values() for a in tree.values()} == {np.dtype(ml_dtypes.bfloat16)}
    halved = flat_params(SFVPipeline.from_pretrained(str(half)).unet)
    want = flat_params(source.unet)
    err = max(rel_err(np.asarray(halved[k]), np.asarray(want[k])) for k in want if np.any(want[k]))
    assert err <= 1e-2, err


def test_a_vae_workdir_exports_as_a_diffusers_vae_folder(vae_run, tmp_path):
    """A vae-objective workdir exports its (EMA) VAE as a component folder diffusers' AutoencoderKLTemporalDecoder
    loads, with the run's architecture. Catches an export that insists on a whole pipeline, or one that writes the
    config's full-size VAE instead of the trained one."""
    from diffusers import AutoencoderKLTemporalDecoder

    from sfv_jax.cli import main
    from sfv_jax.config import load_config
    out = tmp_path / "vae_diffusers"
    assert main(["export", "--checkpoint", vae_run, "--out", str(out)]) == 0
    model = AutoencoderKLTemporalDecoder.from_pretrained(str(out))
    trained = load_config("configs/toy.py:vae", [*MICRO_TOY]).vae
    assert tuple(model.config.block_out_channels) == tuple(trained.block_out_channels)
    assert len(model.config.down_block_types) == len(trained.down_block_types)


def _one_line_error(capsys, args):
    from sfv_jax.cli import main
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def test_bad_objective_inputs_fail_in_one_line_and_write_nothing(vae_run, tmp_path, capsys):
    """Exit 2 with one line naming the problem, and no workdir created, for: an unknown objective; an SF-V run
    started from a VAE workdir (it holds no UNet); a teacher whose config's VAE is not the checkpoint's
    architecture; a VAE run told to read a latent cache. `sfv-jax sample` from a VAE workdir: exit 2, one line
    saying it is not a pipeline."""
    base = ["train", "--config", "configs/toy.py:teacher", *[f"--config.{o}" for o in MICRO_TOY]]
    cases = [
        (["--config.objective=nope"], "objective='nope' is unknown"),
        (["--config.init_checkpoint=" + vae_run, "--config.vae.block_out_channels=(32, 64)"], "does not match"),
    ]
    for extra, message in cases:
        workdir = tmp_path / f"wd{len(extra)}"
        code, err = _one_line_error(capsys, [*base, "--workdir", str(workdir), *extra])
        assert code == 2 and len(err) == 1 and message in err[0], err
        assert not workdir.exists()
    workdir = tmp_path / "vae_cached"  # a VAE learns the encoding: it cannot train from a latent cache
    code, err = _one_line_error(capsys, ["train", "--config", "configs/toy.py:vae", "--workdir", str(workdir),
                                         *[f"--config.{o}" for o in MICRO_TOY], "--config.data.latents=cache"])
    assert code == 2 and len(err) == 1 and "'vae' trains on frames" in err[0], err
    assert not workdir.exists()
    workdir = tmp_path / "sfv"
    code, err = _one_line_error(capsys, ["train", "--config", "configs/toy.py:sfv", "--workdir", str(workdir),
                                         *[f"--config.{o}" for o in MICRO_TOY], f"--config.init_checkpoint={vae_run}"])
    assert code == 2 and len(err) == 1 and "holds vae" in err[0] and "unet" in err[0], err
    assert not workdir.exists()
    from tests.test_sampling import random_image  # importing it may warn on stderr (transformers): not ours
    capsys.readouterr()
    image = tmp_path / "image.png"
    random_image(32, 32, seed=1).save(image)
    code, err = _one_line_error(capsys, ["sample", "--checkpoint", vae_run, "--image", str(image), "--out",
                                         str(tmp_path / "out.gif")])
    assert code == 2 and len(err) == 1 and "not a pipeline" in err[0], err
    assert not (tmp_path / "out.gif").exists()


def test_teacher_from_a_latent_cache_makes_the_steps_of_on_the_fly_encoding(teacher_run, vae_run, cache, tmp_path,
                                                                            capsys):
    """A teacher run reading a latent cache (data.latents=cache: the clips' latents and CLIP embeddings
    pre-encoded by tools/encode_latents.py, the first frame re-encoded every step with the step's drawn noise
    strength) logs the losses the on-the-fly run logs, step for step, within LOSS_RTOL. Catches a cached denoise run
    that reads the cache's fixed-strength image_latent (the strength stops being drawn), draws its conditioning
    noise from another key, streams the rows in another order, or loses the first frame's scaling; and a cache run
    that skips the held-out evaluation or evaluates other clips than the on-the-fly run's (a source that cannot
    give the held-out clips: exit 2, one line, no workdir)."""
    from sfv_jax.config import load_config
    from sfv_jax.data import LatentCacheIterator

    # Measured bit-identical here (the cache's encoder ran on batches of 64 clips, the run's on 2 per device). Other
    # CPUs may sum a batch's convolutions in another order (~2e-6 relative on latents, tests/test_latent_cache.py),
    # hence a bound and not equality; the fixed-strength mistake moves the losses by 3e-5 at step 1, 7e-4 at 3.
    LOSS_RTOL = 1e-6
    reference, _ = teacher_run
    options = [f"--config.{o}" for o in (*MICRO_TOY, f"init_checkpoint={vae_run}")]
    latents = str(tmp_path / "latents")
    run([sys.executable, "tools/encode_latents.py", "--config", "configs/toy.py:teacher", "--out", latents,
         "--batch-size", "64", *options], devices=2)
    config = load_config("configs/toy.py:teacher", list(MICRO_TOY))
    rows = LatentCacheIterator(latents, 4, seed=0, with_first_frame=True)
    assert rows.global_batch_shapes()["first_frame"] == (4, config.data.height, config.data.width, 3)
    assert next(rows)["first_frame"].dtype == np.uint8

    # A cache run whose source cannot give the held-out clips (a folder source without eval.path) names both fixes.
    unreadable = tmp_path / "no_heldout"
    code, err = _one_line_error(capsys, ["train", "--config", "configs/toy.py:teacher", "--workdir", str(unreadable),
                                         *options, "--config.data.latents=cache",
                                         f"--config.data.latent_cache={latents}",
                                         "--config.data.source=folder", f"--config.data.path={tmp_path}"])
    assert code == 2 and len(err) == 1 and "eval.path" in err[0] and "eval.every=0" in err[0], err
    assert not unreadable.exists()

    workdir = str(tmp_path / "wd")
    cmd = toy_cmd("teacher", workdir, cache, f"init_checkpoint={vae_run}", "data.latents=cache",
                  f"data.latent_cache={latents}", "total_steps=3")
    run(cmd, devices=2)
    logged = read_metrics(os.path.join(workdir, "metrics.jsonl"))
    got = {m["step"]: m["loss"] for m in logged}
    on_the_fly = [m for m in read_metrics(os.path.join(reference, "metrics.jsonl")) if m["step"] <= 3]
    want = {m["step"]: m["loss"] for m in on_the_fly}
    print(f"losses from the cache {got}, on the fly {want}")
    assert got.keys() == want.keys() == {1, 2, 3}
    for step in got:
        assert got[step] == pytest.approx(want[step], rel=LOSS_RTOL), (step, got[step], want[step])
    # The held-out clips come from config.data's source, not the cache: the same eval_loss at step 3 (eval.every=3).
    got_eval = {m["step"]: m["eval_loss"] for m in logged if "eval_loss" in m}
    want_eval = {m["step"]: m["eval_loss"] for m in on_the_fly if "eval_loss" in m}
    assert got_eval.keys() == want_eval.keys() == {3}, (got_eval, want_eval)
    assert got_eval[3] == pytest.approx(want_eval[3], rel=LOSS_RTOL)
