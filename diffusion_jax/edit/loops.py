"""The denoising loop every edit shares: strided DDIM/DDPM steps from a given x_t, one fori_loop.

A step from timestep t to t' < t (t' = -1 meaning x_0) predicts x0_hat from eps (clipped to
[-1, 1] by default, eps recomputed from it) and draws

    x_t' = sqrt(abar_t') x0_hat + sqrt(1 - abar_t' - sigma^2) eps + sigma z,
    sigma = eta sqrt((1 - abar_t') / (1 - abar_t) (1 - abar_t / abar_t')),

i.e. DDIM (Song et al. 2021); eta = 1 (the default) is the ancestral DDPM step over the strided
pair, the posterior q(x_t' | x_t, x0_hat) that the course's iterative denoising uses.

Randomness is per image: ``keys`` holds one key per image (`samplers.image_keys`). Image b's
noise at loop iteration i is ``fold_in(fold_in(key_b, 1), i)``; the noise that forward-noises a
known image (inpainting) ``fold_in(fold_in(key_b, 2), i)``, RePaint's re-noising
``fold_in(fold_in(key_b, 3), i)``; initial noise (SDEdit's start, generation) ``fold_in(key_b, 0)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import samplers
from diffusion_jax.diffusion import (
    DenoiseFn,
    Schedule,
    q_sample,
)

INIT, STEP, KNOWN, RENOISE = 0, 1, 2, 3  # the per-image noise streams (see the module doc)

_fold = jax.vmap(jax.random.fold_in, in_axes=(0, None))


def normal(keys: jax.Array, shape: Sequence[int], stream: int, i=None) -> jax.Array:
    """N(0, I) of ``shape[1:]`` per image from ``fold_in(key_b, stream)`` (and iteration i)."""
    k = _fold(keys, stream)
    if i is not None:
        k = _fold(k, i)
    return samplers.image_normal(k, tuple(shape))


def check_keys(keys: jax.Array, batch: int) -> None:
    dt = getattr(keys, "dtype", None)
    typed = dt is not None and jax.dtypes.issubdtype(dt, jax.dtypes.prng_key)
    ok = (keys.ndim == 1 and keys.shape[0] == batch) if typed else keys.shape[:1] == (batch,)
    if not ok or (not typed and keys.ndim != 2):
        raise ValueError(
            f"keys must be one PRNG key per image ({batch}; use samplers.image_keys), "
            f"got shape {keys.shape}"
        )


def check_timesteps(timesteps, num_timesteps: int) -> np.ndarray:
    ts = np.asarray(timesteps, np.int64)
    if ts.ndim != 1 or ts.size == 0:
        raise ValueError(f"timesteps must be a non-empty 1-D sequence, got {timesteps!r}")
    if ts.min() < 0 or ts.max() >= num_timesteps:
        raise ValueError(f"timesteps must lie in [0, {num_timesteps}), got {ts.tolist()}")
    if np.any(np.diff(ts) >= 0):
        raise ValueError(f"timesteps must be strictly decreasing, got {ts.tolist()}")
    return ts.astype(np.int32)


def abar(schedule: Schedule, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(abar_t, 1 - abar_t) with t = -1 meaning x_0 (abar = 1); 1 - abar from the float64 table."""
    tc = jnp.maximum(t, 0)
    last = t < 0
    a = jnp.where(last, 1.0, schedule.alphas_cumprod[tc])
    one_minus = jnp.where(last, 0.0, schedule.sqrt_one_minus_alphas_cumprod[tc] ** 2)
    return a, one_minus


def denoise_step(
    denoise_fn: DenoiseFn,
    schedule: Schedule,
    x: jax.Array,
    t: jax.Array,
    t_next: jax.Array,
    noise: jax.Array,
    *,
    eta: float = 1.0,
    clip_denoised: bool = True,
) -> tuple[jax.Array, jax.Array]:
    """One step x_t -> x_t' (module doc; `samplers.ddim_step`); returns (x_t', x0_hat)."""
    return samplers.ddim_step(
        denoise_fn, schedule, x, t, t_next, lambda: noise, eta=eta, clip_denoised=clip_denoised
    )


def noised_known(schedule: Schedule, known: jax.Array, t_next: jax.Array, noise) -> jax.Array:
    """The known image forward-noised to t_next (the image itself at t_next = -1)."""
    tb = jnp.full(known.shape[:1], jnp.maximum(t_next, 0), jnp.int32)
    return jnp.where(t_next < 0, known, q_sample(schedule, known, tb, noise))


def denoise_loop(
    denoise_fn: DenoiseFn,
    schedule: Schedule,
    x: jax.Array,
    timesteps: Sequence[int],
    keys: jax.Array,
    *,
    eta: float = 1.0,
    clip_denoised: bool = True,
    record: bool = False,
    known: jax.Array | None = None,
    keep: jax.Array | None = None,
) -> samplers.SampleOutput:
    """Denoise ``x`` (= x_t at ``timesteps[0]``) along the decreasing ``timesteps`` to x_0.

    With ``known`` and ``keep`` (1 = keep, broadcastable to x), after every step the kept region
    is replaced by ``known`` forward-noised to the step's target timestep, and by ``known``
    itself after the last step (the replacement rule of inpainting). ``record``: the outputs
    carry x_t fed to every step (``trajectory[k]`` at ``timesteps[k]``) and its x0_hat.
    Samples are clipped to [-1, 1].
    """
    ts = check_timesteps(timesteps, schedule.num_timesteps)
    check_keys(keys, x.shape[0])
    t_arr = jnp.asarray(ts)
    n_arr = jnp.asarray(np.append(ts[1:], -1).astype(np.int32))
    x = jnp.asarray(x, jnp.float32)
    shape = x.shape

    def step(i, x):
        t, tn = t_arr[i], n_arr[i]
        x_next, x0 = denoise_step(
            denoise_fn, schedule, x, t, tn, normal(keys, shape, STEP, i),
            eta=eta, clip_denoised=clip_denoised,
        )  # fmt: skip
        if known is not None:
            kn = noised_known(schedule, known, tn, normal(keys, shape, KNOWN, i))
            x_next = keep * kn + (1.0 - keep) * x_next
        return x_next, x0

    if not record:
        x = jax.lax.fori_loop(0, len(ts), lambda i, x: step(i, x)[0], x)
        return samplers.SampleOutput(samples=jnp.clip(x, -1.0, 1.0))

    def body(i, carry):
        x, traj, x0s = carry
        x_next, x0 = step(i, x)
        return x_next, traj.at[i].set(x), x0s.at[i].set(x0)

    buf = jnp.zeros((len(ts), *shape), jnp.float32)
    x, traj, x0s = jax.lax.fori_loop(0, len(ts), body, (x, buf, buf))
    return samplers.SampleOutput(
        samples=jnp.clip(x, -1.0, 1.0), trajectory=traj, x0_predictions=x0s, timesteps=t_arr
    )
