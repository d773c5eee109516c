"""SVD-XT (stabilityai/stable-video-diffusion-img2vid-xt): the 25-frame UNet, as in its unet/config.json."""

import ml_collections


def unet_config(num_frames: int = 25) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        sample_size=96,
        in_channels=8,
        out_channels=4,
        down_block_types=("CrossAttnDownBlockSpatioTemporal",) * 3 + ("DownBlockSpatioTemporal",),
        up_block_types=("UpBlockSpatioTemporal",) + ("CrossAttnUpBlockSpatioTemporal",) * 3,
        block_out_channels=(320, 640, 1280, 1280),
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=768,
        layers_per_block=2,
        cross_attention_dim=1024,
        transformer_layers_per_block=1,
        num_attention_heads=(5, 10, 20, 20),
        num_frames=num_frames,
    ))


def model_options() -> ml_collections.ConfigDict:
    """sfv_jax.models.ModelOptions: storage/compute dtypes, attention kernel, remat policy."""
    return ml_collections.ConfigDict(dict(param_dtype="float32", dtype="float32", attention="xla", remat="none"))


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    del variant
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.unet = unet_config(num_frames=25)
    config.model = model_options()
    config.lock()
    return config
