"""Gaussian diffusion of Ho et al. (2020): beta schedules, the forward process and the loss.

Every table is computed in float64 NumPy and cast once, so float32 sampling does not accumulate
the error of a float32 cumulative product. Timestep ``t`` indexes the tables, ``t = 0`` is the
least noisy step (x_1 in the paper's notation).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

DenoiseFn = Callable[[jax.Array, jax.Array], jax.Array]
SCHEDULES = ("linear", "cosine")
PREDICTIONS = ("eps", "x0", "v")
LOSS_WEIGHTINGS = ("uniform", "min_snr")


def make_betas(
    schedule: str,
    num_timesteps: int,
    *,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    cosine_s: float = 0.008,
    max_beta: float = 0.999,
) -> np.ndarray:
    """float64 betas of length ``num_timesteps``.

    "linear": Ho et al.'s ``linspace(beta_start, beta_end)`` (1e-4..0.02 for T=1000).
    "cosine": Nichol & Dhariwal (2021), ``alpha_bar(t) = cos((t/T + s)/(1 + s) * pi/2)^2`` and
    ``beta_t = 1 - alpha_bar(t+1)/alpha_bar(t)`` clipped at ``max_beta`` to avoid the singularity
    at t = T.
    """
    if int(num_timesteps) != num_timesteps or num_timesteps < 1:
        raise ValueError(f"num_timesteps={num_timesteps} must be an integer >= 1")
    num_timesteps = int(num_timesteps)
    if schedule == "linear":
        if not (0 < beta_start < 1 and 0 < beta_end < 1):
            raise ValueError(f"beta_start={beta_start} and beta_end={beta_end} must lie in (0, 1)")
        betas = np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)
    elif schedule == "cosine":
        steps = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
        alpha_bar = np.cos((steps + cosine_s) / (1 + cosine_s) * math.pi / 2) ** 2
        betas = np.minimum(1 - alpha_bar[1:] / alpha_bar[:-1], max_beta)
    else:
        raise ValueError(f"unknown schedule={schedule!r}; use one of {SCHEDULES}")
    _check_betas(betas)
    return betas


def _check_betas(betas: np.ndarray) -> None:
    if betas.ndim != 1 or betas.size < 1:
        raise ValueError(f"betas must be a non-empty 1-D array, got shape {betas.shape}")
    if not np.all((betas > 0) & (betas < 1)):
        bad = betas[~((betas > 0) & (betas < 1))]
        raise ValueError(f"betas must lie in (0, 1); got values such as {bad[:3].tolist()}")


@flax.struct.dataclass
class Schedule:
    """Precomputed per-timestep tables (length T, float32 by default); a pytree, T is static."""

    num_timesteps: int = flax.struct.field(pytree_node=False)
    betas: jax.Array
    alphas_cumprod: jax.Array
    alphas_cumprod_prev: jax.Array
    sqrt_alphas_cumprod: jax.Array
    sqrt_one_minus_alphas_cumprod: jax.Array
    sqrt_recip_alphas_cumprod: jax.Array
    sqrt_recipm1_alphas_cumprod: jax.Array
    posterior_variance: jax.Array
    posterior_log_variance_clipped: jax.Array
    posterior_mean_coef1: jax.Array
    posterior_mean_coef2: jax.Array


def schedule_from_betas(betas: np.ndarray, dtype=jnp.float32) -> Schedule:
    """All tables of Ho et al.'s ``GaussianDiffusion`` from betas, in float64 then cast."""
    betas = np.asarray(betas, dtype=np.float64)
    _check_betas(betas)
    alphas = 1.0 - betas
    abar = np.cumprod(alphas)
    abar_prev = np.append(1.0, abar[:-1])
    post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
    # post_var[0] is 0; like Ho et al. replace it by post_var[1] before the log.
    log_var = np.log(np.append(post_var[1], post_var[1:]) if betas.size > 1 else betas)
    tables = dict(
        betas=betas,
        alphas_cumprod=abar,
        alphas_cumprod_prev=abar_prev,
        sqrt_alphas_cumprod=np.sqrt(abar),
        sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - abar),
        sqrt_recip_alphas_cumprod=np.sqrt(1.0 / abar),
        sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / abar - 1.0),
        posterior_variance=post_var,
        posterior_log_variance_clipped=log_var,
        posterior_mean_coef1=betas * np.sqrt(abar_prev) / (1.0 - abar),
        posterior_mean_coef2=(1.0 - abar_prev) * np.sqrt(alphas) / (1.0 - abar),
    )
    return Schedule(
        num_timesteps=int(betas.size), **{k: jnp.asarray(v, dtype=dtype) for k, v in tables.items()}
    )


def make_schedule(
    schedule: str = "linear", num_timesteps: int = 1000, *, dtype=jnp.float32, **beta_kwargs
) -> Schedule:
    """``schedule_from_betas(make_betas(schedule, num_timesteps, **beta_kwargs))``."""
    return schedule_from_betas(make_betas(schedule, num_timesteps, **beta_kwargs), dtype=dtype)


def _extract(table: jax.Array, t: jax.Array, ndim: int) -> jax.Array:
    """``table[t]`` shaped [B, 1, ..., 1] to broadcast against a rank-``ndim`` batch."""
    t = jnp.asarray(t, jnp.int32)
    return table[t].reshape(t.shape + (1,) * (ndim - t.ndim))


def q_sample(s: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    """Draw x_t ~ q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) with the given noise."""
    return (
        _extract(s.sqrt_alphas_cumprod, t, x0.ndim) * x0
        + _extract(s.sqrt_one_minus_alphas_cumprod, t, x0.ndim) * noise
    )


def q_mean_variance(s: Schedule, x0: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean and variance of q(x_t | x_0)."""
    mean = _extract(s.sqrt_alphas_cumprod, t, x0.ndim) * x0
    # From the float64-derived table: 1 - abar in float32 would cancel catastrophically at t=0.
    var = jnp.broadcast_to(_extract(s.sqrt_one_minus_alphas_cumprod**2, t, x0.ndim), mean.shape)
    return mean, var


def q_posterior(
    s: Schedule, x0: jax.Array, x_t: jax.Array, t: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
    n = x_t.ndim
    mean = (
        _extract(s.posterior_mean_coef1, t, n) * x0 + _extract(s.posterior_mean_coef2, t, n) * x_t
    )
    var = jnp.broadcast_to(_extract(s.posterior_variance, t, n), mean.shape)
    log_var = jnp.broadcast_to(_extract(s.posterior_log_variance_clipped, t, n), mean.shape)
    return mean, var, log_var


def predict_x0_from_eps(s: Schedule, x_t: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
    """Invert q_sample: x_0 = x_t / sqrt(abar_t) - sqrt(1/abar_t - 1) eps."""
    n = x_t.ndim
    return (
        _extract(s.sqrt_recip_alphas_cumprod, t, n) * x_t
        - _extract(s.sqrt_recipm1_alphas_cumprod, t, n) * eps
    )


def predict_eps_from_x0(s: Schedule, x_t: jax.Array, t: jax.Array, x0: jax.Array) -> jax.Array:
    """The eps consistent with x_t and a (possibly clipped) x_0 prediction."""
    n = x_t.ndim
    return (_extract(s.sqrt_recip_alphas_cumprod, t, n) * x_t - x0) / _extract(
        s.sqrt_recipm1_alphas_cumprod, t, n
    )


def eps_from_output(
    s: Schedule, x_t: jax.Array, t: jax.Array, output: jax.Array, prediction: str = "eps"
) -> jax.Array:
    """Convert a model output of the given parameterisation to eps (what the samplers take)."""
    n = x_t.ndim
    if prediction == "eps":
        return output
    if prediction == "x0":
        return predict_eps_from_x0(s, x_t, t, output)
    if (
        prediction == "v"
    ):  # v = sqrt(abar) eps - sqrt(1-abar) x0 => eps = sqrt(abar) v + sqrt(1-abar) x_t
        a, b = (
            _extract(s.sqrt_alphas_cumprod, t, n),
            _extract(s.sqrt_one_minus_alphas_cumprod, t, n),
        )
        return a * output + b * x_t
    raise ValueError(f"unknown prediction={prediction!r}; use one of {PREDICTIONS}")


def loss_weights(
    s: Schedule,
    t: jax.Array,
    prediction: str = "eps",
    weighting: str = "uniform",
    gamma: float = 5.0,
) -> jax.Array:
    """Per-example weights of the training loss at timesteps ``t``, float32 [B].

    "uniform": 1 (Ho et al.'s L_simple in the given parameterisation).
    "min_snr": Min-SNR-gamma of Hang et al. (2023), the x0-MSE weighted by min(SNR(t), gamma)
    with SNR(t) = abar_t / (1 - abar_t). The per-pixel errors of the three targets for one model
    (outputs converted into each other through x_t) satisfy eps-MSE = SNR * x0-MSE and
    v-MSE = (SNR + 1) * x0-MSE, so the same objective is min(SNR, gamma) / SNR on the eps-MSE,
    min(SNR, gamma) on the x0-MSE and min(SNR, gamma) / (SNR + 1) on the v-MSE.

    The weights come from the float64-derived tables, never from ``1 - abar`` in float32 (it
    cancels at small t): 1 / SNR = sqrt_recipm1_alphas_cumprod^2 and
    1 / (SNR + 1) = 1 - abar = sqrt_one_minus_alphas_cumprod^2.
    """
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction={prediction!r}; use one of {PREDICTIONS}")
    if weighting not in LOSS_WEIGHTINGS:
        raise ValueError(f"unknown loss_weighting={weighting!r}; use one of {LOSS_WEIGHTINGS}")
    t = jnp.asarray(t, jnp.int32)
    if weighting == "uniform":
        return jnp.ones(t.shape, jnp.float32)
    if not gamma > 0:
        raise ValueError(f"min_snr_gamma={gamma} must be > 0")
    inv_snr = jnp.square(s.sqrt_recipm1_alphas_cumprod[t].astype(jnp.float32))
    if prediction == "eps":  # min(SNR, gamma) / SNR, without dividing by a tiny SNR
        return jnp.minimum(1.0, gamma * inv_snr)
    clipped = jnp.minimum(1.0 / inv_snr, gamma)  # min(SNR, gamma)
    if prediction == "x0":
        return clipped
    return clipped * jnp.square(s.sqrt_one_minus_alphas_cumprod[t].astype(jnp.float32))


def training_loss(
    s: Schedule,
    denoise_fn: DenoiseFn,
    x0: jax.Array,
    rng: jax.Array,
    *,
    prediction: str = "eps",
    weighting: str = "uniform",
    gamma: float = 5.0,
) -> jax.Array:
    """Per-example training loss, float32 [B]: L_simple of Ho et al. by default.

    t ~ U{0..T-1}, noise ~ N(0, I), and the loss is `loss_at(x0, t, noise)` times
    `loss_weights(t, prediction, weighting, gamma)` ("uniform": `loss_at` itself, unchanged).
    `weighting` and `gamma` are Python values (static under jit).
    """
    t_key, noise_key = jax.random.split(rng)
    t = jax.random.randint(t_key, x0.shape[:1], 0, s.num_timesteps, dtype=jnp.int32)
    noise = jax.random.normal(noise_key, x0.shape, jnp.float32)
    losses = loss_at(s, denoise_fn, x0, t, noise, prediction=prediction)
    if weighting == "uniform":
        return losses
    return losses * loss_weights(s, t, prediction, weighting, gamma)


def loss_at(
    s: Schedule,
    denoise_fn: DenoiseFn,
    x0: jax.Array,
    t: jax.Array,
    noise: jax.Array,
    *,
    prediction: str = "eps",
) -> jax.Array:
    """Per-example loss at given timesteps and noise, float32 [B].

    x_t = q_sample(x0, t, noise) and the loss is the mean over H, W, C of
    (target - denoise_fn(x_t, t))^2, where the target is eps, x0 or v, unweighted (the
    training's weighting is `training_loss`'s). With fixed (t, noise) it is a deterministic
    function of the parameters (the held-out metric).
    """
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction={prediction!r}; use one of {PREDICTIONS}")
    x0 = x0.astype(jnp.float32)
    noise = noise.astype(jnp.float32)
    x_t = q_sample(s, x0, t, noise)
    if prediction == "eps":
        target = noise
    elif prediction == "x0":
        target = x0
    else:
        n = x0.ndim
        target = (
            _extract(s.sqrt_alphas_cumprod, t, n) * noise
            - _extract(s.sqrt_one_minus_alphas_cumprod, t, n) * x0
        )
    out = denoise_fn(x_t, t).astype(jnp.float32)
    return jnp.mean(jnp.square(target - out), axis=tuple(range(1, x0.ndim)))
