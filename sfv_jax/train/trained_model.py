"""The models a training workdir holds: G (EMA or raw) from its latest checkpoint, plus the frozen VAE and CLIP.

Used by SFVPipeline.from_pretrained(WORKDIR) and `sfv-jax export --checkpoint WORKDIR`. Only the
needed parts of the train state are read (Orbax partial restore), not the optimiser states.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp
from flax import nnx

from sfv_jax.convert.weight_files import read_json_object
from sfv_jax.errors import CheckpointError
from sfv_jax.models.options import ModelOptions
from sfv_jax.train import workdir as wd
from sfv_jax.train.checkpoints import TrainCheckpoints


def load_trained_modules(workdir: str, ema: bool = True, options: ModelOptions | None = None,
                         step: int | None = None) -> tuple[dict[str, nnx.Module], dict, int]:
    """({"unet", "vae", "image_encoder"} modules, pipeline files, step) of a training workdir.

    ema: the generator's EMA weights (default, what SF-V samples with) or the raw trained ones.
    """
    from sfv_jax.train.state import SFVModels
    workdir = os.path.abspath(workdir)
    if not wd.is_workdir(workdir):
        raise CheckpointError(f"{workdir}: not a training workdir (no {wd.CONFIG} and {wd.CHECKPOINTS}/)")
    config = wd.read_config(workdir)
    checkpoints = TrainCheckpoints(os.path.join(workdir, wd.CHECKPOINTS), keep=None, async_save=False)
    step = checkpoints.latest_step() if step is None else step
    checkpoints.close()
    if step is None:
        raise CheckpointError(f"{workdir}: has no complete checkpoint yet; train at least checkpoint_every steps")
    model_config = config.model.to_dict()
    models = SFVModels(config)
    if models.encoders is None:
        raise CheckpointError(f"{workdir}: its config has no vae / image_encoder; export needs them")
    g_key = "g_ema" if ema else "g_params"
    struct = lambda tree: jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)
    target = {g_key: struct(models.abstract_g), "encoders": struct(models.abstract_encoders)}
    path = os.path.join(workdir, wd.CHECKPOINTS, str(step), "state")
    try:
        restored = ocp.PyTreeCheckpointer().restore(path, args=ocp.args.PyTreeRestore(
            item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True))
    except (ValueError, KeyError, FileNotFoundError) as e:
        raise CheckpointError(f"{path}: cannot read G and the encoders ({str(e).splitlines()[0]})") from None
    restored = jax.device_put(restored)  # host numpy -> device arrays the jitted stages take without copies
    options = options or ModelOptions(**model_config)
    serving = models if options == models.options else _models_with(config, options)
    modules = {"unet": serving.generator(restored[g_key]), "vae": serving.vae(restored["encoders"]["vae"]),
               "image_encoder": serving.image_encoder(restored["encoders"]["image_encoder"])}
    pipeline_path = os.path.join(workdir, wd.PIPELINE)
    pipeline = read_json_object(pipeline_path) if os.path.isfile(pipeline_path) else None
    return modules, pipeline, step


def _models_with(config, options: ModelOptions):
    """SFVModels of `config` computing with other ModelOptions (e.g. bf16 sampling of a float32 run)."""
    from sfv_jax.train.state import SFVModels
    config = config.copy_and_resolve_references()
    with config.unlocked():
        for field in ("param_dtype", "dtype", "attention", "remat"):
            config.model[field] = getattr(options, field)
    return SFVModels(config)
