"""SF-V training at tiny widths (configs/tiny.py's UNet): CPU tests and smoke runs.

Variant "micro" (configs/tiny_sfv.py:micro): a one-block UNet (one cross-attention down and up block),
every layer type of SVD in the smallest train step XLA compiles: `make demo` and the training tests.
"""

import ml_collections

from configs import sfv_svd, svd_xt, tiny


def micro_unet(config: ml_collections.ConfigDict) -> None:
    config.layers_per_block = 1
    # 64 channels: SVD's GroupNorms have 32 groups, and at 32 channels each channel is normalised alone, which
    # erases the time embedding the resnets add before their second norm (G could not see the noise level).
    config.block_out_channels = (64,)
    config.down_block_types = ("CrossAttnDownBlockSpatioTemporal",)
    config.up_block_types = ("CrossAttnUpBlockSpatioTemporal",)
    config.num_attention_heads = (2,)


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    if variant not in ("", "micro"):
        raise ValueError(f"unknown variant {variant!r}: use configs/tiny_sfv.py or configs/tiny_sfv.py:micro")
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.unet = tiny.unet_config()
    if variant == "micro":
        micro_unet(config.unet)
    config.model = svd_xt.model_options()
    config.vae = tiny.vae_config()
    config.image_encoder = tiny.image_encoder_config()
    config.data = sfv_svd.data_section(num_frames=3, height=64, width=64)
    config.data.num_synthetic = 16
    config.global_batch_size = 4
    config.grad_accum_steps = 2
    config.total_steps = 200
    sfv_svd.add_train_sections(config)
    sfv_svd.add_run_sections(config)
    config.log_every = 1
    config.checkpoint_every = 50
    config.sample_every = 0
    config.disc.num_groups = 8
    config.disc.proj_dim = 16
    config.disc.cond_embed_dim = 16
    config.sharding.fsdp_min_size = 1024
    if variant == "micro":
        config.sfv.r1_mode = "approx"  # exact R1 (a double backward) roughly doubles the step's compile time
    config.lock()
    return config
