"""The layout of a training workdir, and reading a finished (or running) one back.

WORKDIR/
  sfv_jax.json       an sfv-jax checkpoint index whose weights are the latest train state's models: G or the UNet
                     (EMA, or raw), VAE and CLIP (objectives sfv and denoise), the VAE alone (objective vae);
                     SFVPipeline.from_pretrained(WORKDIR) and `sfv-jax export` read it (sfv_jax.checkpoint)
  config.json        the run's full config (written at the first start; replaced by a --reconfigure resume)
  reconfigure.log    one line per --reconfigure resume: time, step, changed keys (sfv_jax.train.config_diff)
  pipeline.json      the weight-free pipeline files (scheduler, feature extractor, model index) to export with
  checkpoints/<step>/{state,data}   Orbax train-state checkpoints without the frozen fields (sfv_jax.train.checkpoints)
  frozen/            the state's frozen fields (discriminator backbone, VAE and CLIP), written once at the first save
  metrics.jsonl      one JSON object per logged step
  tensorboard/       TensorBoard event files
  samples/step_<N>.gif   one-step samples of G's EMA weights
"""

from __future__ import annotations

import json
import os

import ml_collections

from sfv_jax.fileio import read_json_object

CONFIG = "config.json"
PIPELINE = "pipeline.json"
CHECKPOINTS = "checkpoints"
FROZEN = "frozen"
# The state fields no step updates (sfv_jax.train.state.TrainState, sfv_jax.train.model_state.ModelTrainState),
# written once into FROZEN rather than into every step's checkpoint.
FROZEN_FIELDS = ("backbone", "encoders")
METRICS = "metrics.jsonl"
TENSORBOARD = "tensorboard"
SAMPLES = "samples"


def is_workdir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, CONFIG)) and os.path.isdir(os.path.join(path, CHECKPOINTS))


def write_checkpoint_index(workdir: str, config: ml_collections.ConfigDict, objective) -> None:
    """Writes WORKDIR/sfv_jax.json (see the layout above) for the run's sfv_jax.train.objectives objective: the
    models it trains or holds, each read from its tree of the latest train state."""
    from sfv_jax.checkpoint import write_train_state_index
    modules, trees, raw_trees = objective.index()
    pipeline_path = os.path.join(workdir, PIPELINE)
    extra = {"pipeline": read_json_object(pipeline_path)} if os.path.isfile(pipeline_path) else {}
    extra["objective"] = objective.name
    write_train_state_index(workdir, modules, trees=trees, raw_trees=raw_trees, train_checkpoints=CHECKPOINTS,
                            frozen={"folder": FROZEN, "fields": list(FROZEN_FIELDS)}, options=config.model.to_dict(),
                            extra=extra)


def write_json_atomic(path: str, value: dict) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2)
    os.replace(tmp, path)


def read_config(workdir: str) -> ml_collections.ConfigDict:
    """The run's config as saved in WORKDIR/config.json (locked)."""
    config = ml_collections.ConfigDict(read_json_object(os.path.join(workdir, CONFIG)))
    config.lock()
    return config


def config_to_dict(config: ml_collections.ConfigDict) -> dict:
    """JSON-safe nested dict of a config (tuples become lists)."""
    return json.loads(config.to_json())


def truncate_metrics(path: str, last_step: int) -> None:
    """Drops the lines of steps after `last_step` (logged after the checkpoint a resumed run restarts from)."""
    if not os.path.isfile(path):
        return
    kept = []
    with open(path) as f:
        for line in f:
            try:
                if json.loads(line)["step"] <= last_step:
                    kept.append(line)
            except (ValueError, KeyError):
                break  # a line cut by a kill: everything after it is dropped too
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.writelines(kept)
    os.replace(tmp, path)
