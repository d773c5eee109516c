"""The weight-free files of a Stable Video Diffusion pipeline folder, as SVD-XT ships them.

Used to write a complete diffusers pipeline folder for models that did not come from one (the
demo's random pipeline, a model trained from scratch); same structure as read_pipeline_configs.
"""

from __future__ import annotations

import copy

MODEL_INDEX = {
    "_class_name": "StableVideoDiffusionPipeline",
    "_diffusers_version": "0.42.1",
    "feature_extractor": ["transformers", "CLIPImageProcessor"],
    "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
    "scheduler": ["diffusers", "EulerDiscreteScheduler"],
    "unet": ["diffusers", "UNetSpatioTemporalConditionModel"],
    "vae": ["diffusers", "AutoencoderKLTemporalDecoder"],
}

SCHEDULER_CONFIG = {
    "_class_name": "EulerDiscreteScheduler", "_diffusers_version": "0.42.1", "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "beta_start": 0.00085, "final_sigmas_type": "zero",
    "interpolation_type": "linear", "num_train_timesteps": 1000, "prediction_type": "v_prediction",
    "rescale_betas_zero_snr": False, "sigma_max": 700.0, "sigma_min": 0.002, "steps_offset": 1,
    "timestep_spacing": "leading", "timestep_type": "continuous", "trained_betas": None, "use_beta_sigmas": False,
    "use_exponential_sigmas": False, "use_karras_sigmas": True,
}

FEATURE_EXTRACTOR_CONFIG = {
    "crop_size": {"height": 224, "width": 224}, "do_center_crop": True, "do_convert_rgb": True, "do_normalize": True,
    "do_rescale": True, "do_resize": True, "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_processor_type": "CLIPImageProcessor", "image_std": [0.26862954, 0.26130258, 0.27577711],
    "resample": 3, "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": 224},
}


def svd_pipeline_files() -> dict:
    """{"model_index": ..., "files": {relative path: JSON}}, for write_diffusers_folder(pipeline=...)."""
    return copy.deepcopy({"model_index": MODEL_INDEX, "files": {
        "scheduler/scheduler_config.json": SCHEDULER_CONFIG,
        "feature_extractor/preprocessor_config.json": FEATURE_EXTRACTOR_CONFIG}})
