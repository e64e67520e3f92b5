"""The one uint8 rounding rule (`pixels.quantize`): round half up, clip, as a PNG holds it."""

from __future__ import annotations

import io

import numpy as np
import pytest

from diffusion_jax import fid, pixels
from diffusion_jax.errors import UserError
from diffusion_jax.pixels import quantize, quantize_unit


def _ulps_around(values: np.ndarray, n: int = 64) -> np.ndarray:
    """Every float32 within n ulps of each value (positive values only)."""
    bits = np.asarray(values, np.float32).view(np.int32)
    return (bits[:, None] + np.arange(-n, n + 1, dtype=np.int32)).ravel().view(np.float32)


def test_quantize_equals_png_roundtrip() -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    x = rng.uniform(-1.1, 1.1, (16, 16, 3)).astype(np.float32)
    # Exact half-way points: (x + 1) * 127.5 + 0.5 lands on an integer -> rounds up.
    x[0, :4, 0] = np.array([k / 127.5 - 1 - 0.5 / 127.5 for k in (1, 2, 100, 255)], np.float32)
    png = io.BytesIO()
    Image.fromarray(np.clip((x + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8)).save(png, "PNG")
    png.seek(0)
    saved = np.asarray(Image.open(png))
    np.testing.assert_array_equal(quantize(x), saved)
    np.testing.assert_array_equal(
        quantize(np.array([-1.0, 1.0, 0.0, -2.0, 3.0])), [0, 255, 128, 0, 255]
    )


def test_quantize_rounds_half_up_at_every_boundary() -> None:
    """x = 0 is an exact half-way point ((0 + 1) * 127.5 = 127.5): it goes up to 128, a little
    below stays at 127. Around every boundary (x + 1) * 127.5 = k + 0.5 the result is the rule
    in the input's dtype, monotone in x, and each of 0..255 occurs."""
    for dtype in (np.float32, np.float64):
        x = np.array([0.0, -(2.0**-10), 2.0**-10, -1.0, 1.0], dtype)
        np.testing.assert_array_equal(quantize(x), [128, 127, 128, 0, 255])
    half = np.float32((np.arange(255) + 0.5) / 127.5 - 1.0)
    x = np.concatenate(
        [-_ulps_around(-half[half < 0]), np.float32([0]), _ulps_around(half[half > 0])]
    )
    x = np.sort(x)
    assert x.dtype == np.float32
    f = np.float32
    want = np.clip(np.floor((x + f(1)) * f(127.5) + f(0.5)), 0, 255).astype(np.uint8)
    got = quantize(x)
    np.testing.assert_array_equal(got, want)
    assert np.all(np.diff(got.astype(int)) >= 0)
    assert set(got.tolist()) == set(range(256))


def test_quantize_unit_is_quantize_of_2x_minus_1() -> None:
    """[0, 1] pixels (the denoiser's units): floor(255 x + 0.5) in float64, clipped, for every
    float32 near each rounding boundary, and the clip outside [0, 1]."""
    edges = np.float32((np.arange(256) + 0.5) / 255)
    x = np.concatenate([_ulps_around(edges), np.float32([0, 1, 2**-31, 1e-38])])
    want = np.clip(np.floor(np.float64(x) * 255.0 + 0.5), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(quantize_unit(x), want)
    np.testing.assert_array_equal(quantize_unit(np.float32([-0.3, 0.5, 1.7])), [0, 128, 255])


def test_quantize_rejects_nan_and_ints() -> None:
    with pytest.raises(UserError, match="NaN"):
        quantize(np.array([0.0, np.nan]))
    with pytest.raises(UserError, match="float"):
        quantize(np.zeros(3, np.uint8))
    with pytest.raises(UserError, match="NaN"):
        quantize_unit(np.array([np.inf]))


def test_fid_reexports_the_one_rule() -> None:
    assert fid.quantize is pixels.quantize
