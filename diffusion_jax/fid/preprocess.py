"""Turning uint8 images into the Inception's 299x299 input, under two named protocols.

- `tf` (default; TTUR / StyleGAN / EDM / clean-fid "legacy_tensorflow" numbers): float pixels in
  [0, 255], TF1 `resize_bilinear(align_corners=False, half_pixel_centers=False)` (source
  coordinate `dst * in/out`, no half-pixel shift), then `(x - 128) / 128`.
- `pytorch_fid` (pytorch-fid numbers): `x / 255`, torch `F.interpolate(mode="bilinear",
  align_corners=False, antialias=False)` (half-pixel centres), then `2x - 1`.

Both resizes are separable, so each is two small interpolation matrices applied by einsum
(exact to float32 rounding, fast, no gather). The matrix weights are computed in float32
with the same formulas as the TF and torch CPU kernels.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.errors import UserError
from diffusion_jax.fid.inception import INPUT_SIZE

PROTOCOLS = ("tf", "pytorch_fid")
_HIGHEST = jax.lax.Precision.HIGHEST


def check_protocol(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise UserError(f"Unknown FID protocol {protocol!r}; choose one of {PROTOCOLS}.")
    return protocol


@functools.lru_cache(maxsize=32)
def resize_matrix(in_size: int, out_size: int, protocol: str) -> np.ndarray:
    """`[out_size, in_size]` float32 bilinear interpolation weights along one axis."""
    check_protocol(protocol)
    f32 = np.float32
    i = np.arange(out_size, dtype=f32)
    scale = f32(in_size) / f32(out_size)
    if protocol == "tf":  # tensorflow/core/kernels/image/resize_bilinear_op.cc, LegacyScaler
        src = i * scale
        lower = np.floor(src)
        upper = np.minimum(np.ceil(src), in_size - 1).astype(np.int64)
    else:  # aten/src/ATen/native/UpSample.h, area_pixel_compute_source_index (not cubic)
        # The compiled kernel fuses `scale * (i + 0.5) - 0.5` into one FMA (a single rounding);
        # the float64 product is exact, so this reproduces torch's weights bit for bit.
        exact = np.float64(scale) * (i.astype(np.float64) + 0.5) - 0.5
        src = np.maximum(exact.astype(f32), f32(0))
        lower = np.floor(src)
        upper = np.minimum(lower.astype(np.int64) + 1, in_size - 1)
    lerp = (src - lower).astype(np.float64)
    m = np.zeros((out_size, in_size), np.float64)
    rows = np.arange(out_size)
    np.add.at(m, (rows, lower.astype(np.int64)), 1.0 - lerp)
    np.add.at(m, (rows, upper), lerp)
    return m.astype(np.float32)


def resize(x: jax.Array, protocol: str, size: int = INPUT_SIZE) -> jax.Array:
    """Bilinear resize of float `[N, H, W, C]` to `[N, size, size, C]` under `protocol`."""
    ry = jnp.asarray(resize_matrix(x.shape[1], size, protocol))
    rx = jnp.asarray(resize_matrix(x.shape[2], size, protocol))
    x = jnp.einsum("oh,nhwc->nowc", ry, x, precision=_HIGHEST)
    return jnp.einsum("pw,nowc->nopc", rx, x, precision=_HIGHEST)


def preprocess(images: jax.Array, protocol: str = "tf") -> jax.Array:
    """uint8 `[N, H, W, 1|3]` -> float32 `[N, 299, 299, 3]` network input (jit-friendly)."""
    check_protocol(protocol)
    x = images.astype(jnp.float32)
    if x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    if protocol == "tf":
        return (resize(x, "tf") - 128.0) * (1.0 / 128.0)
    return 2.0 * resize(x / 255.0, "pytorch_fid") - 1.0


def check_images(images: object) -> np.ndarray:
    """Returns `images` as uint8 NHWC with 1 or 3 channels, or raises a UserError naming why."""
    if not hasattr(images, "dtype") or not hasattr(images, "shape"):
        raise UserError(f"FID images must be a uint8 array [N, H, W, C]; got {type(images)}.")
    shape, dtype = tuple(images.shape), images.dtype
    if dtype != np.uint8 or len(shape) != 4 or shape[-1] not in (1, 3) or 0 in shape[1:]:
        raise UserError(
            f"FID images must be uint8 [N, H, W, C] with C in {{1, 3}} (values 0..255); got "
            f"shape {shape} dtype {dtype}. Quantize float images with "
            "diffusion_jax.pixels.quantize first; add a channel axis to [N, H, W] grayscale."
        )
    return np.asarray(images)
