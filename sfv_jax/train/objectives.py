"""What `config.objective` trains: sfv (SF-V's adversarial step), denoise (SVD's diffusion objective on the UNet)
or vae (the temporal VAE). The training loop, checkpoints and export are the same for all three; an objective
only says what the state holds, how it starts, how clips become a batch, the step, the held-out loss, the
periodic sample, and where the workdir's checkpoint index finds each model.

Interface (every objective):
  name, progress_keys           the metrics shown on the progress bar
  abstract_state()              the state's shapes (jax.eval_shape)
  initial_weights(shardings)    ({component: params}, pipeline files, {component: "checkpoint" | "random"})
  init_state(weights)           the step-0 state (jit with out_shardings)
  frozen_encoders(state)        what encode() reads from the state
  encode(encoders, frames uint8 (B, T, H, W, 3), key) -> batch
  latent_cache                  how it reads a latent cache (data.latents="cache"): None (it cannot: it trains
                                on frames), "as_is" (the cached rows are the batch) or "recondition" (the rows
                                and first frames, through recondition(encoders, rows, key) -> batch)
  step(state, batch) -> (state, metrics)       pure; jitted by the loop
  eval_loss(state, batch) -> ()                 held-out loss, deterministic
  sample(state, first_frames uint8 (B, H, W, 3), key) -> uint8 (B, T, H, W, 3), or sample = None
  index()                       ({component: abstract module}, {component: state tree}, {component: raw tree})
  with_learning_rates(state, optim)             the state with the config's learning rates (--reconfigure)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sfv_jax.errors import ConfigError
from sfv_jax.models.nnx_state import AbstractModel
from sfv_jax.models.options import ModelOptions
from sfv_jax.models.random_init import random_tree
from sfv_jax.models.scratch_init import scratch_params
from sfv_jax.models.vae import AutoencoderKLTemporalDecoder, VAEConfig
from sfv_jax.train.denoise_step import DenoiseTrainStep
from sfv_jax.train.encode import frames_to_unit_range, make_encode_fn, make_recondition_fn
from sfv_jax.train.init import Component, initial_components
from sfv_jax.train.model_state import ModelTrainState, init_model_state
from sfv_jax.train.samples import make_euler_sample_fn, make_sample_fn
from sfv_jax.train.state import SFVModels, abstract_state, init_state, make_optimizer
from sfv_jax.train.step import make_train_step, reconstruction_eval
from sfv_jax.train.vae_step import VAETrainStep

OBJECTIVES = ("sfv", "denoise", "vae")
ENCODERS = ("vae", "image_encoder")


def objective_name(config) -> str:
    """config.objective ("sfv" where a config predates the field)."""
    return config.get("objective", "sfv")


def _set_lr(opt_state, lr):
    old = opt_state.hyperparams["learning_rate"]
    value = jax.device_put(jnp.asarray(lr, old.dtype), old.sharding)
    return opt_state._replace(hyperparams={**opt_state.hyperparams, "learning_rate": value})


def _encoder_components(models: SFVModels, seed: int, shardings, required: bool) -> dict[str, Component]:
    """The frozen VAE (random seed + 2) and CLIP (seed + 3) of a state's `encoders`."""
    targets = getattr(shardings, "encoders", None) or {}
    return {name: Component(models.abstract_encoders[name],
                            lambda name=name: models.random_encoder_params(seed + 2, (name,))[name],
                            required, targets.get(name)) for name in ENCODERS}


def _from_scratch(config, draw):
    """The random-weights source of a trained component: draw() (torch's init) as config.scratch_init says."""
    return lambda: scratch_params(draw(), config.get("scratch_init", "torch"))


class SFVObjective:
    """SF-V's adversarial fine-tuning (sfv_jax.train.step); the state is sfv_jax.train.state.TrainState."""

    name = "sfv"
    progress_keys = ("g_loss", "d_loss")
    latent_cache = "as_is"  # one fixed noise strength (sfv.noise_aug_strength): the cached image_latent is right

    def __init__(self, config, batch_axes: tuple[str, ...] | None = None):
        self.config = config
        self.models = SFVModels(config, activation_batch_axes=batch_axes or ())
        self.step = make_train_step(config, self.models, batch_axes)
        self.encode = make_encode_fn(config, self.models)
        self.sample = self._sample if config.sample_every > 0 else None
        self._sample_fn = make_sample_fn(config, self.models)

    def abstract_state(self):
        return abstract_state(self.models, with_encoders=True)

    def initial_weights(self, shardings=None, names: tuple[str, ...] | None = None):
        seed, models = self.config.seed, self.models
        components = {"unet": Component(models.abstract_g, lambda: models.random_generator_params(seed), True,
                                        getattr(shardings, "g_params", None)),
                      **_encoder_components(models, seed, shardings, required=True)}
        components = {k: v for k, v in components.items() if names is None or k in names}
        weights, pipeline, origin = initial_components(self.config.init_checkpoint, models.options, components)
        if names is None:  # D's heads always start random (seed + 1); the backbone is copied from the UNet
            weights["heads"] = models.random_head_params(seed + 1)
        return weights, pipeline, origin

    def init_state(self, weights):
        return init_state(self.models, weights["unet"], weights["heads"], self.config.seed,
                          {name: weights[name] for name in ENCODERS})

    def frozen_encoders(self, state):
        return state.encoders

    def eval_loss(self, state, batch):
        """G's mean pseudo-Huber reconstruction over its training levels (fixed noise), raw weights."""
        return reconstruction_eval(self.config, self.models, state.g_params, batch)

    def _sample(self, state, first_frames, key):
        return self._sample_fn(state.g_ema, state.encoders, first_frames, key)

    def index(self):
        m = self.models
        modules = {"unet": m.generator(m.abstract_g), "vae": m.vae(m.abstract_encoders["vae"]),
                   "image_encoder": m.image_encoder(m.abstract_encoders["image_encoder"])}
        return (modules, {"unet": "g_ema", "vae": "encoders.vae", "image_encoder": "encoders.image_encoder"},
                {"unet": "g_params"})

    def with_learning_rates(self, state, optim):
        return state.replace(g_opt=_set_lr(state.g_opt, optim.g_lr), d_opt=_set_lr(state.d_opt, optim.d_lr))


class DenoiseObjective:
    """SVD's image-to-video diffusion objective (sfv_jax.train.denoise_step): fine-tuning SVD, or a teacher.

    The UNet starts from init_checkpoint when it holds one (else random); the frozen VAE and CLIP likewise.
    """

    name = "denoise"
    progress_keys = ("loss",)
    latent_cache = "recondition"  # the noise strength is drawn per clip and step: the first frame is re-encoded

    def __init__(self, config, batch_axes: tuple[str, ...] | None = None):
        self.config = config
        self.models = SFVModels(config, activation_batch_axes=batch_axes or (), with_discriminator=False)
        self.step = DenoiseTrainStep(config, self.models, batch_axes)
        self.encode = make_encode_fn(config, self.models, drawn_noise_aug=True)
        self.recondition = make_recondition_fn(config, self.models, drawn_noise_aug=True)
        self.sample = self._sample if config.sample_every > 0 else None
        self._sample_fn = make_euler_sample_fn(config, self.models, config.denoise.sample_steps)

    def abstract_state(self):
        return jax.eval_shape(self.init_state, {"unet": self.models.abstract_g, **self.models.abstract_encoders})

    def initial_weights(self, shardings=None, names: tuple[str, ...] | None = None):
        seed, models = self.config.seed, self.models
        scratch = _from_scratch(self.config, lambda: models.random_generator_params(seed))
        components = {"unet": Component(models.abstract_g, scratch, False, getattr(shardings, "params", None)),
                      **_encoder_components(models, seed, shardings, required=False)}
        components = {k: v for k, v in components.items() if names is None or k in names}
        return initial_components(self.config.init_checkpoint, models.options, components)

    def init_state(self, weights):
        return init_model_state(weights["unet"], self.models.g_tx, self.config.seed,
                                {name: weights[name] for name in ENCODERS})

    def frozen_encoders(self, state):
        return state.encoders

    def eval_loss(self, state, batch):
        return self.step.eval_loss(state.params, batch)

    def _sample(self, state, first_frames, key):
        return self._sample_fn(state.ema, state.encoders, first_frames, key)

    def index(self):
        m = self.models
        modules = {"unet": m.generator(m.abstract_g), "vae": m.vae(m.abstract_encoders["vae"]),
                   "image_encoder": m.image_encoder(m.abstract_encoders["image_encoder"])}
        return (modules, {"unet": "ema", "vae": "encoders.vae", "image_encoder": "encoders.image_encoder"},
                {"unet": "params"})

    def with_learning_rates(self, state, optim):
        return state.replace(opt=_set_lr(state.opt, optim.lr))


class VAEModels:
    """The temporal VAE's graph (config.vae, computing with config.model's options) and its optimiser."""

    def __init__(self, config):
        self.options = ModelOptions(**config.model.to_dict())
        vae_config = VAEConfig.from_dict(config.vae.to_dict())
        self.model = AbstractModel(lambda rngs: AutoencoderKLTemporalDecoder(vae_config, self.options, rngs=rngs))
        self.abstract = self.model.tree
        self.tx = make_optimizer(config.optim, config.optim.lr)

    def vae(self, params) -> AutoencoderKLTemporalDecoder:
        return self.model.merge_tree(params)

    def random_params(self, seed: int) -> dict:
        return random_tree(self.model.tree, self.model.metadata(), seed)


class VAEObjective:
    """The temporal VAE as a KL autoencoder (sfv_jax.train.vae_step); starts from init_checkpoint's VAE or random
    (seed + 2, the VAE a random pipeline of the same seed would get)."""

    name = "vae"
    progress_keys = ("recon", "kl")
    latent_cache = None  # it learns the encoding: it trains on frames
    sample = None  # a VAE has nothing to sample from a first frame

    def __init__(self, config, batch_axes: tuple[str, ...] | None = None):
        self.config = config
        self.models = VAEModels(config)
        self.step = VAETrainStep(config, self.models, batch_axes)

    def abstract_state(self):
        return jax.eval_shape(self.init_state, {"vae": self.models.abstract})

    def initial_weights(self, shardings=None, names: tuple[str, ...] | None = None):
        models = self.models
        scratch = _from_scratch(self.config, lambda: models.random_params(self.config.seed + 2))
        components = {"vae": Component(models.abstract, scratch, True, getattr(shardings, "params", None))}
        return initial_components(self.config.init_checkpoint, models.options, components)

    def init_state(self, weights):
        return init_model_state(weights["vae"], self.models.tx, self.config.seed)

    def frozen_encoders(self, state):
        return None

    @staticmethod
    def encode(encoders, frames, key):
        del encoders, key
        return {"video": frames_to_unit_range(frames)}

    def eval_loss(self, state, batch):
        return self.step.eval_loss(state.params, batch)

    def index(self):
        return {"vae": self.models.vae(self.models.abstract)}, {"vae": "ema"}, {"vae": "params"}

    def with_learning_rates(self, state, optim):
        return state.replace(opt=_set_lr(state.opt, optim.lr))


def make_objective(config, batch_axes: tuple[str, ...] | None = None):
    """The objective config.objective names; a ConfigError (one line) for an unknown one or missing sections."""
    name, cls = objective_name(config), objective_class(config)
    needs = {"sfv": ("sfv", "disc", "vae", "image_encoder"), "denoise": ("sfv", "denoise", "vae", "image_encoder"),
             "vae": ("vae", "vae_loss")}
    missing = [section for section in needs[name] if section not in config]
    if missing:
        raise ConfigError(f"objective={name!r} needs the config sections {', '.join(missing)}; start from "
                          f"configs/toy.py or configs/sfv_svd.py")
    return cls(config, batch_axes)


def objective_class(config):
    """The class of the objective config.objective names (its class attributes, without building it); a
    ConfigError (one line) for an unknown name."""
    name = objective_name(config)
    classes = {"sfv": SFVObjective, "denoise": DenoiseObjective, "vae": VAEObjective}
    if name not in classes:
        raise ConfigError(f"objective={name!r} is unknown; use one of {', '.join(OBJECTIVES)}")
    return classes[name]
