"""Schedules, forward process, posterior and loss against closed forms written out here."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import diffusion as D

CASES = [("linear", 300), ("linear", 1000), ("cosine", 300), ("cosine", 1000)]


def reference_betas(schedule: str, T: int) -> np.ndarray:
    """The papers' formulas, element by element in float64."""
    if schedule == "linear":  # Ho et al.: 1e-4 .. 0.02 in T equal steps
        return np.array([1e-4 + (0.02 - 1e-4) * i / (T - 1) for i in range(T)])

    def f(t):  # Nichol & Dhariwal eq. 17, s = 0.008
        return math.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2

    return np.array([min(1 - f(i + 1) / f(i), 0.999) for i in range(T)])


@pytest.mark.parametrize("schedule,T", CASES)
def test_betas_match_the_papers(schedule, T):
    betas = D.make_betas(schedule, T)
    assert betas.dtype == np.float64 and betas.shape == (T,)
    np.testing.assert_allclose(betas, reference_betas(schedule, T), rtol=1e-12, atol=1e-15)


def test_cosine_alpha_bar_telescopes_and_is_clipped():
    T = 1000
    s = D.make_schedule("cosine", T)
    t = np.arange(T, dtype=np.float64)
    f = (
        np.cos(((t + 1) / T + 0.008) / 1.008 * np.pi / 2) ** 2
        / np.cos(0.008 / 1.008 * np.pi / 2) ** 2
    )
    unclipped = D.make_betas("cosine", T) < 0.999
    np.testing.assert_allclose(np.asarray(s.alphas_cumprod)[unclipped], f[unclipped], rtol=1e-4)
    assert D.make_betas("cosine", T)[-1] == 0.999  # the singular last step is clipped


@pytest.mark.parametrize("schedule,T", CASES)
def test_schedule_tables(schedule, T):
    s = D.make_schedule(schedule, T)
    assert s.num_timesteps == T
    betas = reference_betas(schedule, T)
    abar = np.exp(np.cumsum(np.log1p(-betas)))  # a different route to the cumulative product
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    expected = {
        "betas": betas,
        "alphas_cumprod": abar,
        "alphas_cumprod_prev": abar_prev,
        "sqrt_alphas_cumprod": abar**0.5,
        "sqrt_one_minus_alphas_cumprod": (1 - abar) ** 0.5,
        "sqrt_recip_alphas_cumprod": abar**-0.5,
        "sqrt_recipm1_alphas_cumprod": ((1 - abar) / abar) ** 0.5,
    }
    for name, want in expected.items():
        got = getattr(s, name)
        assert got.dtype == jnp.float32 and got.shape == (T,), name
        np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5, atol=1e-7, err_msg=name)


def test_schedule_dtype_and_pytree():
    assert D.make_schedule("linear", 10, dtype=jnp.bfloat16).betas.dtype == jnp.bfloat16
    s = D.make_schedule("linear", 10)
    leaves = jax.tree.leaves(s)
    assert len(leaves) == 11 and all(leaf.shape == (10,) for leaf in leaves)
    doubled = jax.jit(lambda sch: jax.tree.map(lambda a: a * 2, sch))(s)
    assert doubled.num_timesteps == 10  # static field survives transforms


@pytest.mark.parametrize("schedule,T", CASES)
def test_q_sample_moments(schedule, T):
    s = D.make_schedule(schedule, T)
    abar = np.cumprod(1 - reference_betas(schedule, T))
    n = 20_000
    x0 = jnp.asarray(np.linspace(-1, 1, 6, dtype=np.float32).reshape(1, 2, 3, 1))
    for t_val in (0, T // 3, T - 1):
        t = jnp.full((n,), t_val, jnp.int32)
        noise = jax.random.normal(jax.random.key(t_val), (n, 2, 3, 1))
        xt = np.asarray(D.q_sample(s, jnp.broadcast_to(x0, (n, 2, 3, 1)), t, noise), np.float64)
        want_mean = np.sqrt(abar[t_val]) * np.asarray(x0[0])
        want_var = 1 - abar[t_val]
        se = np.sqrt(want_var / n)
        np.testing.assert_allclose(xt.mean(0), want_mean, atol=5 * se)
        np.testing.assert_allclose(xt.var(0), want_var, rtol=5 * np.sqrt(2 / n))
        mean, var = D.q_mean_variance(s, x0, t[:1])
        np.testing.assert_allclose(np.asarray(mean[0]), want_mean, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(np.asarray(var), np.full(x0.shape, want_var), rtol=1e-5)


@pytest.mark.parametrize("schedule,T", CASES)
def test_q_posterior_matches_bayes_rule(schedule, T):
    """q(x_{t-1} | x_t, x_0) as the product of two Gaussians (precision form), in float64."""
    s = D.make_schedule(schedule, T)
    betas = reference_betas(schedule, T)
    abar = np.cumprod(1 - betas)
    rng = np.random.default_rng(0)
    t = np.array([0, 1, 2, T // 2, T - 2, T - 1])
    x0 = rng.uniform(-1, 1, (len(t), 4, 4, 3))
    xt = rng.normal(size=x0.shape)
    mean, var, log_var = D.q_posterior(
        s, jnp.asarray(x0, jnp.float32), jnp.asarray(xt, jnp.float32), jnp.asarray(t)
    )
    for i, ti in enumerate(t):
        if ti == 0:  # x_0 is known exactly
            want_mean, want_var = x0[i], 0.0
            want_log_var = np.log(betas[1] * (1 - abar[0]) / (1 - abar[1]))  # Ho et al.'s clip
        else:
            # prior x_{t-1} ~ N(sqrt(abar_{t-1}) x0, 1 - abar_{t-1}), likelihood
            # x_t | x_{t-1} ~ N(sqrt(alpha_t) x_{t-1}, beta_t)
            prec = (1 - betas[ti]) / betas[ti] + 1 / (1 - abar[ti - 1])
            want_var = 1 / prec
            want_mean = want_var * (
                np.sqrt(abar[ti - 1]) / (1 - abar[ti - 1]) * x0[i]
                + np.sqrt(1 - betas[ti]) / betas[ti] * xt[i]
            )
            want_log_var = np.log(want_var)
        np.testing.assert_allclose(np.asarray(mean[i]), want_mean, rtol=1e-4, atol=2e-5)
        np.testing.assert_allclose(np.asarray(var[i]), np.full(x0[i].shape, want_var), atol=1e-7)
        np.testing.assert_allclose(np.asarray(log_var[i]), want_log_var, rtol=1e-4)


def test_predict_x0_inverts_q_sample():
    s = D.make_schedule("linear", 1000)
    k1, k2 = jax.random.split(jax.random.key(0))
    x0 = jax.random.uniform(k1, (5, 4, 4, 3), minval=-1, maxval=1)
    eps = jax.random.normal(k2, x0.shape)
    t = jnp.array([0, 10, 100, 500, 900])
    x0_hat = D.predict_x0_from_eps(s, D.q_sample(s, x0, t, eps), t, eps)
    np.testing.assert_allclose(np.asarray(x0_hat), np.asarray(x0), atol=2e-3)
    eps_hat = D.predict_eps_from_x0(s, D.q_sample(s, x0, t, eps), t, x0)
    np.testing.assert_allclose(np.asarray(eps_hat), np.asarray(eps), atol=2e-3)


def test_training_loss_oracles_and_timesteps():
    """A point mass x0 = c makes every target exactly predictable: loss 0; zero predictor: 1."""
    T = 1000
    s = D.make_schedule("linear", T)
    c = jnp.linspace(-0.8, 0.8, 4 * 4 * 3).reshape(1, 4, 4, 3)
    x0 = jnp.broadcast_to(c, (512, 4, 4, 3))
    seen = []

    def eps_oracle(x_t, t):
        seen.append(t)
        a = s.alphas_cumprod[t][:, None, None, None]
        return (x_t - jnp.sqrt(a) * c) / jnp.sqrt(1 - a)

    def v_oracle(x_t, t):
        a = s.alphas_cumprod[t][:, None, None, None]
        return jnp.sqrt(a) * eps_oracle(x_t, t) - jnp.sqrt(1 - a) * c

    rng = jax.random.key(1)
    loss = D.training_loss(s, eps_oracle, x0, rng)
    assert loss.shape == (512,) and loss.dtype == jnp.float32
    assert float(loss.max()) < 1e-4
    t = np.asarray(seen[0])
    assert t.dtype == np.int32 and t.min() >= 0 and t.max() <= T - 1 and len(set(t)) > 300
    assert float(D.training_loss(s, lambda x, t: c, x0, rng, prediction="x0").max()) < 1e-10
    assert float(D.training_loss(s, v_oracle, x0, rng, prediction="v").max()) < 1e-4
    zero = D.training_loss(s, lambda x, t: jnp.zeros_like(x), x0, rng)
    assert abs(float(zero.mean()) - 1.0) < 0.05
    for p in ("x0", "v"):  # the eps implied by the oracles is the oracle eps
        x_t = jax.random.normal(rng, x0.shape)
        tt = jnp.arange(512) % T
        out = c if p == "x0" else v_oracle(x_t, tt)
        np.testing.assert_allclose(
            np.asarray(D.eps_from_output(s, x_t, tt, jnp.broadcast_to(out, x0.shape), p)),
            np.asarray(eps_oracle(x_t, tt)),
            rtol=1e-3,
            atol=2e-3,
        )


def test_training_loss_jits():
    s = D.make_schedule("linear", 100)
    for weighting in D.LOSS_WEIGHTINGS:
        f = jax.jit(
            lambda sch, x, k, w=weighting: D.training_loss(
                sch, lambda x, t: x * 0.5, x, k, weighting=w
            )
        )
        out = f(s, jnp.zeros((3, 8, 8, 1)), jax.random.key(0))
        assert out.shape == (3,) and out.dtype == jnp.float32
        assert bool(jnp.all(jnp.isfinite(out)))


# ---------------------------------------------------------------------------------------------
# Loss weighting (Min-SNR-gamma, Hang et al. 2023)

GAMMA = 5.0


def _toy_eps_model(x_t, t):
    """Some model output that depends on x_t and t (what it predicts does not matter)."""
    return 0.7 * x_t - 0.2 + 0.001 * t[:, None, None, None].astype(jnp.float32)


def test_uniform_weighting_is_todays_l_simple():
    """The "uniform" weighting (the default) is bit for bit `loss_at` at the timesteps and noise
    drawn from the key as before: the mean over pixels of (target - output)^2, every target."""
    s = D.make_schedule("linear", 1000)
    x0 = jax.random.uniform(jax.random.key(2), (64, 4, 4, 1), minval=-1, maxval=1)
    rng = jax.random.key(3)
    t_key, noise_key = jax.random.split(rng)
    t = jax.random.randint(t_key, (64,), 0, 1000, dtype=jnp.int32)
    noise = jax.random.normal(noise_key, x0.shape, jnp.float32)
    for p in D.PREDICTIONS:
        default = D.training_loss(s, _toy_eps_model, x0, rng, prediction=p)
        uniform = D.training_loss(
            s, _toy_eps_model, x0, rng, prediction=p, weighting="uniform", gamma=0.5
        )
        np.testing.assert_array_equal(np.asarray(uniform), np.asarray(default))
        want = D.loss_at(s, _toy_eps_model, x0, t, noise, prediction=p)
        np.testing.assert_array_equal(np.asarray(default), np.asarray(want))
    default = D.training_loss(s, _toy_eps_model, x0, rng)
    assert default.dtype == jnp.float32
    x_t = D.q_sample(s, x0, t, noise)
    by_hand = jnp.mean(jnp.square(noise - _toy_eps_model(x_t, t)), axis=(1, 2, 3))
    np.testing.assert_allclose(np.asarray(default), np.asarray(by_hand), rtol=1e-6)
    for p in D.PREDICTIONS:
        np.testing.assert_array_equal(np.asarray(D.loss_weights(s, t, p, "uniform")), np.ones(64))


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_min_snr_weights_match_the_formula(schedule):
    """w = min(SNR, gamma) / SNR (eps), min(SNR, gamma) (x0), min(SNR, gamma) / (SNR + 1) (v),
    SNR = abar / (1 - abar) from the float64 betas written out here."""
    T = 1000
    s = D.make_schedule(schedule, T)
    abar = np.cumprod(1 - reference_betas(schedule, T))
    snr = abar / (1 - abar)
    t = np.array([0, 1, 10, 50, 100, 200, 300, 500, 800, 998, 999])
    clipped = np.minimum(snr, GAMMA)
    for p, want in (("eps", clipped / snr), ("x0", clipped), ("v", clipped / (snr + 1))):
        got = D.loss_weights(s, jnp.asarray(t), p, "min_snr", GAMMA)
        assert got.dtype == jnp.float32 and got.shape == t.shape, p
        np.testing.assert_allclose(np.asarray(got), want[t], rtol=1e-5, err_msg=p)

    w = {
        p: np.asarray(D.loss_weights(s, jnp.arange(T), p, "min_snr", GAMMA)) for p in D.PREDICTIONS
    }
    low = snr < GAMMA * (1 - 1e-4)  # noisy steps (large t); away from the crossing's rounding
    high = snr > GAMMA * (1 + 1e-4)  # clean steps (small t)
    assert low[-1] and high[0] and low.sum() > 100 and high.sum() > 100
    np.testing.assert_array_equal(w["eps"][low], 1.0)  # SNR <= gamma: L_simple's weight
    np.testing.assert_allclose(w["eps"][high], GAMMA / snr[high], rtol=1e-5)
    np.testing.assert_allclose(w["x0"][low], snr[low], rtol=1e-5)
    np.testing.assert_array_equal(w["x0"][high], GAMMA)
    np.testing.assert_allclose(w["v"][low], abar[low], rtol=1e-5)  # SNR / (SNR + 1) = abar
    np.testing.assert_allclose(w["v"][high], GAMMA * (1 - abar[high]), rtol=1e-5)


def test_min_snr_weights_by_hand_at_t0_of_the_linear_schedule():
    """t = 0 of Ho et al.'s schedule: abar = 1 - 1e-4, SNR = 9999."""
    s = D.make_schedule("linear", 1000)
    t = jnp.zeros((1,), jnp.int32)
    for p, want in (("eps", 5 / 9999), ("x0", 5.0), ("v", 5 / 10000)):
        assert float(D.loss_weights(s, t, p, "min_snr", 5.0)[0]) == pytest.approx(want, rel=1e-5)
    assert float(D.loss_weights(s, t, "eps", "min_snr", 20000.0)[0]) == 1.0  # gamma > SNR


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_min_snr_is_one_objective_in_every_parameterisation(schedule):
    """One model, its output given as eps, as x0 and as v (converted through x_t): the min-SNR
    losses are equal, while the uniform ones follow eps-MSE = SNR x0-MSE and
    v-MSE = (SNR + 1) x0-MSE (so uniform weighting is a different objective per target)."""
    T = 1000
    s = D.make_schedule(schedule, T)
    x0 = jax.random.uniform(jax.random.key(5), (512, 4, 4, 1), minval=-1, maxval=1)
    rng = jax.random.key(6)
    seen = []

    def eps_model(x_t, t):
        seen.append(np.asarray(t))
        return _toy_eps_model(x_t, t)

    def x0_model(x_t, t):
        return D.predict_x0_from_eps(s, x_t, t, _toy_eps_model(x_t, t))

    def v_model(x_t, t):
        a = s.sqrt_alphas_cumprod[t][:, None, None, None]
        b = s.sqrt_one_minus_alphas_cumprod[t][:, None, None, None]
        return a * _toy_eps_model(x_t, t) - b * x0_model(x_t, t)

    models = {"eps": eps_model, "x0": x0_model, "v": v_model}

    def losses(weighting):
        return {
            p: np.asarray(D.training_loss(s, f, x0, rng, prediction=p, weighting=weighting,
                                          gamma=GAMMA), np.float64)
            for p, f in models.items()
        }  # fmt: skip

    weighted, uniform = losses("min_snr"), losses("uniform")
    t = seen[0]
    abar = np.cumprod(1 - reference_betas(schedule, T))[t]
    snr = abar / (1 - abar)
    assert (snr > GAMMA).sum() > 20 and (snr < GAMMA).sum() > 20  # both regimes drawn
    np.testing.assert_allclose(weighted["x0"], weighted["eps"], rtol=2e-3)
    np.testing.assert_allclose(weighted["v"], weighted["eps"], rtol=2e-3)
    np.testing.assert_allclose(uniform["eps"], snr * uniform["x0"], rtol=2e-3)
    np.testing.assert_allclose(uniform["v"], (snr + 1) * uniform["x0"], rtol=2e-3)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: D.make_betas("sigmoid", 10), "schedule='sigmoid'"),
        (lambda: D.make_schedule("linear", 0), "num_timesteps=0"),
        (lambda: D.make_schedule("cosine", -5), "num_timesteps=-5"),
        (lambda: D.make_schedule("linear", 10, beta_end=1.5), "beta_end=1.5"),
        (lambda: D.schedule_from_betas(np.array([0.1, 0.0, 0.2])), r"betas must lie in \(0, 1\)"),
        (lambda: D.schedule_from_betas(np.array([0.1, 1.0])), r"betas must lie in \(0, 1\)"),
        (lambda: D.schedule_from_betas(np.array([-0.1, 0.5])), r"betas must lie in \(0, 1\)"),
        (
            lambda: D.training_loss(
                D.make_schedule("linear", 10),
                None,
                jnp.zeros((1, 2, 2, 1)),
                jax.random.key(0),
                prediction="score",
            ),
            "prediction='score'",
        ),
        (
            lambda: D.training_loss(
                D.make_schedule("linear", 10),
                lambda x, t: x,
                jnp.zeros((1, 2, 2, 1)),
                jax.random.key(0),
                weighting="snr",
            ),
            r"loss_weighting='snr'; use one of \('uniform', 'min_snr'\)",
        ),
        (
            lambda: D.loss_weights(
                D.make_schedule("linear", 10), jnp.zeros(1), "eps", "min_snr", 0.0
            ),
            "min_snr_gamma=0.0 must be > 0",
        ),
    ],
)
def test_value_errors_name_the_setting(call, match):
    with pytest.raises(ValueError, match=match):
        call()
