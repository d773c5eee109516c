"""Fine-tuning SVD (objective denoise): its image-to-video diffusion objective on the 14-frame UNet, VAE and CLIP
frozen, from a converted SVD checkpoint (--config.init_checkpoint=CKPT), on your videos.

Variant "decoder" (configs/svd_finetune.py:decoder): fine-tunes the temporal VAE's decoder instead (objective vae,
encoder frozen), as SVD did. Values marked [ours] in docs/method.md section 7 are fields here.
"""

import ml_collections

from configs import sfv_svd, svd, svd_xt


def denoise_section() -> ml_collections.ConfigDict:
    """SVD's image-to-video objective (docs/method.md section 7)."""
    return ml_collections.ConfigDict(dict(
        p_mean=0.7, p_std=1.6,  # SVD's image-to-video fine-tuning noise distribution (its paper's appendix)
        cond_drop_prob=0.1,  # [ours] both image conditions dropped together, as CFG's unconditional branch
        noise_aug_p_mean=-3.0, noise_aug_p_std=0.5,  # [ours] ln(conditioning noise strength) ~ N(mean, std^2)
        eval_sigmas=(0.2, 1.0, 5.0, 25.0),  # [ours] the held-out loss averages these levels
        sample_steps=16,  # [ours] Euler steps of the periodic samples (no guidance)
    ))


def vae_loss_section(decoder_only: bool) -> ml_collections.ConfigDict:
    """The vae objective's loss (sfv_jax.train.vae_step) [ours]."""
    return ml_collections.ConfigDict(dict(recon="l1", recon_weight=1.0, kl_weight=1e-3, decoder_only=decoder_only,
                                          crop=0))


def single_model_optim(lr: float, ema_decay: float) -> ml_collections.ConfigDict:
    """AdamW for one model (the denoise and vae objectives read optim.lr) [ours]."""
    return ml_collections.ConfigDict(dict(name="adamw", lr=lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0,
                                          grad_clip=1.0, ema_decay=ema_decay))


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    if variant not in ("", "decoder"):
        raise ValueError(f"unknown variant {variant!r}: use configs/svd_finetune.py or configs/svd_finetune.py:decoder")
    config = sfv_svd.get_config()
    config.unlock()
    del config.disc
    config.unet = svd.get_config().unet
    config.image_encoder = svd_xt.image_encoder_config()
    config.total_steps = 10_000
    if variant == "decoder":
        config.objective = "vae"
        config.vae_loss = vae_loss_section(decoder_only=True)
        config.optim = single_model_optim(lr=1e-5, ema_decay=0.999)
        del config.sfv
    else:
        config.objective = "denoise"
        config.denoise = denoise_section()
        config.optim = single_model_optim(lr=1e-5, ema_decay=0.999)
    config.lock()
    return config
