"""Rules between transformers' CLIPVisionModelWithProjection keys and sfv-jax's.

Linear and conv weights, biases and the LayerNorms follow the common rules; the special cases are
the bare class_embedding parameter, the position embedding table (an nn.Embedding weight, which
must not be transposed like a Linear) and transformers' misspelt `pre_layrnorm`, which the common
norm-name pattern does not recognise.
"""

from sfv_jax.convert.rulebook import COMMON_RULES, Rule

CLIP_RULES = (
    Rule("{m}.embeddings.class_embedding", "{m}.embeddings.class_embedding"),
    Rule("{m}.embeddings.position_embedding.weight", "{m}.embeddings.position_embedding"),
    Rule("{m}.pre_layrnorm.weight", "{m}.pre_layrnorm.scale"),
    Rule("{m}.pre_layrnorm.bias", "{m}.pre_layrnorm.bias"),
) + COMMON_RULES
