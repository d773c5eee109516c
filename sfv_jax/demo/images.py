"""Stand-in input images for demos and tests (no downloads)."""

from __future__ import annotations

import numpy as np
import PIL.Image


def synthetic_image(height: int, width: int, seed: int) -> PIL.Image.Image:
    """A smooth colour gradient with a disc: a deterministic stand-in for a photo."""
    yy, xx = np.mgrid[0:height, 0:width] / np.array([height, width])[:, None, None]
    rng = np.random.default_rng(seed)
    cy, cx, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.15, 0.3)
    disc = ((yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2)[..., None]
    rgb = np.stack([xx, yy, 1 - xx], -1) * (1 - disc) + disc * np.array([1.0, 0.8, 0.2])
    return PIL.Image.fromarray((rgb * 255).astype(np.uint8))
