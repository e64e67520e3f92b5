"""Visual anagrams (Geng et al. 2024) and hybrid images (factorized diffusion, Geng et al. 2024).

Both are denoise functions built from a class-conditional ``cond_fn(x, t, labels) -> eps`` with
classifier-free guidance on every term (`samplers.classifier_free_guidance`: null label =
num_classes, the two branches interleaved); generate with `denoise.generate`. Every term runs in
one batched forward (views or components stacked along the batch).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from diffusion_jax import samplers
from diffusion_jax.diffusion import DenoiseFn
from diffusion_jax.edit.denoise import CondFn, check_labels
from diffusion_jax.edit.filters import gaussian_blur

View = tuple[Callable[[jax.Array], jax.Array], Callable[[jax.Array], jax.Array]]

# name -> (view, inverse) on NHWC batches; all are orthogonal pixel maps, so a view's inverse
# applied to a noise estimate is again a noise estimate (Geng et al.'s condition).
VIEWS: dict[str, View] = {
    "identity": (lambda x: x, lambda x: x),
    "vflip": (lambda x: x[:, ::-1], lambda x: x[:, ::-1]),  # upside down
    "hflip": (lambda x: x[:, :, ::-1], lambda x: x[:, :, ::-1]),  # mirror
    "rot180": (lambda x: x[:, ::-1, ::-1], lambda x: x[:, ::-1, ::-1]),
    "rot90": (lambda x: jnp.rot90(x, 1, (1, 2)), lambda x: jnp.rot90(x, -1, (1, 2))),  # ccw
    "rot270": (lambda x: jnp.rot90(x, -1, (1, 2)), lambda x: jnp.rot90(x, 1, (1, 2))),  # cw
    "negate": (lambda x: -x, lambda x: -x),
}


def view(name: str) -> View:
    if name not in VIEWS:
        raise ValueError(f"unknown view {name!r}; use one of {tuple(VIEWS)}")
    return VIEWS[name]


def anagram_fn(
    cond_fn: CondFn,
    views: Sequence[str],
    labels: Sequence[jax.Array],
    *,
    guidance: float,
    num_classes: int,
) -> DenoiseFn:
    """eps(x) = mean over views v of v^-1(eps_cfg(v(x), c_v)); labels[k] ([B]) for views[k].

    The result is an image x that shows class c_k when looked at through view k (e.g. 6 upright
    and 9 under "rot180"). Views must keep the shape (90-degree rotations need square images).
    """
    if len(views) != len(labels) or not views:
        raise ValueError(f"{len(views)} views for {len(labels)} label sets; give one per view")
    fns = [view(v) for v in views]
    ys = jnp.concatenate([check_labels(y, num_classes) for y in labels])
    guided = samplers.classifier_free_guidance(cond_fn, ys, guidance, num_classes)
    n = len(fns)

    def fn(x, t):
        if x.shape[1] != x.shape[2] and any(v in ("rot90", "rot270") for v in views):
            raise ValueError(f"90-degree views need square images, got {x.shape[1:3]}")
        eps = guided(jnp.concatenate([f(x) for f, _ in fns]), jnp.tile(t, n))
        parts = jnp.split(eps, n)
        return sum(inv(p) for (_, inv), p in zip(fns, parts, strict=True)) / n

    return fn


def hybrid_fn(
    cond_fn: CondFn,
    low_labels: jax.Array,
    high_labels: jax.Array,
    *,
    guidance: float,
    num_classes: int,
    kernel_size: int = 7,
    sigma: float = 1.0,
) -> DenoiseFn:
    """eps = lowpass(eps_cfg(x, c_low)) + highpass(eps_cfg(x, c_high)), highpass = 1 - lowpass.

    The low-pass is a Gaussian blur of the noise estimates. Defaults for 28-32 px images: the
    paper's sigma 2 (kernel 33) at 64 px scaled to 28-32 px is sigma ~1 (kernel 7 = 2 ceil(3
    sigma) + 1): from close up the image shows c_high, from afar (downscaled) c_low.
    """
    ys = jnp.concatenate(
        [check_labels(low_labels, num_classes), check_labels(high_labels, num_classes)]
    )
    guided = samplers.classifier_free_guidance(cond_fn, ys, guidance, num_classes)

    def fn(x, t):
        eps_low, eps_high = jnp.split(guided(jnp.concatenate([x, x]), jnp.tile(t, 2)), 2)
        return (
            gaussian_blur(eps_low, kernel_size, sigma)
            + eps_high
            - gaussian_blur(eps_high, kernel_size, sigma)
        )

    return fn
