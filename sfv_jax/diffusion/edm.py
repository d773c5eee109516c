"""EDM preconditioning (v-prediction, sigma_data = 1) and SVD's Karras noise levels.

The formulas are those of diffusers' EulerDiscreteScheduler configured as SVD's scheduler
(prediction_type v_prediction, timestep_type continuous, use_karras_sigmas, final sigma 0,
timestep_spacing leading); see docs/method.md section 1.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

SIGMA_MIN = 0.002  # SVD's scheduler config
SIGMA_MAX = 700.0
RHO = 7.0


def c_skip(sigma):
    """Weight of the noisy input in the denoised estimate: 1 / (sigma^2 + 1)."""
    return 1.0 / (sigma ** 2 + 1.0)


def c_out(sigma):
    """Weight of the network output in the denoised estimate: -sigma / sqrt(sigma^2 + 1)."""
    return -sigma / jnp.sqrt(sigma ** 2 + 1.0)


def c_in(sigma):
    """Scale of the noisy input fed to the network: 1 / sqrt(sigma^2 + 1)."""
    return 1.0 / jnp.sqrt(sigma ** 2 + 1.0)


def c_noise(sigma):
    """The UNet's timestep for noise level sigma: 0.25 * ln(sigma)."""
    return 0.25 * jnp.log(sigma)


def denoise(model_output, noisy, sigma):
    """x0_hat = c_out * F + c_skip * x, in diffusers' order of operations (v-prediction)."""
    return model_output * (-sigma / (sigma ** 2 + 1.0) ** 0.5) + noisy / (sigma ** 2 + 1.0)


def karras_sigmas(num_steps: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX,
                  rho: float = RHO) -> np.ndarray:
    """The `num_steps` Karras levels from sigma_max down to sigma_min, then a final 0: (num_steps + 1,) float32.

    Computed in float64 and rounded to float32 as diffusers' _convert_to_karras + set_timesteps do.
    One step gives [sigma_max, 0].
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    ramp = np.linspace(0, 1, num_steps)
    min_inv, max_inv = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (max_inv + ramp * (min_inv - max_inv)) ** rho
    return np.concatenate([sigmas, [0.0]]).astype(np.float32)


def init_noise_sigma(sigma_max: float = SIGMA_MAX) -> float:
    """Scale of the initial unit noise: sqrt(sigma_max^2 + 1) in float32 (timestep_spacing "leading")."""
    s = np.float32(sigma_max)
    return float((s ** np.float32(2) + np.float32(1)) ** np.float32(0.5))


@dataclasses.dataclass(frozen=True)
class NoiseSchedule:
    """The parts of a diffusers EulerDiscreteScheduler config that SVD sampling uses."""

    sigma_min: float = SIGMA_MIN
    sigma_max: float = SIGMA_MAX
    rho: float = RHO

    @classmethod
    def from_scheduler_config(cls, config: Mapping[str, Any] | None) -> "NoiseSchedule":
        """From a scheduler_config.json dict; None or missing sigmas fall back to SVD's 0.002 / 700.

        Raises ValueError for a scheduler this sampler does not reproduce.
        """
        if not config:
            return cls()
        checks = {"prediction_type": "v_prediction", "use_karras_sigmas": True, "final_sigmas_type": "zero"}
        bad = [f"{k}={config.get(k)!r} (expected {v!r})" for k, v in checks.items() if k in config and config[k] != v]
        if config.get("timestep_spacing", "leading") in ("linspace", "trailing"):
            bad.append(f"timestep_spacing={config['timestep_spacing']!r} (expected 'leading')")
        if bad:
            raise ValueError("unsupported scheduler config: " + ", ".join(bad))
        return cls(sigma_min=float(config.get("sigma_min") or SIGMA_MIN),
                   sigma_max=float(config.get("sigma_max") or SIGMA_MAX))

    def sigmas(self, num_steps: int) -> np.ndarray:
        return karras_sigmas(num_steps, self.sigma_min, self.sigma_max, self.rho)

    @property
    def init_noise_sigma(self) -> float:
        return init_noise_sigma(self.sigma_max)
