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


def vae_config() -> ml_collections.ConfigDict:
    """The temporal VAE, as in vae/config.json."""
    return ml_collections.ConfigDict(dict(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=768,
        scaling_factor=0.18215, force_upcast=True))


def image_encoder_config() -> ml_collections.ConfigDict:
    """The OpenCLIP ViT-H/14 vision tower with projection, as in image_encoder/config.json."""
    return ml_collections.ConfigDict(dict(
        hidden_size=1280, intermediate_size=5120, projection_dim=1024, num_hidden_layers=32, num_attention_heads=16,
        num_channels=3, image_size=224, patch_size=14, hidden_act="gelu", layer_norm_eps=1e-5))


def model_options() -> ml_collections.ConfigDict:
    """sfv_jax.models.ModelOptions: storage/compute dtypes, attention kernel, remat policy."""
    return ml_collections.ConfigDict(dict(param_dtype="float32", dtype="float32", attention="xla", remat="none"))


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    del variant
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.unet = unet_config(num_frames=25)
    config.vae = vae_config()
    config.image_encoder = image_encoder_config()
    config.model = model_options()
    config.lock()
    return config
