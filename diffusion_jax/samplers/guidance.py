"""Classifier-free guidance (Ho & Salimans 2022) as a denoise function any sampler takes."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from diffusion_jax.diffusion import DenoiseFn


def classifier_free_guidance(
    cond_fn: Callable[[jax.Array, jax.Array, jax.Array], jax.Array],
    labels: jax.Array,
    guidance: float,
    num_classes: int,
) -> DenoiseFn:
    """Denoise function eps_null + guidance * (eps_labels - eps_null) (Ho & Salimans 2022).

    ``guidance=1`` is the plain conditional model and ``0`` the unconditional one (a single
    forward each); otherwise both branches run as one batched forward of size 2B, interleaved
    (rows 2b and 2b + 1 are image b's conditional and null branch), so on a batch split over
    devices each device evaluates both branches of its own images: no collectives.
    The null label is ``num_classes`` (``UNet.null_label``). Guidance acts on eps, so every
    sampler (DDPM, DDIM, DPM-Solver++, which converts eps to x_0 itself) takes the result.
    """
    if num_classes <= 0:
        raise ValueError(
            f"guidance needs a class-conditional model (num_classes > 0), got "
            f"num_classes={num_classes}"
        )
    labels = jnp.asarray(labels, jnp.int32)
    static = isinstance(guidance, (int, float))

    def denoise_fn(x: jax.Array, t: jax.Array) -> jax.Array:
        null = jnp.full_like(labels, num_classes)
        if static and guidance == 1:
            return cond_fn(x, t, labels)
        if static and guidance == 0:
            return cond_fn(x, t, null)
        b = x.shape[0]
        pairs = jnp.stack([labels, null], axis=1).reshape(2 * b)
        eps = cond_fn(jnp.repeat(x, 2, axis=0), jnp.repeat(t, 2), pairs)
        eps = eps.reshape(b, 2, *eps.shape[1:])
        eps_cond, eps_null = eps[:, 0], eps[:, 1]
        return eps_null + guidance * (eps_cond - eps_null)

    return denoise_fn
