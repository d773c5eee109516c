"""Noise levels for SF-V training (docs/method.md sections 2 and 3).

G trains at the top Tg - 1 Karras levels of a Tg-level schedule (sigma in {2.269, 70.54, 700.0} for
Tg = 4 and SVD's range); D re-noises at sigma' drawn from a lognormal discretised over Td Karras levels.
Level maths comes from sfv_jax.diffusion.edm.karras_sigmas.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from sfv_jax.diffusion.edm import karras_sigmas


def karras_levels(num_levels: int, sigma_min: float, sigma_max: float, rho: float) -> np.ndarray:
    """The num_levels Karras levels in ascending order, s_0 = sigma_min ... s_(T-1) = sigma_max, float64."""
    return np.sort(karras_sigmas(num_levels, sigma_min, sigma_max, rho)[:-1].astype(np.float64))


def generator_levels(tg: int, sigma_min: float, sigma_max: float, rho: float) -> np.ndarray:
    """G's training levels: the Tg - 1 highest of Tg Karras levels (t = 1..Tg-1), ascending."""
    if tg < 2:
        raise ValueError(f"Tg must be >= 2, got {tg}")
    return karras_levels(tg, sigma_min, sigma_max, rho)[1:]


def discriminator_probs(td: int, sigma_min: float, sigma_max: float, rho: float, p_mean: float,
                        p_std: float) -> tuple[np.ndarray, np.ndarray]:
    """(levels s_1..s_(Td-1), probabilities) of D's discretised lognormal, float64.

    p(s_t) is proportional to erf((ln s_t - P_mean)/(sqrt2 P_std)) - erf((ln s_(t-1) - P_mean)/(sqrt2 P_std)).
    """
    levels = karras_levels(td, sigma_min, sigma_max, rho)
    z = (np.log(levels) - p_mean) / (math.sqrt(2.0) * p_std)
    cdf = np.array([math.erf(v) for v in z])
    probs = np.diff(cdf)
    return levels[1:], probs / probs.sum()


class NoiseSampler:
    """Draws G's sigma (uniform over its levels) and D's sigma' (discretised lognormal), jit-friendly."""

    def __init__(self, tg: int, td: int, sigma_min: float, sigma_max: float, rho: float, p_mean: float,
                 p_std: float):
        self.g_levels = generator_levels(tg, sigma_min, sigma_max, rho)
        self.d_levels, self.d_probs = discriminator_probs(td, sigma_min, sigma_max, rho, p_mean, p_std)

    @classmethod
    def from_config(cls, sfv) -> "NoiseSampler":
        return cls(sfv.tg, sfv.td, sfv.sigma_min, sfv.sigma_max, sfv.rho, sfv.p_mean, sfv.p_std)

    def generator_sigma(self, key: jax.Array, batch: int) -> jax.Array:
        """(batch,) float32 sigma, uniform over the Tg - 1 generator levels."""
        idx = jax.random.randint(key, (batch,), 0, len(self.g_levels))
        return jnp.asarray(self.g_levels, jnp.float32)[idx]

    def discriminator_sigma(self, key: jax.Array, batch: int) -> jax.Array:
        """(batch,) float32 sigma' from the discretised lognormal over the Td Karras levels."""
        logits = jnp.asarray(np.log(np.maximum(self.d_probs, 1e-300)), jnp.float32)
        idx = jax.random.categorical(key, logits, shape=(batch,))
        return jnp.asarray(self.d_levels, jnp.float32)[idx]
