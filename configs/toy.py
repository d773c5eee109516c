"""The toy SVD stack trained on this repository's synthetic moving shapes: a VAE, a teacher, an SF-V student.

Variants (sfv_jax.train.objectives), chained by init_checkpoint (README "Toy SVD stack"):
  configs/toy.py:vae      objective vae: the temporal VAE (encoder + temporal decoder) from random weights.
  configs/toy.py:teacher  objective denoise: SVD's image-to-video diffusion objective; VAE from the vae run
                          (--config.init_checkpoint=VAE_WORKDIR), UNet and CLIP random (CLIP stays frozen).
  configs/toy.py:sfv      objective sfv: SF-V's adversarial fine-tuning of the teacher
                          (--config.init_checkpoint=TEACHER_WORKDIR).
  configs/toy.py:vae4x, :teacher4x, :sfv4x
                          the same stack on a finer latent grid: a VAE of three levels (4x downsampling, 16x16
                          latents for the 64x64 clips; the default's four levels give 8x8, on which a shape is 1-3
                          latent pixels wide). Being trained over several sessions (models/toy4x/,
                          BENCHMARKS.md "Toy SVD stack"); the shipped models/toy/ pair is the 8x stack.
The models are SVD's architecture at reduced widths, every block type kept (four UNet levels with spatio-temporal
resnets, cross-attention and temporal transformers; the VAE's four encoder levels and temporal decoder). Every
GroupNorm (32 groups, as in SVD) sees at least 2 channels: at 1 channel per group each channel is normalised
alone, which erases the time embedding the UNet's resnets add before their second norm (a teacher blind to the
noise level cannot denoise).
"""

import ml_collections

from configs import sfv_svd, svd_finetune, svd_xt

STAGES = ("vae", "teacher", "sfv")
GRIDS = {"": 8, "4x": 4}  # variant suffix -> the VAE's downsampling factor
VARIANTS = tuple(stage + suffix for suffix in GRIDS for stage in STAGES)
NUM_FRAMES, SIZE = 8, 64


def unet_config(downsample: int = 8) -> ml_collections.ConfigDict:
    config = svd_xt.unet_config(num_frames=NUM_FRAMES)
    config.sample_size = SIZE // downsample
    config.block_out_channels = (64, 64, 128, 128)
    config.num_attention_heads = (2, 2, 4, 4)
    config.layers_per_block = 1
    config.cross_attention_dim = 64
    config.addition_time_embed_dim = 16
    config.projection_class_embeddings_input_dim = 48  # 3 added time ids x addition_time_embed_dim
    return config


def vae_config(downsample: int = 8) -> ml_collections.ConfigDict:
    """SVD's VAE at toy widths; each level but the last halves the frames' size (four levels: 8x, three: 4x)."""
    config = svd_xt.vae_config()
    config.block_out_channels = {8: (64, 64, 128, 128), 4: (64, 128, 128)}[downsample]
    config.down_block_types = ("DownEncoderBlock2D",) * len(config.block_out_channels)
    config.layers_per_block = 1
    config.sample_size = SIZE
    # The toy VAE is trained with a KL weight that keeps its latents near unit variance, so the UNet sees them
    # unscaled (data.latent_scale below must equal this).
    config.scaling_factor = 1.0
    return config


def image_encoder_config() -> ml_collections.ConfigDict:
    """A 2-layer ViT (frozen, random): it only has to tell first frames apart."""
    config = svd_xt.image_encoder_config()
    config.hidden_size = 64
    config.intermediate_size = 128
    config.projection_dim = 64  # = the UNet's cross_attention_dim
    config.num_hidden_layers = 2
    config.num_attention_heads = 4
    return config


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}: use configs/toy.py:{' | configs/toy.py:'.join(VARIANTS)}")
    stage, suffix = (variant[:-2], variant[-2:]) if variant.endswith("4x") else (variant, "")
    downsample = GRIDS[suffix]
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.unet = unet_config(downsample)
    config.vae = vae_config(downsample)
    config.image_encoder = image_encoder_config()
    config.model = svd_xt.model_options()
    config.data = sfv_svd.data_section(num_frames=NUM_FRAMES, height=SIZE, width=SIZE)
    config.data.num_synthetic = 2048
    config.data.latent_scale = config.vae.scaling_factor
    config.global_batch_size = 8
    config.grad_accum_steps = 1
    sfv_svd.add_train_sections(config)  # objective sfv with its sections; the other variants replace them
    sfv_svd.add_run_sections(config)
    config.log_every = 10
    config.checkpoint_every = 100
    config.sample_every = 0
    config.eval.every = 50
    config.eval.clips = 16
    config.sfv.noise_aug_strength = 0.02
    if stage == "vae":
        config.objective = "vae"
        config.vae_loss = svd_finetune.vae_loss_section(decoder_only=False)
        # The VAE is convolutional, so 32x32 windows (one per clip, shared by its frames) teach it what whole
        # frames need at a fraction of the step time on this 2-core machine (BENCHMARKS.md "Toy SVD stack");
        # eval_loss still reconstructs whole 64x64 frames.
        config.vae_loss.crop = 32
        # From torch's default init (and from the identity start alone) the joint VAE learnt shapes within ~50
        # steps but stayed grey in hue for hundreds (BENCHMARKS.md "Toy SVD stack"): its encoder had no colour
        # code for the decoder to learn from. The pooling start gives it one: the encoder begins as f x f patch
        # means of the colours (sfv_jax.models.scratch_init), the decoder at the identity start, and both train.
        # L2, whose gradient shrinks with the error (L1's does not, so Adam's steps stay large near the answer).
        config.scratch_init = "pooling"
        config.vae_loss.recon = "l2"
        config.global_batch_size = 4
        config.optim = svd_finetune.single_model_optim(lr=2e-4, ema_decay=0.99)
        # The 4x VAE's held-out eval_loss is at the 8x one's 1000-step level by step ~150 and flat from ~400
        # (BENCHMARKS.md "Toy SVD stack", sessions 16 and 19).
        config.total_steps = 1000 if downsample == 8 else 500
        del config.sfv, config.disc
    elif stage == "teacher":
        config.objective = "denoise"
        config.denoise = svd_finetune.denoise_section()
        # SVD's noise levels (ln sigma ~ N(0.7, 1.6^2)) on both grids. Tried on the 4x grid: ln sigma ~ N(-0.5,
        # 1.4^2), EDM's ImageNet-64 choice rescaled to sigma_data = 1 (3x the steps below sigma 0.3, where shapes
        # are drawn crisp): its teacher moved shapes at the wrong speeds (speed distance 0.91 px/frame at step 1500
        # against 0.35 at step 1000 with SVD's levels), as the high levels that set the motion got a quarter of
        # the steps (BENCHMARKS.md "Toy SVD stack", session 19).
        config.optim = svd_finetune.single_model_optim(lr=2e-4, ema_decay=0.99)
        config.total_steps = 2000
        del config.disc
    else:
        config.sfv.r1_mode = "approx"  # [ours] the exact double backward doubles the step's compile time
        config.disc.proj_dim = 64
        config.disc.cond_embed_dim = 64
        # [ours] G learns at 10x the paper's 1e-5: the toy run is 1000 steps, not a long pod run. At the paper's
        # rate the one-step clips had barely moved from the teacher's after 310 steps (BENCHMARKS.md "Toy SVD stack").
        config.optim.g_lr = 1e-4
        config.total_steps = 1000
    config.lock()
    return config
