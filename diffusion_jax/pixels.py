"""The project's one rounding rule: model-space floats in [-1, 1] -> uint8 pixels.

Every picture, every FID image and every saved array of pixels goes through `quantize`, so a
PNG, the FID statistics and a figure hold the same bytes for the same float image. This module
sits below every user (the FID package, the methods, the figures, the workflows) in the layers
of pyproject.toml and imports nothing of the project but `errors`. `to_8bit` is the one rule
for image files wider than 8 bits (16-bit PNGs, 32-bit and float TIFFs); `psnr_from_mse` the
one PSNR formula (`psnr` of model-space images; the denoiser's of [0, 1] pixels).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
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


# PIL modes of more than 8 bits per pixel: `Image.convert` to an 8-bit mode clips them to 0..255
# (a 16-bit gradient came out 99.5% white), so `to_8bit` scales them first.
WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_MAX_16BIT = 65535


def to_8bit(img: Any, name: str) -> Any:
    """A PIL image of a `WIDE_MODES` mode as an 8-bit grey ("L") image, scaled, not clipped:
    16-bit and 32-bit integer values in 0..65535 map to round(v * 255 / 65535), float values in
    [0, 1] by `quantize_unit`. Any other mode (1, L, LA, P, RGB, RGBA, CMYK, ...) is returned
    as it is (PIL converts those correctly). No range is guessed: 32-bit integers outside
    0..65535 or floats outside [0, 1] raise `UserError` naming `name` (the file)."""
    if img.mode not in WIDE_MODES:
        return img
    from PIL import Image

    v = np.asarray(img)
    lo, hi = (float(v.min()), float(v.max())) if v.size else (0.0, 0.0)
    if img.mode == "F":
        if not (np.isfinite(v).all() and lo >= 0.0 and hi <= 1.0):
            raise UserError(
                f"{name} is a floating-point image with values in [{lo:g}, {hi:g}]; only [0, 1] "
                "is understood: save it as an 8- or 16-bit PNG."
            )
        return Image.fromarray(quantize_unit(v))
    if lo < 0 or hi > _MAX_16BIT:
        raise UserError(
            f"{name} is a 32-bit integer image with values in [{lo:g}, {hi:g}]; only 0..65535 "
            "(16 bits) is understood: save it as an 8- or 16-bit PNG."
        )
    scaled = np.floor(v.astype(np.float64) * (255 / _MAX_16BIT) + 0.5)
    return Image.fromarray(scaled.astype(np.uint8))


def psnr_from_mse(mse: Any, peak: float, floor: float) -> Any:
    """The one PSNR formula: 10 log10(peak^2 / max(MSE, floor)) dB, for an MSE in the units
    whose peak-to-peak range is `peak` (2 in model space, 1 on [0, 1] pixels). JAX arrays (also
    inside jit) stay JAX, anything else is NumPy."""
    xp = jnp if isinstance(mse, jax.Array) else np
    return 10.0 * xp.log10(peak**2 / xp.maximum(mse, floor))


def psnr(x: Any, ref: Any) -> Any:
    """Per-image PSNR (dB) of model-space images in [-1, 1] against `ref`: peak-to-peak 2, i.e.
    PSNR on [0, 1] pixels, 10 log10(4 / MSE) with MSE floored at 1e-12 (`psnr_from_mse`). NumPy
    arrays in float64, JAX arrays (also inside jit) in their own dtype; the mean runs over all
    axes but the first."""
    if isinstance(x, jax.Array) or isinstance(ref, jax.Array):
        mse = jnp.mean((x - ref) ** 2, axis=tuple(range(1, jnp.ndim(x))))
    else:
        mse = np.mean((np.asarray(x, np.float64) - ref) ** 2, axis=tuple(range(1, np.ndim(x))))
    return psnr_from_mse(mse, 2.0, 1e-12)
