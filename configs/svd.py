"""SVD (stabilityai/stable-video-diffusion-img2vid): identical to SVD-XT but trained for 14 frames."""

from configs import svd_xt


def get_config(variant: str = ""):
    config = svd_xt.get_config(variant)
    config.unet.num_frames = 14
    return config
