"""DDIM (Song et al. 2021) on a subsequence of timesteps; eta = 0 is deterministic."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.diffusion import DenoiseFn, Schedule, predict_eps_from_x0, predict_x0_from_eps
from diffusion_jax.samplers.chain import SampleOutput, _run_chain, chain_dtype

SPACINGS = ("uniform", "quadratic")  # DDIM's timestep spacings


def ddim_timesteps(num_timesteps: int, num_steps: int, spacing: str = "uniform") -> np.ndarray:
    """Increasing int32 subsequence of ``num_steps`` distinct timesteps in [0, num_timesteps).

    "uniform": ``floor(k * T / S)``, i.e. ``range(0, T, T // S)`` of the DDIM code when S divides
    T. "quadratic": ``int(linspace(0, sqrt(0.8 T), S) ** 2)`` as in the DDIM code, with
    repeated small values bumped up by one so that exactly ``num_steps`` distinct steps remain.
    """
    if not 1 <= num_steps <= num_timesteps:
        raise ValueError(
            f"num_steps={num_steps} must be in [1, num_timesteps={num_timesteps}] for DDIM"
        )
    if spacing == "uniform":
        return (np.arange(num_steps, dtype=np.int64) * num_timesteps // num_steps).astype(np.int32)
    if spacing == "quadratic":
        if num_steps == num_timesteps:
            return np.arange(num_timesteps, dtype=np.int32)
        seq = (np.linspace(0, np.sqrt(num_timesteps * 0.8), num_steps) ** 2).astype(np.int64)
        for k in range(1, num_steps):
            seq[k] = max(seq[k], seq[k - 1] + 1)
        assert seq[-1] < num_timesteps
        return seq.astype(np.int32)
    raise ValueError(f"unknown spacing={spacing!r} for DDIM; use one of {SPACINGS}")


def ddim_step(
    denoise_fn: DenoiseFn,
    schedule: Schedule,
    x: jax.Array,
    t: jax.Array,
    t_next: jax.Array,
    noise_fn: Callable[[], jax.Array],
    *,
    eta: float = 0.0,
    clip_denoised: bool = True,
    dtype=jnp.float32,
) -> tuple[jax.Array, jax.Array]:
    """One DDIM step x_t -> x_{t_next} (t_next = -1 stands for x_0, alpha_bar = 1); returns
    (x_next, x0_pred). ``eta = 1`` is the ancestral step over the pair; ``noise_fn()`` draws
    the per-image noise (not called when eta is a static 0). Shared with `diffusion_jax.edit`.
    """
    s = schedule
    tb = jnp.full(x.shape[:1], t, jnp.int32)
    eps = denoise_fn(x, tb).astype(dtype)
    x0 = predict_x0_from_eps(s, x, tb, eps)
    if clip_denoised:
        x0 = jnp.clip(x0, -1.0, 1.0)
        eps = predict_eps_from_x0(s, x, tb, x0)
    # 1 - alpha_bar from the float64-derived table: no float32 cancellation near t = 0.
    a, one_minus_a = s.alphas_cumprod[t], s.sqrt_one_minus_alphas_cumprod[t] ** 2
    tn, last = jnp.maximum(t_next, 0), t_next < 0
    a_next = jnp.where(last, 1.0, s.alphas_cumprod[tn])
    one_minus_a_next = jnp.where(last, 0.0, s.sqrt_one_minus_alphas_cumprod[tn] ** 2)
    sigma = eta * jnp.sqrt(one_minus_a_next / one_minus_a * (1.0 - a / a_next))
    direction = jnp.sqrt(jnp.maximum(one_minus_a_next - sigma**2, 0.0)) * eps
    x_next = jnp.sqrt(a_next) * x0 + direction
    if not (isinstance(eta, (int, float)) and eta == 0):  # eta = 0 draws no noise
        x_next = x_next + sigma * noise_fn()
    return x_next, x0


def ddim_sample(
    denoise_fn: DenoiseFn,
    schedule: Schedule,
    shape: Sequence[int],
    rng: jax.Array,
    *,
    num_steps: int = 100,
    eta: float = 0.0,
    spacing: str = "uniform",
    clip_denoised: bool = True,
    record_steps: Sequence[int] = (),
) -> SampleOutput:
    """DDIM (Song et al. 2021) on a subsequence of timesteps; eta=0 is deterministic.

    The chain starts from N(0, I) at the largest timestep of the subsequence. With
    ``clip_denoised`` the x_0 prediction is clipped and eps recomputed from it, so the update stays
    consistent. ``record_steps`` are mapped to the nearest timestep of the subsequence
    (``SampleOutput.timesteps`` says which).
    """
    s, num_t = schedule, schedule.num_timesteps
    seq = ddim_timesteps(num_t, num_steps, spacing)
    loop_ts = seq[::-1].copy()
    next_ts = np.append(loop_ts[1:], -1)  # -1 stands for "x_0", alpha_bar = 1
    t_arr, next_arr = jnp.asarray(loop_ts), jnp.asarray(next_ts)
    shape = tuple(int(d) for d in shape)
    dtype = chain_dtype(s)

    def step(i, x, memory, noise_fn):
        x_next, x0 = ddim_step(
            denoise_fn, s, x, t_arr[i], next_arr[i], noise_fn,
            eta=eta, clip_denoised=clip_denoised, dtype=dtype,
        )  # fmt: skip
        return x_next, memory, x0

    return _run_chain(step, shape, rng, loop_ts, record_steps, num_t, dtype=dtype)
