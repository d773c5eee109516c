"""The SVD architecture at tiny widths: every block type, for CPU tests and `make demo`."""

import ml_collections

from configs import svd_xt


def unet_config() -> ml_collections.ConfigDict:
    config = svd_xt.unet_config(num_frames=4)
    config.sample_size = 8
    config.block_out_channels = (32, 64, 64, 64)  # GroupNorm needs multiples of 32 channels
    config.num_attention_heads = (2, 4, 4, 4)
    config.cross_attention_dim = 32
    config.addition_time_embed_dim = 8
    config.projection_class_embeddings_input_dim = 24
    return config


def vae_config() -> ml_collections.ConfigDict:
    """Four blocks as in SVD (so latents are 1/8 of the image), at 32/64 channels."""
    config = svd_xt.vae_config()
    config.block_out_channels = (32, 32, 64, 64)
    config.layers_per_block = 1
    config.sample_size = 64
    return config


def image_encoder_config() -> ml_collections.ConfigDict:
    """A 2-layer ViT whose projection width is the UNet's cross_attention_dim."""
    config = svd_xt.image_encoder_config()
    config.hidden_size = 64
    config.intermediate_size = 128
    config.projection_dim = 32
    config.num_hidden_layers = 2
    config.num_attention_heads = 4
    return config


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    del variant
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.unet = unet_config()
    config.vae = vae_config()
    config.image_encoder = image_encoder_config()
    config.model = svd_xt.model_options()
    config.lock()
    return config
