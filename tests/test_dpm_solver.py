"""DPM-Solver++ (2M, 3M, SDE-2M) against exact answers for Gaussian data.

For data x0 ~ N(mu, s^2) per pixel, the eps-optimal denoiser is closed form and linear in x_t,
x_t's marginal is N(alpha mu, alpha^2 s^2 + sigma^2) (alpha = sqrt(abar), sigma =
sqrt(1 - abar)), and the probability-flow ODE, being linear and orientation-preserving, maps
x_t to the point with the same z-score at time t':

    x_t' = alpha' mu + sd' / sd * (x_t - alpha mu),   sd = sqrt(alpha^2 s^2 + sigma^2)

(at abar' = 1: x_0 = mu + s / sqrt(abar s^2 + 1 - abar) * (x_t - sqrt(abar) mu)). Every solver
here makes its last network call at t = 0 and returns the x_0 prediction there, so the exact
counterpart of a chain from x_T at its first timestep is: the ODE to t = 0, then the exact
posterior mean E[x_0 | x_t] at t = 0. The order test measures the error against that.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import diffusion
from diffusion_jax.samplers import (
    DPM_SOLVERS,
    classifier_free_guidance,
    ddim_sample,
    dpm_solver,
    dpm_solver_coefficients,
    dpm_solver_sample,
    dpm_solver_timesteps,
    sample,
    visited_timesteps,
)

MU, S = 0.05, 0.2  # order test: every exact x_0 stays inside [-1, 1] (samples are clipped)


def gaussian_oracle(schedule, mu, s):
    def denoise_fn(x, t):
        a = schedule.alphas_cumprod[t][:, None, None, None]
        return jnp.sqrt(1 - a) * (x - jnp.sqrt(a) * mu) / (a * s**2 + 1 - a)

    return denoise_fn


def lambda_linear_schedule(num_timesteps, lam_max=6.0, lam_min=-6.0, dtype=jnp.float64):
    """abar = sigmoid(2 lambda) with lambda linear in t: a fine table, 'continuous time'."""
    lam = np.linspace(lam_max, lam_min, num_timesteps)
    abar = 1.0 / (1.0 + np.exp(-2.0 * lam))
    betas = 1.0 - abar / np.append(1.0, abar[:-1])
    return diffusion.schedule_from_betas(betas, dtype=dtype)


def exact_sample(abar, x_T, t_first, mu=MU, s=S):
    """The ODE from t_first to t = 0, then E[x_0 | x_t] at t = 0 (module docstring)."""
    a0, a1 = abar[t_first], abar[0]
    sd0, sd1 = np.sqrt(a0 * s**2 + 1 - a0), np.sqrt(a1 * s**2 + 1 - a1)
    x = np.sqrt(a1) * mu + sd1 / sd0 * (x_T - np.sqrt(a0) * mu)
    return mu + np.sqrt(a1) * s**2 / sd1**2 * (x - np.sqrt(a1) * mu)


def _half_d2_coefficients(alpha, sigma, *, order=2, stochastic=False, lower_order_final=False):
    """3M as in Lu et al.'s reference code and diffusers: D2 = (D1_0 - D1_1) / (r0 + r1),
    which is h^2 D''/2, weighted by phi_3 where the exact integral needs h^2 D''."""
    coef = ORIGINAL(alpha, sigma, order=order, stochastic=stochastic)
    lam = np.log(alpha) - np.log(sigma)
    for i in range(2, len(lam) - 1):
        h, h0, h1 = lam[i + 1] - lam[i], lam[i] - lam[i - 1], lam[i - 1] - lam[i - 2]
        r0, r1 = h0 / h, h1 / h
        phi1 = np.expm1(-h)
        phi2 = phi1 / h + 1
        phi3 = phi2 / h - 0.5
        d10, d11 = np.array([1 / r0, -1 / r0, 0]), np.array([0, 1 / r1, -1 / r1])
        d1, d2 = d10 + r0 / (r0 + r1) * (d10 - d11), (d10 - d11) / (r0 + r1)
        coef[i, 1:4] = alpha[i + 1] * (-phi1 * np.eye(3)[0] + phi2 * d1 - phi3 * d2)
    return coef


ORIGINAL = dpm_solver_coefficients
ORDER_CASES = {  # name: (sample kwargs, step counts in the asymptotic range, expected slope)
    "ddim": (dict(sampler="ddim"), (25, 50, 100, 200), 1),
    "dpm++2m": (dict(sampler="dpm++2m", spacing="karras"), (57, 80, 113, 160, 226), 2),
    "dpm++3m": (dict(sampler="dpm++3m", spacing="karras"), (57, 80, 113, 160, 226), 3),
    "dpm++3m_half_d2": (dict(sampler="dpm++3m", spacing="karras"), (57, 80, 113, 160, 226), 2),
}


def _errors(kw, steps, schedule):
    abar = np.asarray(schedule.alphas_cumprod)
    fn = gaussian_oracle(schedule, MU, S)
    errors, step_sizes = [], []
    num_t = schedule.num_timesteps
    for m in steps:
        out = sample(fn, schedule, (16, 4, 4, 1), jax.random.key(0), num_steps=m,
                     record_steps=(num_t - 1,), clip_denoised=False, lower_order_final=False,
                     **kw)  # fmt: skip
        assert out.samples.dtype == jnp.float64
        want = exact_sample(abar, np.asarray(out.trajectory[0]), int(out.timesteps[0]))
        assert np.abs(want).max() < 0.95  # nothing clipped
        errors.append(float(np.sqrt(np.mean((np.asarray(out.samples) - want) ** 2))))
        # Both end with the x_0 prediction at t = 0 after M - 1 ODE steps; DDIM's steps are
        # T / M timesteps each (it starts at T - T / M), DPM-Solver's span T - 1 in M - 1 steps.
        m_calls = len(visited_timesteps(schedule, num_steps=m, **kw))
        step_sizes.append(1.0 / m_calls if kw["sampler"] == "ddim" else 1.0 / (m_calls - 1))
    return np.array(errors), np.array(step_sizes)


@pytest.mark.parametrize("name", list(ORDER_CASES))
def test_convergence_order(name, monkeypatch):
    """Final-sample error vs the exact solution falls as (steps)^-order on a log-log fit.

    Continuous time: T = 100000 timesteps with lambda linear in t on [-6, 6], float64. DPM-Solver
    uses Karras spacing: on a grid uniform in lambda this Gaussian problem's leading 3M error
    term integrates to a boundary term at lambda_max that nearly vanishes (3M then looks fourth
    order), which a non-uniform grid avoids. DDIM runs its own uniform spacing. The last case
    is the 3M of Lu et al.'s code with D2 at half the weight the Taylor expansion needs: it is
    only second order, and the slope check catches it (measured ~1.8 over these steps).
    """
    kw, steps, order = ORDER_CASES[name]
    if name.endswith("half_d2"):
        monkeypatch.setattr(dpm_solver, "dpm_solver_coefficients", _half_d2_coefficients)
    with jax.enable_x64(True):
        errors, h = _errors(kw, steps, lambda_linear_schedule(100_000))
    slope = np.polyfit(np.log(h), np.log(errors), 1)[0]
    print(f"{name}: errors {' '.join(f'{e:.2e}' for e in errors)}, slope {slope:.3f}")
    if name.endswith("half_d2"):
        assert slope < 2.5, (slope, errors)
    else:
        assert abs(slope - order) < 0.2, (slope, errors)
        local = np.diff(np.log(errors)) / np.diff(np.log(h))
        assert np.all(np.abs(local - order) < 0.35), local  # every step-doubling, not just the fit


# ---------------------------------------------------------------------------------------------
# SDE-DPM-Solver++(2M): exact moments of the chain, and the data distribution

MU_D, S_D = 0.3, 0.2
SHAPE = (2048, 4, 4, 1)  # 32768 iid pixels


def sde_chain_moments(schedule, num_steps, spacing="logsnr", mu=MU_D, s=S_D):
    """Mean and variance of SDE-DPM-Solver++(2M)'s final sample with the exact denoiser, in
    float64, from the paper's update (appendix; midpoint form) written out here:
    x' = sigma'/sigma e^-h x + alpha' (1 - e^-2h) (D + (D - D_prev) / (2 r))
         + sigma' sqrt(1 - e^-2h) z,
    first order at the first step, x = D at the last. The state (x_i, D_{i-1}) is jointly
    Gaussian per pixel; D = mu + g (x - alpha mu), g = alpha s^2 / (alpha^2 s^2 + sigma^2)."""
    ts = dpm_solver_timesteps(schedule, num_steps, spacing)[::-1]
    alpha = np.asarray(schedule.sqrt_alphas_cumprod, np.float64)[ts]
    sigma = np.asarray(schedule.sqrt_one_minus_alphas_cumprod, np.float64)[ts]
    lam = np.log(alpha / sigma)
    mean, cov = np.zeros(2), np.diag([1.0, 0.0])  # (x_0 ~ N(0, 1), D_{-1} = 0)
    for i in range(len(ts)):
        g = alpha[i] * s**2 / (alpha[i] ** 2 * s**2 + sigma[i] ** 2)
        d_row, d_const = np.array([g, 0.0]), mu * (1 - g * alpha[i])
        if i == len(ts) - 1:
            return d_row @ mean + d_const, d_row @ cov @ d_row
        h = lam[i + 1] - lam[i]
        w = alpha[i + 1] * (1 - np.exp(-2 * h))
        if i == 0:
            b0, b1 = w, 0.0
        else:
            r = (lam[i] - lam[i - 1]) / h
            b0, b1 = w * (1 + 0.5 / r), -w * 0.5 / r
        a = sigma[i + 1] / sigma[i] * np.exp(-h)
        x_row = np.array([a, 0.0]) + b0 * d_row + np.array([0.0, b1])
        trans = np.stack([x_row, d_row])
        const = np.array([b0 * d_const, d_const])
        noise = sigma[i + 1] ** 2 * (1 - np.exp(-2 * h))
        mean, cov = trans @ mean + const, trans @ cov @ trans.T + np.diag([noise, 0.0])
    raise AssertionError("unreachable")


def _moments(kw, schedule, key):
    fn = gaussian_oracle(schedule, MU_D, S_D)
    out = jax.jit(lambda k: sample(fn, schedule, SHAPE, k, clip_denoised=False, **kw))(key)
    x = np.asarray(out.samples, np.float64)
    return x.mean(), x.var(), x.size


@pytest.mark.parametrize(
    "num_steps,spacing,schedule",
    [(6, "logsnr", "linear"), (10, "uniform", "linear"), (25, "karras", "cosine")],
    ids=str,
)
def test_sde_exact_chain_moments(num_steps, spacing, schedule):
    """Few steps, where the chain's moments differ from the data's: samples match them."""
    s = diffusion.make_schedule(schedule, 1000 if schedule == "linear" else 300)
    want_mean, want_var = sde_chain_moments(s, num_steps, spacing)
    assert abs(want_var / S_D**2 - 1) > 0.05  # far enough from the data to tell them apart
    kw = dict(sampler="dpm++2m_sde", num_steps=num_steps, spacing=spacing)
    mean, var, n = _moments(kw, s, jax.random.key(0))
    assert abs(mean - want_mean) < 5 * np.sqrt(want_var / n), (mean, want_mean)
    assert abs(var / want_var - 1) < 5 * np.sqrt(2 / n), (var, want_var)


def test_sde_samples_have_the_data_mean_and_variance():
    """100 steps on the T=1000 linear schedule: N(mu, s^2) within 5 standard errors.

    The chain's own moments (exact, above) are within half a standard error of the data's
    there (variance +0.18%: integer timesteps force large lambda steps next to t = 0), so
    this is a statement about the target, not about the discretisation."""
    s = diffusion.make_schedule("linear", 1000)
    want_mean, want_var = sde_chain_moments(s, 100)
    n = int(np.prod(SHAPE))
    se_mean, se_var = S_D / np.sqrt(n), np.sqrt(2 / n)
    assert abs(want_mean - MU_D) < 0.5 * se_mean and abs(want_var / S_D**2 - 1) < 0.5 * se_var
    mean, var, _ = _moments(dict(sampler="dpm++2m_sde", num_steps=100), s, jax.random.key(1))
    assert abs(mean - MU_D) < 5 * se_mean, mean
    assert abs(var / S_D**2 - 1) < 5 * se_var, var


# ---------------------------------------------------------------------------------------------
# Grid, coefficients, structure


def test_timesteps():
    for schedule, num_t in (("linear", 1000), ("cosine", 300), ("linear", 7)):
        s = diffusion.make_schedule(schedule, num_t)
        for spacing in ("logsnr", "uniform", "karras"):
            for steps in sorted({1, 2, 3, 5, 10, 20, 50, num_t // 2, num_t - 1, num_t}):
                if steps > num_t:
                    continue
                seq = dpm_solver_timesteps(s, steps, spacing)
                assert seq.dtype == np.int32 and len(seq) == steps == len(set(seq.tolist()))
                assert np.all(np.diff(seq) > 0) and seq[-1] == num_t - 1
                assert steps == 1 or seq[0] == 0
            assert np.array_equal(dpm_solver_timesteps(s, num_t, spacing), np.arange(num_t))
    s = diffusion.make_schedule("linear", 1000)
    np.testing.assert_array_equal(
        dpm_solver_timesteps(s, 10, "uniform"), np.rint(np.linspace(0, 999, 10))
    )
    # logsnr: lambda at the chosen timesteps is uniform up to the rounding of t.
    lam = np.log(np.asarray(s.sqrt_alphas_cumprod, np.float64)) - np.log(
        np.asarray(s.sqrt_one_minus_alphas_cumprod, np.float64)
    )

    def within_rounding(values, seq, target):  # at most half a timestep's change away
        step = np.abs(np.diff(values))
        per_t = np.maximum(np.append(step, step[-1]), np.insert(step, 0, step[0]))
        return np.all(np.abs(values[seq] - target) <= 0.5 * per_t[seq] + 1e-9)

    assert within_rounding(lam, dpm_solver_timesteps(s, 10), np.linspace(lam[0], lam[-1], 10))
    # karras: sigma^(1/7) uniform, sigma = e^-lambda (EDM's sigma).
    k = np.exp(-lam / 7)
    assert within_rounding(k, dpm_solver_timesteps(s, 10, "karras"), np.linspace(k[0], k[-1], 10))
    # DDIM / DDPM grids through the same entry point, in loop order.
    ddim = visited_timesteps(s, sampler="ddim", num_steps=4)
    np.testing.assert_array_equal(ddim, [750, 500, 250, 0])
    assert len(visited_timesteps(s)) == 1000 and visited_timesteps(s)[0] == 999


def test_coefficients_warm_up_and_lower_order_final():
    s = diffusion.make_schedule("linear", 1000)
    ts = dpm_solver_timesteps(s, 8)[::-1]
    alpha = np.asarray(s.sqrt_alphas_cumprod, np.float64)[ts]
    sigma = np.asarray(s.sqrt_one_minus_alphas_cumprod, np.float64)[ts]
    c = dpm_solver_coefficients(alpha, sigma, order=3)
    np.testing.assert_array_equal(c[-1], [0, 1, 0, 0, 0])  # last: the x_0 prediction itself
    assert c[0, 2] == c[0, 3] == 0 and c[1, 2] != 0 and c[1, 3] == 0  # warm-up: orders 1, 2
    assert np.all(c[2:-1, 3] != 0) and np.all(c[:, 4] == 0)
    low = dpm_solver_coefficients(alpha, sigma, order=3, lower_order_final=True)
    assert low[-2, 3] == 0 and low[-2, 2] != 0  # the step into t = 0 is second order
    np.testing.assert_array_equal(low[:-2], c[:-2])
    # A constant x_0 prediction D (a point mass) is followed exactly: x = alpha D + sigma eps
    # goes to alpha' D + sigma' eps', i.e. a alpha + b0 + b1 + b2 = alpha' and, for the
    # SDE, (a sigma)^2 + c^2 = sigma'^2 (the noise makes up what the contraction removes).
    for order, stochastic in ((2, False), (3, False), (2, True)):
        c = dpm_solver_coefficients(alpha, sigma, order=order, stochastic=stochastic)
        np.testing.assert_allclose(c[:-1, 0] * alpha[:-1] + c[:-1, 1:4].sum(1), alpha[1:])
        if stochastic:
            variance = (c[:-1, 0] * sigma[:-1]) ** 2 + c[:-1, 4] ** 2
            np.testing.assert_allclose(variance, sigma[1:] ** 2)


@pytest.mark.parametrize("stochastic", [False, True])
def test_first_order_on_every_timestep_is_ddim(stochastic):
    """DPM-Solver++(1) is DDIM with eta = 0; its SDE form is DDIM with eta = 1, i.e. the DDPM
    posterior step (same per-image noise draws): an independent check of the SDE's scales."""
    s = diffusion.make_schedule("linear", 50)
    fn = gaussian_oracle(s, MU_D, S_D)
    a = dpm_solver_sample(fn, s, (64, 2, 2, 1), jax.random.key(3), num_steps=50, order=1,
                          spacing="uniform", stochastic=stochastic).samples  # fmt: skip
    b = ddim_sample(fn, s, (64, 2, 2, 1), jax.random.key(3), num_steps=50,
                    eta=float(stochastic)).samples  # fmt: skip
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=5e-5)


@pytest.mark.parametrize("sampler", list(DPM_SOLVERS))
@pytest.mark.parametrize("guidance", [1.0, 2.5])
def test_guided_point_masses(sampler, guidance):
    """Class y's data is the point c_y, the null class's c_null; guided eps is then exactly the
    eps of the point c_null + w (c_y - c_null), which every solver must return."""
    s = diffusion.make_schedule("linear", 200)
    centres = jnp.array([-0.3, 0.1, 0.2, 0.0])  # classes 0..2, null = 3

    def cond_fn(x, t, y):
        a = s.alphas_cumprod[t][:, None, None, None]
        return (x - jnp.sqrt(a) * centres[y][:, None, None, None]) / jnp.sqrt(1 - a)

    labels = jnp.array([0, 1, 2, 0, 1, 2])
    fn = classifier_free_guidance(cond_fn, labels, guidance, num_classes=3)
    out = sample(fn, s, (6, 3, 3, 2), jax.random.key(0), sampler=sampler, num_steps=6,
                 record_steps=(199, 0))  # fmt: skip
    want = centres[3] + guidance * (centres[labels] - centres[3])
    want = np.broadcast_to(np.asarray(want)[:, None, None, None], out.samples.shape)
    np.testing.assert_allclose(np.asarray(out.samples), want, atol=2e-4)
    assert out.trajectory.shape == (2, 6, 3, 3, 2)
    np.testing.assert_array_equal(out.timesteps, [199, 0])
    np.testing.assert_allclose(np.asarray(out.x0_predictions[-1]), out.samples, atol=2e-4)


def test_sde_noise_is_per_image():
    """Image b's SDE sample depends on its key only: batch 4 equals the first 4 of batch 8."""
    s = diffusion.make_schedule("linear", 100)
    fn = gaussian_oracle(s, MU_D, S_D)
    key = jax.random.key(9)
    kw = dict(sampler="dpm++2m_sde", num_steps=10)
    small = sample(fn, s, (4, 2, 2, 1), key, **kw).samples
    big = sample(fn, s, (8, 2, 2, 1), key, **kw).samples
    np.testing.assert_allclose(np.asarray(small), np.asarray(big[:4]), atol=1e-6)
    ode = sample(fn, s, (4, 2, 2, 1), key, sampler="dpm++2m", num_steps=10).samples
    assert not np.allclose(np.asarray(small), np.asarray(ode), atol=1e-3)  # the noise is there


def _traced_schedule():
    s = diffusion.make_schedule("linear", 10)
    return jax.jit(lambda sch: sample(None, sch, (1, 2, 2, 1), None, sampler="dpm++2m",
                                      num_steps=3).samples)(s)  # fmt: skip


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda s: sample(None, s, (1, 2, 2, 1), None, sampler="dpm++3m", num_steps=2),
         "num_steps=2 is fewer than order=3"),
        (lambda s: sample(None, s, (1, 2, 2, 1), None, sampler="dpm++2m", num_steps=11),
         "num_steps=11 must be in"),
        (lambda s: sample(None, s, (1, 2, 2, 1), None, sampler="dpm++2m", spacing="quadratic"),
         "spacing='quadratic' is not a spacing of sampler='dpm\\+\\+2m'"),
        (lambda s: sample(None, s, (1, 2, 2, 1), None, sampler="ddim", spacing="karras"),
         "spacing='karras' is not a spacing of sampler='ddim'"),
        (lambda s: sample(None, s, (1, 2, 2, 1), None, sampler="dpm++2m", spacing="cubic"),
         "spacing='cubic'"),
        (lambda s: sample(None, s, (1, 2, 2, 1), None, sampler="dpm++2m", eta=1.0), "eta=1.0"),
        (lambda s: dpm_solver_timesteps(s, 3, "cubic"), "unknown spacing='cubic'"),
        (lambda s: dpm_solver_sample(None, s, (1, 2, 2, 1), None, num_steps=5, order=3,
                                     stochastic=True), "order <= 2"),  # fmt: skip
        (lambda s: dpm_solver_sample(None, s, (1, 2, 2, 1), None, num_steps=5, order=4),
         "order=4"),
        (lambda s: _traced_schedule(), "close over the Schedule"),
    ],
)  # fmt: skip
def test_value_errors_name_the_setting(call, match):
    with pytest.raises(ValueError, match=match):
        call(diffusion.make_schedule("linear", 10))


# ---------------------------------------------------------------------------------------------
# Selection through the config


def _config(**sample):
    from train_utils import load_config

    config = load_config("tiny")  # T = 100
    for key, value in sample.items():
        config.sample[key] = value
    return config


@pytest.mark.parametrize(
    "sample_settings,needle",
    [
        (dict(sampler="dpm++3m", num_steps=2), "config.sample.num_steps=2 must be in [3, "),
        (dict(sampler="dpm++2m", num_steps=101), "config.sample.num_steps=101 must be in [2, "),
        (dict(sampler="dpm++2m", spacing="quadratic"), "config.sample.spacing='quadratic' is not"),
        (dict(sampler="ddim", spacing="karras"), "'karras' is not a spacing of config.sample."),
        (dict(sampler="ddpm", spacing="logsnr"), "(DDPM's previews run DDIM)"),
        (dict(sampler="dpm++2m", spacing="cubic"), "use one of ('auto', 'logsnr', 'uniform',"),
        (dict(sampler="dpm++2m_sde", eta=1.0), "config.sample.eta=1.0 is DDIM's noise"),
        (dict(sampler="dpm++4m"), "config.sample.sampler='dpm++4m' is not one of"),
    ],
)
def test_config_errors_name_the_setting(sample_settings, needle):
    from diffusion_jax.errors import UserError
    from diffusion_jax.state import validate_config

    with pytest.raises(UserError) as e:
        validate_config(_config(**sample_settings))
    assert needle in str(e.value), str(e.value)


def test_config_selects_the_solver():
    from diffusion_jax import state

    config = _config(sampler="dpm++3m", num_steps=12, spacing="auto")
    state.validate_config(config)
    settings = state.sample_settings(config)
    assert settings == dict(sampler="dpm++3m", num_steps=12, variance="fixed_small", spacing=None)
    assert state.sample_settings(config, fast=True) == settings  # previews run it as it is
    visited = visited_timesteps(state.build_schedule(config), **settings)
    assert len(visited) == 12 and visited[0] == 99 and visited[-1] == 0
    record = state.record_steps(config)
    assert record[0] == 99 and record[-1] == 0 and set(record) <= set(visited.tolist())
    ddpm = _config(sampler="ddpm", spacing="quadratic", num_steps=7, eta=1.0)
    state.validate_config(ddpm)
    assert state.sample_settings(ddpm, fast=True) == dict(
        sampler="ddim", num_steps=7, variance="fixed_small", spacing="quadratic", eta=1.0
    )
