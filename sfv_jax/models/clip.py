"""Flax NNX port of transformers' CLIPVisionModelWithProjection (SVD's image encoder), channels-last.

Attribute names follow transformers' state-dict keys (vision_model.encoder.layers.0.self_attn.q_proj,
...), so sfv_jax/convert/clip_rules.py only spells out the embeddings and the misspelt pre_layrnorm.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from sfv_jax.models.attention import dot_product_attention
from sfv_jax.models.layers import LayerNorm, linear
from sfv_jax.models.options import ModelOptions, remat_call

MODEL_TYPE = "clip_vision_model"
ARCHITECTURE = "CLIPVisionModelWithProjection"

ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # transformers' "gelu" is the exact erf GELU
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
}

# transformers config.json keys that describe training, initialisation or bookkeeping: they do not
# change the forward pass of a frozen image encoder, so reading them would only add failure modes.
IGNORED_KEYS = frozenset({
    "architectures", "model_type", "transformers_version", "torch_dtype", "dtype", "initializer_range",
    "initializer_factor", "dropout", "attention_dropout", "return_dict", "output_hidden_states", "output_attentions",
    "torchscript", "use_bfloat16", "pruned_heads", "tie_word_embeddings", "chunk_size_feed_forward",
    "is_encoder_decoder", "is_decoder", "add_cross_attention", "cross_attention_hidden_size", "tie_encoder_decoder",
    "id2label", "label2id", "problem_type", "tokenizer_class", "prefix", "bos_token_id", "pad_token_id",
    "eos_token_id", "sep_token_id", "decoder_start_token_id", "task_specific_params", "finetuning_task",
    "max_length", "min_length", "do_sample", "early_stopping", "num_beams", "num_beam_groups", "diversity_penalty",
    "temperature", "top_k", "top_p", "typical_p", "repetition_penalty", "length_penalty", "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size", "bad_words_ids", "num_return_sequences", "output_scores",
    "return_dict_in_generate", "forced_bos_token_id", "forced_eos_token_id", "remove_invalid_values",
    "exponential_decay_length_penalty", "suppress_tokens", "begin_suppress_tokens",
})


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig:
    """The fields of transformers' CLIPVisionConfig that define the forward pass (transformers' defaults).

    SVD uses ViT-H/14: hidden 1280, intermediate 5120, 32 layers, 16 heads, projection 1024, "gelu".
    """

    hidden_size: int = 768
    intermediate_size: int = 3072
    projection_dim: int = 512
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 32
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5

    def __post_init__(self):
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act={self.hidden_act!r} is not supported; use one of {sorted(ACTIVATIONS)}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} does not split into {self.num_attention_heads} heads")
        for name in ("image_size", "patch_size"):
            if not isinstance(getattr(self, name), int):
                raise ValueError(f"{name}={getattr(self, name)!r}: only square images and patches (an int) are supported")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")

    @property
    def num_positions(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> "CLIPVisionConfig":
        """From a transformers config.json dict; keys that would change the maths and are unknown are an error.

        model_type, when present, must be clip_vision_model and architectures must list
        CLIPVisionModelWithProjection (a plain CLIPVisionModel has no visual projection).
        """
        model_type = config.get("model_type", MODEL_TYPE)
        if model_type != MODEL_TYPE:
            raise ValueError(f"config is for model_type {model_type!r}, not {MODEL_TYPE!r} "
                             f"(a {ARCHITECTURE} image encoder)")
        architectures = config.get("architectures") or [ARCHITECTURE]
        if ARCHITECTURE not in architectures:
            raise ValueError(f"config is for {architectures}, not {ARCHITECTURE}")
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in config.items() if not k.startswith("_") and k not in IGNORED_KEYS}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise ValueError(f"unsupported CLIP vision config keys {unknown}; known keys: {sorted(fields)}")
        values = {k: (v[0] if isinstance(v, (list, tuple)) and len(set(v)) == 1 else v) for k, v in values.items()}
        return cls(**values)

    def to_transformers_dict(self, dtype: str = "float32") -> dict[str, Any]:
        """The config.json transformers writes for CLIPVisionModelWithProjection."""
        return {"architectures": [ARCHITECTURE], "model_type": MODEL_TYPE, "attention_dropout": 0.0,
                "initializer_factor": 1.0, "initializer_range": 0.02, "dtype": dtype,
                "transformers_version": "5.24.0", **dataclasses.asdict(self)}


class CLIPVisionEmbeddings(nnx.Module):
    """Patchify (conv, no bias), prepend the class token, add learned position embeddings."""

    def __init__(self, config: CLIPVisionConfig, options: ModelOptions, rngs: nnx.Rngs):
        dim, p = config.hidden_size, config.patch_size
        self.patch_embedding = nnx.Conv(config.num_channels, dim, (p, p), strides=p, padding="VALID", use_bias=False,
                                        dtype=options.compute_dtype, param_dtype=options.params_dtype, rngs=rngs)
        init = nnx.initializers.normal(0.02)
        self.class_embedding = nnx.Param(init(rngs.params(), (dim,), options.params_dtype))
        self.position_embedding = nnx.Param(init(rngs.params(), (config.num_positions, dim), options.params_dtype))

    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        """(B, S, S, C) -> (B, 1 + (S/p)^2, D); patches in row-major order, as torch's flatten(2)."""
        patches = self.patch_embedding(pixel_values)
        batch, _, _, dim = patches.shape
        patches = patches.reshape(batch, -1, dim)
        cls = jnp.broadcast_to(self.class_embedding[...].astype(patches.dtype), (batch, 1, dim))
        return jnp.concatenate([cls, patches], axis=1) + self.position_embedding[...].astype(patches.dtype)


class CLIPAttention(nnx.Module):
    """Multi-head self-attention with biased q/k/v/out projections, scale 1/sqrt(head_dim)."""

    def __init__(self, config: CLIPVisionConfig, options: ModelOptions, rngs: nnx.Rngs):
        dim = config.hidden_size
        self.heads = config.num_attention_heads
        self.implementation = options.attention
        self.k_proj = linear(dim, dim, options, rngs)
        self.v_proj = linear(dim, dim, options, rngs)
        self.q_proj = linear(dim, dim, options, rngs)
        self.out_proj = linear(dim, dim, options, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, L, D) -> (B, L, D)."""
        batch, length, dim = x.shape
        split = lambda t: t.reshape(batch, length, self.heads, dim // self.heads)
        out = dot_product_attention(split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x)),
                                    self.implementation)
        return self.out_proj(out.reshape(batch, length, dim))


class CLIPMLP(nnx.Module):
    """fc1 -> activation (computed in float32) -> fc2."""

    def __init__(self, config: CLIPVisionConfig, options: ModelOptions, rngs: nnx.Rngs):
        self.hidden_act = config.hidden_act
        self.fc1 = linear(config.hidden_size, config.intermediate_size, options, rngs)
        self.fc2 = linear(config.intermediate_size, config.hidden_size, options, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.fc1(x)
        h = ACTIVATIONS[self.hidden_act](h.astype(jnp.float32)).astype(h.dtype)
        return self.fc2(h)


class CLIPEncoderLayer(nnx.Module):
    """Pre-LN transformer layer: x + attn(LN1(x)), then x + mlp(LN2(x))."""

    def __init__(self, config: CLIPVisionConfig, options: ModelOptions, rngs: nnx.Rngs):
        self.self_attn = CLIPAttention(config, options, rngs)
        self.layer_norm1 = LayerNorm(config.hidden_size, config.layer_norm_eps, options)
        self.mlp = CLIPMLP(config, options, rngs)
        self.layer_norm2 = LayerNorm(config.hidden_size, config.layer_norm_eps, options)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nnx.Module):
    def __init__(self, config: CLIPVisionConfig, options: ModelOptions, rngs: nnx.Rngs):
        self.remat = options.remat
        self.layers = nnx.List([CLIPEncoderLayer(config, options, rngs) for _ in range(config.num_hidden_layers)])

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.layers:
            x = remat_call(self.remat, layer, x)
        return x


class CLIPVisionTransformer(nnx.Module):
    """transformers' CLIPVisionModel body: embeddings, pre_layrnorm (sic), encoder, post_layernorm on CLS."""

    def __init__(self, config: CLIPVisionConfig, options: ModelOptions, rngs: nnx.Rngs):
        self.embeddings = CLIPVisionEmbeddings(config, options, rngs)
        self.pre_layrnorm = LayerNorm(config.hidden_size, config.layer_norm_eps, options)
        self.encoder = CLIPEncoder(config, options, rngs)
        self.post_layernorm = LayerNorm(config.hidden_size, config.layer_norm_eps, options)

    def __call__(self, pixel_values: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(B, S, S, C) -> (last_hidden_state (B, L, D), pooled CLS output (B, D))."""
        hidden = self.encoder(self.pre_layrnorm(self.embeddings(pixel_values)))
        return hidden, self.post_layernorm(hidden[:, 0])


class CLIPVisionModelWithProjection(nnx.Module):
    """SVD's image encoder: normalised 224x224 images -> image_embeds (not L2-normalised)."""

    def __init__(self, config: CLIPVisionConfig, options: ModelOptions = ModelOptions(), *, rngs: nnx.Rngs):
        self.config = config
        self.options = options
        self.vision_model = CLIPVisionTransformer(config, options, rngs)
        self.visual_projection = linear(config.hidden_size, config.projection_dim, options, rngs, use_bias=False)

    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        """pixel_values (B, S, S, C), CLIP-normalised (see clip_preprocess) -> image_embeds (B, projection_dim)."""
        expected = (self.config.image_size, self.config.image_size, self.config.num_channels)
        if tuple(pixel_values.shape[1:]) != expected:
            raise ValueError(f"pixel_values of shape {pixel_values.shape}: expected (B, {', '.join(map(str, expected))})")
        _, pooled = self.vision_model(pixel_values.astype(self.options.compute_dtype))
        return self.visual_projection(pooled)
