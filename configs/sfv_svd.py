"""SF-V's paper run: adversarial fine-tuning of SVD (14-frame UNet) at 448x768, global batch 32 as 4 micro-steps.

Values marked [ours] in docs/method.md are fields here, not constants in code.
"""

import ml_collections

from configs import svd, svd_xt


def sfv_section() -> ml_collections.ConfigDict:
    """Noise levels and loss weights (docs/method.md sections 1-4)."""
    return ml_collections.ConfigDict(dict(
        sigma_min=0.002, sigma_max=700.0, rho=7.0,  # SVD's Karras range
        tg=4,  # G's schedule: trains at its top Tg - 1 levels
        td=1000, p_mean=-1.0, p_std=1.0,  # D's discretised lognormal over Td Karras levels
        lambda_recon=0.1,
        huber_c_scale=0.00054,  # [ours] c = huber_c_scale * sqrt(elements per sample)
        r1_mode="exact",  # [ours] exact | approx | off
        r1_gamma=1e-5,  # [ours]
        r1_approx_sigma=0.1,  # [ours] approx mode's input perturbation
        fps=7, motion_bucket_id=127, noise_aug_strength=0.02,  # [ours] SVD defaults during training
    ))


def disc_section() -> ml_collections.ConfigDict:
    """sfv_jax.models.discriminator.HeadConfig [ours]."""
    return ml_collections.ConfigDict(dict(hidden_channels=0, num_groups=32, proj_dim=256, out_kernel=1,
                                          leaky_slope=0.2, cond_embed_dim=256, norm_eps=1e-5,
                                          heads="spatial,temporal"))  # or "spatial" / "temporal": the ablation


def optim_section() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        name="sm3",  # sm3 | adamw
        g_lr=1e-5, d_lr=1e-4, b1=0.5, b2=0.999, eps=1e-8,
        weight_decay=0.0,  # adamw only
        grad_clip=0.0,  # [ours] global-norm clip, 0 = off
        ema_decay=0.95,
    ))


def sharding_section() -> ml_collections.ConfigDict:
    """Logical-axis rules (logical name -> mesh axis or axes) and the FSDP size threshold (elements)."""
    return ml_collections.ConfigDict(dict(
        rules=(("batch", ("data", "fsdp")), ("mlp", "tensor"), ("embed", None), ("conv", None), ("vector", None)),
        fsdp_min_size=2 ** 16,
    ))


def data_section(num_frames: int, height: int, width: int) -> ml_collections.ConfigDict:
    """Where training clips come from (sfv_jax.data) and how they become latents."""
    return ml_collections.ConfigDict(dict(
        source="synthetic",  # synthetic | folder | tfds
        path="",  # folder of videos (source=folder)
        tfds_name="", tfds_split="train", tfds_data_dir="",  # source=tfds ("" data_dir: TFDS's default)
        num_synthetic=64,  # clips in the synthetic dataset
        num_frames=num_frames, height=height, width=width,
        fps=7,  # [ours] frames per second clips are sampled at from their source videos
        latent_scale=0.18215,
        latents="encode",  # encode: frozen VAE + CLIP on the fly | cache: read data.latent_cache
        latent_cache="",  # written by tools/encode_latents.py
    ))


def add_run_sections(config: ml_collections.ConfigDict) -> None:
    """The training program's fields (sfv_jax.train.loop)."""
    config.init_checkpoint = ""  # an sfv-jax checkpoint of an SVD pipeline (sfv-jax convert); "" = random weights
    config.log_every = 10
    config.checkpoint_every = 1000
    config.keep_checkpoints = 3
    config.sample_every = 1000  # 0: no periodic samples
    config.max_consecutive_nonfinite = 10  # stop the run after this many skipped steps in a row
    config.micro_batch_loop = "auto"  # auto | scan | unroll (sfv_jax.train.accumulate.micro_batch_loop)
    # split | fused: the train step compiled as two programs (gradients, then the update) or one; split compiles in
    # much less time on XLA:CPU at the same step time (sfv_jax.parallel.step_programs)
    config.step_programs = "split"
    config.eval = eval_section()


def eval_section() -> ml_collections.ConfigDict:
    """Held-out evaluation (sfv_jax.data.heldout): `eval_loss` in metrics.jsonl every `every` steps (0 = off)."""
    return ml_collections.ConfigDict(dict(
        every=0,
        clips=8,  # the fixed held-out set (cut to a multiple of the batch devices)
        path="",  # data.source=folder: a folder of held-out videos
        tfds_split="test",  # data.source=tfds: the held-out split
    ))


def add_train_sections(config: ml_collections.ConfigDict) -> None:
    """SF-V's objective (sfv_jax.train.objectives) and its sections."""
    config.objective = "sfv"
    # [ours] how a component that starts without init_checkpoint is drawn: "torch" (torch's default init, what
    # diffusers builds) or "identity" (sfv_jax.models.scratch_init: residual branches and mixing convs start as the
    # identity; what the toy stack trains from)
    config.scratch_init = "torch"
    config.sfv = sfv_section()
    config.disc = disc_section()
    config.optim = optim_section()
    config.sharding = sharding_section()
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))  # -1: the remaining devices


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    del variant
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.unet = svd.get_config().unet  # 14-frame SVD UNet
    config.model = svd_xt.model_options()
    config.model.param_dtype = "float32"  # master weights
    config.model.dtype = "bfloat16"
    config.model.remat = "dots_no_batch"
    config.vae = svd_xt.vae_config()
    config.image_encoder = svd_xt.image_encoder_config()
    config.data = data_section(num_frames=14, height=448, width=768)
    config.global_batch_size = 32
    config.grad_accum_steps = 4
    config.total_steps = 50_000
    add_train_sections(config)
    add_run_sections(config)
    config.mesh.data = 1
    config.mesh.fsdp = -1
    config.lock()
    return config
