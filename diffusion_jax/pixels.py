"""The project's one rounding rule: model-space floats in [-1, 1] -> uint8 pixels.

Every picture, every FID image and every saved array of pixels goes through `quantize`, so a
PNG, the FID statistics and a figure hold the same bytes for the same float image. This module
sits below every user (the FID package, the methods, the figures, the workflows) in the layers
of pyproject.toml and imports nothing of the project but `errors`.
"""

from __future__ import annotations

import numpy as np

from diffusion_jax.errors import UserError


def quantize(x: np.ndarray) -> np.ndarray:
    """Model-space floats in [-1, 1] -> uint8 exactly as a saved PNG holds them.

    Rule (round half up, then clip): `floor((x + 1) * 127.5 + 0.5)` clipped to [0, 255], in
    the input's float dtype. This equals `np.clip((x + 1) * 127.5 + 0.5, 0, 255).astype(uint8)`
    (the cast truncates, which is floor for non-negative values), the array one would hand to
    PIL to write the PNG. It runs on the host so every backend gives identical bytes.
    """
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise UserError(f"quantize expects float images in [-1, 1]; got dtype {x.dtype}.")
    if not np.isfinite(x).all():
        raise UserError("images contain NaN or inf (did sampling diverge?); cannot quantize.")
    return np.clip((x + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8)


def quantize_unit(x: np.ndarray) -> np.ndarray:
    """[0, 1] floats (the course's pixel units) -> uint8 by the same rule: `quantize(2 x - 1)`,
    which is floor(255 x + 0.5) clipped to [0, 255].

    The arithmetic is float64: for a float32 x, `2 x - 1` and `+ 1` are then exact (x below
    2^-30 aside, which gives 0 either way) and `* 127.5` rounds the same product 255 x, so the
    bytes equal `floor(255 x + 0.5)` evaluated in float64.
    """
    return quantize(2.0 * np.asarray(x, np.float64) - 1.0)
