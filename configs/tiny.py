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


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    del variant
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.unet = unet_config()
    config.model = svd_xt.model_options()
    config.lock()
    return config
