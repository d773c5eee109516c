"""The SF-V train state and the static model graphs it is applied with.

TrainState is a pytree of arrays only (pure nested dicts of parameters, optax states); the Flax NNX
graph definitions live in `SFVModels`, so a jitted step merges params into modules inside the trace.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from sfv_jax.models.clip import CLIPVisionConfig, CLIPVisionModelWithProjection
from sfv_jax.models.discriminator import HeadConfig, SFVDiscriminator, backbone_params_from_unet
from sfv_jax.models.init_rngs import StaticRngs
from sfv_jax.models.nnx_state import AbstractModel, param_metadata
from sfv_jax.models.options import ModelOptions
from sfv_jax.models.random_init import random_tree
from sfv_jax.models.unet import UNetSpatioTemporalConditionModel
from sfv_jax.models.unet_config import UNetConfig
from sfv_jax.models.vae import AutoencoderKLTemporalDecoder, VAEConfig
from sfv_jax.train.tree_stats import clip_by_global_norm


@flax.struct.dataclass
class TrainState:
    """Everything a train step reads and writes.

    Attributes:
      step: () int32 number of steps taken.
      rng: (2,) uint32 PRNG key for the next step.
      g_params: the generator UNet's params (nested dict, diffusers names).
      g_ema: EMA of g_params.
      d_heads: the 8 discriminator heads' params ({"spatial_heads": ..., "temporal_heads": ...}).
      backbone: the frozen discriminator backbone's params ({"backbone": ...}); never updated.
      g_opt, d_opt: optax states of the generator and head optimisers.
      encoders: the frozen {"vae": ..., "image_encoder": ...} params that encode video frames on the
        fly (sfv_jax.train.encode), or None when the batches hold pre-encoded latents; never updated.
    """

    step: jax.Array
    rng: jax.Array
    g_params: Any
    g_ema: Any
    d_heads: Any
    backbone: Any
    g_opt: Any
    d_opt: Any
    encoders: Any = None


def make_optimizer(optim, learning_rate: float) -> optax.GradientTransformation:
    """SM3 (optax.scale_by_sm3) or AdamW from config.optim, with optional global-norm clipping.

    The learning rate lives in the optimiser state (optax.inject_hyperparams), so a schedule or a test
    can change it without recompiling the step: opt_state.hyperparams["learning_rate"].
    """
    if optim.name not in ("sm3", "adamw"):
        raise ValueError(f"optim.name={optim.name!r}: use 'sm3' or 'adamw'")

    def build(learning_rate):
        parts = [clip_by_global_norm(optim.grad_clip)] if optim.grad_clip > 0 else []
        if optim.name == "sm3":
            parts += [optax.scale_by_sm3(b1=optim.b1, b2=optim.b2, eps=optim.eps), optax.scale_by_learning_rate(
                learning_rate)]
        else:
            parts.append(optax.adamw(learning_rate, b1=optim.b1, b2=optim.b2, eps=optim.eps,
                                     weight_decay=optim.weight_decay))
        return optax.chain(*parts)

    return optax.inject_hyperparams(build)(learning_rate=learning_rate)


class SFVModels:
    """Static graph definitions of G and D built abstractly from a config, and their optimisers.

    When the config has `vae` and `image_encoder` sections, the frozen encoders that turn video
    frames into the step's batch are built too (`encoders`). `activation_batch_axes` (e.g.
    ("data", "fsdp")) pins UNet activations to the batch sharding at block boundaries.
    """

    def __init__(self, config, activation_batch_axes: tuple[str, ...] = (), with_discriminator: bool = True):
        self.unet_config = UNetConfig.from_dict(config.unet.to_dict())
        self.options = ModelOptions(**config.model.to_dict(), activation_batch_axes=activation_batch_axes)
        g = AbstractModel(lambda rngs: UNetSpatioTemporalConditionModel(self.unet_config, self.options, rngs=rngs))
        self.g_graph, self.g_rest = g.graphdef, g.rest_state
        self.abstract_g = g.tree
        self._g_metadata = g.metadata()
        if with_discriminator:  # the denoise objective trains the UNet alone
            self.head_config = HeadConfig.from_dict(config.disc.to_dict())
            d = nnx.eval_shape(lambda: SFVDiscriminator(self.unet_config, self.head_config, self.options,
                                                        rngs=StaticRngs(0)))
            self.d_graph, backbone, heads, self.d_rest = nnx.split(
                d, nnx.All(nnx.Param, nnx.PathContains("backbone")), nnx.Param, ...)
            self.abstract_backbone = nnx.to_pure_dict(backbone)
            self.abstract_heads = nnx.to_pure_dict(heads)
            self._head_metadata = param_metadata(heads)
        self.encoders = None
        if "vae" in config and "image_encoder" in config:
            # Frozen encoders compute in the model dtype but never need activation constraints or remat.
            frozen = ModelOptions(**{**config.model.to_dict(), "remat": "none"})
            vae_config = VAEConfig.from_dict(config.vae.to_dict())
            clip_config = CLIPVisionConfig.from_dict(config.image_encoder.to_dict())
            self.encoders = {
                "vae": AbstractModel(lambda rngs: AutoencoderKLTemporalDecoder(vae_config, frozen, rngs=rngs)),
                "image_encoder": AbstractModel(
                    lambda rngs: CLIPVisionModelWithProjection(clip_config, frozen, rngs=rngs))}
        if with_discriminator:
            self.g_tx = make_optimizer(config.optim, config.optim.g_lr)
            self.d_tx = make_optimizer(config.optim, config.optim.d_lr)
        else:  # one model, one learning rate
            self.g_tx = make_optimizer(config.optim, config.optim.lr)

    def generator(self, g_params) -> UNetSpatioTemporalConditionModel:
        return nnx.merge(self.g_graph, g_params, self.g_rest)

    def discriminator(self, backbone, d_heads) -> SFVDiscriminator:
        return nnx.merge(self.d_graph, backbone, d_heads, self.d_rest)

    def random_generator_params(self, seed: int) -> dict:
        """Host-drawn torch-default init of the UNet (tests; a real run loads SVD weights)."""
        return random_tree(self.abstract_g, self._g_metadata, seed)

    def random_head_params(self, seed: int) -> dict:
        return random_tree(self.abstract_heads, self._head_metadata, seed)

    def vae(self, params) -> AutoencoderKLTemporalDecoder:
        return self.encoders["vae"].merge_tree(params)

    def image_encoder(self, params) -> CLIPVisionModelWithProjection:
        return self.encoders["image_encoder"].merge_tree(params)

    @property
    def abstract_encoders(self) -> dict | None:
        return None if self.encoders is None else {k: v.tree for k, v in self.encoders.items()}

    def random_encoder_params(self, seed: int, names: tuple[str, ...] | None = None) -> dict | None:
        """Torch-default random VAE (seed) and CLIP (seed + 1) params (tiny runs; a real run loads SVD's)."""
        if self.encoders is None:
            return None
        return {name: random_tree(model.tree, model.metadata(), seed + i)
                for i, (name, model) in enumerate(self.encoders.items()) if names is None or name in names}


def init_state(models: SFVModels, g_params, d_heads, seed: int, encoders=None) -> TrainState:
    """A step-0 state: G and its EMA from `g_params` (SVD weights), the frozen backbone copied from them.

    `encoders` ({"vae", "image_encoder"} params) go in as they are, for on-the-fly encoding.
    """
    backbone = backbone_params_from_unet(g_params, models.abstract_backbone["backbone"])
    # Copies, so the three trees never alias one buffer (donation would invalidate the others).
    copy = lambda tree: jax.tree.map(jnp.array, tree)
    return TrainState(step=jnp.zeros((), jnp.int32), rng=jax.random.PRNGKey(seed), g_params=g_params,
                      g_ema=copy(g_params), d_heads=d_heads, backbone={"backbone": copy(backbone)},
                      g_opt=models.g_tx.init(g_params), d_opt=models.d_tx.init(d_heads), encoders=encoders)


def abstract_state(models: SFVModels, with_encoders: bool = False) -> TrainState:
    """The state's shapes and dtypes without allocating it (jax.eval_shape)."""
    encoders = models.abstract_encoders if with_encoders else None
    return jax.eval_shape(lambda g, h, e: init_state(models, g, h, 0, e), models.abstract_g,
                          models.abstract_heads, encoders)


def new_state(config, models: SFVModels, g_params=None, encoders=None) -> TrainState:
    """init_state with random weights where none are given (seeded by config.seed)."""
    g_params = models.random_generator_params(config.seed) if g_params is None else g_params
    return init_state(models, g_params, models.random_head_params(config.seed + 1), config.seed, encoders)


def tree_bytes(tree) -> int:
    return int(sum(np.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))
