"""Samplers against exact oracles.

For data x0 ~ N(mu, sigma^2) per pixel the eps-optimal denoiser is closed form,
E[eps | x_t] = sqrt(1 - abar) (x_t - sqrt(abar) mu) / (abar sigma^2 + 1 - abar), and it is linear
in x_t, so every sampler step is an affine map plus Gaussian noise. The tests propagate the mean
and variance of that chain in float64 from the papers' formulas (written here, independently of
the library) and compare with the moments of the samples, and also check that samples recover
the data distribution.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from diffusion_jax.diffusion import make_betas, make_schedule
from diffusion_jax.nets.unet import UNet
from diffusion_jax.samplers import (
    SampleOutput,
    classifier_free_guidance,
    ddim_sample,
    ddim_timesteps,
    ddpm_sample,
    sample,
)

MU, SIGMA = 0.3, 0.2
SHAPE = (2048, 4, 4, 1)  # 32768 iid pixels


def gaussian_oracle(s, mu=MU, sigma=SIGMA):
    def denoise_fn(x, t):
        a = s.alphas_cumprod[t][:, None, None, None]
        return jnp.sqrt(1 - a) * (x - jnp.sqrt(a) * mu) / (a * sigma**2 + 1 - a)

    return denoise_fn


def chain_moments(betas, steps, *, sampler, variance="fixed_small", eta=0.0):
    """Mean/variance of the final sample of the (unclipped) chain, in float64.

    ``steps`` are (t, t_next) pairs from noisy to clean, t_next = -1 meaning "x_0".
    """
    abar = np.cumprod(1 - betas)
    m, v = 0.0, 1.0  # x_T ~ N(0, 1)
    for t, tn in steps:
        a = abar[t]
        k = np.sqrt(1 - a) / (a * SIGMA**2 + 1 - a)  # eps = k (x - sqrt(a) mu)
        ep, eq = k, -k * np.sqrt(a) * MU  # eps = ep x + eq
        xp, xq = (1 - np.sqrt(1 - a) * ep) / np.sqrt(a), -np.sqrt(1 - a) * eq / np.sqrt(a)
        if sampler == "ddpm":
            if t == 0:  # the last step returns the mean, x0_hat
                gain, bias, noise_var = xp, xq, 0.0
            else:  # Bayes: prior N(sqrt(abar_prev) x0, 1 - abar_prev), likelihood N(.., beta_t)
                ap, b = abar[t - 1], betas[t]
                post_var = 1 / ((1 - b) / b + 1 / (1 - ap))
                c0, c1 = post_var * np.sqrt(ap) / (1 - ap), post_var * np.sqrt(1 - b) / b
                gain, bias = c0 * xp + c1, c0 * xq
                noise_var = post_var if variance == "fixed_small" else b
        else:  # DDIM eq. 12 with sigma from eq. 16
            an = abar[tn] if tn >= 0 else 1.0
            s2 = eta**2 * (1 - an) / (1 - a) * (1 - a / an)
            d = np.sqrt(1 - an - s2)
            gain, bias, noise_var = np.sqrt(an) * xp + d * ep, np.sqrt(an) * xq + d * eq, s2
        m, v = gain * m + bias, gain**2 * v + noise_var
    return m, v


CONFIGS = [
    dict(sampler="ddpm", variance="fixed_small"),
    dict(sampler="ddpm", variance="fixed_large"),
    dict(sampler="ddim", num_steps=50, eta=0.0, spacing="uniform"),
    dict(sampler="ddim", num_steps=50, eta=1.0, spacing="uniform"),
    dict(sampler="ddim", num_steps=50, eta=0.0, spacing="quadratic"),
    dict(sampler="ddim", num_steps=20, eta=0.5, spacing="quadratic"),
]


CASES = [(cfg, "linear", 1000) for cfg in CONFIGS]
CASES += [(CONFIGS[i], "cosine", 300) for i in (0, 1, 3, 5)]


def case_id(value) -> str:
    return "-".join(map(str, value.values())) if isinstance(value, dict) else str(value)


@pytest.mark.parametrize("cfg,schedule,T", CASES, ids=case_id)
def test_gaussian_oracle_exact_moments(cfg, schedule, T):
    s = make_schedule(schedule, T)
    betas = make_betas(schedule, T)
    if cfg["sampler"] == "ddpm":
        ts = np.arange(T - 1, -1, -1)
    else:
        ts = ddim_timesteps(T, cfg["num_steps"], cfg["spacing"])[::-1]
    steps = list(zip(ts, [*ts[1:], -1], strict=True))
    kw = dict(variance=cfg.get("variance", "fixed_small"), eta=cfg.get("eta", 0.0))
    want_mean, want_var = chain_moments(betas, steps, sampler=cfg["sampler"], **kw)

    fn = gaussian_oracle(s)
    out = jax.jit(lambda k: sample(fn, s, SHAPE, k, clip_denoised=False, **cfg))(jax.random.key(0))
    x = np.asarray(out.samples, np.float64)
    n = x.size
    assert abs(x.mean() - want_mean) < 5 * np.sqrt(want_var / n)
    assert abs(x.var() / want_var - 1) < 5 * np.sqrt(2 / n)
    if cfg["sampler"] == "ddpm":  # all T steps: the chain recovers the data distribution
        assert abs(x.mean() - MU) < 0.01 and abs(x.std() - SIGMA) < 0.015, (x.mean(), x.std())


@pytest.mark.parametrize(
    "kw",
    [
        dict(sampler="ddim", num_steps=250, eta=0.0),
        dict(sampler="ddim", num_steps=250, eta=1.0, spacing="quadratic"),
    ],
    ids=str,
)
def test_gaussian_oracle_recovers_the_data(kw):
    """DDIM with enough steps (and x0 clipping on) recovers the data; DDPM is checked above."""
    s = make_schedule("linear", 1000)
    out = jax.jit(lambda k: sample(gaussian_oracle(s), s, SHAPE, k, **kw))(jax.random.key(1))
    x = np.asarray(out.samples)
    assert abs(x.mean() - MU) < 0.01, x.mean()
    assert abs(x.std() - SIGMA) < 0.015, x.std()


@pytest.mark.parametrize(
    "kw",
    [
        dict(sampler="ddpm", variance="fixed_large"),
        dict(sampler="ddim", num_steps=10, eta=0.0, spacing="uniform"),
        dict(sampler="ddim", num_steps=10, eta=1.0, spacing="quadratic"),
        dict(sampler="dpm++2m", num_steps=10),
        dict(sampler="dpm++3m", num_steps=10, spacing="karras"),
        dict(sampler="dpm++2m_sde", num_steps=10, spacing="uniform"),
    ],
    ids=str,
)
def test_point_mass_oracle(kw):
    """x0 = c exactly: eps = (x_t - sqrt(abar) c) / sqrt(1 - abar); every sampler returns c."""
    s = make_schedule("linear", 200)
    c = jnp.linspace(-0.9, 0.9, 4 * 4 * 3).reshape(1, 4, 4, 3)

    def fn(x, t):
        a = s.alphas_cumprod[t][:, None, None, None]
        return (x - jnp.sqrt(a) * c) / jnp.sqrt(1 - a)

    out = sample(fn, s, (16, 4, 4, 3), jax.random.key(0), record_steps=(150, 0), **kw)
    np.testing.assert_allclose(
        np.asarray(out.samples), np.broadcast_to(c, (16, 4, 4, 3)), atol=2e-3
    )
    np.testing.assert_allclose(np.asarray(out.x0_predictions[-1]), out.samples, atol=2e-3)


def test_ddim_eta1_on_every_step_is_ddpm():
    """DDIM with eta=1 and S=T is ancestral sampling with the posterior variance (same keys)."""
    s = make_schedule("linear", 300)
    fn = gaussian_oracle(s)
    a = ddpm_sample(fn, s, (64, 2, 2, 1), jax.random.key(3)).samples
    b = ddim_sample(fn, s, (64, 2, 2, 1), jax.random.key(3), num_steps=300, eta=1.0).samples
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4)


def test_ddim_timesteps():
    np.testing.assert_array_equal(ddim_timesteps(1000, 100), np.arange(0, 1000, 10))
    np.testing.assert_array_equal(ddim_timesteps(10, 10, "quadratic"), np.arange(10))
    # Without collisions, quadratic is exactly the DDIM code's int(linspace(0, sqrt(.8T), S)**2).
    want = (np.linspace(0, np.sqrt(1000 * 0.8), 10) ** 2).astype(int)
    np.testing.assert_array_equal(ddim_timesteps(1000, 10, "quadratic"), want)
    for T, S in [(1000, 300), (1000, 999), (300, 77), (7, 3), (1, 1)]:
        for spacing in ("uniform", "quadratic"):
            seq = ddim_timesteps(T, S, spacing)
            assert seq.dtype == np.int32 and len(seq) == S and len(set(seq)) == S
            assert np.all(np.diff(seq) > 0) and seq[0] == 0 and seq[-1] < T


def test_record_steps():
    s = make_schedule("linear", 100)
    fn = gaussian_oracle(s)
    shape, key = (3, 4, 4, 2), jax.random.key(5)
    out = jax.jit(lambda k: ddpm_sample(fn, s, shape, k, record_steps=(99, 50, 0)))(key)
    assert out.trajectory.shape == out.x0_predictions.shape == (3, *shape)
    np.testing.assert_array_equal(out.timesteps, [99, 50, 0])
    # Documented: image b starts at normal(fold_in(fold_in(key, b), 0)).
    x_T = jnp.stack(
        [
            jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, b), 0), shape[1:])
            for b in range(shape[0])
        ]
    )
    np.testing.assert_allclose(np.asarray(out.trajectory[0]), np.asarray(x_T))
    plain = ddpm_sample(fn, s, shape, key)
    assert plain.trajectory is None and plain.x0_predictions is None
    np.testing.assert_allclose(np.asarray(plain.samples), np.asarray(out.samples), atol=1e-6)

    # DDIM records the nearest visited step; duplicates share a buffer slot.
    out = ddim_sample(fn, s, shape, key, num_steps=10, record_steps=(99, 95, 52, 3))
    np.testing.assert_array_equal(out.timesteps, [90, 90, 50, 0])
    assert out.trajectory.shape == (4, *shape)
    np.testing.assert_array_equal(out.trajectory[0], out.trajectory[1])
    assert not np.allclose(out.trajectory[1], out.trajectory[2])


def test_classifier_free_guidance():
    calls = []

    def cond_fn(x, t, y):
        calls.append(x.shape[0])
        return x * 0 + y[:, None, None, None].astype(jnp.float32)  # eps = label value

    x, t, labels = jnp.zeros((2, 2, 2, 1)), jnp.array([3, 3]), jnp.array([1, 2])
    for g in (0.0, 1.0, 3.0):
        calls.clear()
        eps = classifier_free_guidance(cond_fn, labels, g, num_classes=10)(x, t)
        want = 10 + g * (np.array([1, 2]) - 10)  # null label = num_classes = 10
        np.testing.assert_allclose(np.asarray(eps[:, 0, 0, 0]), want)
        assert calls == ([4] if g == 3.0 else [2])  # one batched forward
    with pytest.raises(ValueError, match="guidance needs a class-conditional model"):
        classifier_free_guidance(cond_fn, labels, 2.0, num_classes=0)


def test_unet_sampling_is_seeded_and_jittable():
    """A real (tiny, randomly initialised) UNet closed over in a jitted DDIM + guidance loop."""
    abstract = nnx.eval_shape(
        lambda: UNet(
            image_size=8,
            in_channels=1,
            ch=8,
            ch_mult=(1,),
            num_res_blocks=1,
            attn_resolutions=(8,),
            num_groups=4,
            num_classes=3,
            rngs=nnx.Rngs(0),
        )
    )
    graphdef, state = nnx.split(abstract)
    rng = np.random.default_rng(0)
    state = jax.tree.map(lambda p: jnp.asarray(rng.normal(0, 0.2, p.shape), p.dtype), state)
    model = nnx.merge(graphdef, state)
    s = make_schedule("linear", 20)
    labels = jnp.array([0, 1, 2, 0])
    fn = classifier_free_guidance(lambda x, t, y: model(x, t, y), labels, 2.0, model.num_classes)

    @jax.jit
    def run(key, sch):
        return sample(fn, sch, (4, 8, 8, 1), key, sampler="ddim", num_steps=4, record_steps=(19,))

    a, b, c = run(jax.random.key(0), s), run(jax.random.key(0), s), run(jax.random.key(1), s)
    assert isinstance(a, SampleOutput) and a.samples.dtype == jnp.float32
    assert a.samples.shape == (4, 8, 8, 1) and a.trajectory.shape == (1, 4, 8, 8, 1)
    np.testing.assert_array_equal(np.asarray(a.samples), np.asarray(b.samples))
    assert not np.allclose(np.asarray(a.samples), np.asarray(c.samples))
    assert float(jnp.abs(a.samples).max()) <= 1.0


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda s: sample(None, s, (1, 2, 2, 1), None, sampler="euler"), "sampler='euler'"),
        (lambda s: sample(None, s, (1, 2, 2, 1), None, sampler="ddpm", num_steps=5), "num_steps=5"),
        (
            lambda s: sample(None, s, (1, 2, 2, 1), None, sampler="ddim", num_steps=11),
            "num_steps=11",
        ),
        (lambda s: ddim_timesteps(10, 11), "num_steps=11"),
        (lambda s: ddim_timesteps(10, 0), "num_steps=0"),
        (lambda s: ddim_timesteps(10, 5, "cubic"), "spacing='cubic'"),
        (lambda s: ddpm_sample(None, s, (1, 2, 2, 1), None, variance="learned"), "variance="),
        (lambda s: ddpm_sample(None, s, (1, 2, 2, 1), None, record_steps=(10,)), "record_steps"),
    ],
)
def test_value_errors_name_the_setting(call, match):
    with pytest.raises(ValueError, match=match):
        call(make_schedule("linear", 10))
