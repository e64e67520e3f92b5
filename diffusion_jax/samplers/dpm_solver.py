"""DPM-Solver++ (Lu et al. 2022) multistep, data-prediction form: 2M, 3M and SDE-2M.

The denoise function returns eps (x0/v models are converted before, `state.denoise_fn_for`);
each step turns it into the x_0 prediction D_i = (x - sigma_i eps) / alpha_i and integrates
the probability-flow ODE in lambda = log(alpha / sigma) (alpha = sqrt(abar),
sigma = sqrt(1 - abar)):

    x_{i+1} = sigma_{i+1} / sigma_i * x_i + sigma_{i+1} * int_{lambda_i}^{lambda_{i+1}} e^l D(l) dl

with D(l) the polynomial through the last k predictions. k = 1 is DDIM (eta = 0); 2M is the
paper's Algorithm 2; 3M integrates the quadratic through the last three predictions exactly
(exponential Adams-Bashforth of order 3; Lu et al.'s code and diffusers weight the D2 term of
their 3M by half of that, which makes it second order: tests/test_dpm_solver.py).
SDE-DPM-Solver++(2M) (the paper's appendix; diffusers' "sde-dpmsolver++", midpoint form) adds
fresh noise every step; its first-order form is DDIM with eta = 1.

Time grid (discrete-time models, trained at integer t only): ``num_steps`` distinct integer
timesteps from T - 1 down to 0, placed uniformly in log-SNR, in t, or by Karras et al.'s rule
(rho = 7 in EDM's sigma = e^-lambda), each target rounded to the nearest integer timestep and
lambda taken from the schedule's table there (as diffusers' DPMSolverMultistepScheduler does
for discrete models); rounding collisions near t = 0 are bumped to the next free timestep so
that exactly ``num_steps`` network calls remain. One network call per timestep: the last one
at t = 0 is followed by a first-order step to sigma = 0, i.e. the sample is the x_0 prediction
there (diffusers' final_sigmas_type="zero"), as DDIM's last step is. Warm-up: step i uses order
min(order, i + 1). ``lower_order_final`` (default when num_steps < 15, the paper's advice for few
steps) makes the step into the last timestep at most second order.

Every coefficient depends only on the grid, so it is computed once on the host in float64 and
each step is one fused linear combination x_{i+1} = a x_i + b0 D_i + b1 D_{i-1} + b2 D_{i-2}
(+ c z_i for the SDE). This needs the schedule's tables as constants (closed over, not a traced
argument).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.diffusion import DenoiseFn, Schedule, predict_x0_from_eps
from diffusion_jax.samplers.chain import SampleOutput, _run_chain, chain_dtype

DPM_SPACINGS = ("logsnr", "uniform", "karras")
KARRAS_RHO = 7.0
LOWER_ORDER_FINAL_BELOW = 15  # lower_order_final=None turns it on below this many steps
ORDERS = (1, 2, 3)


def _host_tables(schedule: Schedule) -> tuple[np.ndarray, np.ndarray]:
    """alpha = sqrt(abar) and sigma = sqrt(1 - abar) per timestep, float64 on the host."""
    try:
        alpha = np.asarray(schedule.sqrt_alphas_cumprod, np.float64)
        sigma = np.asarray(schedule.sqrt_one_minus_alphas_cumprod, np.float64)
    except jax.errors.TracerArrayConversionError:
        raise ValueError(
            "DPM-Solver++ computes its time grid and step coefficients on the host from the "
            "schedule's tables: close over the Schedule (a constant) instead of passing it as "
            "a traced argument of a jitted function"
        ) from None
    return alpha, sigma


def _distinct(seq: np.ndarray, num_timesteps: int) -> np.ndarray:
    """Increasing integers -> strictly increasing ones in [0, T), moving collisions minimally
    (up from the bottom, then down from the top); needs len(seq) <= T."""
    seq = np.asarray(seq, np.int64).copy()
    for k in range(1, len(seq)):
        seq[k] = max(seq[k], seq[k - 1] + 1)
    seq[-1] = min(seq[-1], num_timesteps - 1)
    for k in range(len(seq) - 2, -1, -1):
        seq[k] = min(seq[k], seq[k + 1] - 1)
    return seq


def dpm_solver_timesteps(schedule: Schedule, num_steps: int, spacing: str = "logsnr") -> np.ndarray:
    """Increasing int32 array of ``num_steps`` distinct timesteps: 0 .. T - 1 (one: [T - 1]).

    "logsnr": lambda uniform between lambda(T - 1) and lambda(0); "uniform": t uniform;
    "karras": EDM's sigma = e^-lambda with sigma^(1/7) uniform (Karras et al. 2022). Targets are
    rounded to the nearest integer timestep (piecewise-linear interpolation of log sigma in t);
    collisions are bumped to the next free timestep, so the length is exactly ``num_steps``.
    """
    num_t = schedule.num_timesteps
    if spacing not in DPM_SPACINGS:
        raise ValueError(f"unknown spacing={spacing!r} for DPM-Solver++; use one of {DPM_SPACINGS}")
    if not (isinstance(num_steps, (int, np.integer)) and 1 <= num_steps <= num_t):
        raise ValueError(
            f"num_steps={num_steps} must be in [1, num_timesteps={num_t}] for DPM-Solver++ "
            "(one network call per distinct integer timestep)"
        )
    if num_steps == 1:
        return np.array([num_t - 1], np.int32)
    if spacing == "uniform":
        t = np.linspace(0.0, num_t - 1.0, num_steps)
    else:
        alpha, sigma = _host_tables(schedule)
        log_sigma = np.log(sigma) - np.log(alpha)  # -lambda, increasing in t
        lo, hi = log_sigma[0], log_sigma[-1]
        if spacing == "logsnr":
            target = np.linspace(lo, hi, num_steps)
        else:
            r = 1.0 / KARRAS_RHO
            target = KARRAS_RHO * np.log(np.linspace(np.exp(r * lo), np.exp(r * hi), num_steps))
        t = np.interp(target, log_sigma, np.arange(num_t, dtype=np.float64))
    seq = np.rint(t).astype(np.int64)
    seq[0], seq[-1] = 0, num_t - 1
    return _distinct(seq, num_t).astype(np.int32)


def dpm_solver_coefficients(
    alpha: np.ndarray,
    sigma: np.ndarray,
    *,
    order: int = 2,
    stochastic: bool = False,
    lower_order_final: bool = False,
) -> np.ndarray:
    """float64 [M, 5] step coefficients (a, b0, b1, b2, c) for the grid alpha[i], sigma[i]
    (noisiest first): x_{i+1} = a x_i + b0 D_i + b1 D_{i-1} + b2 D_{i-2} + c z_i, the last row
    (to sigma = 0) being x = D_{M-1}."""
    alpha, sigma = np.asarray(alpha, np.float64), np.asarray(sigma, np.float64)
    lam = np.log(alpha) - np.log(sigma)
    m = len(lam)
    coef = np.zeros((m, 5))
    for i in range(m):
        if i == m - 1:  # to sigma = 0 (h = inf): the first-order step returns D_{M-1}
            coef[i, 1] = 1.0
            continue
        h = lam[i + 1] - lam[i]
        k = min(order, i + 1)
        if lower_order_final and i == m - 2:
            k = min(k, 2)
        if stochastic:  # SDE-DPM-Solver++: x decays by e^-h more, the noise makes up for it
            phi = -np.expm1(-2.0 * h)
            coef[i, 0] = sigma[i + 1] / sigma[i] * np.exp(-h)
            coef[i, 4] = sigma[i + 1] * np.sqrt(phi)
        else:
            phi = -np.expm1(-h)  # sigma_t int e^l dl = alpha_t (1 - e^-h)
            coef[i, 0] = sigma[i + 1] / sigma[i]
        w = alpha[i + 1] * phi
        if k == 1:
            coef[i, 1] = w
        elif k == 2:  # Algorithm 2: D = (1 + 1/(2r)) D_i - 1/(2r) D_{i-1}, r = h_{i-1} / h_i
            r = (lam[i] - lam[i - 1]) / h
            coef[i, 1], coef[i, 2] = w * (1 + 0.5 / r), -w * 0.5 / r
        else:  # exact integral of the quadratic through D_i, D_{i-1}, D_{i-2} (in u = l - l_i)
            nodes = np.array([0.0, lam[i - 1] - lam[i], lam[i - 2] - lam[i]])
            i0 = -np.expm1(-h)  # int_0^h e^(u-h) u^j du for j = 0, 1, 2
            i1 = h - i0
            i2 = h * h - 2.0 * i1
            vander = np.vander(nodes, 3, increasing=True)  # [j, p] = u_j^p
            coef[i, 1:4] = alpha[i + 1] * np.linalg.solve(vander.T, [i0, i1, i2])
    return coef


def dpm_solver_sample(
    denoise_fn: DenoiseFn,
    schedule: Schedule,
    shape: Sequence[int],
    rng: jax.Array,
    *,
    num_steps: int = 20,
    order: int = 2,
    spacing: str = "logsnr",
    stochastic: bool = False,
    lower_order_final: bool | None = None,
    clip_denoised: bool = True,
    record_steps: Sequence[int] = (),
) -> SampleOutput:
    """DPM-Solver++ with ``num_steps`` network calls (module docstring), one compiled loop.

    ``order`` 1 (DDIM), 2 (2M) or 3 (3M); ``stochastic`` (order <= 2): SDE-DPM-Solver++, whose
    noise is drawn per image like every sampler's. ``clip_denoised`` clips each x_0 prediction
    to [-1, 1] before it enters the update (and the history). ``lower_order_final`` None:
    on when num_steps < 15.
    """
    if order not in ORDERS:
        raise ValueError(f"order={order} must be one of {ORDERS}")
    if stochastic and order > 2:
        raise ValueError(f"the stochastic DPM-Solver++ is implemented for order <= 2, not {order}")
    if isinstance(num_steps, (int, np.integer)) and num_steps < order:
        raise ValueError(
            f"num_steps={num_steps} is fewer than order={order}: a multistep solver of order "
            f"{order} needs at least {order} network calls; lower the order or add steps"
        )
    s = schedule
    loop_ts = dpm_solver_timesteps(s, num_steps, spacing)[::-1].copy()
    alpha, sigma = _host_tables(s)
    if lower_order_final is None:
        lower_order_final = num_steps < LOWER_ORDER_FINAL_BELOW
    coef = dpm_solver_coefficients(
        alpha[loop_ts],
        sigma[loop_ts],
        order=order,
        stochastic=stochastic,
        lower_order_final=lower_order_final,
    )
    shape = tuple(int(d) for d in shape)
    dtype = chain_dtype(s)
    c, t_arr = jnp.asarray(coef, dtype), jnp.asarray(loop_ts)
    history = tuple(jnp.zeros(shape, dtype) for _ in range(order - 1))  # D_{i-1}, D_{i-2}

    def step(i, x, memory, noise_fn):
        tb = jnp.full(shape[:1], t_arr[i], jnp.int32)
        eps = denoise_fn(x, tb).astype(dtype)
        x0 = predict_x0_from_eps(s, x, tb, eps)
        if clip_denoised:
            x0 = jnp.clip(x0, -1.0, 1.0)
        ci = c[i]
        x_next = ci[0] * x + ci[1] * x0
        for j, previous in enumerate(memory):
            x_next = x_next + ci[2 + j] * previous
        if stochastic:
            x_next = x_next + ci[4] * noise_fn()
        memory = (x0, *memory[:-1]) if memory else ()  # newest first
        return x_next, memory, x0

    return _run_chain(
        step, shape, rng, loop_ts, record_steps, s.num_timesteps, memory=history, dtype=dtype
    )
