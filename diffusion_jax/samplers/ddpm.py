"""Ancestral sampling of Ho et al. (2020): all T steps of p(x_{t-1} | x_t)."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.diffusion import DenoiseFn, Schedule, predict_x0_from_eps, q_posterior
from diffusion_jax.samplers.chain import SampleOutput, _run_chain, chain_dtype

VARIANCES = ("fixed_small", "fixed_large")


def ddpm_sample(
    denoise_fn: DenoiseFn,
    schedule: Schedule,
    shape: Sequence[int],
    rng: jax.Array,
    *,
    variance: str = "fixed_small",
    clip_denoised: bool = True,
    record_steps: Sequence[int] = (),
) -> SampleOutput:
    """Ancestral sampling of Ho et al.: all T steps of p(x_{t-1} | x_t).

    The mean is the posterior mean q(x_{t-1} | x_t, x0_pred); the variance is the posterior one
    ("fixed_small", log clipped at t=0) or beta_t ("fixed_large"). No noise is added at t = 0.
    """
    s, num_t = schedule, schedule.num_timesteps
    if variance == "fixed_small":
        log_var = s.posterior_log_variance_clipped
    elif variance == "fixed_large":  # Ho et al. use posterior_variance[1] in place of beta_0
        log_var = jnp.log(jnp.concatenate([s.posterior_variance[1:2], s.betas[1:]]))
        log_var = log_var if num_t > 1 else jnp.log(s.betas)
    else:
        raise ValueError(f"unknown variance={variance!r}; use one of {VARIANCES}")
    shape = tuple(int(d) for d in shape)
    dtype = chain_dtype(s)

    def step(i, x, memory, noise_fn):
        t = num_t - 1 - i
        tb = jnp.full(shape[:1], t, jnp.int32)
        eps = denoise_fn(x, tb).astype(dtype)
        x0 = predict_x0_from_eps(s, x, tb, eps)
        if clip_denoised:
            x0 = jnp.clip(x0, -1.0, 1.0)
        mean, _, _ = q_posterior(s, x0, x, tb)
        std = jnp.where(t > 0, jnp.exp(0.5 * log_var[t]), 0.0)
        return mean + std * noise_fn(), memory, x0

    loop_ts = np.arange(num_t - 1, -1, -1)
    return _run_chain(step, shape, rng, loop_ts, record_steps, num_t, dtype=dtype)
