"""Gaussian filtering of NHWC batches (the blur baseline and the hybrid images' low-pass)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def gaussian_kernel(kernel_size: int, sigma: float) -> np.ndarray:
    """Normalised 1-D Gaussian taps (float32 [kernel_size]), kernel_size odd."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size={kernel_size} must be a positive odd integer")
    if not sigma > 0:
        raise ValueError(f"sigma={sigma} must be > 0")
    r = np.arange(kernel_size, dtype=np.float64) - kernel_size // 2
    k = np.exp(-0.5 * (r / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


def gaussian_blur(x: jax.Array, kernel_size: int = 5, sigma: float = 2.0) -> jax.Array:
    """Separable Gaussian blur of [B, H, W, C] with reflected borders (as torchvision's)."""
    taps = gaussian_kernel(kernel_size, sigma)
    r = kernel_size // 2
    if r >= min(x.shape[1], x.shape[2]):
        raise ValueError(f"kernel_size={kernel_size} is too large for {x.shape[1:3]} images")
    x = jnp.asarray(x, jnp.float32)
    for axis in (1, 2):
        pad = [(0, 0)] * 4
        pad[axis] = (r, r)
        xp = jnp.pad(x, pad, mode="reflect")
        n = x.shape[axis]
        x = sum(
            float(w) * jax.lax.slice_in_dim(xp, k, k + n, axis=axis) for k, w in enumerate(taps)
        )
    return x
