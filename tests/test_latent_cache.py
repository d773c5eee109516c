"""tools/encode_latents.py and sfv_jax.data.latent_cache: rows equal the encode fn per clip, first frames
re-encode as on-the-fly encoding would, the cache streams like the clip iterator (determinism, resume across
epochs, process shards), misfits and bad input fail cleanly."""

import importlib.util
import json
import os
import shutil

import jax
import numpy as np
import pytest

from sfv_jax.config import load_config
from sfv_jax.data import (DataError, LatentCacheIterator, RowOrder, check_cache_matches, make_clip_iterator,
                          make_latent_cache_iterator, make_source)

ROOT = os.path.join(os.path.dirname(__file__), "..")
CONFIG = os.path.join(ROOT, "configs", "tiny_sfv.py") + ":micro"
OVERRIDES = ["data.num_synthetic=6"]
KEYS = ("latents", "image_latent", "clip", "added_time_ids")


def tool():
    """tools/encode_latents.py as a module (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location("encode_latents", os.path.join(ROOT, "tools", "encode_latents.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_tool(out, *extra):
    return tool().main(["--config", CONFIG, "--out", str(out), *[f"--config.{o}" for o in OVERRIDES], *extra])


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    out = tmp_path_factory.mktemp("cache") / "latents"
    # Batches of 4 over 6 clips: the last batch is padded, which must not change any row.
    assert run_tool(out, "--batch-size", "4") == 0
    return str(out)


def table(path):
    return {k: np.load(os.path.join(path, f"{k}.npy")) for k in (*KEYS, "noise_key", "first_frame")}


def rel_l2(a, b):
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(np.asarray(b, np.float64)))


def test_rows_are_the_encode_fn_of_each_clip_with_its_recorded_noise(cache):
    from sfv_jax.train.encode import make_encode_fn
    from sfv_jax.train.objectives import make_objective
    from sfv_jax.train.state import SFVModels

    config = load_config(CONFIG, OVERRIDES)
    rows = table(cache)
    index = json.load(open(os.path.join(cache, "cache.json")))
    assert index["num_clips"] == 6 and rows["latents"].shape == (6, 3, 8, 8, 4) and rows["clip"].shape == (6, 1, 32)
    assert all(rows[k].dtype == np.float32 and np.isfinite(rows[k]).all() for k in KEYS)
    assert os.stat(cache).st_mode & 0o055  # readable by others (mkdtemp made it private)
    models = SFVModels(config)
    encoders = make_objective(config).initial_weights()[0]  # what a training run starts from, seed for seed
    encoders = {name: encoders[name] for name in ("vae", "image_encoder")}
    encode = jax.jit(make_encode_fn(config, models))
    source, base = make_source(config.data), jax.random.PRNGKey(config.seed + 5)
    for i in (0, 3, 5):  # 5 sits in the padded last batch
        key = rows["noise_key"][i]
        np.testing.assert_array_equal(key, jax.random.fold_in(base, i))  # the derivation cache.json states
        frames = source.clip(i, RowOrder(6, 1, config.seed).window_rng(i))[None]
        ref = jax.device_get(encode(encoders, frames, key))
        for k in KEYS:
            # float32, same maths; XLA sums a batch of 4 clips' convolutions in another order than one clip's:
            # measured 2.0e-6 to 2.8e-6 (latents, image_latent), 0 (clip, added_time_ids).
            error = rel_l2(rows[k][i], ref[k][0])
            print(f"clip {i} {k}: rel L2 {error:.1e}")
            assert error < 1e-5, (i, k, error)
        np.testing.assert_array_equal(rows["first_frame"][i], frames[0, 0])  # the clean frame, uint8
    assert rows["first_frame"].dtype == np.uint8
    assert rel_l2(rows["image_latent"][0], rows["image_latent"][1]) > 1e-2  # distinct clips, distinct rows
    np.testing.assert_allclose(rows["added_time_ids"], np.broadcast_to([6.0, 127.0, 0.02], (6, 3)), rtol=1e-6)


def test_reconditioned_rows_are_the_batch_on_the_fly_encoding_draws_for_the_same_key(cache):
    """make_recondition_fn on cached rows (with their first frames) gives the batch make_encode_fn gives on the
    clips, for the same key, with the noise strength drawn per clip (the denoise objective's): the image latent and
    the added time ids within 1e-5, latents and CLIP embeddings the cache's. Catches re-encoding without the
    step's noise or strength, a strength not written into added_time_ids, or first frames in the wrong range."""
    from configs import svd_finetune
    from sfv_jax.train.encode import make_encode_fn, make_recondition_fn
    from sfv_jax.train.objectives import make_objective
    from sfv_jax.train.state import SFVModels

    config = load_config(CONFIG, OVERRIDES)
    with config.unlocked():
        config.denoise = svd_finetune.denoise_section()
    models = SFVModels(config)
    weights = make_objective(config).initial_weights()[0]
    encoders = {name: weights[name] for name in ("vae", "image_encoder")}
    rows = next(LatentCacheIterator(cache, 4, seed=3, with_first_frame=True))
    key = jax.random.PRNGKey(11)
    got = jax.device_get(jax.jit(make_recondition_fn(config, models, drawn_noise_aug=True))(encoders, rows, key))
    order = [make_clip_iterator(config.data, 4, seed=3).row_index(j)[1] for j in range(4)]
    source = make_source(config.data)
    frames = np.stack([source.clip(i, RowOrder(6, 1, config.seed).window_rng(i)) for i in order])
    want = jax.device_get(jax.jit(make_encode_fn(config, models, drawn_noise_aug=True))(encoders, frames, key))
    strengths = got["added_time_ids"][:, 2]
    assert len(set(np.round(strengths, 6))) == 4 and not np.allclose(strengths, 0.02)  # drawn, one per clip
    for k in ("image_latent", "added_time_ids"):
        error = rel_l2(got[k], want[k])
        print(f"{k}: rel L2 {error:.1e} against on-the-fly encoding")
        assert error < 1e-5, (k, error)
    for k in ("latents", "clip"):
        np.testing.assert_array_equal(got[k], rows[k])


def test_iterator_streams_like_the_clip_iterator_and_resumes_exactly(cache):
    rows = table(cache)
    it = LatentCacheIterator(cache, 4, seed=7)
    assert it.num_clips == 6 and it.skipped == 0
    assert it.global_batch_shapes() == {"latents": (4, 3, 8, 8, 4), "image_latent": (4, 8, 8, 4), "clip": (4, 1, 32),
                                        "added_time_ids": (4, 3)}
    reference = [next(it) for _ in range(5)]  # 20 rows over 6 clips: batches straddle epoch boundaries
    clips = make_clip_iterator(load_config(CONFIG, OVERRIDES).data, 4, seed=7)
    for b, batch in enumerate(reference):
        assert set(batch) == set(KEYS) and all(v.dtype == np.float32 for v in batch.values())
        order = [clips.row_index(4 * b + j)[1] for j in range(4)]  # the clip iterator's order, row for row
        for k in KEYS:
            np.testing.assert_array_equal(batch[k], rows[k][order])
    clips.close()
    again = LatentCacheIterator(cache, 4, seed=7)
    assert all(np.array_equal(a[k], b[k]) for a, b in zip(reference, (next(again) for _ in range(5))) for k in KEYS)
    assert not np.array_equal(next(LatentCacheIterator(cache, 4, seed=8))["latents"], reference[0]["latents"])

    it = LatentCacheIterator(cache, 4, seed=7)
    next(it), next(it)
    state = json.loads(json.dumps(it.get_state()))
    assert state == {"epoch": 1, "index": 2, "num_clips": 6, "seed": 7}
    it.close()
    resumed = LatentCacheIterator(cache, 4, seed=7)
    resumed.set_state(state)
    for want in reference[2:]:
        got = next(resumed)
        assert all(np.array_equal(got[k], want[k]) for k in KEYS)
    resumed.close()
    assert next(resumed)["latents"].shape == (4, 3, 8, 8, 4)  # reopens after close()


def test_process_shards_concatenate_to_the_global_batch(cache):
    whole = LatentCacheIterator(cache, 4, seed=1)
    shards = [LatentCacheIterator(cache, 4, seed=1, process_index=p, process_count=2) for p in range(2)]
    for _ in range(4):
        parts = [next(s) for s in shards]
        full = next(whole)
        for k in KEYS:
            assert parts[0][k].shape[0] == 2
            np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), full[k])
    with pytest.raises(DataError, match="multiple of the process count"):
        LatentCacheIterator(cache, 3, seed=1, process_count=2)


def test_a_cache_that_does_not_fit_the_config_or_is_corrupt_is_a_data_error(cache, tmp_path):
    assert check_cache_matches(cache, load_config(CONFIG, OVERRIDES))["num_clips"] == 6
    for override, words in (("data.num_frames=4", "num_frames 4"), ("data.height=128", "height 128"),
                            ("unet.cross_attention_dim=64", "cross_attention_dim"),
                            ("data.latent_scale=1.0", "latent_scale")):
        with pytest.raises(DataError, match=words) as error:
            check_cache_matches(cache, load_config(CONFIG, [override]))
        assert "\n" not in str(error.value) and "encode_latents.py" in str(error.value)
    config = load_config(CONFIG, OVERRIDES)
    with config.unlocked():  # the field the training configs add for data.latents="cache"
        config.data.latent_cache = ""
    with pytest.raises(DataError, match="needs data.latent_cache"):
        make_latent_cache_iterator(config, 4, 0)
    config.data.latent_cache = cache
    assert next(make_latent_cache_iterator(config, 4, 0))["clip"].shape == (4, 1, 32)
    config.data.num_frames = 4
    with pytest.raises(DataError, match="num_frames"):  # the factory checks the fit before streaming
        make_latent_cache_iterator(config, 4, 0)
    with pytest.raises(DataError, match="does not exist"):
        LatentCacheIterator(str(tmp_path / "nowhere"), 4, 0)
    broken = tmp_path / "broken"
    shutil.copytree(cache, broken)
    with open(broken / "latents.npy", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(DataError, match="corrupt") as error:
        check_cache_matches(str(broken), load_config(CONFIG, OVERRIDES))
    assert "\n" not in str(error.value)
    # A cache written before first frames were cached still serves SF-V, and names the fix for denoise.
    older = tmp_path / "older"
    shutil.copytree(cache, older)
    index = json.load(open(older / "cache.json"))
    del index["keys"]["first_frame"]
    json.dump(index, open(older / "cache.json", "w"))
    os.remove(older / "first_frame.npy")
    assert set(next(LatentCacheIterator(str(older), 4, 0))) == set(KEYS)
    with pytest.raises(DataError, match="holds no first frames") as error:
        LatentCacheIterator(str(older), 4, 0, with_first_frame=True)
    assert "\n" not in str(error.value) and "encode_latents.py" in str(error.value)


def test_bad_input_exits_2_and_leaves_nothing_on_disk(cache, tmp_path, capsys, monkeypatch):
    before = {name: os.stat(os.path.join(cache, name)).st_mtime_ns for name in os.listdir(cache)}
    assert run_tool(cache) == 2
    assert "already exists" in capsys.readouterr().err
    assert {name: os.stat(os.path.join(cache, name)).st_mtime_ns for name in os.listdir(cache)} == before
    out = tmp_path / "out"
    assert tool().main(["--config", CONFIG, "--out", str(out), "--config.data.no_such_key=1"]) == 2
    assert "no_such_key" in capsys.readouterr().err
    assert run_tool(out, "--num-clips", "7") == 2
    assert "--num-clips 7" in capsys.readouterr().err
    assert tool().main(["--config", CONFIG, "--out", str(out), "--config.data.source=folder",
                        f"--config.data.path={tmp_path / 'no_videos'}"]) == 2
    assert "data.path" in capsys.readouterr().err

    from sfv_jax.data.synthetic import SyntheticVideos

    def broken_clip(self, index, rng):  # a source that fails part-way, after the output folder was started
        raise DataError(f"video {index} failed to decode")

    monkeypatch.setattr(SyntheticVideos, "clip", broken_clip)
    assert run_tool(out) == 2
    err = capsys.readouterr().err
    error_lines = [line for line in err.splitlines() if "error" in line]  # the progress bar shares stderr
    assert len(error_lines) == 1 and error_lines[0].startswith("encode_latents: error: video")
    assert os.listdir(tmp_path) == []  # neither the cache nor its temporary folder
