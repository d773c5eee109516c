"""SF-V training at tiny widths (configs/tiny.py's UNet): CPU tests and smoke runs."""

import ml_collections

from configs import sfv_svd, svd_xt, tiny


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    del variant
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.unet = tiny.unet_config()
    config.model = svd_xt.model_options()
    config.data = ml_collections.ConfigDict(dict(num_frames=3, height=64, width=64, latent_scale=0.18215))
    config.global_batch_size = 4
    config.grad_accum_steps = 2
    config.total_steps = 200
    sfv_svd.add_train_sections(config)
    config.disc.num_groups = 8
    config.disc.proj_dim = 16
    config.disc.cond_embed_dim = 16
    config.sharding.fsdp_min_size = 1024
    config.lock()
    return config
